import {
  AbortMultipartUploadCommand, CreateBucketCommand, DeleteBucketCommand, DeleteObjectsCommand, ListMultipartUploadsCommand,
  ListObjectsV2Command, S3Client,
} from '@aws-sdk/client-s3';
import { randomBytes } from 'node:crypto';

/**
 * The S3 server the tests run against: a real one (Ceph radosgw on these machines; see
 * scripts/rgw-start.sh), as distribution runs its driver suite against real stores.
 *
 *   export HOIST_TEST_S3_ENDPOINT=$(bash scripts/rgw-start.sh)
 *
 * Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; when unset they default
 * to the keys rgw-start.sh creates (testkey / testsecret).
 */
export interface S3TestEnv {
  endpoint: string;
  region: string;
}

export const S3_ENDPOINT_MISSING =
  'HOIST_TEST_S3_ENDPOINT is not set, so the S3 tests cannot run. Start radosgw and point the tests at it:\n' +
  '  export HOIST_TEST_S3_ENDPOINT=$(bash scripts/rgw-start.sh)\n' +
  '(needs, once, as root: apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd ceph-mgr ceph-common)';

/** The endpoint, or undefined when the tests were started without one (they must then fail, not skip). */
export function s3TestEnv(): S3TestEnv | undefined {
  const endpoint = process.env.HOIST_TEST_S3_ENDPOINT;
  if (!endpoint) return undefined;
  process.env.AWS_ACCESS_KEY_ID ??= 'testkey';
  process.env.AWS_SECRET_ACCESS_KEY ??= 'testsecret';
  return { endpoint, region: process.env.HOIST_TEST_S3_REGION ?? 'us-east-1' };
}

export function testClient(env: S3TestEnv): S3Client {
  return new S3Client({
    region: env.region,
    endpoint: env.endpoint,
    forcePathStyle: true,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

/** A storage URL for `bucket`/`prefix` on the test endpoint, with extra options. */
export function s3StorageUrl(env: S3TestEnv, bucket: string, prefix = '', options: Record<string, string> = {}): string {
  const q = new URLSearchParams({ endpoint: env.endpoint, region: env.region, forcePathStyle: 'true', ...options });
  return `s3://${bucket}/${prefix}?${q.toString()}`;
}

/** Creates a bucket with a fresh name, e.g. `hoist-test-suite-3f9a0c1b`. */
export async function createTestBucket(client: S3Client, label = 'test'): Promise<string> {
  const name = `hoist-${label}-${randomBytes(4).toString('hex')}`.toLowerCase().slice(0, 63);
  await client.send(new CreateBucketCommand({ Bucket: name }));
  return name;
}

/** Every key in the bucket (under `prefix`). */
export async function listAllKeys(client: S3Client, bucket: string, prefix = ''): Promise<Array<{ key: string; size: number }>> {
  const keys: Array<{ key: string; size: number }> = [];
  let token: string | undefined;
  do {
    const out = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
    for (const c of out.Contents ?? []) keys.push({ key: c.Key!, size: c.Size ?? 0 });
    token = out.IsTruncated ? out.NextContinuationToken : undefined;
  } while (token);
  return keys;
}

/** Multipart uploads in progress in the bucket (under `prefix`). */
export async function listUploads(client: S3Client, bucket: string, prefix = ''): Promise<Array<{ key: string; uploadId: string }>> {
  const out = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: prefix }));
  return (out.Uploads ?? []).map((u) => ({ key: u.Key!, uploadId: u.UploadId! }));
}

/** Empties (objects and multipart uploads) and deletes a bucket; a missing bucket is fine. */
export async function deleteBucket(client: S3Client, bucket: string): Promise<void> {
  try {
    for (const u of await listUploads(client, bucket)) {
      await client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: u.key, UploadId: u.uploadId }));
    }
    for (;;) {
      const keys = (await listAllKeys(client, bucket)).slice(0, 1000);
      if (keys.length === 0) break;
      await client.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys.map((k) => ({ Key: k.key })), Quiet: true } }));
    }
    await client.send(new DeleteBucketCommand({ Bucket: bucket }));
  } catch (err) {
    if ((err as { name?: string }).name === 'NoSuchBucket') return;
    throw err;
  }
}
