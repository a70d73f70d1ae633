import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  commitUpload, expectBlob, expectStatus, patchChunk, pathOf, repoNamer, request, startUpload, waitForLog, type Reply,
} from '../helpers/http.js';
import { randomBlob } from '../helpers/oci.js';
import type { Fault } from '../helpers/faulty-proxy.js';
import { describeS3, keyMap, s3ServerEnv, startRecordingProxy, useTestBucket, type RecordingProxy } from '../helpers/s3-http.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * The upload lock on S3 when the store's answers about it are lost (found by a fault-injecting
 * proxy between Hoist and radosgw). Every request that writes to an upload creates its lock
 * (PutObject with If-None-Match: *) and deletes it when done (DeleteObject)
 * (src/engine/upload-lock.ts).
 *
 *   - The store takes the create but its answer is lost (500, or a reset, after the write):
 *     the SDK's retry finds the object there (412), and Hoist took its own lock for another
 *     request's. Every PATCH answered 416 "another request is writing to this upload" and a
 *     DELETE 400 "upload is busy" for a minute (the lock's lease plus the clock skew allowed).
 *     Now a lock that carries the request's own token is its own; one whose create failed
 *     with its outcome unknown is taken over by the server's next request.
 *   - The delete that releases the lock fails after the PATCH's bytes were stored (503
 *     SlowDown on every try, or its answers lost): the PATCH was answered 503, and a lock
 *     left in the store kept the upload busy for a minute. Now the PATCH's answer stands, the
 *     same server's next request takes the lock it left over at once, and the lock is deleted
 *     again in the background, so that another instance gets the upload within seconds.
 *
 * A real radosgw through a proxy that fails the lock's requests only.
 */

const repo = repoNamer('lock-lost');

/** The key of a request through the proxy (path-style: /bucket/key). */
const keyOf = (url: URL): string => decodeURIComponent(url.pathname);

describeS3('the upload lock on S3 when the store loses its answers', (env) => {
  const bucket = useTestBucket(env, 'locklost');
  /** What the proxy does to the lock's conditional create (`creates` times), and to its deletes. */
  let createFault: Fault;
  let creates = 0;
  let deleteFault: Fault;
  let rec: RecordingProxy;
  let a: TestServer;
  let b: TestServer;
  const PREFIX = 'locklost';

  beforeAll(async () => {
    rec = await startRecordingProxy(env, () => bucket.name, (op, _n, url) => {
      if (!keyOf(url).endsWith('.lock')) return undefined;
      if (op === 'PutObject' && creates > 0) {
        creates--;
        return createFault;
      }
      if (op === 'DELETE') return deleteFault;
      return undefined;
    });
    // 2 s without progress fails a store request (retried within 4 s), so a failure is quick.
    const start = (): Promise<TestServer> =>
      startServer({ storage: bucket.url(PREFIX, { endpoint: rec.endpoint, timeout: '2s' }), frontend: 'node', env: s3ServerEnv() });
    [a, b] = await Promise.all([start(), start()]);
  });

  afterAll(async () => {
    for (const s of [a, b]) if (s) expect(await s.stop()).toBe(0);
    await rec?.close();
  });

  function heal(): void {
    createFault = undefined;
    creates = 0;
    deleteFault = undefined;
  }

  /** PATCHes `chunk` at `offset`; returns the reply and the Location to go on with. */
  async function patch(server: TestServer, location: string, chunk: Uint8Array, offset: number): Promise<{ r: Reply; location: string }> {
    const r = await patchChunk(server.url, location, chunk, offset);
    return { r, location: r.status === 202 ? pathOf(server.url, r.header('location')!) : location };
  }

  /** No upload lock is left in the bucket. */
  async function expectNoLocks(what: string): Promise<void> {
    const locks = Object.keys(await keyMap(bucket.client, bucket.name, `${PREFIX}/`)).filter((k) => k.includes('.lock'));
    expect(locks, what).toEqual([]);
  }

  describe('the conditional create of the lock', () => {
    it.each(['internal-after', 'lose-answer'] as const)('taken by the store with its answer lost (%s): the PATCH and a DELETE go ahead', async (fault) => {
      const name = repo(`create-${fault}`);
      const data = randomBlob(300_001);
      const up = await startUpload(a.url, name);
      createFault = fault;
      creates = 1;
      let { r, location } = await patch(a, up.location, data.subarray(0, 200_000), 0);
      expectStatus(r, 202, `PATCH whose lock create lost its answer (${fault})`);
      expect(creates, 'the fault was injected').toBe(0);
      heal();
      ({ r, location } = await patch(a, location, data.subarray(200_000), 200_000));
      expectStatus(r, 202, 'the next PATCH');
      await commitUpload(a.url, location, data, name);
      await expectBlob(a.url, name, data);

      const doomed = await startUpload(a.url, name);
      createFault = fault;
      creates = 1;
      const del = await request(a.url, doomed.location, { method: 'DELETE' });
      heal();
      expectStatus(del, 204, `DELETE whose lock create lost its answer (${fault})`);
      expect((await request(a.url, doomed.location)).status).toBe(404);
      await expectNoLocks('after the PATCHes, the PUT and the DELETE');
    });

    it('taken by the store with every answer lost: the PATCH fails, and the same server\'s next PATCH goes ahead at once', async () => {
      const name = repo('create-all-lost');
      const data = randomBlob(250_000);
      const up = await startUpload(a.url, name);
      createFault = 'internal-after';
      creates = Number.POSITIVE_INFINITY;
      const failed = await patchChunk(a.url, up.location, data.subarray(0, 100_000), 0);
      heal();
      expect(failed.status, 'a PATCH whose lock could not be created').toBe(503);
      const { r, location } = await patch(a, up.location, data.subarray(0, 100_000), 0);
      expectStatus(r, 202, 'the PATCH again, at once');
      const rest = await patch(a, location, data.subarray(100_000), 100_000);
      expectStatus(rest.r, 202);
      await commitUpload(a.url, rest.location, data, name);
      await expectBlob(a.url, name, data);
      await expectNoLocks('after the upload');
    });
  });

  describe('the delete that releases the lock', () => {
    it.each(['slowdown', 'internal-after', 'lose-answer'] as const)('failing on every try (%s): the PATCH is answered 202, and the next one goes ahead at once', async (fault) => {
      const name = repo(`release-${fault}`);
      const data = randomBlob(300_003);
      const up = await startUpload(a.url, name);
      deleteFault = fault;
      let { r, location } = await patch(a, up.location, data.subarray(0, 100_000), 0);
      heal();
      expectStatus(r, 202, `PATCH whose lock release failed (${fault})`);
      ({ r, location } = await patch(a, location, data.subarray(100_000, 200_000), 100_000));
      expectStatus(r, 202, 'the next PATCH, at once');
      ({ r, location } = await patch(a, location, data.subarray(200_000), 200_000));
      expectStatus(r, 202);
      await commitUpload(a.url, location, data, name);
      await expectBlob(a.url, name, data);
      await expectNoLocks('after the upload');
    });

    it('failing on every try: the lock is deleted in the background, so another instance gets the upload within seconds', async () => {
      const name = repo('release-other-instance');
      const data = randomBlob(200_000);
      const up = await startUpload(a.url, name);
      deleteFault = 'slowdown';
      let { r, location } = await patch(a, up.location, data.subarray(0, 100_000), 0);
      heal();
      expectStatus(r, 202, 'PATCH whose lock release failed');
      await waitForLog(a, 'the warning about the lock left behind', (l) => l.msg === 'upload lock not deleted after its request; retrying in the background');
      // The other instance cannot know that the lock's holder finished: it waits for the
      // background delete (a second or so), not for the lock's expiry (a minute).
      const t0 = Date.now();
      for (;;) {
        ({ r, location } = await patch(b, location, data.subarray(100_000), 100_000));
        if (r.status !== 416) break;
        expect(Date.now() - t0, 'the other instance still finds the upload busy').toBeLessThan(15_000);
        await sleep(250);
      }
      expectStatus(r, 202, 'PATCH on the other instance');
      await commitUpload(b.url, location, data, name);
      await expectBlob(a.url, name, data);
      await expectNoLocks('after the upload');
    });
  });
});
