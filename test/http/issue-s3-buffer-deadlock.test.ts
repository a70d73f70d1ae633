/**
 * Regression: on S3 storage, many uploads at once could stall for good. Each S3 writer fills
 * a whole part in a buffer from a bounded pool before sending it, while the upload engine
 * holds request bytes in slabs from its own bounded pool. With more uploads than part
 * buffers, every buffer could be a half-filled part whose upload waits for slabs, while the
 * slabs were held by uploads waiting for a buffer: nothing moved until the writer's buffer
 * wait timed out and the pushes failed with 5xx. The core now admits at most as many
 * writing requests as the driver's buffers can serve (StorageDriver.maxConcurrentWriters);
 * the rest wait with their sockets paused, holding nothing.
 */
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestBucket, deleteBucket, S3_ENDPOINT_MISSING, s3StorageUrl, s3TestEnv, testClient } from '../helpers/s3.js';
import { startServer, type TestServer } from '../helpers/server.js';

const env = s3TestEnv();

function request(port: number, method: string, path: string, body?: Buffer): Promise<{ status: number; location?: string; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, agent: false, headers: body ? { 'content-length': body.length } : {} }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, location: res.headers.location, text: Buffer.concat(parts).toString() }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('many concurrent uploads on S3 with few part buffers', () => {
  let server: TestServer;
  let bucket: string;
  const client = env && testClient(env);

  beforeAll(async () => {
    if (!env || !client) throw new Error(S3_ENDPOINT_MISSING);
    bucket = await createTestBucket(client, 'deadlock');
    // 4 part buffers of 5 MiB, a stall would end in the writer's 30 s buffer wait and a 5xx.
    const storage = s3StorageUrl(env, bucket, 'r', { partSize: '5MiB', maxBufferedBytes: '20MiB' });
    server = await startServer({
      storage,
      frontend: 'node',
      env: { HOIST_UPLOADS_CHUNK_BYTES: '1MiB', HOIST_UPLOADS_MAX_SESSION_BUFFERED_BYTES: '4MiB', HOIST_UPLOADS_MAX_BUFFERED_BYTES: '16MiB' },
    });
  });
  afterAll(async () => {
    try {
      if (server) expect(await server.stop()).toBe(0);
    } finally {
      if (client && bucket) await deleteBucket(client, bucket);
    }
  });

  it('completes every push', async () => {
    const pushes = Array.from({ length: 12 }, async (_, i) => {
      const data = randomBytes(12 * 1024 * 1024 + i * 4099);
      const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
      const start = await request(server.port, 'POST', `/v2/deadlock/r${i}/blobs/uploads/`);
      expect(start.status).toBe(202);
      const patch = await request(server.port, 'PATCH', start.location!, data);
      expect(patch.status, patch.text).toBe(202);
      const put = await request(server.port, 'PUT', `${start.location!}?digest=${digest}`);
      expect(put.status, put.text).toBe(201);
      const get = await new Promise<string>((resolve, reject) => {
        http.get({ host: '127.0.0.1', port: server.port, path: `/v2/deadlock/r${i}/blobs/${digest}`, agent: false }, (res) => {
          const h = createHash('sha256');
          res.on('data', (c: Buffer) => h.update(c));
          res.on('end', () => resolve(`sha256:${h.digest('hex')}`));
        }).on('error', reject);
      });
      expect(get).toBe(digest);
    });
    await Promise.all(pushes);
  }, 120_000);
});
