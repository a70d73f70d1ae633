/**
 * Regression: on S3 storage, many uploads at once could stall for good. Each S3 writer fills
 * a whole part in a buffer from a bounded pool before sending it, while the upload engine
 * holds request bytes in slabs from its own bounded pool. With more uploads than part
 * buffers, every buffer could be a half-filled part whose upload waits for slabs, while the
 * slabs were held by uploads waiting for a buffer: nothing moved until the writer's buffer
 * wait timed out and the pushes failed with 5xx. The core now admits at most as many
 * writing requests as the driver's buffers can serve (StorageDriver.maxConcurrentWriters);
 * the rest wait with their sockets paused, holding nothing. That cap does not also divide the
 * engine's slabs among the admitted writers (src/engine/uploads.ts says why no circle can
 * form): the second case admits more writers than there are slabs.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { commitUpload, expectBlob, pathOf, request } from '../helpers/http.js';
import { describeS3, useTestBucket } from '../helpers/s3-http.js';
import { startServer, type TestServer } from '../helpers/server.js';

const cases = [
  // 4 part buffers of 5 MiB (2 writers admitted); a stall would end in the writer's 30 s
  // buffer wait and a 5xx.
  { what: 'few part buffers', partBuffers: '20MiB', slabs: '16MiB', session: '4MiB' },
  // 8 part buffers (4 writers admitted) but only 2 engine slabs: the admission does not divide
  // the slabs among the writers, so writers wait for slabs, which must never stall them for good.
  { what: 'fewer engine slabs than admitted writers', partBuffers: '40MiB', slabs: '2MiB', session: '2MiB' },
];

for (const { what, partBuffers, slabs, session } of cases) describeS3(`many concurrent uploads on S3 with ${what}`, (env) => {
  let server: TestServer;
  const bucket = useTestBucket(env, 'deadlock');

  beforeAll(async () => {
    server = await startServer({
      storage: bucket.url('r', { partSize: '5MiB', maxBufferedBytes: partBuffers }),
      frontend: 'node',
      env: { HOIST_UPLOADS_CHUNK_BYTES: '1MiB', HOIST_UPLOADS_MAX_SESSION_BUFFERED_BYTES: session, HOIST_UPLOADS_MAX_BUFFERED_BYTES: slabs },
    });
  });
  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
  });

  it('completes every push', async () => {
    const base = server.url;
    const pushes = Array.from({ length: 12 }, async (_, i) => {
      const data = randomBytes(12 * 1024 * 1024 + i * 4099);
      const name = `deadlock/r${i}`;
      const start = await request(base, `/v2/${name}/blobs/uploads/`, { method: 'POST' });
      expect(start.status).toBe(202);
      const location = pathOf(base, start.header('location')!);
      const patch = await request(base, location, { method: 'PATCH', body: data });
      expect(patch.status, patch.text()).toBe(202);
      await commitUpload(base, location, data, name);
      await expectBlob(base, name, data);
    });
    await Promise.all(pushes);
  }, 120_000);
});
