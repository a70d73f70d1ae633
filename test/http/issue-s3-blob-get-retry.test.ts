/**
 * Regression (found by a fault-injecting proxy between Hoist and the store): a blob GET whose
 * first GetObject the store answered with one 503 SlowDown, one 500 or a reset answered the
 * client 500 UNKNOWN at once, and one that stalled answered 503 after one timeout, though
 * nothing had gone to the client yet and README promises retries and then a clean 503. The
 * reader sent the head's GET once (src/storage/s3/reader.ts), outside the retries every other
 * store request gets, and passed its error on as it was. Now the head's GET is asked again
 * within the deadlines (deadlines.ts), and a store that keeps failing is 503 UNAVAILABLE.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { expectBlob, expectError, expectStatus, request } from '../helpers/http.js';
import { makeImage, pushBlob, pushImage, randomBlob, sha256 } from '../helpers/oci.js';
import type { Fault } from '../helpers/faulty-proxy.js';
import { describeS3, MiB, s3ServerEnv, startRecordingProxy, useTestBucket, type RecordingProxy } from '../helpers/s3-http.js';
import { startServer, type TestServer } from '../helpers/server.js';

/** No progress on a store request for this long fails it; retries end 2 x this after the first try. */
const TIMEOUT_MS = 1000;
const NAME = 'getretry/a';

describeS3('blob GETs on S3 whose GetObject the store fails', (env) => {
  const bucket = useTestBucket(env, 'getretry');
  let rec: RecordingProxy;
  let server: TestServer;
  /** What the store does to the next GETs of blob data and manifest revisions, and to how many. */
  let fault: Fault;
  let faultsLeft = 0;
  /** One GET, the whole blob (windows are 16 MiB: it is the store's answer itself). */
  const small = randomBlob(MiB + 3);
  /** Read in windows ahead of the client. */
  const large = randomBlob(20 * MiB + 7);
  const image = makeImage({ layerSizesBytes: [4096] });

  beforeAll(async () => {
    rec = await startRecordingProxy(env, () => bucket.name, (op, _n, url) => {
      const read = url.pathname.includes('/blobs/data/') || url.pathname.includes('/_manifests/revisions/');
      if (op !== 'GET' || !read || faultsLeft === 0) return undefined;
      faultsLeft--;
      return fault;
    });
    server = await startServer({
      storage: bucket.url('r', { endpoint: rec.endpoint, timeout: `${TIMEOUT_MS / 1000}s` }),
      frontend: 'node',
      env: s3ServerEnv(),
    });
    await pushBlob(server.url, NAME, small);
    await pushBlob(server.url, NAME, large);
    await pushImage(server.url, NAME, 'v1', image);
  });

  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
    await rec?.close();
  });

  /** Runs `fn` with the next `times` of those GETs failing with `kind`; all must have been injected. */
  async function failing<T>(kind: Fault, times: number, fn: () => Promise<T>): Promise<T> {
    fault = kind;
    faultsLeft = times;
    try {
      return await fn();
    } finally {
      const left = faultsLeft;
      faultsLeft = 0;
      if (Number.isFinite(times)) expect(left, `${String(kind)} faults not injected`).toBe(0);
    }
  }

  for (const kind of ['slowdown', 'internal', 'reset', 'stall'] as const) {
    it(`a GetObject the store fails once (${kind}) is asked again: the client gets the exact bytes`, async () => {
      await failing(kind, 1, () => expectBlob(server.url, NAME, small));
      await failing(kind, 1, () => expectBlob(server.url, NAME, large));
      const from = 17 * MiB + 5;
      const to = 19 * MiB;
      const ranged = await failing(kind, 1, () => request(server.url, `/v2/${NAME}/blobs/${sha256(large)}`, { headers: { range: `bytes=${from}-${to}` } }));
      expectStatus(ranged, 206, `Range GET while the store ${kind}s once`);
      expect(sha256(ranged.body)).toBe(sha256(large.subarray(from, to + 1)));
      const manifest = await failing(kind, 1, () => request(server.url, `/v2/${NAME}/manifests/v1`, { headers: { accept: image.mediaType } }));
      expectStatus(manifest, 200, `manifest GET while the store ${kind}s once`);
      expect(sha256(manifest.body)).toBe(image.manifestDigest);
    });
  }

  for (const kind of ['slowdown', 'internal', 'reset', 'stall'] as const) {
    it(`a store that fails every GetObject (${kind}) gives 503 UNAVAILABLE within the deadlines`, async () => {
      for (const [what, path] of [
        ['small blob', `/v2/${NAME}/blobs/${sha256(small)}`],
        ['large blob', `/v2/${NAME}/blobs/${sha256(large)}`],
        ['manifest', `/v2/${NAME}/manifests/v1`],
      ] as const) {
        const t0 = Date.now();
        const r = await failing(kind, Infinity, () => request(server.url, path));
        const ms = Date.now() - t0;
        expectError(r, 503, 'UNAVAILABLE');
        // Retries start within 2 x timeout of the first try, which takes at most one timeout
        // (a reused connection's once more: plain-get.ts).
        expect(ms, `${what}: answered after ${ms} ms`).toBeLessThan(4 * TIMEOUT_MS + 1000);
      }
      const tried = rec.calls.filter((c) => c.fault === kind);
      expect(tried.length, 'GETs the store failed').toBeGreaterThan(3);
    });
  }
});
