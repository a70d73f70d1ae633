import {
  AbortMultipartUploadCommand, CreateBucketCommand, DeleteBucketCommand, DeleteObjectsCommand, GetObjectCommand,
  HeadObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, ListPartsCommand, S3Client,
} from '@aws-sdk/client-s3';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';

/**
 * The S3 server the S3 targets store into (Ceph radosgw here: scripts/rgw-start.sh). Each
 * S3 target gets a bucket of its own, made when it starts and emptied and deleted when it
 * stops, and this module reads back how a pushed blob was stored (its multipart parts).
 */

export interface S3Endpoint {
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
}

/** From HOIST_BENCH_S3_ENDPOINT (default radosgw's http://127.0.0.1:7480) and the AWS key variables. */
export function s3EndpointFromEnv(env: NodeJS.ProcessEnv = process.env): S3Endpoint {
  return {
    endpoint: (env.HOIST_BENCH_S3_ENDPOINT ?? 'http://127.0.0.1:7480').replace(/\/$/, ''),
    region: env.HOIST_BENCH_S3_REGION ?? 'us-east-1',
    accessKeyId: env.AWS_ACCESS_KEY_ID ?? 'testkey',
    secretAccessKey: env.AWS_SECRET_ACCESS_KEY ?? 'testsecret',
  };
}

/** Resolves with undefined when something answers HTTP at the endpoint, else with why not. */
export function unreachable(endpoint: string): Promise<string | undefined> {
  return new Promise((done) => {
    let url: URL;
    try {
      url = new URL(endpoint);
    } catch {
      return done(`not a URL: ${endpoint}`);
    }
    const mod = url.protocol === 'https:' ? https : http;
    const req = mod.get(url, { agent: false, timeout: 2000 }, (res) => { res.resume(); done(undefined); });
    req.on('error', (err) => done(`${endpoint}: ${err.message}`));
    req.on('timeout', () => req.destroy(new Error('no answer in 2 s')));
  });
}

export function s3Client(e: S3Endpoint): S3Client {
  // The SDK warns once per process that it will want Node 22 from 2027; not news for a bench run.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  return new S3Client({
    region: e.region,
    endpoint: e.endpoint,
    forcePathStyle: true,
    credentials: { accessKeyId: e.accessKeyId, secretAccessKey: e.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

export async function createBucket(client: S3Client, label: string): Promise<string> {
  const name = `hoist-bench-${label}-${randomBytes(4).toString('hex')}`.toLowerCase().slice(0, 63);
  await client.send(new CreateBucketCommand({ Bucket: name }));
  return name;
}

/** Aborts multipart uploads, deletes every object, then the bucket. */
export async function deleteBucket(client: S3Client, bucket: string): Promise<void> {
  for (;;) {
    const ups = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
    if (!ups.Uploads?.length) break;
    for (const u of ups.Uploads) await client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: u.Key!, UploadId: u.UploadId! }));
  }
  for (;;) {
    const out = await client.send(new ListObjectsV2Command({ Bucket: bucket, MaxKeys: 1000 }));
    const keys = (out.Contents ?? []).map((c) => ({ Key: c.Key! }));
    if (keys.length === 0) break;
    await client.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys, Quiet: true } }));
  }
  await client.send(new DeleteBucketCommand({ Bucket: bucket }));
}

export async function getText(client: S3Client, bucket: string, key: string): Promise<string> {
  const out = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  return out.Body!.transformToString('utf8');
}

export interface PartLayout {
  /** The blob's object after the push. */
  key: string;
  sizeBytes: number;
  /** From the multipart ETag's "-N" suffix; 1 for an object stored in one piece. */
  partCount: number;
  /**
   * The multipart uploads in the bucket just before the closing PUT, with their parts'
   * sizes (ListParts): what the registry had sent to S3 by then. The final part is
   * usually sent during the PUT.
   */
  beforePut?: Array<{ key: string; partSizesBytes: number[] }>;
}

/** Every multipart upload in progress in the bucket and the sizes of its parts so far. */
export async function uploadsInProgress(client: S3Client, bucket: string): Promise<Array<{ key: string; partSizesBytes: number[] }>> {
  const out: Array<{ key: string; partSizesBytes: number[] }> = [];
  const ups = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
  for (const u of ups.Uploads ?? []) {
    const sizes: number[] = [];
    let marker: string | undefined;
    do {
      const r = await client.send(new ListPartsCommand({ Bucket: bucket, Key: u.Key!, UploadId: u.UploadId!, PartNumberMarker: marker }));
      for (const p of r.Parts ?? []) sizes.push(p.Size ?? 0);
      marker = r.IsTruncated ? r.NextPartNumberMarker : undefined;
    } while (marker);
    out.push({ key: u.Key!, partSizesBytes: sizes });
  }
  return out;
}

/**
 * How an object is stored. The part count comes from its multipart ETag ("<md5>-N"): HEAD
 * ?partNumber=N and GetObjectAttributes, which would give each part's size, are not in
 * radosgw 16.2, so part sizes come from ListParts before the closing PUT instead.
 */
export async function objectParts(client: S3Client, bucket: string, key: string): Promise<Pick<PartLayout, 'key' | 'sizeBytes' | 'partCount'>> {
  const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
  return { key, sizeBytes: head.ContentLength ?? 0, partCount: Number(/-(\d+)"?$/.exec(head.ETag ?? '')?.[1] ?? 1) };
}

/** "6 x 16 MiB + 1 x 4 MiB": runs of equal sizes. */
export function describeSizes(sizes: number[]): string {
  if (sizes.length === 0) return 'none';
  const runs: Array<[number, number]> = [];
  for (const s of sizes) {
    const last = runs.at(-1);
    if (last && last[1] === s) last[0]++;
    else runs.push([1, s]);
  }
  const fmt = (b: number): string => (b % (1024 ** 2) === 0 ? `${b / 1024 ** 2} MiB` : `${(b / 1024 ** 2).toFixed(2)} MiB`);
  return runs.map(([n, s]) => `${n} x ${fmt(s)}`).join(' + ');
}
