import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, expect, it } from 'vitest';
import {
  expectStatus, openRequest, patchChunk, pathOf, pieces, request, startUpload, storedBytes, uploadRange, waitFor, withQuery,
} from '../helpers/http.js';
import { randomBlob, sha256 } from '../helpers/oci.js';
import { describeS3, keyMap, MiB, partSizes, s3ServerEnv, uploadKeys, uploadsOf, useTestBucket } from '../helpers/s3-http.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * A server killed mid-PATCH (SIGKILL: no shutdown, nothing flushed) on S3, with a second
 * instance on the same bucket, as a fleet behind a load balancer runs: the client asks the
 * second instance where the upload stands, continues from the offset it reports, commits,
 * and reads back exactly the bytes it sent. Real radosgw, two real server processes.
 *
 * What the first instance left is a multipart upload with more parts than its last saved
 * writer state knows (it was uploading parts of the cut PATCH), the staged tail of the PATCH
 * before, and the upload's lock (src/engine/upload-lock.ts). The offset reported is what that
 * state records, at least what the acknowledged PATCH sent; the parts uploaded after it are
 * written again. Until the dead server's lock is taken over (its 30 s lease plus 30 s of
 * allowed clock skew) the second instance answers a PATCH as busy, 416 with the Range, and
 * the client tries again, as clients do.
 */

describeS3('an upload on S3 whose server is SIGKILLed mid-PATCH', (env) => {
  const bucket = useTestBucket(env, 'killed');
  const servers: TestServer[] = [];
  afterAll(async () => {
    for (const s of servers) await s.kill();
  });

  // The killed instance runs each front end; the one that takes over, node:http.
  // The timeout is a hang guard: radosgw on a loaded machine takes its time.
  // Concurrently: each waits out a dead server's lock, a minute at most.
  it.concurrent.each(['uws', 'node'] as const)('continues on a second instance from the offset it reports (killed instance on %s)', async (frontend) => {
    const prefix = `killed-${frontend}`;
    const start = (fe: 'uws' | 'node'): Promise<TestServer> =>
      startServer({ storage: bucket.url(prefix), frontend: fe, env: { ...s3ServerEnv(), HOIST_UPLOADS_CHUNK_BYTES: '1MiB' } });
    const [a, b] = await Promise.all([start(frontend), start('node')]);
    servers.push(a, b);
    const name = 'killed/app';
    const data = randomBlob(20 * MiB + 7);
    const up = await startUpload(a.url, name);

    // An acknowledged PATCH: one 5 MiB part and a staged tail.
    const first = 6 * MiB + 1;
    expectStatus(await patchChunk(a.url, up.location, data.subarray(0, first), 0), 202, 'the first PATCH');

    // The second PATCH sends all of its body but the last MiB, so it is mid-body whatever
    // the server has read; once a part of it is stored in radosgw, the server dies.
    const o = openRequest(a.url, up.location, {
      method: 'PATCH',
      headers: { 'content-type': 'application/octet-stream', 'content-range': `${first}-${data.length - 1}`, 'content-length': data.length - first },
    });
    let sent = first;
    const sending = (async () => {
      for (const piece of pieces(data.subarray(first, data.length - MiB), 256 * 1024)) {
        try {
          await o.write(piece);
        } catch {
          return;
        }
        sent += piece.length;
      }
    })();
    const dataKey = uploadKeys(prefix, up.id).data;
    const partsLeft = await waitFor('a part of the second PATCH stored in radosgw', async () => {
      const [uploadId] = await uploadsOf(bucket.client, bucket.name, dataKey);
      const parts = uploadId === undefined ? 0 : (await partSizes(bucket.client, bucket.name, dataKey, uploadId)).length;
      return parts >= 2 ? parts : undefined;
    }, 120_000);
    await a.kill();
    expect(await a.exited, 'killed by a signal').toBeNull();
    o.req.destroy();
    await sending;
    // Nothing could answer a request whose body had not all arrived.
    await expect(o.reply).rejects.toThrow();

    // The client asks the other instance where the upload stands, and goes on from there.
    const status = await request(b.url, up.location);
    expectStatus(status, 204, 'GET the upload on the second instance');
    const offset = storedBytes(status.header('range'));
    expect(offset, 'at least what the acknowledged PATCH sent').toBeGreaterThanOrEqual(first);
    expect(offset, 'at most what reached the killed server').toBeLessThanOrEqual(sent);
    const location = pathOf(b.url, status.header('location') ?? up.location);
    // An empty PATCH finds out, cheaply, when the dead server's lock has been taken over.
    let busy = 0;
    await waitFor('the second instance to take over the dead server\'s lock', async () => {
      const r = await request(b.url, location, { method: 'PATCH', body: Buffer.alloc(0) });
      if (r.status === 202) return true;
      expect(r.status, r.text()).toBe(416);
      expect(r.text()).toContain('another request is writing');
      expect(storedBytes(r.header('range'))).toBe(offset);
      busy++;
      await sleep(1000);
      return undefined;
    }, 180_000);
    const rest = await patchChunk(b.url, location, data.subarray(offset), offset);
    expectStatus(rest, 202, `PATCH from ${offset} on the second instance`);
    expect(rest.header('range')).toBe(uploadRange(data.length));
    const put = await request(b.url, withQuery(pathOf(b.url, rest.header('location')!), 'digest', sha256(data)), { method: 'PUT' });
    expectStatus(put, 201, 'commit on the second instance');

    const got = await request(b.url, `/v2/${name}/blobs/${sha256(data)}`);
    expectStatus(got, 200);
    expect(got.header('content-length')).toBe(String(data.length));
    expect(got.body.equals(data), 'the blob reads back byte for byte').toBe(true);
    console.log(`[s3 killed mid-PATCH, ${frontend}] ${sent} bytes sent, ${partsLeft}+ parts stored when killed; the second instance reported ${offset} and was busy ${busy} times`);
    // The commit completed the one multipart upload and removed the staging objects.
    expect(await uploadsOf(bucket.client, bucket.name, dataKey)).toEqual([]);
    expect(Object.keys(await keyMap(bucket.client, bucket.name, uploadKeys(prefix, up.id).staging))).toEqual([]);
    expect(await b.stop()).toBe(0);
  }, 300_000);
});
