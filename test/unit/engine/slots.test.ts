import { describe, expect, it } from 'vitest';
import { Slots } from '../../../src/engine/slots.js';

/** Slots with a bounded line (SlotsLine), as the pull-through cache's upstream requests use. */
const slots = (max: number, maxQueued: number, maxWaitMs = 5_000): Slots =>
  new Slots(max, { maxWaiting: maxQueued, maxWaitMs, refuse: (why) => new Error(why) });

/** A task that runs until `done()`. */
function task(): { run: () => Promise<string>; done: () => void; started: boolean } {
  let done: () => void = () => undefined;
  const t = {
    started: false,
    done: () => done(),
    run: () => {
      t.started = true;
      return new Promise<string>((resolve) => (done = () => resolve('ok')));
    },
  };
  return t;
}

describe('Slots with a line', () => {
  it('runs `max` at once, lines up `maxQueued` in order, refuses the next at once', async () => {
    const s = slots(2, 2);
    const t = Array.from({ length: 5 }, task);
    const results = t.map((x) => s.run(x.run).catch((e: Error) => e.message));
    await Promise.resolve();
    expect(t.map((x) => x.started)).toEqual([true, true, false, false, false]);
    expect([s.inflight, s.waiting]).toEqual([2, 2]);
    expect(await results[4]).toBe('full');
    t[1]!.done();
    await new Promise((r) => setImmediate(r));
    // The first in line took the freed place: still 2 running, 1 waiting.
    expect(t.map((x) => x.started)).toEqual([true, true, true, false, false]);
    expect([s.inflight, s.waiting]).toEqual([2, 1]);
    for (const x of t.slice(0, 4)) x.done();
    await new Promise((r) => setImmediate(r));
    // The last in line started only now (its done() above came before it ran).
    t[3]!.done();
    expect(await Promise.all(results.slice(0, 4))).toEqual(['ok', 'ok', 'ok', 'ok']);
    expect([s.inflight, s.waiting]).toEqual([0, 0]);
  });

  it('refuses a waiter after maxWaitMs and takes it out of the line; a task that throws frees its place', async () => {
    const s = slots(1, 4, 100);
    const first = task();
    const running = s.run(first.run);
    const t0 = performance.now();
    await expect(s.run(async () => 'never')).rejects.toThrow('waited');
    expect(performance.now() - t0).toBeGreaterThanOrEqual(95);
    expect([s.inflight, s.waiting]).toEqual([1, 0]);
    first.done();
    await running;
    await expect(s.run(async () => { throw new Error('boom'); })).rejects.toThrow('boom');
    expect([s.inflight, s.waiting]).toEqual([0, 0]);
    expect(await s.run(async () => 'again')).toBe('again');
  });
});
