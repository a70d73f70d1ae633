import {
  AbortMultipartUploadCommand, CompleteMultipartUploadCommand, CreateBucketCommand, CreateMultipartUploadCommand, DeleteBucketCommand,
  DeleteObjectsCommand, GetObjectCommand, HeadObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, ListPartsCommand,
  PutObjectCommand, S3Client, UploadPartCommand,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { MIN_PART_BYTES } from '../../src/storage/s3/url.js';
import { finish, runJobs, type BlobRef, type BlobSet, type LoadOptions, type PhaseResult } from './loadgen.js';

/**
 * The S3 server the S3 targets store into (Ceph radosgw here: scripts/rgw-start.sh). Each
 * S3 target gets a bucket of its own, made when it starts and emptied and deleted when it
 * stops, and this module reads back how a pushed blob was stored (its multipart parts),
 * counts what each target sends the store (startCountingProxy), and is the store's own
 * speed, the S3 targets' limit row (storeRow).
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

// --- what a registry sends to the store ------------------------------------------------------

/** Requests and bytes between one S3 client and the store, as the counting proxy saw them. */
export interface StoreTraffic {
  /** Bytes on the wire to the store (request lines, headers and bodies). */
  sentBytes: number;
  /** Bytes on the wire from the store. */
  receivedBytes: number;
  /** Requests by S3 operation ('GetObject', 'UploadPart', 'PutObject', ...). */
  requests: Record<string, number>;
  /** Request body bytes by S3 operation. */
  bodyBytes: Record<string, number>;
}

export function emptyTraffic(): StoreTraffic {
  return { sentBytes: 0, receivedBytes: 0, requests: {}, bodyBytes: {} };
}

/** b - a, for the traffic of one scenario from two snapshots. */
export function trafficBetween(a: StoreTraffic, b: StoreTraffic): StoreTraffic {
  const sub = (x: Record<string, number>, y: Record<string, number>): Record<string, number> =>
    Object.fromEntries(Object.entries(y).map(([k, v]) => [k, v - (x[k] ?? 0)]).filter(([, v]) => v !== 0));
  return { sentBytes: b.sentBytes - a.sentBytes, receivedBytes: b.receivedBytes - a.receivedBytes, requests: sub(a.requests, b.requests), bodyBytes: sub(a.bodyBytes, b.bodyBytes) };
}

export interface CountingProxy {
  /** Point the S3 client here instead of at the store. */
  readonly endpoint: string;
  /** The counters so far. */
  snapshot(): Promise<StoreTraffic>;
  close(): Promise<void>;
}

const PROXY_SCRIPT = fileURLToPath(new URL('../../../bench/macro/store-proxy.py', import.meta.url));

/**
 * A proxy in front of the store that counts what a client sends it and what comes back, by
 * S3 operation (bench/macro/store-proxy.py). It relays with splice(2), so bytes never pass
 * through user space: measured here, 0.06 CPU-seconds per 256 MiB against 0.45 for a
 * node:net relay, which on 2 cores would have billed every S3 target a third of a core.
 * Request heads are peeked at, never changed (Host and signatures stay valid). Every S3
 * target, the store row included, goes through one.
 */
export async function startCountingProxy(endpoint: string): Promise<CountingProxy> {
  const child = spawn('python3', [PROXY_SCRIPT, endpoint], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const failed = new Promise<never>((_, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`the counting proxy exited (${code})`)));
  });
  failed.catch(() => {});
  const next = async (): Promise<string> => {
    const r = await Promise.race([lines.next(), failed]);
    if (r.done) throw new Error('the counting proxy closed its output');
    return r.value;
  };
  const { port } = JSON.parse(await next()) as { port: number };
  // One question at a time: answers come back in order, one line each.
  let queue: Promise<unknown> = Promise.resolve();
  return {
    endpoint: `http://127.0.0.1:${port}`,
    snapshot: () => {
      const answer = queue.then(async () => {
        child.stdin!.write('snapshot\n');
        return JSON.parse(await next()) as StoreTraffic;
      });
      queue = answer.catch(() => {});
      return answer;
    },
    close: async () => {
      child.stdin!.end();
      if (child.exitCode === null) await new Promise((ok) => child.once('exit', ok));
    },
  };
}

// --- the store's own speed ----------------------------------------------------------------

export interface StoreRowOptions {
  client: S3Client;
  bucket: string;
  partBytes: number;
  partsInFlight: number;
}

/**
 * The S3 targets' limit row, as the sink is for HTTP: blobs go straight to the store, each
 * as a multipart upload of `partBytes` parts, `partsInFlight` at a time, PUT over plain
 * node:http to presigned UploadPart URLs (no signing, no checksum, no copy: the load
 * generator's own buffers are the bodies). Blobs smaller than a part are one presigned
 * PutObject. Pulls are one presigned GetObject per blob. Whatever a registry does on top
 * (hashing, MD5s, buffering, its own requests) shows as its distance from this row.
 *
 * A chunked scenario whose chunks the store can take as parts (5 MiB or more) is sent as its
 * client sends it: parts of the chunk's size, one after another, each waiting for the store's
 * answer, as a registry must before it answers a PATCH with 202 (the bytes are stored, and any
 * instance may take the next one). That is the most a registry could do with such a client on
 * this store; the 16 MiB parts four at a time of a streamed push are not open to it.
 */
export function storeRow(s: StoreRowOptions): {
  push(o: LoadOptions, blobs: BlobSet): Promise<PhaseResult & { blobs: BlobRef[] }>;
  pull(o: Pick<LoadOptions, 'concurrency' | 'progress'>, blobs: BlobRef[]): Promise<PhaseResult>;
} {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  let requests = 0;
  const keyOf = (digest: string): string => `store/${digest.slice('sha256:'.length)}`;

  /** One request with a body made of `pieces`; resolves with the response's headers once it has ended. */
  const send = (method: string, url: string, pieces: Buffer[], progress?: { bytes: number }, onData?: (n: number) => void): Promise<http.IncomingHttpHeaders> => {
    requests++;
    const length = pieces.reduce((n, p) => n + p.length, 0);
    return new Promise((resolve, reject) => {
      const req = http.request(url, { method, agent, headers: method === 'PUT' ? { 'content-length': length } : {} }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => {
          if (onData) onData(c.length);
          else if (text.length < 2048) text += c.toString();
        });
        res.on('end', () => {
          const ok = res.statusCode === 200 || res.statusCode === 206;
          if (ok) resolve(res.headers);
          else reject(new Error(`${method} to the store: HTTP ${res.statusCode}: ${text.slice(0, 200)}`));
        });
        res.on('error', reject);
      });
      req.on('error', reject);
      req.setTimeout(60_000, () => req.destroy(new Error('no progress for 60 s')));
      void (async () => {
        for (const p of pieces) {
          const more = req.write(p);
          if (progress) progress.bytes += p.length;
          if (!more) await new Promise((r) => req.once('drain', r));
        }
        req.end();
      })();
    });
  };

  const pushOne = async (o: LoadOptions, blobs: BlobSet, i: number): Promise<void> => {
    const digest = blobs.digests[i]!;
    const size = blobs.sizeBytes;
    const Key = keyOf(digest);
    const base = { Bucket: s.bucket, Key };
    const asChunks = o.mode === 'chunked' && o.chunkBytes >= MIN_PART_BYTES;
    const partBytes = asChunks ? o.chunkBytes : s.partBytes;
    const partsInFlight = asChunks ? 1 : s.partsInFlight;
    if (size < partBytes) {
      await send('PUT', await getSignedUrl(s.client, new PutObjectCommand(base), { expiresIn: 3600 }), blobs.pieces(i, 0, size), o.progress);
      return;
    }
    requests++;
    const { UploadId } = await s.client.send(new CreateMultipartUploadCommand(base));
    const count = Math.ceil(size / partBytes);
    const etags: string[] = [];
    let next = 0;
    await Promise.all(Array.from({ length: Math.min(count, partsInFlight) }, async () => {
      for (let n = next++; n < count; n = next++) {
        const url = await getSignedUrl(s.client, new UploadPartCommand({ ...base, UploadId, PartNumber: n + 1 }), { expiresIn: 3600 });
        const headers = await send('PUT', url, blobs.pieces(i, n * partBytes, Math.min(size, (n + 1) * partBytes)), o.progress);
        etags[n] = String(headers.etag);
      }
    }));
    requests++;
    await s.client.send(new CompleteMultipartUploadCommand({
      ...base, UploadId, MultipartUpload: { Parts: etags.map((ETag, n) => ({ ETag, PartNumber: n + 1 })) },
    }));
  };

  return {
    async push(o, blobs) {
      requests = 0;
      const r = await runJobs(o.count, o.concurrency, async (i) => {
        await pushOne(o, blobs, i);
        return { fallbacks: 0 };
      });
      const refs = blobs.refs();
      return { ...finish(r, r.okIdx.length * o.sizeBytes, requests), blobs: r.okIdx.sort((a, b) => a - b).map((i) => refs[i]!) };
    },
    async pull(o, refs) {
      requests = 0;
      let bytes = 0;
      const r = await runJobs(refs.length, o.concurrency, async (i) => {
        const b = refs[i]!;
        const url = await getSignedUrl(s.client, new GetObjectCommand({ Bucket: s.bucket, Key: keyOf(b.digest) }), { expiresIn: 3600 });
        let n = 0;
        await send('GET', url, [], undefined, (k) => {
          n += k;
          if (o.progress) o.progress.bytes += k;
        });
        if (n !== b.sizeBytes) throw new Error(`GET from the store: ${n} bytes, want ${b.sizeBytes}`);
        bytes += n;
        return { fallbacks: 0 };
      });
      return finish(r, bytes, requests);
    },
  };
}
