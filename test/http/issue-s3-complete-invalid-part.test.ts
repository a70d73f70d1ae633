/**
 * Regression (found by probing with a fault-injecting proxy between Hoist and the store): a
 * PUT whose final UploadPart the store answered with an ETag that is not the part's (an
 * answer altered on the way back) had its CompleteMultipartUpload refused 400 InvalidPart,
 * and the client got 500 UNKNOWN. Nothing was wrong with the upload: the recorded parts are
 * checked against ListParts before the Complete, so the one it refused is the final part
 * this commit sent, which the next commit sends again, and the same PUT again answered 201.
 * Now the client gets 503 UNAVAILABLE (try again), the upload stays where it was, and the
 * retry commits the exact bytes.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { commitUpload, expectBlob, expectError, expectStatus, patchChunk, request, startUpload, uploadStatus, withQuery } from '../helpers/http.js';
import { randomBlob, sha256 } from '../helpers/oci.js';
import type { Fault } from '../helpers/faulty-proxy.js';
import { describeS3, MiB, s3ServerEnv, startRecordingProxy, useTestBucket, type RecordingProxy } from '../helpers/s3-http.js';
import { startServer, type TestServer } from '../helpers/server.js';

describeS3('a commit whose final part the store acknowledged with another ETag', (env) => {
  const bucket = useTestBucket(env, 'invalidpart');
  let rec: RecordingProxy;
  let server: TestServer;
  let fault: Fault;

  beforeAll(async () => {
    rec = await startRecordingProxy(env, () => bucket.name, (op) => (op === 'UploadPart' ? fault : undefined));
    server = await startServer({ storage: bucket.url('r', { endpoint: rec.endpoint, timeout: '1s' }), frontend: 'node', env: s3ServerEnv() });
  });
  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
    await rec?.close();
  });

  it('answers 503 UNAVAILABLE, not 500; the upload stays, and the same PUT again stores the exact bytes', async () => {
    const name = 'invalidpart/a';
    // One 5 MiB part and a tail that the commit sends as the final part.
    const data = randomBlob(11 * MiB + 11);
    const up = await startUpload(server.url, name);
    expectStatus(await patchChunk(server.url, up.location, data, 0), 202);
    fault = 'etag-foreign';
    const put = await request(server.url, withQuery(up.location, 'digest', sha256(data)), { method: 'PUT' });
    fault = undefined;
    expect(rec.calls.filter((c) => c.fault === 'etag-foreign').length, 'final parts answered with another ETag').toBeGreaterThan(0);
    expectError(put, 503, 'UNAVAILABLE', 'PUT');
    expect(await uploadStatus(server.url, up.location)).toBe(data.length);
    await commitUpload(server.url, up.location, data, name);
    await expectBlob(server.url, name, data);
  });
});
