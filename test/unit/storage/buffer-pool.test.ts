import { describe, expect, it } from 'vitest';
import { BufferPool, BufferWaitError, copyInto, type PooledBuffer } from '../../../src/storage/buffer-pool.js';
import { SlabPool } from '../../../src/engine/slab-pool.js';
import { PartBufferPool, PartBufferWaitError } from '../../../src/storage/s3/part-buffers.js';

const KiB = 1024;

/** Lets queued promise callbacks run. */
const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

/** A pool of private ArrayBuffers; `maxBytes` / 64 KiB of them. */
const pool64 = (maxBytes: number) => new BufferPool({ bufferBytes: 64 * KiB, maxBytes, allocate: (n) => new ArrayBuffer(n) });

describe('BufferPool', () => {
  it('hands out buffers of the configured size, made by its allocator', () => {
    const pool = pool64(256 * KiB);
    const buf = pool.tryAcquire()!;
    expect(buf.buffer).toBeInstanceOf(ArrayBuffer);
    expect(buf.buffer.byteLength).toBe(64 * KiB);
    expect(buf.bytes.buffer).toBe(buf.buffer);
    expect(buf.bytes.length).toBe(64 * KiB);
  });

  it('is what the engine\'s slabs and the S3 writers\' parts are made of', () => {
    const slabs = new SlabPool(64 * KiB, 256 * KiB);
    const parts = new PartBufferPool(128 * KiB, 256 * KiB, 2);
    expect(slabs).toBeInstanceOf(BufferPool);
    expect(parts).toBeInstanceOf(BufferPool);
    expect([slabs.slabBytes, slabs.maxSlabs, parts.partSizeBytes, parts.maxBuffers]).toEqual([64 * KiB, 4, 128 * KiB, 2]);
    // Slabs travel to the hashing worker and back; parts are read there in place.
    expect(slabs.tryAcquire()!.buffer).toBeInstanceOf(ArrayBuffer);
    expect(parts.tryAcquire()!.buffer).toBeInstanceOf(SharedArrayBuffer);
  });

  it('once every buffer is back, keeps keepIdle of them (the most recently used) and frees the rest', () => {
    const freed: ArrayBuffer[] = [];
    const pool = new BufferPool({ bufferBytes: 64 * KiB, maxBytes: 256 * KiB, allocate: (n) => new ArrayBuffer(n), keepIdle: 1, free: (b) => freed.push(b) });
    const held = [pool.tryAcquire()!, pool.tryAcquire()!, pool.tryAcquire()!];
    pool.release(held[0]!);
    pool.release(held[1]!);
    expect(freed).toEqual([]); // one still in use: the burst is not over
    pool.release(held[2]!);
    expect(freed).toEqual([held[0]!.buffer, held[1]!.buffer]);
    expect(pool.inUse).toBe(0);
    // The pool may allocate its full count again.
    const again = [pool.tryAcquire()!, pool.tryAcquire()!, pool.tryAcquire()!, pool.tryAcquire()!];
    expect(again[0]).toBe(held[2]);
    expect(again.every((b) => b !== undefined)).toBe(true);
    expect(pool.tryAcquire()).toBeUndefined();
  });

  it('a slab pool frees the memory of the slabs it lets go at once (detached, not left to the collector)', () => {
    const slabs = new SlabPool(64 * KiB, 1024 * KiB);
    const held = Array.from({ length: 16 }, () => slabs.tryAcquire()!);
    // A slab gets memory only when asked (a lazy pool): node:http's chunks never need it.
    expect(held.every((s) => s.buffer.byteLength === 0)).toBe(true);
    const buffers = held.map((s) => slabs.withMemory(s) && s.buffer);
    expect(buffers.every((b) => b.byteLength === 64 * KiB)).toBe(true);
    for (const s of held) slabs.release(s);
    const detached = buffers.filter((b) => b.byteLength === 0).length;
    expect(detached).toBe(12);
    expect(slabs.inUse).toBe(0);
  });

  it('allocates at most maxBytes / bufferBytes buffers', () => {
    const pool = pool64(200 * KiB);
    expect(pool.maxBuffers).toBe(3);
    const buffers = [pool.tryAcquire(), pool.tryAcquire(), pool.tryAcquire()];
    expect(buffers.every((s) => s !== undefined)).toBe(true);
    expect(new Set(buffers).size).toBe(3);
    expect(pool.inUse).toBe(3);
    expect(pool.tryAcquire()).toBeUndefined();
    expect(pool.inUse).toBe(3);
  });

  it('allows at least one buffer even when maxBytes is below the buffer size', () => {
    const pool = pool64(1);
    expect(pool.maxBuffers).toBe(1);
    expect(pool.tryAcquire()).toBeDefined();
    expect(pool.tryAcquire()).toBeUndefined();
  });

  it('reuses released buffers instead of allocating new ones', () => {
    const pool = pool64(128 * KiB);
    const a = pool.tryAcquire()!;
    pool.release(a);
    expect(pool.inUse).toBe(0);
    expect(pool.tryAcquire()).toBe(a);
    const b = pool.tryAcquire()!;
    pool.release(a);
    pool.release(b);
    const again = [pool.tryAcquire(), pool.tryAcquire()];
    expect(new Set(again)).toEqual(new Set([a, b]));
    expect(pool.tryAcquire()).toBeUndefined();
  });

  it('resolves acquire() at once while buffers are available', async () => {
    const pool = pool64(128 * KiB);
    const buf = await pool.acquire();
    expect(buf.bytes.length).toBe(64 * KiB);
    expect(pool.inUse).toBe(1);
    expect(pool.waiting).toBe(0);
  });

  it('serves waiters in arrival order as buffers are released', async () => {
    const pool = pool64(64 * KiB);
    const held = pool.tryAcquire()!;
    const served: number[] = [];
    const waits = [0, 1, 2].map((i) => pool.acquire().then((s) => {
      served.push(i);
      return s;
    }));
    await tick();
    expect(pool.waiting).toBe(3);
    expect(served).toEqual([]);

    pool.release(held);
    const first = await waits[0]!;
    expect(first).toBe(held);
    expect(served).toEqual([0]);
    expect(pool.waiting).toBe(2);
    expect(pool.inUse).toBe(1);

    pool.release(first);
    const second = await waits[1]!;
    pool.release(second);
    const third = await waits[2]!;
    expect(served).toEqual([0, 1, 2]);
    expect(third).toBe(held);
    expect(pool.waiting).toBe(0);
    pool.release(third);
    expect(pool.inUse).toBe(0);
  });

  it('does not let tryAcquire() or a new acquire() jump the queue', async () => {
    const pool = pool64(64 * KiB);
    const held = pool.tryAcquire()!;
    const order: string[] = [];
    const early = pool.acquire().then((s) => {
      order.push('early');
      return s;
    });
    const late = pool.acquire().then((s) => {
      order.push('late');
      return s;
    });
    pool.release(held);
    // The released buffer went straight to the first waiter, so nothing is free.
    expect(pool.tryAcquire()).toBeUndefined();
    pool.release(await early);
    pool.release(await late);
    expect(order).toEqual(['early', 'late']);
  });

  it('never has more buffers in use than its bound under churn', async () => {
    const pool = pool64(4 * 64 * KiB);
    let maxInUse = 0;
    const seen = new Set<PooledBuffer>();
    await Promise.all(Array.from({ length: 40 }, async (_, i) => {
      const buf = await pool.acquire();
      seen.add(buf);
      maxInUse = Math.max(maxInUse, pool.inUse);
      for (let t = 0; t < (i % 3) + 1; t++) await tick();
      pool.release(buf);
    }));
    expect(maxInUse).toBe(4);
    expect(seen.size).toBe(4);
    expect(pool.inUse).toBe(0);
    expect(pool.waiting).toBe(0);
  });

  it('with a time limit, rejects a wait that lasts too long, and serves the next waiter instead', async () => {
    const pool = pool64(64 * KiB);
    const held = pool.tryAcquire()!;
    const impatient = pool.acquire(20);
    const patient = pool.acquire();
    await expect(impatient).rejects.toBeInstanceOf(BufferWaitError);
    await expect(impatient).rejects.toThrow(/no buffer became free within 20 ms \(1 buffers of 65536 bytes, all in use\)/);
    expect(pool.waiting).toBe(1);
    pool.release(held);
    expect(await patient).toBe(held);
  });

  it('names its buffers and error class where the S3 driver needs them', async () => {
    const parts = new PartBufferPool(64 * KiB, 64 * KiB, 1);
    parts.tryAcquire();
    const err = await parts.acquire(10).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PartBufferWaitError);
    expect(err).toBeInstanceOf(BufferWaitError);
    expect(err).toMatchObject({ name: 'PartBufferWaitError', code: 'S3_BUFFERS_EXHAUSTED', message: expect.stringContaining('no S3 part buffer became free') });
  });

  it('replace() and renew() give a buffer new memory of its size, and nothing else', () => {
    const pool = pool64(64 * KiB);
    const buf = pool.tryAcquire()!;
    const old = buf.buffer;
    const moved = structuredClone(old, { transfer: [old] });
    expect(old.byteLength).toBe(0);
    pool.replace(buf, moved);
    expect(buf.buffer).toBe(moved);
    expect(buf.bytes.buffer).toBe(moved);
    expect(() => pool.replace(buf, new ArrayBuffer(10))).toThrow(RangeError);
    pool.renew(buf);
    expect(buf.buffer).not.toBe(moved);
    expect(buf.bytes.length).toBe(64 * KiB);
    pool.release(buf);
    expect(pool.tryAcquire()).toBe(buf);
  });
});

describe('copyInto', () => {
  // The copy every S3 push byte takes into a shared part buffer, and the engine's into a slab.
  it.each([
    ['a shared buffer (S3 part)', () => new PartBufferPool(1024, 1024, 1).tryAcquire()!],
    ['a private buffer (slab)', () => {
      const pool = new SlabPool(1024, 1024);
      const slab = pool.tryAcquire()!;
      pool.withMemory(slab);
      return slab;
    }],
  ])('copies exactly, at any alignment of source and target, into %s', (_what, take) => {
    const target = take();
    target.bytes.fill(0xee);
    const source = new Uint8Array(300);
    for (let i = 0; i < source.length; i++) source[i] = (i * 31 + 7) & 0xff;
    const want = Buffer.alloc(1024, 0xee);
    let at = 0;
    for (const [from, len] of [[0, 13], [3, 64], [5, 0], [1, 200], [7, 1]] as const) {
      const piece = source.subarray(from, from + len);
      copyInto(target.bytes, piece, at);
      want.set(piece, at);
      at += len + 1; // leave a byte between pieces: untouched
    }
    expect(Buffer.compare(target.bytes, want)).toBe(0);
  });

  it('refuses a copy past the end and writes nothing', () => {
    const target = new PartBufferPool(16, 16, 1).tryAcquire()!;
    target.bytes.fill(1);
    expect(() => copyInto(target.bytes, new Uint8Array(8).fill(2), 12)).toThrow(RangeError);
    expect([...target.bytes]).toEqual(new Array(16).fill(1));
  });
});
