import { HeadObjectCommand, ListPartsCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type Frontend, type TestServer } from './server.js';
import { startFaultyProxy, type Fault, type FaultyProxy } from './faulty-proxy.js';
import {
  createTestBucket, deleteBucket, listAllKeys, listUploads, s3StorageUrl, s3TestEnv, S3_ENDPOINT_MISSING, testClient,
  type S3TestEnv,
} from './s3.js';

/**
 * Helpers for HTTP and end-to-end suites that run Hoist on S3 storage (a real radosgw, see
 * test/helpers/s3.ts): a bucket per suite, the storage URL, the server's credentials, a look
 * at what the S3 driver left in the bucket, and a proxy that records the S3 requests Hoist
 * makes.
 *
 *   describeS3('uploads on S3', (env) => {
 *     const bucket = useTestBucket(env, 'uploads');
 *     beforeAll(async () => { server = await startServer({ storage: bucket.url('r'), env: s3ServerEnv() }); });
 *   });
 *
 * Without HOIST_TEST_S3_ENDPOINT the suite is one failing test saying how to start radosgw:
 * a skipped S3 suite would let CI pass without ever running Hoist on S3.
 */

export const MiB = 1024 * 1024;
/** S3's smallest part; suites use it (partSize=5MiB) so multipart uploads need only a few MiB. */
export const PART_BYTES = 5 * MiB;

/** The S3 test endpoint, or undefined when the tests were started without one. */
export const s3Env: S3TestEnv | undefined = s3TestEnv();

/** A describe block that runs `body` on S3, or fails (never skips) when there is no S3 server. */
export function describeS3(title: string, body: (env: S3TestEnv) => void): void {
  describe(title, () => {
    const env = s3EnvOrFail();
    if (env) body(env);
  });
}

/**
 * Inside a describe block: the S3 test endpoint, or, without one, registers the failing "needs
 * an S3 server" test and returns undefined, so the caller registers nothing else (fail, never
 * skip: scripts/test-all.sh fails on any skip, and CI must not pass without S3).
 */
export function s3EnvOrFail(): S3TestEnv | undefined {
  if (!s3Env) {
    it('needs an S3 server: HOIST_TEST_S3_ENDPOINT', () => {
      throw new Error(S3_ENDPOINT_MISSING);
    });
  }
  return s3Env;
}

/**
 * Inside a describe block: starts a server for `frontend` on `memory:`, or on a fresh bucket
 * for 's3', before the block's tests and stops it (expecting exit 0) after them. Without an S3
 * server, registers the failing "needs an S3 server" test and returns undefined: the caller
 * returns too (fail, never skip). Hooks the caller registers afterwards see `server` set.
 */
export function useRegistryServer(frontend: Frontend, storage: 'memory' | 's3', label: string): { readonly server: TestServer } | undefined {
  if (storage === 's3' && !s3EnvOrFail()) return undefined;
  const bucket = storage === 's3' ? useTestBucket(s3Env!, label) : undefined;
  const handle: { server: TestServer } = { server: undefined as unknown as TestServer };
  beforeAll(async () => {
    handle.server = bucket
      ? await startServer({ storage: bucket.url(label), frontend, env: s3ServerEnv() })
      : await startServer({ storage: 'memory:', frontend });
  });
  afterAll(async () => {
    if (handle.server) expect(await handle.server.stop()).toBe(0);
  });
  return handle;
}

/** The credentials a Hoist process needs for the test S3 server (the SDK's standard chain). */
export function s3ServerEnv(): Record<string, string> {
  return {
    AWS_ACCESS_KEY_ID: process.env.AWS_ACCESS_KEY_ID ?? 'testkey',
    AWS_SECRET_ACCESS_KEY: process.env.AWS_SECRET_ACCESS_KEY ?? 'testsecret',
  };
}

export interface TestBucket {
  readonly env: S3TestEnv;
  /** A client for looking at the bucket directly (ListParts, ListMultipartUploads, ...). */
  readonly client: S3Client;
  /** The bucket's name; valid once the suite's beforeAll ran. */
  readonly name: string;
  /** A storage URL for `prefix` in this bucket: 5 MiB parts unless `options` say otherwise. */
  url(prefix: string, options?: Record<string, string>): string;
}

/**
 * A fresh bucket for the enclosing describe block, created in beforeAll and emptied and
 * deleted in afterAll.
 */
export function useTestBucket(env: S3TestEnv, label: string): TestBucket {
  let name: string | undefined;
  let client: S3Client | undefined;
  beforeAll(async () => {
    client = testClient(env);
    name = await createTestBucket(client, label);
  });
  afterAll(async () => {
    try {
      if (client && name) await deleteBucket(client, name);
    } finally {
      client?.destroy();
    }
  });
  const need = <T>(v: T | undefined, what: string): T => {
    if (v === undefined) throw new Error(`the test bucket's ${what} is used before its beforeAll ran`);
    return v;
  };
  return {
    env,
    get client() {
      return need(client, 'client');
    },
    get name() {
      return need(name, 'name');
    },
    url(prefix: string, options: Record<string, string> = {}) {
      return s3StorageUrl(env, need(name, 'name'), prefix, { partSize: '5MiB', ...options });
    },
  };
}

/**
 * Where Hoist keeps an upload's bytes in the bucket (src/registry/paths.ts, src/storage/s3/layout.ts):
 * the data object (the multipart upload's key) and the S3 writer's staging keys.
 */
export function uploadKeys(prefix: string, uploadId: string): { data: string; state: string; tailPrefix: string; staging: string } {
  const p = prefix === '' ? '' : `${prefix.replace(/\/+$/, '')}/`;
  return {
    data: `${p}blobs/data/${uploadId}`,
    state: `${p}_s3/writers/blobs/data/${uploadId}.json`,
    tailPrefix: `${p}_s3/writers/blobs/data/${uploadId}.tail.`,
    staging: `${p}_s3/`,
  };
}

/** The multipart uploads in progress for exactly `key`. */
export async function uploadsOf(client: S3Client, bucket: string, key: string): Promise<string[]> {
  return (await listUploads(client, bucket, key)).filter((u) => u.key === key).map((u) => u.uploadId);
}

/** Sizes of the parts of a multipart upload, in part-number order (ListParts). */
export async function partSizes(client: S3Client, bucket: string, key: string, uploadId: string): Promise<number[]> {
  const parts: Array<{ n: number; size: number }> = [];
  let marker: string | undefined;
  for (;;) {
    const out = await client.send(new ListPartsCommand({ Bucket: bucket, Key: key, UploadId: uploadId, PartNumberMarker: marker }));
    for (const p of out.Parts ?? []) parts.push({ n: p.PartNumber!, size: p.Size ?? 0 });
    if (!out.IsTruncated) break;
    marker = String(out.NextPartNumberMarker);
  }
  return parts.sort((a, b) => a.n - b.n).map((p) => p.size);
}

/** HeadObject: size and ETag (a multipart object's ETag ends in `-<parts>"`), or undefined. */
export async function headObject(client: S3Client, bucket: string, key: string): Promise<{ size: number; etag: string } | undefined> {
  try {
    const out = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    return { size: out.ContentLength ?? 0, etag: out.ETag ?? '' };
  } catch (err) {
    if ((err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return undefined;
    throw err;
  }
}

/** Every key under `prefix` with its size, as a map (easy to compare before and after a request). */
export async function keyMap(client: S3Client, bucket: string, prefix: string): Promise<Record<string, number>> {
  return Object.fromEntries((await listAllKeys(client, bucket, prefix)).map((k) => [k.key, k.size]));
}

/** One S3 request Hoist made through a recording proxy. */
export interface S3Call {
  /** 'UploadPart', 'PutObject', 'CompleteMultipartUpload', 'GET', 'HEAD', ... (faulty-proxy.ts) */
  op: string;
  /** The object key (path-style URL minus the bucket); '' for bucket-level requests. */
  key: string;
  /** Request body bytes (Content-Length). */
  bytes: number;
  fault: Fault;
}

export interface RecordingProxy {
  readonly proxy: FaultyProxy;
  readonly endpoint: string;
  /** Every request so far, in arrival order. */
  readonly calls: S3Call[];
  /** The calls made while `fn` ran. */
  during<T>(fn: () => Promise<T>): Promise<{ result: T; calls: S3Call[] }>;
  close(): Promise<void>;
}

/**
 * A proxy in front of the test S3 server that records every request Hoist sends (operation
 * and key), and fails the ones `decide` picks (see faulty-proxy.ts). Point Hoist at it with
 * `endpoint=<proxy.endpoint>` in the storage URL; path-style addressing is assumed.
 */
export async function startRecordingProxy(
  env: S3TestEnv,
  bucket: () => string,
  decide: (op: string, n: number, url: URL) => Fault = () => undefined,
): Promise<RecordingProxy> {
  const calls: S3Call[] = [];
  const proxy = await startFaultyProxy(env.endpoint, (op, n, url, req) => {
    const fault = decide(op, n, url);
    const b = `/${bucket()}`;
    const path = decodeURIComponent(url.pathname);
    const key = path === b || path === `${b}/` ? '' : path.startsWith(`${b}/`) ? path.slice(b.length + 1) : path;
    calls.push({ op, key, bytes: req.bytes, fault });
    return fault;
  });
  return {
    proxy,
    endpoint: proxy.endpoint,
    calls,
    async during<T>(fn: () => Promise<T>) {
      const from = calls.length;
      const result = await fn();
      return { result, calls: calls.slice(from) };
    },
    close: () => proxy.close(),
  };
}
