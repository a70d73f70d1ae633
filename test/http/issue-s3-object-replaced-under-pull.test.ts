/**
 * Regression (found by probing with a fault-injecting proxy between Hoist and the store): a
 * pull reads a blob in 16 MiB windows, each its own ranged GET (src/storage/s3/reader.ts). A
 * window whose GET broke off is asked again when its turn comes; when the object had been
 * written anew meanwhile (or a replica served another version), that GET returned the other
 * object's bytes, and the client got 200 with a complete body of 40 MiB of which 24 were not
 * the blob's, under its digest. Now every GET after the first names the object the first
 * answer was (If-Match its ETag, and the same size): the store refuses (412) and the read
 * fails, so the client sees a short body, never other bytes.
 */
import { PutObjectCommand } from '@aws-sdk/client-s3';
import http from 'node:http';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { pushBlob, randomBlob, sha256 } from '../helpers/oci.js';
import type { Fault } from '../helpers/faulty-proxy.js';
import { describeS3, MiB, s3ServerEnv, startRecordingProxy, useTestBucket, type RecordingProxy } from '../helpers/s3-http.js';
import { listAllKeys } from '../helpers/s3.js';
import { startServer, type TestServer } from '../helpers/server.js';

interface Pulled {
  status: number;
  body: Buffer;
  /** The body ended with all its Content-Length, cleanly. */
  complete: boolean;
}

describeS3('a blob replaced in the store under a pull', (env) => {
  const bucket = useTestBucket(env, 'replaced');
  let rec: RecordingProxy;
  let server: TestServer;
  let decide: (op: string, url: URL) => Fault = () => undefined;

  beforeAll(async () => {
    rec = await startRecordingProxy(env, () => bucket.name, (op, _n, url) => decide(op, url));
    server = await startServer({ storage: bucket.url('r', { endpoint: rec.endpoint, timeout: '2s' }), frontend: 'node', env: s3ServerEnv() });
  });
  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
    await rec?.close();
  });

  /** A GET whose reader stops after `pauseAt` bytes, runs `during`, and reads on. */
  function pausingGet(path: string, headers: Record<string, string>, pauseAt: number, during: () => Promise<void>): Promise<Pulled> {
    return new Promise((resolve, reject) => {
      const u = new URL(server.url);
      const chunks: Buffer[] = [];
      let got = 0;
      let paused = false;
      const req = http.get({ host: u.hostname, port: u.port, path, headers }, (res) => {
        const done = (): void => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), complete: res.complete });
        res.on('data', (c: Buffer) => {
          chunks.push(c);
          got += c.length;
          if (!paused && got >= pauseAt) {
            paused = true;
            res.pause();
            during().then(() => res.resume(), reject);
          }
        });
        res.on('end', done);
        res.on('error', done);
      });
      req.on('error', reject);
    });
  }

  for (const [ranged, ifMatch] of [[false, true], [true, true], [false, false]] as const) {
    const how = `${ranged ? ' (Range)' : ''}${ifMatch ? '' : ', the store ignoring If-Match'}`;
    it(`a window asked again after the object was replaced fails the read: a short body, never the other object's bytes${how}`, async () => {
      const name = `replaced/r${ranged ? 'ranged' : 'whole'}-${ifMatch}`;
      const data = randomBlob(40 * MiB + 3);
      const before = new Set((await listAllKeys(bucket.client, bucket.name, 'r/blobs/data/')).map((k) => k.key));
      await pushBlob(server.url, name, data);
      const key = (await listAllKeys(bucket.client, bucket.name, 'r/blobs/data/')).find((k) => !before.has(k.key))!.key;
      // The second GET of the object (the window after the head's) breaks off after 1 MiB, so
      // it is asked again when its turn comes; the object is replaced as it breaks off, and
      // every later GET reaches the store only once that is done. (Replaced while the client
      // paused instead, the server had read on into its socket buffers and asked again before
      // the replacement landed, on a loaded machine: a complete body, of the right bytes.)
      let gets = 0;
      let replaced: Promise<unknown> | undefined;
      // A store that ignores If-Match is caught by the answer's other ETag.
      decide = (op, url) => {
        if (op !== 'GET' || !decodeURIComponent(url.pathname).endsWith(key)) return undefined;
        if (++gets === 2) {
          replaced = bucket.client.send(new PutObjectCommand({ Bucket: bucket.name, Key: key, Body: randomBlob(data.length) }));
          return { cutAfter: MiB };
        }
        const fault = ifMatch ? undefined : 'ignore-if-match';
        return replaced ? { after: replaced, fault } : fault;
      };
      const from = ranged ? 1000 : 0;
      const got = await pausingGet(`/v2/${name}/blobs/${sha256(data)}`, ranged ? { range: `bytes=${from}-` } : {}, 2 * MiB, async () => {
        await replaced;
      });
      decide = () => undefined;
      const want = data.subarray(from);
      expect(got.status).toBe(ranged ? 206 : 200);
      expect(gets, 'GETs of the object').toBeGreaterThanOrEqual(3);
      const same = got.body.equals(want.subarray(0, got.body.length));
      expect(same, `the ${got.body.length} bytes the client got are the blob's`).toBe(true);
      expect(got.body.length, 'the body is cut short').toBeLessThan(want.length);
      expect(got.complete, 'the body did not end cleanly').toBe(false);
    });
  }
});
