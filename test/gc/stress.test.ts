import { randomBytes } from 'node:crypto';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runGarbageCollection, totals } from '../../src/gc/runner.js';
import { createDriver } from '../../src/storage/index.js';
import type { StorageDriver } from '../../src/storage/driver.js';
import {
  blobRef, GcTestClient, image, index, ProtocolError, type BlobRef, type ClientImage, type Failure,
} from '../helpers/gc-client.js';
import { tempDir } from '../helpers/http.js';
import { describeS3, MiB, s3ServerEnv, useTestBucket } from '../helpers/s3-http.js';
import { listAllKeys, listUploads } from '../helpers/s3.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * Online collection under load (issue: "Expiry and garbage collection that are safe while
 * pushes go on"). Two server instances share one store; four clients push images (new
 * layers, layers shared between all clients, base layers mounted from another repository),
 * push indexes of their images, push old images again under new tags (HEAD first, upload
 * what is gone), and delete tags; all the while collections run back to back in this
 * process against the same store. Then a final collection with grace 0.
 *
 * It must hold that: no request of any push failed (in particular no BLOB_UNKNOWN and no
 * MANIFEST_BLOB_UNKNOWN); every tag a client believes it pushed (and did not delete) is
 * listed, and every tag the registry lists pulls completely with every digest verified;
 * after the final collection a further one finds nothing to remove; storage was freed.
 *
 * One exception, the one assumption the collector makes of clients (gc/collector.ts, B): a
 * push that took longer than the grace period from its first request to its manifest PUT
 * may fail with MANIFEST_BLOB_UNKNOWN (or MANIFEST_UNKNOWN, for an index's child), and a
 * client pushes again. Each push is timed, and only such a slow one may fail so; the
 * grace (5 s on fs, 10 s on S3, where a push takes a few seconds here) makes that rare, and
 * the test reports how many there were. So a loaded machine slows the test, never fails it.
 */

const CLIENTS = 4;
const DURATION_MS = Number(process.env.HOIST_TEST_GC_STRESS_MS ?? 30_000);

interface StressResult {
  collections: number;
  freedDuringRunBytes: number;
  collectionMs: number[];
  finalFreedBytes: number;
  pushes: number;
  storedBeforeFinal: number;
  storedAfterFinal: number;
  /** Pushes slower than the grace period that failed as it allows. */
  slowFailures: number;
}

function pick<T>(list: readonly T[]): T {
  return list[Math.floor(Math.random() * list.length)]!;
}

async function stress(
  servers: TestServer[], driver: StorageDriver, storedBytes: () => Promise<number>,
  o: { graceMs: number; largeBlobBytes: number; chunkBytes: number },
): Promise<StressResult> {
  const { graceMs, largeBlobBytes, chunkBytes } = o;
  const failures: Failure[] = [];
  /** Pushes that outlasted the grace period and failed as it allows, with how long they took. */
  const slowFailures: Array<Failure & { ms: number }> = [];
  // Base layers live throughout (tagged in stress/base); clients mount them from there.
  const baseLayers = Array.from({ length: 3 }, () => blobRef(randomBytes(32 * 1024)));
  await new GcTestClient(servers[0]!.url, chunkBytes).push(image('stress/base', baseLayers), 'v1');
  // Layers every client uses now and then, and no tag keeps alive: they come and go.
  const sharedLayers = Array.from({ length: 6 }, () => blobRef(randomBytes(16 * 1024)));
  const mount = { from: 'stress/base', digests: new Set(baseLayers.map((l) => l.digest)) };

  let stop = false;
  const client = async (i: number): Promise<{ repo: string; live: Map<string, ClientImage>; c: GcTestClient }> => {
    const c = new GcTestClient(servers[i % servers.length]!.url, chunkBytes);
    const repo = `stress/c${i}`;
    const live = new Map<string, ClientImage>();
    const history: ClientImage[] = [];
    // Until the time is up, and at least three pushes each, however slow a loaded machine is.
    for (let k = 0; !stop || c.stats.manifests < 3; k++) {
      const started = performance.now();
      try {
        const roll = Math.random();
        const images = [...live.values()].filter((img) => img.children.length === 0);
        if (roll < 0.2 && history.length > 0) {
          const old = pick(history);
          await c.push(old, `re${k}`, mount);
          live.set(`re${k}`, old);
        } else if (roll < 0.35 && images.length >= 2) {
          const idx = index(repo, [pick(images), pick(images)].filter((x, j, a) => a.indexOf(x) === j));
          await c.push(idx, `idx${k}`);
          live.set(`idx${k}`, idx);
        } else {
          const layers: BlobRef[] = [blobRef(randomBytes(8 * 1024 + Math.floor(Math.random() * 56 * 1024)))];
          if (Math.random() < 0.6) layers.push(pick(sharedLayers));
          if (Math.random() < 0.5) layers.push(pick(baseLayers));
          if (k === 0 && largeBlobBytes > 0) layers.push(blobRef(randomBytes(largeBlobBytes)));
          const img = image(repo, [...new Set(layers)]);
          await c.push(img, `t${k}`, mount);
          live.set(`t${k}`, img);
          history.push(img);
        }
        if (live.size > 3 && Math.random() < 0.6) {
          const tag = pick([...live.keys()]);
          await c.deleteTag(repo, tag);
          live.delete(tag);
        }
      } catch (err) {
        if (!(err instanceof ProtocolError)) throw err;
        const ms = performance.now() - started;
        const allowed = ['MANIFEST_BLOB_UNKNOWN', 'MANIFEST_UNKNOWN'].includes(err.failure.code ?? '') && err.failure.what.startsWith('PUT ') && err.failure.what.includes('/manifests/');
        if (allowed && ms >= graceMs) slowFailures.push({ ...err.failure, ms });
        else failures.push(err.failure);
      }
    }
    return { repo, live, c };
  };

  let clientsDone = false;
  let collections = 0;
  let freedDuringRunBytes = 0;
  const collectionMs: number[] = [];
  const collector = (async () => {
    while (!clientsDone) {
      const run = await runGarbageCollection({ driver, graceMs, staleUploadAfterMs: 3_600_000 });
      collections++;
      freedDuringRunBytes += totals(run).bytes;
      collectionMs.push(run.elapsedMs);
    }
  })();
  const clients = Array.from({ length: CLIENTS }, (_, i) => client(i));
  await sleep(DURATION_MS);
  stop = true;
  const results = await Promise.all(clients).finally(() => {
    clientsDone = true;
  });
  await collector;

  expect(failures, `push failures:\n${failures.map((f) => `${f.what}: ${f.status} ${f.code} ${f.body.slice(0, 200)}`).join('\n')}`).toEqual([]);
  const pushes = results.reduce((n, r) => n + r.c.stats.manifests, 0);
  expect(pushes).toBeGreaterThanOrEqual(CLIENTS * 3);

  // Everything the clients believe is there, pulls (checked before and after the final collection).
  const verify = async (): Promise<void> => {
    for (const { repo, live, c } of results) {
      expect((await c.tags(repo)).sort()).toEqual([...live.keys()].sort());
      for (const [tag, img] of live) {
        await c.pull(repo, tag);
        const head = await c.fetch(`/v2/${repo}/manifests/${tag}`, { method: 'HEAD' });
        expect(head.headers.get('docker-content-digest'), `${repo}:${tag}`).toBe(img.digest);
      }
    }
  };
  await verify();
  // However little a slow run deleted (a client deletes only once it has four tags), the
  // final collection has something to free: one more image, untagged at once, whose layer
  // nothing else uses.
  const dropped = blobRef(randomBytes(40 * 1024));
  await results[0]!.c.push(image('stress/dropped', [dropped]), 'gone');
  await results[0]!.c.deleteTag('stress/dropped', 'gone');
  const storedBeforeFinal = await storedBytes();
  const final = await runGarbageCollection({ driver, graceMs: 0, staleUploadAfterMs: 3_600_000 });
  const storedAfterFinal = await storedBytes();
  await verify();
  // And everything the registry lists pulls, base included.
  const any = results[0]!.c;
  for (const repo of await any.catalog()) for (const tag of await any.tags(repo)) await any.pull(repo, tag);
  // Nothing unreferenced is left.
  const again = await runGarbageCollection({ driver, graceMs: 0, staleUploadAfterMs: 3_600_000 });
  expect(totals(again)).toEqual({ bytes: 0, objects: 0 });
  expect(totals(final).bytes).toBeGreaterThanOrEqual(dropped.size);

  return { collections, freedDuringRunBytes, collectionMs, finalFreedBytes: totals(final).bytes, pushes, storedBeforeFinal, storedAfterFinal, slowFailures: slowFailures.length };
}

function describeResult(label: string, r: StressResult): void {
  const sorted = [...r.collectionMs].sort((a, b) => a - b);
  const mib = (n: number) => `${(n / MiB).toFixed(2)} MiB`;
  console.log(
    `[gc stress ${label}] ${r.pushes} manifest pushes by ${CLIENTS} clients in ${DURATION_MS / 1000}s; ` +
    `${r.collections} collections back to back (median ${sorted[Math.floor(sorted.length / 2)]} ms, max ${sorted[sorted.length - 1]} ms) ` +
    `freed ${mib(r.freedDuringRunBytes)} while pushes went on; the final one (grace 0) freed ${mib(r.finalFreedBytes)}; ` +
    `stored ${mib(r.storedBeforeFinal)} before it, ${mib(r.storedAfterFinal)} after; ` +
    `${r.slowFailures} pushes outlasted the grace period and failed as it allows`,
  );
}

async function duBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (e.isFile()) total += (await stat(join(e.parentPath, e.name))).size;
  }
  return total;
}

describe('collections back to back while clients push and delete (fs, two instances)', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let servers: TestServer[] = [];
  let driver: StorageDriver;
  beforeAll(async () => {
    dir = await tempDir('hoist-gc-stress-');
    servers = await Promise.all([0, 1].map(() => startServer({ storage: `fs:${dir.path}`, frontend: 'node' })));
    driver = await createDriver(`fs:${dir.path}`);
  });
  afterAll(async () => {
    try {
      // A crash on shutdown is a failure too.
      expect(await Promise.all(servers.map((s) => s.stop()))).toEqual(servers.map(() => 0));
    } finally {
      await driver?.close();
      await dir?.cleanup();
    }
  });

  // DURATION_MS of pushing, then checks; the timeout is a hang guard, far above what a loaded machine takes.
  it('loses no referenced byte, fails no push, frees storage', async () => {
    const r = await stress(servers, driver, () => duBytes(dir.path), { graceMs: 5_000, largeBlobBytes: 0, chunkBytes: 16 * 1024 });
    describeResult('fs', r);
  }, DURATION_MS + 300_000);
});

describeS3('collections back to back while clients push and delete (S3, two instances)', (env) => {
  const bucket = useTestBucket(env, 'gc-stress');
  let servers: TestServer[] = [];
  let driver: StorageDriver;
  beforeAll(async () => {
    servers = await Promise.all([0, 1].map(() => startServer({ storage: bucket.url('reg'), frontend: 'node', env: s3ServerEnv() })));
    driver = await createDriver(bucket.url('reg'));
  });
  afterAll(async () => {
    try {
      expect(await Promise.all(servers.map((s) => s.stop()))).toEqual(servers.map(() => 0));
    } finally {
      await driver?.close();
    }
  });

  it('loses no referenced byte, fails no push, frees storage', async () => {
    const stored = async () => (await listAllKeys(bucket.client, bucket.name, 'reg/')).reduce((n, k) => n + k.size, 0);
    // One 6 MiB layer per client: a multipart upload with a staged tail (5 MiB parts).
    const r = await stress(servers, driver, stored, { graceMs: 10_000, largeBlobBytes: 6 * MiB, chunkBytes: MiB });
    describeResult('s3', r);
    expect(await listUploads(bucket.client, bucket.name, 'reg/')).toEqual([]);
  }, DURATION_MS + 600_000);
});
