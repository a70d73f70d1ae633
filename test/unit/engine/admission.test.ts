import { describe, expect, it } from 'vitest';
import { Admission, AdmissionFullError, BodyTooSlowError, type Ticket } from '../../../src/engine/admission.js';

/**
 * The admission of writing requests (src/engine/admission.ts): who goes next when a slot
 * frees, the bound on those waiting, and the window an admitted crawling body gets.
 * test/http/s3-admission-readiness.test.ts runs it through a real server on S3.
 */

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('Admission', () => {
  it('admits a waiting request whose body is ready first, in order of arrival among the ready, then the others in order', async () => {
    const admission = new Admission(1);
    const order: string[] = [];
    const hold = deferred();
    const first = admission.run(() => hold.promise);
    const readiness: Record<string, boolean> = { a: false, b: false, c: false, d: false };
    const runs = Object.keys(readiness).map((name) => admission.run(async () => {
      order.push(name);
      await tick();
    }, () => readiness[name]!));
    await tick();
    expect(admission.waiting).toBe(4);
    // b and d became ready while they waited.
    readiness.b = true;
    readiness.d = true;
    hold.resolve();
    await Promise.all([first, ...runs]);
    expect(order).toEqual(['b', 'd', 'a', 'c']);
  });

  it('tells a request that has to wait, once, as it starts to, and one admitted at once nothing', async () => {
    const admission = new Admission(1);
    const told: string[] = [];
    const hold = deferred();
    const first = admission.run(() => hold.promise, () => false, () => told.push('first'));
    const second = admission.run(async () => undefined, () => false, () => told.push('second'));
    await tick();
    // Told while it waits: its body (BodySource.invite) may come meanwhile.
    expect(admission.waiting).toBe(1);
    expect(told).toEqual(['second']);
    hold.resolve();
    await Promise.all([first, second]);
    expect(told).toEqual(['second']);
  });

  it('refuses more waiting requests than maxWaiting with 503', async () => {
    const admission = new Admission(1, { maxWaiting: 2 });
    const hold = deferred();
    const runs = [0, 1, 2].map(() => admission.run(() => hold.promise));
    await tick();
    await expect(admission.run(async () => 'never')).rejects.toBeInstanceOf(AdmissionFullError);
    await expect(admission.run(async () => 'never')).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    hold.resolve();
    await Promise.all(runs);
    expect(await admission.run(async () => 'ran')).toBe('ran');
  });

  /** How long an admitted body that brings nothing keeps its slot while `ready` waits. */
  async function stoppedAfter(ready: boolean): Promise<number> {
    const admission = new Admission(1, { windowMs: 800, minBytes: 1024 });
    const t0 = Date.now();
    let stopped = 0;
    const crawler = admission.run(async (ticket: Ticket) => {
      ticket.watch({ received: 0, holdingBack: false });
      await new Promise<void>((resolve) => ticket.signal.addEventListener('abort', () => resolve(), { once: true }));
      stopped = Date.now() - t0;
      expect(ticket.signal.reason).toBeInstanceOf(BodyTooSlowError);
    });
    const waiter = admission.run(async () => undefined, () => ready);
    await Promise.all([crawler, waiter]);
    return stopped;
  }

  it('stops an admitted crawling body after the window while others wait, after a quarter of it while a ready one waits', async () => {
    const [notReady, ready] = await Promise.all([stoppedAfter(false), stoppedAfter(true)]);
    // The check runs every eighth of the window (100 ms).
    expect(notReady).toBeGreaterThanOrEqual(800);
    expect(notReady).toBeLessThan(1200);
    expect(ready).toBeGreaterThanOrEqual(200);
    expect(ready).toBeLessThan(500);
  });
});
