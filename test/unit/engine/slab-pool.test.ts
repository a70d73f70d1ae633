import { describe, expect, it } from 'vitest';
import { SlabPool, type Slab } from '../../../src/engine/slab-pool.js';

const KiB = 1024;

/** Lets queued promise callbacks run. */
const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('SlabPool', () => {
  it('hands out SharedArrayBuffer slabs of the configured size', () => {
    const pool = new SlabPool(64 * KiB, 256 * KiB);
    const slab = pool.tryAcquire()!;
    expect(slab.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(slab.buffer.byteLength).toBe(64 * KiB);
    expect(slab.bytes.buffer).toBe(slab.buffer);
    expect(slab.bytes.length).toBe(64 * KiB);
  });

  it('allocates at most maxBytes / slabBytes slabs', () => {
    const pool = new SlabPool(64 * KiB, 200 * KiB);
    expect(pool.maxSlabs).toBe(3);
    const slabs = [pool.tryAcquire(), pool.tryAcquire(), pool.tryAcquire()];
    expect(slabs.every((s) => s !== undefined)).toBe(true);
    expect(new Set(slabs).size).toBe(3);
    expect(pool.inUse).toBe(3);
    expect(pool.tryAcquire()).toBeUndefined();
    expect(pool.inUse).toBe(3);
  });

  it('allows at least one slab even when maxBytes is below the slab size', () => {
    const pool = new SlabPool(64 * KiB, 1);
    expect(pool.maxSlabs).toBe(1);
    expect(pool.tryAcquire()).toBeDefined();
    expect(pool.tryAcquire()).toBeUndefined();
  });

  it('reuses released slabs instead of allocating new ones', () => {
    const pool = new SlabPool(64 * KiB, 128 * KiB);
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

  it('resolves acquire() at once while slabs are available', async () => {
    const pool = new SlabPool(64 * KiB, 128 * KiB);
    const slab = await pool.acquire();
    expect(slab.bytes.length).toBe(64 * KiB);
    expect(pool.inUse).toBe(1);
    expect(pool.waiting).toBe(0);
  });

  it('serves waiters in arrival order as slabs are released', async () => {
    const pool = new SlabPool(64 * KiB, 64 * KiB);
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
    const pool = new SlabPool(64 * KiB, 64 * KiB);
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
    // The released slab went straight to the first waiter, so nothing is free.
    expect(pool.tryAcquire()).toBeUndefined();
    pool.release(await early);
    pool.release(await late);
    expect(order).toEqual(['early', 'late']);
  });

  it('never has more slabs in use than its bound under churn', async () => {
    const pool = new SlabPool(64 * KiB, 4 * 64 * KiB);
    let maxInUse = 0;
    const seen = new Set<Slab>();
    await Promise.all(Array.from({ length: 40 }, async (_, i) => {
      const slab = await pool.acquire();
      seen.add(slab);
      maxInUse = Math.max(maxInUse, pool.inUse);
      for (let t = 0; t < (i % 3) + 1; t++) await tick();
      pool.release(slab);
    }));
    expect(maxInUse).toBe(4);
    expect(seen.size).toBe(4);
    expect(pool.inUse).toBe(0);
    expect(pool.waiting).toBe(0);
  });
});
