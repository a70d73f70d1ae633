import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HashPool, type BytesRef } from '../../../src/engine/hash-pool.js';

/** A view of `bytes` on a fresh SharedArrayBuffer, as the upload engine's slabs are. */
function shared(bytes: Uint8Array, pad = 0): BytesRef {
  const buffer = new SharedArrayBuffer(bytes.length + 2 * pad);
  new Uint8Array(buffer).set(bytes, pad);
  return { buffer, byteOffset: pad, length: bytes.length };
}

/** A view of `bytes` on a fresh private ArrayBuffer, as rebuilds send them. */
function owned(bytes: Uint8Array): BytesRef {
  const buffer = new ArrayBuffer(bytes.length);
  new Uint8Array(buffer).set(bytes);
  return { buffer, byteOffset: 0, length: bytes.length };
}

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

let key = 0;
const nextKey = () => `test-${process.pid}-${key++}`;

describe('HashPool', () => {
  let pool: HashPool;

  beforeAll(() => {
    pool = new HashPool({ threads: 3, maxQueue: 1000 });
  });

  afterAll(async () => {
    await pool.close();
  });

  it('runs the configured number of threads', () => {
    expect(pool.threads).toBe(3);
  });

  it('digests data fed in several updates exactly as node:crypto does', async () => {
    const data = randomBytes(300_001);
    const k = nextKey();
    let pin: number | undefined;
    let offset = 0;
    for (const size of [1, 4096, 65_537, 100_000, 130_367]) {
      const r = await pool.update(k, pin, shared(data.subarray(offset, offset + size), 7), offset);
      expect(r).toMatchObject({ ok: true, offset: offset + size });
      pin = r.threadId;
      offset += size;
    }
    expect(offset).toBe(data.length);
    const d = await pool.digest(k, pin, offset, true);
    expect(d).toEqual({ ok: true, threadId: pin, hex: sha256(data) });
  });

  it('digests an empty upload', async () => {
    const k = nextKey();
    const r = await pool.update(k, undefined, shared(new Uint8Array(0)), 0);
    expect(r).toMatchObject({ ok: true, offset: 0 });
    expect(await pool.digest(k, r.threadId, 0, true)).toMatchObject({ ok: true, hex: sha256(new Uint8Array(0)) });
  });

  it('pins an upload to its worker: every task with the returned threadId finds the state', async () => {
    // Many uploads interleaved, all busy at once: without pinning, most continuations would
    // land on a worker that never saw the upload's start and answer `missing`.
    const uploads = Array.from({ length: 12 }, () => ({ key: nextKey(), data: randomBytes(8 * 50_000), pin: undefined as number | undefined }));
    const threads = new Set<number>();
    for (let step = 0; step < 8; step++) {
      await Promise.all(uploads.map(async (u) => {
        const offset = step * 50_000;
        const r = await pool.update(u.key, u.pin, shared(u.data.subarray(offset, offset + 50_000)), offset);
        expect(r).toEqual({ ok: true, threadId: u.pin ?? r.threadId, offset: offset + 50_000 });
        u.pin = r.threadId;
        threads.add(r.threadId);
      }));
    }
    // The uploads were spread over the workers, so the pin did the work.
    expect(threads.size).toBeGreaterThan(1);
    await Promise.all(uploads.map(async (u) => {
      expect(await pool.digest(u.key, u.pin, u.data.length, true)).toEqual({ ok: true, threadId: u.pin, hex: sha256(u.data) });
    }));
  });

  it('answers missing when a task is pinned to a worker without the state', async () => {
    // Start uploads concurrently until two of them live on different workers.
    const started = await Promise.all(Array.from({ length: 12 }, async () => {
      const k = nextKey();
      return { k, r: await pool.update(k, undefined, shared(randomBytes(200_000)), 0) };
    }));
    const a = started[0]!;
    const b = started.find((s) => s.r.threadId !== a.r.threadId);
    expect(b, 'uploads spread over more than one worker').toBeDefined();
    expect(await pool.digest(a.k, b!.r.threadId, 200_000, false)).toEqual({ ok: false, threadId: b!.r.threadId, reason: 'missing' });
    // Its own worker still has it.
    expect(await pool.digest(a.k, a.r.threadId, 200_000, true)).toMatchObject({ ok: true, threadId: a.r.threadId });
    await Promise.all(started.map((s) => pool.drop(s.k, s.r.threadId)));
  });

  it('answers missing for a wrong expectedOffset, and forgets the diverged state', async () => {
    const data = randomBytes(1000);
    const k = nextKey();
    const r = await pool.update(k, undefined, shared(data.subarray(0, 500)), 0);
    expect(r).toMatchObject({ ok: true, offset: 500 });
    // The caller thinks the state is at 400: it no longer matches storage.
    const wrong = await pool.update(k, r.threadId, shared(data.subarray(400, 500)), 400);
    expect(wrong).toEqual({ ok: false, threadId: r.threadId, reason: 'missing' });
    // The state was dropped: even the right offset now finds nothing.
    expect(await pool.update(k, r.threadId, shared(data.subarray(500)), 500)).toMatchObject({ ok: false, reason: 'missing' });
    expect(await pool.digest(k, r.threadId, 500, true)).toMatchObject({ ok: false, reason: 'missing' });
  });

  it('answers missing from digest() at a wrong offset', async () => {
    const k = nextKey();
    const r = await pool.update(k, undefined, shared(randomBytes(100)), 0);
    expect(await pool.digest(k, r.threadId, 99, false)).toMatchObject({ ok: false, reason: 'missing' });
  });

  it('restarts a state when a task says offset 0', async () => {
    const k = nextKey();
    const r = await pool.update(k, undefined, shared(randomBytes(100)), 0);
    const data = randomBytes(50);
    const again = await pool.update(k, r.threadId, shared(data), 0);
    expect(again).toMatchObject({ ok: true, offset: 50 });
    expect(await pool.digest(k, r.threadId, 50, true)).toMatchObject({ ok: true, hex: sha256(data) });
  });

  it('keeps the state after a non-final digest and drops it after a final one', async () => {
    const data = randomBytes(2000);
    const k = nextKey();
    const r = await pool.update(k, undefined, shared(data.subarray(0, 1000)), 0);
    const partial = await pool.digest(k, r.threadId, 1000, false);
    expect(partial).toMatchObject({ ok: true, hex: sha256(data.subarray(0, 1000)) });
    // Still usable: the non-final digest ran on a copy.
    expect(await pool.update(k, r.threadId, shared(data.subarray(1000)), 1000)).toMatchObject({ ok: true, offset: 2000 });
    expect(await pool.digest(k, r.threadId, 2000, true)).toMatchObject({ ok: true, hex: sha256(data) });
    expect(await pool.digest(k, r.threadId, 2000, true)).toMatchObject({ ok: false, reason: 'missing' });
    expect(await pool.update(k, r.threadId, shared(data.subarray(0, 1)), 2000)).toMatchObject({ ok: false, reason: 'missing' });
  });

  it('drop() forgets a state', async () => {
    const k = nextKey();
    const r = await pool.update(k, undefined, shared(randomBytes(10)), 0);
    await pool.drop(k, r.threadId);
    expect(await pool.digest(k, r.threadId, 10, true)).toMatchObject({ ok: false, reason: 'missing' });
    // Without a pin there is no worker to ask: a no-op.
    await expect(pool.drop(k, undefined)).resolves.toBeUndefined();
  });

  it.each([
    ['md5', 'hex'],
    ['md5', 'base64'],
    ['sha256', 'hex'],
    ['sha256', 'base64'],
    ['sha512', 'hex'],
  ] as const)('oneShot computes %s in %s', async (algorithm, encoding) => {
    const data = randomBytes(100_003);
    const expected = createHash(algorithm).update(data).digest(encoding);
    expect(await pool.oneShot(shared(data, 13), algorithm, encoding)).toBe(expected);
    expect(await pool.oneShot(owned(data), algorithm, encoding)).toBe(expected);
  });

  it('oneShot hashes only the view, not the whole buffer', async () => {
    const buffer = new SharedArrayBuffer(100);
    const all = new Uint8Array(buffer);
    for (let i = 0; i < all.length; i++) all[i] = i;
    expect(await pool.oneShot({ buffer, byteOffset: 10, length: 20 }, 'md5', 'hex'))
      .toBe(createHash('md5').update(all.subarray(10, 30)).digest('hex'));
  });

  it('reads a SharedArrayBuffer in place, leaving it usable by the sender', async () => {
    const data = randomBytes(4096);
    const ref = shared(data);
    const k = nextKey();
    const r = await pool.update(k, undefined, ref, 0);
    expect(r.ok).toBe(true);
    expect(ref.buffer.byteLength).toBe(4096);
    expect(Buffer.from(new Uint8Array(ref.buffer))).toEqual(data);
    expect(await pool.digest(k, r.threadId, 4096, true)).toMatchObject({ ok: true, hex: sha256(data) });
  });

  it('moves a private ArrayBuffer when asked to transfer it, and copies it otherwise', async () => {
    const data = randomBytes(4096);
    const k = nextKey();
    const moved = owned(data.subarray(0, 2048));
    const r = await pool.update(k, undefined, moved, 0, true);
    expect(r).toMatchObject({ ok: true, offset: 2048 });
    // Transferred, not copied: the sender's buffer is detached.
    expect(moved.buffer.byteLength).toBe(0);

    const copied = owned(data.subarray(2048));
    const r2 = await pool.update(k, r.threadId, copied, 2048);
    expect(r2).toMatchObject({ ok: true, offset: 4096 });
    expect(copied.buffer.byteLength).toBe(2048);
    expect(await pool.digest(k, r.threadId, 4096, true)).toMatchObject({ ok: true, hex: sha256(data) });
  });

  it('mixes shared and transferred buffers in one running hash', async () => {
    const data = randomBytes(3 * 10_000);
    const k = nextKey();
    let r = await pool.update(k, undefined, owned(data.subarray(0, 10_000)), 0, true);
    r = await pool.update(k, r.threadId, shared(data.subarray(10_000, 20_000), 3), 10_000);
    r = await pool.update(k, r.threadId, owned(data.subarray(20_000)), 20_000, true);
    expect(r).toMatchObject({ ok: true, offset: 30_000 });
    expect(await pool.digest(k, r.threadId, 30_000, true)).toMatchObject({ ok: true, hex: sha256(data) });
  });

  it('takes parts in order, moves their buffers, and gives back the one it was asked to, missing state or not', async () => {
    const data = randomBytes(10_000);
    const k = nextKey();
    const slab = new ArrayBuffer(8192);
    new Uint8Array(slab).set(data.subarray(0, 4000), 100);
    const mine = new Uint8Array(new ArrayBuffer(6000));
    mine.set(data.subarray(4000));
    const parts = [new Uint8Array(slab, 100, 4000), mine];
    const r = await pool.update(k, undefined, parts, 0, true, slab);
    expect(r).toMatchObject({ ok: true, offset: 10_000 });
    expect([slab.byteLength, mine.buffer.byteLength]).toEqual([0, 0]);
    // The slab came back whole, with what was in it; the other buffer stayed in the worker.
    expect(r.returned).toBeInstanceOf(ArrayBuffer);
    expect(Buffer.from(r.returned!, 100, 4000)).toEqual(data.subarray(0, 4000));
    expect(await pool.digest(k, r.threadId, 10_000, true)).toMatchObject({ ok: true, hex: sha256(data) });

    const again = r.returned!;
    const lost = await pool.update(k, r.threadId, [new Uint8Array(again, 0, 10)], 10_000, true, again);
    expect(lost).toMatchObject({ ok: false, reason: 'missing' });
    expect(lost.returned?.byteLength).toBe(8192);
  });

  it('frees the buffers moved to it: a worker passing 512 MiB holds none of it', async () => {
    const k = nextKey();
    let r = await pool.update(k, undefined, [new Uint8Array(0)], 0);
    const before = process.memoryUsage().rss;
    for (let i = 0; i < 128; i++) {
      const parts = Array.from({ length: 64 }, () => new Uint8Array(new ArrayBuffer(64 * 1024)));
      r = await pool.update(k, r.threadId, parts, i * 4 * 1024 * 1024, true);
      expect(r.ok).toBe(true);
    }
    // Were the worker to hold on to them (say, queued on a port that never finished closing),
    // the 512 MiB would still be resident here.
    expect(process.memoryUsage().rss - before).toBeLessThan(200 * 1024 * 1024);
  });

  it('keeps states apart per key on the same worker', async () => {
    const a = randomBytes(1000);
    const b = randomBytes(1000);
    const ka = nextKey();
    const kb = nextKey();
    const ra = await pool.update(ka, undefined, shared(a.subarray(0, 500)), 0);
    const rb = await pool.update(kb, ra.threadId, shared(b.subarray(0, 500)), 0);
    expect(rb.threadId).toBe(ra.threadId);
    await pool.update(kb, ra.threadId, shared(b.subarray(500)), 500);
    await pool.update(ka, ra.threadId, shared(a.subarray(500)), 500);
    expect(await pool.digest(ka, ra.threadId, 1000, true)).toMatchObject({ ok: true, hex: sha256(a) });
    expect(await pool.digest(kb, ra.threadId, 1000, true)).toMatchObject({ ok: true, hex: sha256(b) });
  });
});

describe('HashPool instances', () => {
  it('do not share states: a new pool (a restart) answers missing', async () => {
    const first = new HashPool({ threads: 1, maxQueue: 10 });
    const second = new HashPool({ threads: 1, maxQueue: 10 });
    try {
      const k = nextKey();
      const r = await first.update(k, undefined, shared(randomBytes(10)), 0);
      expect(r.ok).toBe(true);
      expect(await second.update(k, undefined, shared(randomBytes(10)), 10)).toMatchObject({ ok: false, reason: 'missing' });
      expect(await second.digest(k, r.threadId, 10, true)).toMatchObject({ ok: false, reason: 'missing' });
    } finally {
      await Promise.all([first.close(), second.close()]);
    }
  });
});

describe('HashPool updates in flight', () => {
  it('sends at most maxInflightUpdates slabs to the workers at once; the rest wait their turn, and all hash right', async () => {
    const pool = new HashPool({ threads: 2, maxQueue: 100, maxInflightUpdates: 3 });
    try {
      expect(pool.updates).toEqual({ inflight: 0, waiting: 0 });
      const blobs = Array.from({ length: 20 }, () => randomBytes(256 * 1024));
      const keys = blobs.map(() => nextKey());
      // Each moves its buffer to a worker and wants it back (giveBack), as a slab does.
      const started = blobs.map((b, i) => {
        const ref = owned(b);
        return pool.update(keys[i]!, undefined, ref, 0, true, ref.buffer as ArrayBuffer);
      });
      expect(pool.updates).toEqual({ inflight: 3, waiting: 17 });
      // Chunks that go one way (node:http's) do not wait in that line.
      const oneWay = pool.update(nextKey(), undefined, owned(randomBytes(10)), 0, true);
      expect(pool.updates).toEqual({ inflight: 3, waiting: 17 });
      expect(await oneWay).toMatchObject({ ok: true, offset: 10 });
      let most = 0;
      const sampler = setInterval(() => (most = Math.max(most, pool.updates.inflight)), 1);
      const results = await Promise.all(started);
      clearInterval(sampler);
      expect(most).toBeLessThanOrEqual(3);
      expect(pool.updates).toEqual({ inflight: 0, waiting: 0 });
      for (const [i, r] of results.entries()) {
        expect(r).toMatchObject({ ok: true, offset: 256 * 1024 });
        expect(r.returned?.byteLength).toBe(256 * 1024);
        expect(await pool.digest(keys[i]!, r.threadId, 256 * 1024, true)).toMatchObject({ ok: true, hex: sha256(blobs[i]!) });
      }
    } finally {
      await pool.close();
    }
  });

  it('gives its place back when an update fails', async () => {
    const pool = new HashPool({ threads: 1, maxQueue: 100, maxInflightUpdates: 1 });
    try {
      const view = new Uint8Array(new ArrayBuffer(10));
      const slab = view.buffer;
      expect(await pool.update(nextKey(), undefined, [view], 0, true)).toMatchObject({ ok: true, offset: 10 });
      // Moved away by the first update: sending it again cannot be done.
      await expect(pool.update(nextKey(), undefined, [view], 0, true, slab)).rejects.toThrow();
      expect(pool.updates).toEqual({ inflight: 0, waiting: 0 });
      expect(await pool.update(nextKey(), undefined, owned(randomBytes(10)), 0)).toMatchObject({ ok: true, offset: 10 });
    } finally {
      await pool.close();
    }
  });
});

describe('HashPool tasks past its queue', () => {
  // Found by probing: 400 finishes at once after a restart (digests and rebuilds, which hold
  // no slab) met piscina's maxQueue, and 260 of them got 500 (TaskQueueAtLimit).
  it('waits with tasks past maxQueue instead of refusing them, and runs them all', async () => {
    const pool = new HashPool({ threads: 1, maxQueue: 8 });
    try {
      const blobs = Array.from({ length: 200 }, () => randomBytes(1024));
      const keys = blobs.map(() => nextKey());
      const started = blobs.map((b, i) => pool.update(keys[i]!, undefined, owned(b), 0));
      expect(pool.tasks).toEqual({ inflight: 8, waiting: 192 });
      // The metrics' queue depth counts them (the 192, and those piscina has not handed to
      // its one worker yet).
      expect(pool.queueSize).toBeGreaterThanOrEqual(192);
      expect(pool.queueSize).toBeLessThanOrEqual(200);
      const updated = await Promise.all(started);
      const digests = await Promise.all(keys.map((k, i) => pool.digest(k, updated[i]!.threadId, 1024, true)));
      expect(digests.map((d) => (d.ok ? d.hex : d.reason))).toEqual(blobs.map(sha256));
      const shots = await Promise.all(blobs.map((b) => pool.oneShot(shared(b), 'sha256', 'hex')));
      expect(shots).toEqual(blobs.map(sha256));
      expect(pool.tasks).toEqual({ inflight: 0, waiting: 0 });
    } finally {
      await pool.close();
    }
  });
});

describe('HashPool states held', () => {
  // Found by probing: a client opening uploads and sending a byte to each grew the workers by
  // 1.4 KB an upload, until an hour's idle sweep.
  it('keeps at most 20,000 states a worker: the least recently touched goes, and answers missing', { timeout: 60_000 }, async () => {
    const pool = new HashPool({ threads: 1, maxQueue: 64 });
    try {
      const first = nextKey();
      const touched = nextKey();
      expect(await pool.update(first, undefined, owned(randomBytes(1)), 0)).toMatchObject({ ok: true });
      expect(await pool.update(touched, undefined, owned(randomBytes(1)), 0)).toMatchObject({ ok: true });
      const others = Array.from({ length: 20_000 - 2 }, () => nextKey());
      // Touched again before the last of the others: it is not the least recently touched.
      for (let i = 0; i < others.length; i += 50) {
        await Promise.all(others.slice(i, i + 50).map((k) => pool.update(k, undefined, owned(randomBytes(1)), 0)));
      }
      expect(await pool.update(touched, undefined, owned(randomBytes(1)), 1)).toMatchObject({ ok: true, offset: 2 });
      // 20,000 held; one more, and the least recently touched goes.
      expect(await pool.update(nextKey(), undefined, owned(randomBytes(1)), 0)).toMatchObject({ ok: true });
      expect(await pool.update(first, undefined, owned(randomBytes(1)), 1)).toMatchObject({ ok: false, reason: 'missing' });
      expect(await pool.update(touched, undefined, owned(randomBytes(1)), 2)).toMatchObject({ ok: true, offset: 3 });
    } finally {
      await pool.close();
    }
  });
});
