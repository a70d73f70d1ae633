/**
 * On S3 the upload engine admits only as many writing requests as the driver has part
 * buffers for (src/engine/admission.ts). Admission was first come, first served: requests
 * whose bodies trickle in (a byte every few seconds) that came first were each admitted in
 * turn and stopped only after the 10 s window, while a push whose body was all there waited
 * behind them (found by probing: 100 such PATCHes held a 16 MiB push for about 60 s). Now a
 * waiting request whose body has arrived in part (body-pump.ts, READY_BYTES) or whole goes
 * first, and while one waits, an admitted body that crawls is given a quarter of the window.
 * Real radosgw, both front ends.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { commitUpload, expectBlob, pathOf, request } from '../helpers/http.js';
import { describeS3, useTestBucket } from '../helpers/s3-http.js';
import { startServer, type Frontend, type TestServer } from '../helpers/server.js';
import { tricklingPatch, type TricklingPatch } from '../helpers/trickle.js';

const TRICKLERS = 8;

for (const frontend of ['node', 'uws'] as Frontend[]) describeS3(`a push whose body is there goes before trickling ones (S3, ${frontend})`, (env) => {
  let server: TestServer;
  const bucket = useTestBucket(env, `ready-${frontend}`);

  beforeAll(async () => {
    // Four part buffers of 5 MiB: two writing requests admitted at a time.
    server = await startServer({
      storage: bucket.url('r', { partSize: '5MiB', maxBufferedBytes: '20MiB' }),
      frontend,
      env: { HOIST_UPLOADS_CHUNK_BYTES: '1MiB', HOIST_LIMITS_IDLE_TIMEOUT: '120s' },
    });
  });
  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
  });

  it(`admits the push ahead of ${TRICKLERS} trickling PATCHes that came first`, async () => {
    const base = server.url;
    const port = Number(new URL(base).port);
    const tricklers: TricklingPatch[] = [];
    try {
      for (let i = 0; i < TRICKLERS; i++) {
        const start = await request(base, `/v2/ready/slow${i}/blobs/uploads/`, { method: 'POST' });
        expect(start.status).toBe(202);
        tricklers.push(tricklingPatch(port, pathOf(base, start.header('location')!), 10 * 1024 * 1024, 3000));
      }
      // All of them in: two admitted, the rest waiting.
      await new Promise((r) => setTimeout(r, 1500));

      const data = randomBytes(4 * 1024 * 1024);
      const t0 = Date.now();
      const start = await request(base, '/v2/ready/fast/blobs/uploads/', { method: 'POST' });
      const location = pathOf(base, start.header('location')!);
      const patch = await request(base, location, { method: 'PATCH', body: data, timeoutMs: 90_000 });
      const ms = Date.now() - t0;
      expect(patch.status, patch.text()).toBe(202);
      await commitUpload(base, location, data, 'ready/fast');
      await expectBlob(base, 'ready/fast', data);
      console.log(`${frontend}: the push's PATCH took ${ms} ms behind ${TRICKLERS} trickling PATCHes`);
      // First come, first served, it waited for 4 rounds of the 10 s window. Now it waits for
      // the two admitted tricklers' shortened window (2.5 s, checked every 1.25 s).
      expect(ms).toBeLessThan(8_000);
    } finally {
      for (const t of tricklers) t.stop();
    }
  }, 120_000);
});
