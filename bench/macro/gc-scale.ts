import { randomBytes, createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pLimit from 'p-limit';
import { collectGarbage, type GcReport } from '../../src/gc/collector.js';
import { HashPool } from '../../src/engine/hash-pool.js';
import { SlabPool } from '../../src/engine/slab-pool.js';
import type { BodySource } from '../../src/engine/upload-write.js';
import { Registry } from '../../src/registry/registry.js';
import { createDriver } from '../../src/storage/index.js';
import { CountingDriver, type DriverCall } from '../../test/helpers/counting-driver.js';
import { startCountingProxy, type CountingProxy, type Counts } from './count-proxy.js';
import { createBucket, deleteBucket, s3Client, s3EndpointFromEnv } from './s3.js';
import { ROOT } from './targets.js';

/**
 * Garbage collection at CI-fleet scale (issue 11): N manifests in 10 repositories (each image
 * a config of its own, a layer of its own and one of 10 shared base layers), pushed through
 * the registry core; then half their tags are deleted, and one collection removes those
 * manifests and what only they used (grace 0), and a second finds nothing to remove. Reports
 * each collection's time and the store requests it made: on S3 the HTTP requests, counted by
 * a proxy in front of the endpoint; on both, the driver calls, with the reads of tag records
 * apart (a collection reads each once).
 *
 *   npm run bench:gc -- --storage s3 --manifests 10000
 *   node dist/bench/macro/gc-scale.js --storage fs --manifests 10000
 *
 * S3: HOIST_BENCH_S3_ENDPOINT (default the radosgw at http://127.0.0.1:7480); a bucket of
 * its own, deleted afterwards. fs: under bench/results/tmp/, removed afterwards.
 */

const REPOS = 10;
const BASES = 10;
const MANIFEST_TYPE = 'application/vnd.oci.image.manifest.v1+json';

interface CollectionResult {
  elapsedMs: number;
  report: GcReport;
  driverCalls: Counts;
  tagRecordReads: number;
  s3Requests?: Counts;
}

function countByOp(calls: readonly DriverCall[]): Counts {
  const byKind: Record<string, number> = {};
  for (const c of calls) byKind[c.op] = (byKind[c.op] ?? 0) + 1;
  return { total: calls.length, byKind };
}

const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A request body of these bytes, as the front ends hand one to the core. */
function bodyOf(bytes: Uint8Array): BodySource {
  return async (sink) => {
    if (!sink.write(bytes)) await sink.drained();
    return bytes.length;
  };
}

async function main(): Promise<void> {
  const { values: v } = parseArgs({
    options: {
      storage: { type: 'string', default: 's3' },
      manifests: { type: 'string', default: '10000' },
      concurrency: { type: 'string', default: '32' },
      out: { type: 'string', default: join(ROOT, 'bench/results') },
    },
  });
  const n = Number(v.manifests);
  const concurrency = Number(v.concurrency);
  const storageKind = v.storage!;
  const loadAtStart = os.loadavg().map((l) => +l.toFixed(2));
  const log = (msg: string): void => console.error(`[gc-scale ${storageKind}] ${msg}`);

  let proxy: CountingProxy | undefined;
  let cleanup: () => Promise<void>;
  let url: string;
  if (storageKind === 's3') {
    const e = s3EndpointFromEnv();
    process.env.AWS_ACCESS_KEY_ID ??= e.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY ??= e.secretAccessKey;
    const client = s3Client(e);
    const bucket = await createBucket(client, 'gc-scale');
    proxy = await startCountingProxy(e.endpoint);
    url = `s3://${bucket}/reg?endpoint=${encodeURIComponent(proxy.endpoint)}&region=${e.region}&forcePathStyle=true`;
    cleanup = async () => {
      try { await deleteBucket(client, bucket); } finally { client.destroy(); }
    };
  } else {
    mkdirSync(join(ROOT, 'bench/results/tmp'), { recursive: true });
    const dir = await mkdtemp(join(ROOT, 'bench/results/tmp/gc-scale-'));
    url = `fs:${dir}`;
    cleanup = () => rm(dir, { recursive: true, force: true });
  }
  // Ctrl-C or SIGTERM mid-run: remove the bucket (or directory) rather than leave it behind.
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      log(`${sig}: removing the storage and exiting`);
      void cleanup().catch(() => undefined).finally(() => process.exit(130));
    });
  }
  const hashPool = new HashPool({ threads: 2, maxQueue: 4096 });
  const base = await createDriver(url, { payloadHash: (bytes) => hashPool.oneShot(bytes, 'sha256', 'hex') });
  // Counts the calls the core makes of storage, by method; reads of tag records apart.
  const driver = new CountingDriver(base, { batchDeletes: true });
  const registry = new Registry({
    driver, hashPool, slabs: new SlabPool(64 * 1024, 64 << 20), maxSessionBufferedBytes: 1 << 20, maxBlobBytes: 0, maxManifestBytes: 1 << 20,
  });
  try {
    // --- seed -------------------------------------------------------------------------------
    const limit = pLimit(concurrency);
    const push = async (repo: string, bytes: Buffer): Promise<string> => {
      const digest = sha256(bytes);
      await registry.putBlob(repo, digest, bytes.length, bodyOf(bytes));
      return digest;
    };
    const bases = Array.from({ length: BASES }, () => randomBytes(4096));
    const t0 = Date.now();
    // Base layers first, once per repository.
    await Promise.all(Array.from({ length: REPOS }, (_, r) => limit(async () => {
      for (const b of bases) await push(`scale/r${r}`, b);
    })));
    let pushed = 0;
    await Promise.all(Array.from({ length: n }, (_, i) => limit(async () => {
      const repo = `scale/r${i % REPOS}`;
      const layer = randomBytes(1024);
      const layerDigest = await push(repo, layer);
      const shared = bases[i % BASES]!;
      const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', nonce: i, rootfs: { type: 'layers', diff_ids: [sha256(shared), layerDigest] } }));
      const configDigest = await push(repo, config);
      const manifest = Buffer.from(JSON.stringify({
        schemaVersion: 2, mediaType: MANIFEST_TYPE,
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
        layers: [
          { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256(shared), size: shared.length },
          { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layerDigest, size: layer.length },
        ],
      }));
      await registry.putManifest(repo, `t${i}`, MANIFEST_TYPE, manifest);
      if (++pushed % 1000 === 0) log(`${pushed} of ${n} images pushed`);
    })));
    await Promise.all(Array.from({ length: n }, (_, i) => limit(async () => {
      if (i % 2 === 0) await registry.deleteManifest(`scale/r${i % REPOS}`, `t${i}`);
    })));
    const seedMs = Date.now() - t0;
    log(`seeded ${n} manifests in ${(seedMs / 1000).toFixed(0)} s; half their tags deleted`);

    // --- collect ----------------------------------------------------------------------------
    const collect = async (label: string): Promise<CollectionResult> => {
      driver.calls.length = 0;
      const mark = proxy?.mark();
      const t = Date.now();
      const { result: report, calls } = await driver.during(() => collectGarbage({ driver, graceMs: 0, staleUploadAfterMs: 3_600_000, concurrency }));
      const elapsedMs = Date.now() - t;
      const counts = countByOp(calls);
      const tagReads = calls.filter((c) => c.op === 'getContent' && c.path.includes('/_manifests/tags/')).length;
      const s3Requests = mark !== undefined ? proxy!.since(mark) : undefined;
      log(`${label}: ${(elapsedMs / 1000).toFixed(1)} s, removed ${report.manifests} manifests, ${report.blobs.count} blobs, ${report.links} links; ` +
        `${counts.total} driver calls (${tagReads} tag record reads)${s3Requests ? `, ${s3Requests.total} S3 requests` : ''}`);
      return { elapsedMs, report, driverCalls: counts, tagRecordReads: tagReads, ...(s3Requests ? { s3Requests } : {}) };
    };
    await new Promise((r) => setTimeout(r, 5));
    const first = await collect('first collection');
    const second = await collect('second collection');

    const result = {
      bench: 'gc-scale',
      date: new Date().toISOString(),
      machine: {
        cpuModel: os.cpus()[0]?.model, cores: os.availableParallelism(), memoryGiB: +(os.totalmem() / 1024 ** 3).toFixed(1), node: process.version,
        loadAverageAtStart: loadAtStart, loadAverageAtEnd: os.loadavg().map((l) => +l.toFixed(2)),
      },
      settings: { storage: storageKind, manifests: n, repositories: REPOS, baseLayers: BASES, concurrency, graceMs: 0 },
      seedMs,
      tags: n / 2,
      first,
      second,
    };
    mkdirSync(v.out!, { recursive: true });
    const file = join(v.out!, `${result.date.replace(/[:.]/g, '-')}-gc-scale-${storageKind}.json`);
    writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
    console.log(JSON.stringify({ storage: storageKind, manifests: n, first: summary(first), second: summary(second), load: [loadAtStart, result.machine.loadAverageAtEnd] }));
    log(`wrote ${file}`);
  } finally {
    await registry.close();
    await driver.close();
    await hashPool.close();
    await proxy?.close();
    await cleanup();
  }
}

function summary(c: CollectionResult): Record<string, unknown> {
  return {
    seconds: +(c.elapsedMs / 1000).toFixed(1),
    manifests: c.report.manifests, blobs: c.report.blobs.count, links: c.report.links, live: c.report.live,
    driverCalls: c.driverCalls.total, tagRecordReads: c.tagRecordReads,
    ...(c.s3Requests ? { s3Requests: c.s3Requests.total, s3ByKind: c.s3Requests.byKind } : {}),
  };
}

main().catch((err: Error) => {
  console.error(err.stack ?? err.message);
  process.exit(2);
});
