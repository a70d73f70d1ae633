/**
 * On S3 the upload engine admits only as many writing requests as the driver has part
 * buffers for (src/engine/admission.ts); the rest wait. An admitted request kept its slot
 * for as long as its body took, and the idle timeout sees only silence: a client sending a
 * byte every second held the slot for good, and a few such clients kept every other push out
 * (found by probing). Now, while others wait, an admitted body that brings almost nothing
 * for a window (10 s) is stopped with 503, keeping what arrived, and the waiting push runs.
 * Without anyone waiting, a slow body is left alone. Real radosgw, node:http: uWS cuts such
 * a client itself after its fixed 10 s idle timeout, however it sends (README, Front ends),
 * which bounds the wait there without this and leaves no slow body alone to test.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { commitUpload, expectBlob, pathOf, request, uploadStatus } from '../helpers/http.js';
import { describeS3, useTestBucket } from '../helpers/s3-http.js';
import { metricsUrlOf, scrape } from '../helpers/metrics.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { tricklingPatch } from '../helpers/trickle.js';

describeS3('a crawling body does not keep a waiting push out (S3, node:http)', (env) => {
  let server: TestServer;
  const bucket = useTestBucket(env, 'crawl');

  beforeAll(async () => {
    // Two part buffers of 5 MiB: one writing request admitted at a time.
    server = await startServer({
      storage: bucket.url('r', { partSize: '5MiB', maxBufferedBytes: '10MiB' }),
      frontend: 'node',
      env: { HOIST_UPLOADS_CHUNK_BYTES: '1MiB', HOIST_LIMITS_IDLE_TIMEOUT: '120s', HOIST_METRICS_LISTEN: '127.0.0.1:0' },
    });
  });
  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
  });

  it('stops the crawling body with 503 once a push waits, keeps what it sent, and lets the push through', async () => {
    const base = server.url;
    const port = Number(new URL(base).port);
    const slow = pathOf(base, (await request(base, '/v2/crawl/slow/blobs/uploads/', { method: 'POST' })).header('location')!);
    const crawler = tricklingPatch(port, slow, 10 * 1024 * 1024, 500);
    try {
      // Alone, it is left alone: nobody waits for its slot.
      await new Promise((r) => setTimeout(r, 12_000));
      expect(crawler.socket.destroyed).toBe(false);
      expect((await scrape(metricsUrlOf(server))).value('hoist_upload_bodies_stopped_total')).toBe(0);

      // A push arrives and waits for the slot the crawler holds.
      const data = randomBytes(3 * 1024 * 1024);
      const t0 = Date.now();
      const start = await request(base, '/v2/crawl/fast/blobs/uploads/', { method: 'POST' });
      const location = pathOf(base, start.header('location')!);
      const patch = await request(base, location, { method: 'PATCH', body: data, timeoutMs: 60_000 });
      expect(patch.status, patch.text()).toBe(202);
      await commitUpload(base, location, data, 'crawl/fast');
      await expectBlob(base, 'crawl/fast', data);
      // The window is 10 s; the check runs every 2.5 s.
      expect(Date.now() - t0).toBeLessThan(30_000);

      const reply = await crawler.reply;
      expect(reply).toMatch(/^HTTP\/1\.1 503 /);
      expect(reply).toContain('UNAVAILABLE');
      expect((await scrape(metricsUrlOf(server))).value('hoist_upload_bodies_stopped_total')).toBe(1);
      // What it sent is kept: the upload resumes from there.
      const offset = await uploadStatus(base, slow);
      expect(offset).toBeGreaterThan(0);
      expect(offset).toBeLessThan(100);
    } finally {
      crawler.stop();
    }
  }, 90_000);
});
