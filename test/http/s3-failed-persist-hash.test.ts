import { afterAll, beforeAll, expect, it } from 'vitest';
import {
  expectBlob, expectError, expectStatus, patchChunk, pathOf, repoNamer, request, startUpload, withQuery,
} from '../helpers/http.js';
import { randomBlob, sha256 } from '../helpers/oci.js';
import { AbortMultipartUploadCommand } from '@aws-sdk/client-s3';
import type { Fault } from '../helpers/faulty-proxy.js';
import { listUploads } from '../helpers/s3.js';
import { describeS3, s3ServerEnv, startRecordingProxy, useTestBucket, type RecordingProxy } from '../helpers/s3-http.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * Found by probing two instances on one bucket: a blob stored under a digest its bytes do not
 * have. Instance A hashes a PATCH's bytes as they come, and on S3 makes them durable only when
 * the PATCH ends (the writer's close(): parts, staged pieces, its state). When that failed
 * (503 to the client, storage still at the old offset), A kept its running hash, which had seen
 * the lost bytes X. The client resumed on B with other bytes Y at the same offset; a PUT
 * ?digest=sha256(pre+X) on A then found its hash at the stored size, trusted it, and answered
 * 201 for bytes that hash to sha256(pre+Y), a record every repository shares. The honest
 * client (PUT with the digest of what is stored) got DIGEST_INVALID and lost its upload.
 *
 * Now a failed close or commit drops the running hash at its worker, and the next request
 * rebuilds it from what storage holds.
 */

const repo = repoNamer('persist-hash');
const MiB = 1024 * 1024;

describeS3('S3 uploads whose stored state is not what an instance last made it', (env) => {
  const bucket = useTestBucket(env, 'persisthash');
  /** What the proxy does to A's staging writes (`<data>.tail.<n>`: a PATCH under the 5 MiB part minimum). */
  let stagingFault: Fault;
  let rec: RecordingProxy;
  let a: TestServer;
  let b: TestServer;

  beforeAll(async () => {
    rec = await startRecordingProxy(env, () => bucket.name, (op, _n, url) => {
      return op === 'PutObject' && decodeURIComponent(url.pathname).includes('.tail.') ? stagingFault : undefined;
    });
    // A reaches the store through the proxy, with short deadlines so that a failure is quick; B directly.
    [a, b] = await Promise.all([
      startServer({ storage: bucket.url('p', { endpoint: rec.endpoint, timeout: '1s' }), frontend: 'node', env: s3ServerEnv() }),
      startServer({ storage: bucket.url('p'), frontend: 'node', env: s3ServerEnv() }),
    ]);
  });

  afterAll(async () => {
    for (const s of [a, b]) if (s) expect(await s.stop()).toBe(0);
    await rec?.close();
  });

  /** pre on A; X on A, whose staging fails (503); Y on B at the same offset. Returns the upload's location. */
  async function diverge(name: string, pre: Uint8Array, x: Uint8Array, y: Uint8Array): Promise<string> {
    const up = await startUpload(a.url, name);
    let r = await patchChunk(a.url, up.location, pre, 0);
    expectStatus(r, 202, 'PATCH pre on A');
    const location = pathOf(a.url, r.header('location')!);
    stagingFault = 'unavailable';
    try {
      r = await patchChunk(a.url, location, x, pre.length);
    } finally {
      stagingFault = undefined;
    }
    expectError(r, 503, 'UNAVAILABLE', 'PATCH X on A, whose staging the store refuses');
    const status = await request(b.url, location);
    expectStatus(status, 204, 'status on B');
    expect(status.header('range')).toBe(`0-${pre.length - 1}`);
    r = await patchChunk(b.url, location, y, pre.length);
    expectStatus(r, 202, 'PATCH Y on B');
    return location;
  }

  it('a PUT on A with the digest of the bytes it lost is refused; nothing is stored under it', async () => {
    const name = repo('lying');
    const [pre, x, y] = [randomBlob(2 * MiB), randomBlob(MiB), randomBlob(MiB)];
    const location = await diverge(name, pre, x, y);
    const lost = sha256(Buffer.concat([pre, x]));
    expectError(await request(a.url, withQuery(location, 'digest', lost), { method: 'PUT' }), 400, 'DIGEST_INVALID', 'PUT with the lost bytes\' digest');
    for (const s of [a, b]) expectError(await request(s.url, `/v2/${name}/blobs/${lost}`), 404, 'BLOB_UNKNOWN');
  });

  it('a PUT on A with the digest of what storage holds finishes the blob', async () => {
    const name = repo('honest');
    const [pre, x, y] = [randomBlob(2 * MiB), randomBlob(MiB), randomBlob(MiB)];
    const location = await diverge(name, pre, x, y);
    const stored = Buffer.concat([pre, y]);
    const r = await request(a.url, withQuery(location, 'digest', sha256(stored)), { method: 'PUT' });
    expectStatus(r, 201, 'PUT with the stored bytes\' digest');
    await expectBlob(b.url, name, stored);
  });

  // Found by probing: a PATCH streaming while a collector removed its upload as stale (the
  // multipart upload aborted under it) ended in 500 UNKNOWN, the store's NoSuchUpload.
  it('a PATCH whose multipart upload was aborted under it is answered 404 BLOB_UPLOAD_UNKNOWN', async () => {
    const name = repo('aborted');
    const up = await startUpload(b.url, name);
    let r = await patchChunk(b.url, up.location, randomBlob(6 * MiB), 0);
    expectStatus(r, 202, 'first PATCH');
    const location = pathOf(b.url, r.header('location')!);
    const uploads = (await listUploads(bucket.client, bucket.name, 'p/')).filter((u) => u.key.includes(up.id));
    expect(uploads).toHaveLength(1);
    await bucket.client.send(new AbortMultipartUploadCommand({ Bucket: bucket.name, Key: uploads[0]!.key, UploadId: uploads[0]!.uploadId }));
    r = await patchChunk(b.url, location, randomBlob(6 * MiB), 6 * MiB);
    expectError(r, 404, 'BLOB_UPLOAD_UNKNOWN', 'PATCH after the abort');
  });
});
