import { once } from 'node:events';
import { createServer, connect } from 'node:net';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { TooManyRequestsError } from '../../../src/errors.js';
import { ParseLane } from '../../../src/registry/parse-lane.js';

function busyFor(ms: number): void {
  const end = Date.now() + ms;
  while (Date.now() < end) { /* holds the event loop, as a large parse does */ }
}

describe('ParseLane', () => {
  // Found by probing: eight large manifest pushes whose bodies ended together were parsed
  // back to back, and every other request waited for all eight.
  it('serves I/O that arrived during one run before the next run starts', async () => {
    const order: string[] = [];
    const server = createServer((s) => s.on('data', () => order.push('io')));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const client = connect((server.address() as AddressInfo).port, '127.0.0.1');
    await once(client, 'connect');
    await new Promise((r) => setTimeout(r, 20));
    const lane = new ParseLane();
    try {
      await Promise.all([
        lane.run(() => {
          client.write('a request');
          busyFor(50);
          order.push('first');
        }),
        lane.run(() => order.push('second')),
      ]);
      expect(order).toEqual(['first', 'io', 'second']);
    } finally {
      client.destroy();
      server.close();
    }
  });

  it('runs one at a time, in order, and passes on results and errors', async () => {
    const lane = new ParseLane();
    let running = 0;
    const seen: number[] = [];
    const runs = Array.from({ length: 6 }, (_, i) => lane.run(() => {
      running++;
      expect(running).toBe(1);
      seen.push(i);
      running--;
      if (i === 3) throw new Error('not a manifest');
      return i * 10;
    }));
    const settled = await Promise.allSettled(runs);
    expect(seen).toEqual([0, 1, 2, 3, 4, 5]);
    expect(settled.map((s) => (s.status === 'fulfilled' ? s.value : (s.reason as Error).message))).toEqual([0, 10, 20, 'not a manifest', 40, 50]);
    // The lane is free again.
    await expect(lane.run(() => 'after')).resolves.toBe('after');
  });

  it('holds at most sixteen waiting: more get 429 with Retry-After', async () => {
    const lane = new ParseLane();
    const runs = Array.from({ length: 17 }, () => lane.run(() => 'parsed'));
    const refused = await lane.run(() => 'parsed').catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(TooManyRequestsError);
    expect((refused as TooManyRequestsError).retryAfterSeconds).toBe(1);
    // Found by probing: it said "too many large manifests pushed at once", to a pull through a
    // cache too, which pushed nothing; the message is neutral and names no internals.
    expect((refused as TooManyRequestsError).message).toBe('too many manifests being parsed; retry');
    expect(await Promise.all(runs)).toEqual(Array(17).fill('parsed'));
  });
});
