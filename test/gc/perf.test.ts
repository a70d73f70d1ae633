import { randomBytes } from 'node:crypto';
import pLimit from 'p-limit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collectGarbage, type GcReport } from '../../src/gc/collector.js';
import { HashPool } from '../../src/engine/hash-pool.js';
import type { StorageDriver } from '../../src/storage/driver.js';
import { createDriver } from '../../src/storage/index.js';
import { GcFixture, type PushedImage } from '../helpers/gc.js';
import { tempDir } from '../helpers/http.js';
import { describeS3, useTestBucket } from '../helpers/s3-http.js';

/**
 * How long a collection of 1,000 manifests takes (bench/macro/gc-scale.ts measures 10,000). 1,000
 * images in 10 repositories, each a unique config, a unique layer and one of 10 shared base
 * layers, pushed through the registry core; then half their tags are deleted and one
 * collection removes those 500 manifests and their blobs (grace 0), and a second finds
 * nothing to remove. Numbers go to the log; the bounds only catch a collection gone
 * quadratic.
 */

const MANIFESTS = Number(process.env.HOIST_TEST_GC_PERF_MANIFESTS ?? 1000);
/**
 * On S3 the seeding alone takes minutes against a single-node radosgw (its GETs take about
 * 45 ms each), so CI collects 300; HOIST_TEST_GC_PERF_S3_MANIFESTS=1000 measures 1,000.
 */
const S3_MANIFESTS = Number(process.env.HOIST_TEST_GC_PERF_S3_MANIFESTS ?? 300);
const REPOS = 10;

let pool: HashPool;
beforeAll(() => {
  pool = new HashPool({ threads: 2, maxQueue: 1000 });
});
afterAll(async () => {
  await pool.close();
});

async function seedAndCollect(label: string, driver: StorageDriver, manifests: number): Promise<{ first: GcReport; second: GcReport; seedMs: number }> {
  const t = new GcFixture(driver, pool);
  const bases = Array.from({ length: 10 }, () => randomBytes(4096));
  const limit = pLimit(32);
  const t0 = Date.now();
  const pushed: Array<[string, PushedImage]> = await Promise.all(Array.from({ length: manifests }, (_, i) => limit(async () => {
    const repo = `perf/r${i % REPOS}`;
    const img = await t.pushImage(repo, `t${i}`, { shared: [bases[i % bases.length]!], layerCount: 1 });
    return [`t${i}`, img] as [string, PushedImage];
  })));
  const seedMs = Date.now() - t0;
  await Promise.all(pushed.filter((_, i) => i % 2 === 0).map(([tag, img]) => limit(() => t.registry.deleteManifest(img.repo, tag))));
  await new Promise((resolve) => setTimeout(resolve, 5));
  const phases: Array<[string, number]> = [];
  const tc = Date.now();
  const first = await collectGarbage({
    driver, graceMs: 0, staleUploadAfterMs: 3_600_000, concurrency: 32,
    onProgress: (p) => {
      if (phases[phases.length - 1]?.[0] !== p.phase) phases.push([p.phase, Date.now() - tc]);
    },
  });
  const second = await collectGarbage({ driver, graceMs: 0, staleUploadAfterMs: 3_600_000, concurrency: 32 });
  console.log(
    `[gc perf ${label}] ${manifests} manifests in ${REPOS} repositories (seeded in ${(seedMs / 1000).toFixed(1)} s); ` +
    `collection removing ${first.manifests} manifests, ${first.blobs.count} blobs (${(first.blobs.bytes / 1024).toFixed(0)} KiB), ${first.links} links: ` +
    `${(first.elapsedMs / 1000).toFixed(2)} s; next collection (${second.live.manifests} live manifests, nothing to remove): ${(second.elapsedMs / 1000).toFixed(2)} s` +
    ` (phases of the first began at: ${phases.map(([p, ms]) => `${p} ${(ms / 1000).toFixed(1)}s`).join(', ')})`,
  );
  // Every other image (the odd ones) is intact.
  for (const [, img] of pushed.filter((_, i) => i % 2 === 1).slice(0, 50)) expect(await t.imageStored(img)).toBe(true);
  return { first, second, seedMs };
}

describe(`a collection of ${MANIFESTS} manifests (fs)`, () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let driver: StorageDriver;
  beforeAll(async () => {
    dir = await tempDir('hoist-gc-perf-');
    driver = await createDriver(`fs:${dir.path}`);
  });
  afterAll(async () => {
    await driver?.close();
    await dir?.cleanup();
  });

  it('takes seconds, not minutes', async () => {
    const { first, second } = await seedAndCollect('fs', driver, MANIFESTS);
    expect(first.manifests).toBe(MANIFESTS / 2);
    // Each removed image's config and own layer (its manifest's bytes go with its revision),
    // and the 5 base layers only they used.
    expect(first.blobs.count).toBe((MANIFESTS / 2) * 2 + 5);
    expect(second.manifests + second.blobs.count).toBe(0);
    expect(first.elapsedMs).toBeLessThan(60_000);
  });
});

describeS3(`a collection of ${S3_MANIFESTS} manifests (S3)`, (env) => {
  const bucket = useTestBucket(env, 'gc-perf');
  let driver: StorageDriver;
  beforeAll(async () => {
    driver = await createDriver(bucket.url('reg'));
  });
  afterAll(async () => {
    await driver?.close();
  });

  it('takes seconds, not minutes', { timeout: 900_000 }, async () => {
    const { first, second } = await seedAndCollect('s3', driver, S3_MANIFESTS);
    expect(first.manifests).toBe(S3_MANIFESTS / 2);
    expect(second.manifests + second.blobs.count).toBe(0);
    expect(first.elapsedMs).toBeLessThan(300_000);
  });
});
