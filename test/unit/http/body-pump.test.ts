import { describe, expect, it } from 'vitest';
import type { BodySink } from '../../../src/http/adapter.js';
import { BodyPump, EARLY_BUDGET_BYTES, earlyBytesHeld, READY_BYTES, type BodyFlow } from '../../../src/http/body-pump.js';

/**
 * The body loop both front ends share (src/http/body-pump.ts), driven the way a front end
 * drives it. The flow records what the pump asked of the connection; the sinks are plain
 * objects with the BodySink contract. test/http/frontend.test.ts runs the same loop through
 * real sockets on both front ends.
 */

class Flow implements BodyFlow {
  readonly calls: string[] = [];
  paused = false;
  pause(): void {
    this.paused = true;
    this.calls.push('pause');
  }
  resume(): void {
    this.paused = false;
    this.calls.push('resume');
  }
  stop(ended: boolean): void {
    this.calls.push(ended ? 'stop:ended' : 'stop');
  }
}

/** Keeps what it is given; full after `capacity` writes until release() is called. */
class Sink implements BodySink {
  readonly got: Array<{ bytes: number[]; owned: boolean; same: boolean }> = [];
  capacity: number;
  #waiters: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];
  constructor(capacity = Infinity) {
    this.capacity = capacity;
  }
  #seen = new Set<Uint8Array>();
  write(chunk: Uint8Array, owned = false): boolean {
    this.got.push({ bytes: [...chunk], owned, same: this.#seen.has(chunk) });
    this.#seen.add(chunk);
    return this.got.length < this.capacity;
  }
  drained(): Promise<void> {
    if (this.got.length < this.capacity) return Promise.resolve();
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }
  release(more: number): void {
    this.capacity += more;
    for (const w of this.#waiters.splice(0)) w.resolve();
  }
  break(err: Error): void {
    for (const w of this.#waiters.splice(0)) w.reject(err);
  }
}

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('BodyPump', () => {
  it('writes chunks as they come and resolves with the byte count at the end', async () => {
    const flow = new Flow();
    const pump = new BodyPump(flow, { chunksOwned: false });
    const sink = new Sink();
    const read = pump.start(sink);
    pump.push(Uint8Array.of(1, 2));
    pump.push(new Uint8Array(0));
    pump.push(Uint8Array.of(3));
    pump.end();
    expect(await read).toBe(3);
    expect(sink.got.map((g) => g.bytes)).toEqual([[1, 2], [3]]);
    expect(flow.calls).toEqual(['resume', 'stop:ended']);
  });

  it('keeps chunks that arrive before start(), read on to READY_BYTES and then paused: copies of borrowed ones, owned ones as they are', async () => {
    for (const owned of [false, true]) {
      const flow = new Flow();
      const pump = new BodyPump(flow, { chunksOwned: owned });
      const chunk = Uint8Array.of(7, 8, 9);
      pump.push(chunk);
      chunk.fill(0); // a borrowed chunk's memory is reused once push() returns
      // Not ready yet: the connection is read on.
      expect(flow.paused).toBe(false);
      expect(pump.ready).toBe(false);
      expect(earlyBytesHeld()).toBe(3);
      pump.push(new Uint8Array(READY_BYTES - 3).fill(5));
      expect(flow.paused).toBe(true);
      expect(pump.ready).toBe(true);
      const sink = new Sink();
      const read = pump.start(sink);
      expect(earlyBytesHeld()).toBe(0);
      expect(flow.paused).toBe(false);
      pump.push(Uint8Array.of(1));
      pump.end();
      expect(await read).toBe(READY_BYTES + 1);
      expect(sink.got[0]).toMatchObject({ bytes: owned ? [0, 0, 0] : [7, 8, 9], owned: true });
      expect(sink.got[1]!.bytes.length).toBe(READY_BYTES - 3);
      expect(sink.got[2]).toMatchObject({ bytes: [1], owned });
    }
  });

  it('is ready once the body ended or the read stopped before start()', () => {
    const ended = new BodyPump(new Flow(), { chunksOwned: false });
    ended.push(Uint8Array.of(1));
    expect(ended.ready).toBe(false);
    ended.end();
    expect(ended.ready).toBe(true);
    const failed = new BodyPump(new Flow(), { chunksOwned: false });
    failed.push(Uint8Array.of(1));
    failed.fail(new Error('client went away'));
    expect(failed.ready).toBe(true);
    expect(earlyBytesHeld()).toBe(1); // `ended` still holds its byte
    void ended.start(new Sink());
    expect(earlyBytesHeld()).toBe(0);
  });

  it('reads bodies not yet started on past their first chunk only within EARLY_BUDGET_BYTES', () => {
    const piece = READY_BYTES / 2;
    const pumps: Array<{ pump: BodyPump; flow: Flow }> = [];
    // Each holds half of READY_BYTES and reads on, until the budget is used up.
    while (earlyBytesHeld() <= EARLY_BUDGET_BYTES) {
      const flow = new Flow();
      const pump = new BodyPump(flow, { chunksOwned: true });
      pump.push(new Uint8Array(piece));
      pumps.push({ pump, flow });
    }
    expect(pumps.length).toBe(EARLY_BUDGET_BYTES / piece + 1);
    expect(pumps.slice(0, -1).every(({ flow }) => !flow.paused)).toBe(true);
    // The one that went past the budget, and any after it, is paused after its first chunk.
    expect(pumps.at(-1)!.flow.paused).toBe(true);
    const late = new Flow();
    const pump = new BodyPump(late, { chunksOwned: true });
    pump.push(new Uint8Array(1));
    expect(late.paused).toBe(true);
    expect(pump.ready).toBe(false);
    pumps.push({ pump, flow: late });
    // Dropped bodies give their bytes back.
    for (const p of pumps) p.pump.fail(new Error('gone'));
    expect(earlyBytesHeld()).toBe(0);
  });

  it('pauses while the sink is full, still writes what a read under way delivers, and resumes once it drained', async () => {
    const flow = new Flow();
    const pump = new BodyPump(flow, { chunksOwned: false });
    const sink = new Sink(1);
    const read = pump.start(sink);
    pump.push(Uint8Array.of(1));
    expect(flow.paused).toBe(true);
    pump.push(Uint8Array.of(2)); // already read when the pause came
    await tick();
    expect(flow.calls).toEqual(['resume', 'pause']);
    sink.release(1);
    await tick();
    // The chunk written while full made the sink full again: the pump waited for that too.
    expect(flow.paused).toBe(true);
    sink.release(10);
    await tick();
    expect(flow.paused).toBe(false);
    pump.push(Uint8Array.of(3));
    pump.end();
    expect(await read).toBe(3);
    expect(sink.got.map((g) => g.bytes)).toEqual([[1], [2], [3]]);
  });

  it('finishes a body that ended while the sink was full only once it drained, and leaves the connection unpaused', async () => {
    const flow = new Flow();
    const pump = new BodyPump(flow, { chunksOwned: false });
    const sink = new Sink(1);
    const read = pump.start(sink);
    let done = false;
    void read.then(() => (done = true));
    pump.push(Uint8Array.of(1));
    pump.end();
    await tick();
    expect(done).toBe(false);
    sink.release(1);
    expect(await read).toBe(1);
    expect(flow.calls.at(-1)).toBe('stop:ended');
  });

  it('ends the read with the error of a sink that throws or fails to drain, and drops the rest', async () => {
    const flow = new Flow();
    const pump = new BodyPump(flow, { chunksOwned: false });
    const read = pump.start({ write: () => { throw new Error('no room'); }, drained: () => Promise.resolve() });
    pump.push(Uint8Array.of(1));
    await expect(read).rejects.toThrow('no room');
    expect(flow.calls.at(-1)).toBe('stop');
    pump.push(Uint8Array.of(2));
    expect(pump.bytes).toBe(2);

    const flow2 = new Flow();
    const pump2 = new BodyPump(flow2, { chunksOwned: false });
    const sink = new Sink(1);
    const read2 = pump2.start(sink);
    pump2.push(Uint8Array.of(1));
    sink.break(new Error('storage failed'));
    await expect(read2).rejects.toThrow('storage failed');
    expect(flow2.calls.at(-1)).toBe('stop');
    expect(flow2.paused).toBe(true); // stop() is where the front end lets the rest flow away
  });

  it('ends the read when the sink\'s signal aborts, between chunks (nothing arriving) or before start()', async () => {
    const flow = new Flow();
    const pump = new BodyPump(flow, { chunksOwned: false });
    const controller = new AbortController();
    const sink = Object.assign(new Sink(), { signal: controller.signal });
    const read = pump.start(sink);
    pump.push(Uint8Array.of(1));
    const reason = new Error('too slow');
    controller.abort(reason);
    await expect(read).rejects.toBe(reason);
    expect(flow.calls.at(-1)).toBe('stop');
    pump.push(Uint8Array.of(2));
    expect(sink.got).toHaveLength(1);

    const aborted = new AbortController();
    aborted.abort(reason);
    const late = new BodyPump(new Flow(), { chunksOwned: false });
    await expect(late.start(Object.assign(new Sink(), { signal: aborted.signal }))).rejects.toBe(reason);
  });

  it('fail() rejects a read under way once, even while waiting for the sink; later calls change nothing', async () => {
    const flow = new Flow();
    const pump = new BodyPump(flow, { chunksOwned: false });
    const sink = new Sink(1);
    const read = pump.start(sink);
    pump.push(Uint8Array.of(1));
    pump.fail(new Error('client left'));
    pump.fail(new Error('again'));
    sink.release(5);
    await expect(read).rejects.toThrow('client left');
    pump.end();
    expect(flow.calls.filter((c) => c.startsWith('stop'))).toEqual(['stop']);
  });

  it('a body dropped before it was read rejects a late start() with the reason; start() twice is an error', async () => {
    const flow = new Flow();
    const pump = new BodyPump(flow, { chunksOwned: false });
    pump.push(Uint8Array.of(1));
    pump.fail(new Error('response sent first'));
    expect(flow.calls).toEqual(['stop']);
    await expect(pump.start(new Sink())).rejects.toThrow('response sent first');
    await expect(pump.start(new Sink())).rejects.toThrow('called twice');
  });
});
