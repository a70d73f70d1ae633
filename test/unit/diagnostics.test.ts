import { createHash, randomBytes } from 'node:crypto';
import diagnostics from 'node:diagnostics_channel';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HashPool } from '../../src/engine/hash-pool.js';
import { parseDigest } from '../../src/registry/reference.js';
import { SlabPool } from '../../src/engine/slab-pool.js';
import { UploadEngine } from '../../src/engine/uploads.js';
import { MemoryDriver } from '../../src/storage/memory.js';
import { bodyOf } from '../helpers/uploads.js';

const SLAB = 64 * 1024;
let pools: HashPool[] = [];

beforeAll(() => {
  pools = [new HashPool({ threads: 1, maxQueue: 100 }), new HashPool({ threads: 1, maxQueue: 100 })];
});
afterAll(async () => {
  await Promise.all(pools.map((p) => p.close()));
});

function engine(driver: MemoryDriver, hashPool: HashPool): UploadEngine {
  return new UploadEngine({ driver, hashPool, slabs: new SlabPool(SLAB, 16 * SLAB), maxSessionBufferedBytes: 3 * SLAB, maxBlobBytes: 0 });
}

describe('diagnostics channels', () => {
  it('publish appends, commits and hash rebuilds', async () => {
    const seen: Array<[string, Record<string, unknown>]> = [];
    const listeners = ['hoist:upload:append', 'hoist:upload:commit', 'hoist:hash:rebuild'].map((name) => {
      const fn = (msg: unknown): void => void seen.push([name, msg as Record<string, unknown>]);
      diagnostics.subscribe(name, fn);
      return [name, fn] as const;
    });
    try {
      const driver = new MemoryDriver();
      const data = randomBytes(5 * SLAB + 123);
      const first = engine(driver, pools[0]!);
      const { id } = await first.start('diag/repo');
      await first.append('diag/repo', id, { start: 0 }, bodyOf(data.subarray(0, 2 * SLAB)));
      // A second engine with its own workers has no hash state: it must rebuild from storage.
      const second = engine(driver, pools[1]!);
      await second.append('diag/repo', id, { start: 2 * SLAB }, bodyOf(data.subarray(2 * SLAB)));
      const digest = parseDigest(`sha256:${createHash('sha256').update(data).digest('hex')}`);
      await second.complete('diag/repo', id, digest, {}, undefined);

      const names = seen.map(([n]) => n);
      expect(names.filter((n) => n === 'hoist:upload:append')).toHaveLength(2);
      expect(names).toContain('hoist:hash:rebuild');
      const commit = seen.find(([n]) => n === 'hoist:upload:commit')![1];
      expect(commit).toMatchObject({ repository: 'diag/repo', uploadId: id, digest: digest.value, size: data.length });
      const rebuild = seen.find(([n]) => n === 'hoist:hash:rebuild')![1];
      // The second engine stores its first batch (a slab) before it finds the state missing.
      expect(rebuild).toMatchObject({ uploadId: id, bytes: 3 * SLAB });
    } finally {
      for (const [name, fn] of listeners) diagnostics.unsubscribe(name, fn);
    }
  });
});
