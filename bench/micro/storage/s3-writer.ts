// Run: npm run build && npx tsc -p bench && node dist/bench/micro/storage/s3-writer.js \
//        --endpoint http://127.0.0.1:7480 [--size-mib 1024] [--runs 2] [--json out.json]
// Needs an S3 server (scripts/rgw-start.sh); credentials default to testkey/testsecret.
import { CreateBucketCommand, DeleteBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { HashPool } from '../../../src/engine/hash-pool.js';
import { S3Driver, type S3DriverOptions } from '../../../src/storage/s3/driver.js';
import { parseS3Url } from '../../../src/storage/s3/url.js';

/**
 * Writes one blob through one S3 writer (16 MiB parts, 4 in flight, 4 MiB writes as the
 * upload engine makes them) and commits it, in several client configurations, to see what
 * each costs: MiB/s end to end, and how busy the main thread's event loop was (the SDK's
 * own checksums and payload signing run there).
 */

const MiB = 1024 * 1024;
const { values } = parseArgs({
  options: {
    endpoint: { type: 'string', default: process.env.HOIST_TEST_S3_ENDPOINT ?? 'http://127.0.0.1:7480' },
    'size-mib': { type: 'string', default: '1024' },
    runs: { type: 'string', default: '2' },
    json: { type: 'string' },
  },
});
process.env.AWS_ACCESS_KEY_ID ??= 'testkey';
process.env.AWS_SECRET_ACCESS_KEY ??= 'testsecret';
const endpoint = values.endpoint;
const sizeBytes = Number(values['size-mib']) * MiB;
const runs = Number(values.runs);
const WRITE_BYTES = 4 * MiB;

interface Variant {
  label: string;
  options: Partial<S3DriverOptions>;
  poolHash: boolean;
}

const VARIANTS: Variant[] = [
  { label: 'WHEN_REQUIRED, parts signed with their SHA-256 from the hash pool (default)', options: {}, poolHash: true },
  { label: 'WHEN_SUPPORTED (SDK CRC32 on main thread) + SHA-256 from the pool', options: { sdkChecksums: true }, poolHash: true },
  { label: 'WHEN_REQUIRED, SHA-256 by node:crypto on the main thread', options: {}, poolHash: false },
];

async function main(): Promise<void> {
  const admin = new S3Client({ region: 'us-east-1', endpoint, forcePathStyle: true });
  const bucket = `hoist-bench-${randomBytes(4).toString('hex')}`;
  await admin.send(new CreateBucketCommand({ Bucket: bucket }));
  const hashPool = new HashPool({ threads: Math.max(1, os.availableParallelism() - 1), maxQueue: 1024 });
  // Incompressible source bytes, reused: 64 MiB cycled through.
  const source = randomBytes(64 * MiB);
  const results: Array<{ label: string; run: number; mibPerSecond: number; seconds: number; mainThreadBusy: number }> = [];
  try {
    for (let run = 1; run <= runs; run++) {
      for (const v of VARIANTS) {
        const driver = new S3Driver({
          ...parseS3Url(`s3://${bucket}/bench?endpoint=${encodeURIComponent(endpoint)}&forcePathStyle=true&partSize=16MiB&maxPartsInFlight=4`),
          ...(v.poolHash ? { payloadHash: (b) => hashPool.oneShot(b, 'sha256', 'hex') } : {}),
          ...v.options,
        });
        const path = `/blobs/data/run-${run}`;
        const elu0 = performance.eventLoopUtilization();
        const t0 = performance.now();
        const w = await driver.writer(path, false);
        for (let sent = 0; sent < sizeBytes; sent += WRITE_BYTES) {
          const at = sent % source.length;
          await w.write(source.subarray(at, at + Math.min(WRITE_BYTES, sizeBytes - sent)));
        }
        await w.commit();
        const seconds = (performance.now() - t0) / 1000;
        const elu = performance.eventLoopUtilization(elu0);
        const stat = await driver.stat(path);
        if (stat.size !== sizeBytes) throw new Error(`stored ${stat.size} bytes, wrote ${sizeBytes}`);
        await driver.delete(path);
        await driver.close();
        const r = { label: v.label, run, mibPerSecond: sizeBytes / MiB / seconds, seconds, mainThreadBusy: elu.utilization };
        results.push(r);
        console.log(`${r.mibPerSecond.toFixed(0).padStart(5)} MiB/s  main thread ${(r.mainThreadBusy * 100).toFixed(0).padStart(3)}% busy  run ${run}  ${v.label}`);
      }
    }
  } finally {
    await hashPool.close();
    await admin.send(new DeleteBucketCommand({ Bucket: bucket })).catch(() => undefined);
    admin.destroy();
  }
  if (values.json) {
    writeFileSync(values.json, JSON.stringify({
      bench: 'micro/storage/s3-writer',
      date: new Date().toISOString(),
      machine: { cpus: os.cpus().length, model: os.cpus()[0]?.model, memBytes: os.totalmem() },
      node: process.version,
      settings: { endpoint, sizeBytes, partSizeBytes: 16 * MiB, maxPartsInFlight: 4, writeBytes: WRITE_BYTES },
      results,
    }, null, 2));
  }
}

await main();
