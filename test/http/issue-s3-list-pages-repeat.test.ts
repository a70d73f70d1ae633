/**
 * Regression (found by probing with a fault-injecting proxy between Hoist and the store): the
 * S3 driver follows a listing's pages while the store says it is truncated, with whatever
 * marker the store gives. A store whose pages do not advance (it answers every page as
 * truncated, continuing from where it started) had a PUT's commit send ListParts 5,000 times
 * in 43 s (until the proxy stopped), and a tags list send ListObjectsV2 for more than 60 s,
 * far past the 3 x timeout a failing store may hold a client (README, S3 storage). Now a
 * marker the store gave before fails the listing: 503 UNAVAILABLE at once, the upload where
 * it was, and the same requests go through once the store pages properly.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { commitUpload, expectBlob, expectError, expectStatus, patchChunk, request, startUpload, uploadStatus, withQuery } from '../helpers/http.js';
import { makeImage, pushImage, randomBlob, sha256 } from '../helpers/oci.js';
import type { Fault } from '../helpers/faulty-proxy.js';
import { describeS3, MiB, s3ServerEnv, startRecordingProxy, useTestBucket, type RecordingProxy } from '../helpers/s3-http.js';
import { startServer, type TestServer } from '../helpers/server.js';

const TIMEOUT_MS = 1000;
/** What a store that fails may hold a client (3 x timeout), and some room for a loaded machine. */
const BOUND_MS = 3 * TIMEOUT_MS + 2000;
/** Pages the proxy repeats at most, so that the test ends before the fix too. */
const MAX_REPEATS = 1000;

describeS3('S3 listings whose pages do not advance', (env) => {
  const bucket = useTestBucket(env, 'pages');
  let rec: RecordingProxy;
  let server: TestServer;
  let repeating: string | undefined;
  let repeats = 0;

  beforeAll(async () => {
    rec = await startRecordingProxy(env, () => bucket.name, (op): Fault => {
      if (op !== repeating || repeats >= MAX_REPEATS) return undefined;
      repeats++;
      return 'repeat-page';
    });
    server = await startServer({ storage: bucket.url('r', { endpoint: rec.endpoint, timeout: `${TIMEOUT_MS / 1000}s` }), frontend: 'node', env: s3ServerEnv() });
  });
  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
    await rec?.close();
  });

  async function whileRepeating<T>(op: string, fn: () => Promise<T>): Promise<{ result: T; ms: number; pages: number }> {
    repeating = op;
    repeats = 0;
    const t0 = Date.now();
    try {
      const result = await fn();
      return { result, ms: Date.now() - t0, pages: repeats };
    } finally {
      repeating = undefined;
    }
  }

  it('a commit whose ListParts repeats its page answers 503 UNAVAILABLE at once; the upload stays, and commits after', async () => {
    const name = 'pages/commit';
    const data = randomBlob(6 * MiB + 11);
    const up = await startUpload(server.url, name);
    expectStatus(await patchChunk(server.url, up.location, data, 0), 202);
    const { result: put, ms, pages } = await whileRepeating('ListParts', () =>
      request(server.url, withQuery(up.location, 'digest', sha256(data)), { method: 'PUT' }));
    expect(pages, 'ListParts pages repeated').toBeGreaterThan(0);
    expectError(put, 503, 'UNAVAILABLE', 'PUT');
    expect(ms, `answered after ${ms} ms and ${pages} repeated pages`).toBeLessThan(BOUND_MS);
    expect(await uploadStatus(server.url, up.location)).toBe(data.length);
    await commitUpload(server.url, up.location, data, name);
    await expectBlob(server.url, name, data);
  });

  it('a tags list whose ListObjectsV2 repeats its page answers 503 UNAVAILABLE at once; the same list after', async () => {
    const name = 'pages/tags';
    await pushImage(server.url, name, 'v1', makeImage({ layerSizesBytes: [100] }));
    const { result: list, ms, pages } = await whileRepeating('ListObjectsV2', () => request(server.url, `/v2/${name}/tags/list`));
    expect(pages, 'ListObjectsV2 pages repeated').toBeGreaterThan(0);
    expectError(list, 503, 'UNAVAILABLE');
    expect(ms, `answered after ${ms} ms and ${pages} repeated pages`).toBeLessThan(BOUND_MS);
    const again = await request(server.url, `/v2/${name}/tags/list`);
    expectStatus(again, 200);
    expect(again.json<{ tags: string[] }>().tags).toEqual(['v1']);
  });
});
