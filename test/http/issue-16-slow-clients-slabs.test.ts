/**
 * Every byte the upload engine holds sits in a slab from one bounded pool (uploads.maxBufferedBytes),
 * and a request's bytes are gathered into a slab until it is full. A client that sends a
 * little and then nothing (but not long enough for the idle timeout) used to keep its
 * half-filled slab for as long as it liked: as many such clients as the pool has slabs, and
 * every other upload waited with its socket paused until they left. A batch that stops
 * growing is now sent on (written and hashed) after a short while, which gives its slab back.
 */
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pathOf, request, stallingPatch } from '../helpers/http.js';
import { startServer, type TestServer } from '../helpers/server.js';

describe.each(['node', 'uws'] as const)('slow clients do not hold the upload buffers (%s front end)', (frontend) => {
  let server: TestServer;
  beforeAll(async () => {
    // Two slabs of 1 MiB in all, and an idle timeout far beyond the test's.
    server = await startServer({
      frontend,
      env: {
        HOIST_UPLOADS_CHUNK_BYTES: '1MiB', HOIST_UPLOADS_MAX_SESSION_BUFFERED_BYTES: '2MiB',
        HOIST_UPLOADS_MAX_BUFFERED_BYTES: '2MiB', HOIST_LIMITS_IDLE_TIMEOUT: '120s',
      },
    });
  });
  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
  });

  it('lets another upload finish while stalled ones hold half-filled batches', async () => {
    const base = server.url;
    const stalled: net.Socket[] = [];
    const stalledPaths: string[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        const start = await request(base, '/v2/slow/stalled/blobs/uploads/', { method: 'POST' });
        expect(start.status).toBe(202);
        const path = pathOf(base, start.header('location')!);
        stalledPaths.push(path);
        stalled.push(await stallingPatch(server.port, path, 4 * 1024 * 1024, randomBytes(64 * 1024)));
      }
      // The stalled requests' bytes have reached the engine (each holds a slab until sent on).
      await new Promise((r) => setTimeout(r, 300));

      const data = randomBytes(3 * 1024 * 1024 + 17);
      const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
      const start = await request(base, '/v2/slow/fast/blobs/uploads/', { method: 'POST' });
      const location = pathOf(base, start.header('location')!);
      const t0 = Date.now();
      const patch = await request(base, location, { method: 'PATCH', body: data, timeoutMs: 20_000 });
      expect(patch.status, patch.text()).toBe(202);
      const put = await request(base, `${location}${location.includes('?') ? '&' : '?'}digest=${digest}`, { method: 'PUT' });
      expect(put.status, put.text()).toBe(201);
      // uWS drops a connection idle for 10 s on its own: that must not be what lets this one through.
      expect(Date.now() - t0).toBeLessThan(8_000);
      const got = await request(base, `/v2/slow/fast/blobs/${digest}`);
      expect(got.status).toBe(200);
      expect(Buffer.compare(got.body, data)).toBe(0);

      // What the stalled clients sent is stored: their uploads stand at 64 KiB.
      for (const s of stalled) s.destroy();
      for (const path of stalledPaths) {
        let offset = '';
        for (let i = 0; i < 50 && offset !== '0-65535'; i++) {
          await new Promise((r) => setTimeout(r, 100));
          const status = await request(base, path);
          offset = status.header('range') ?? '';
        }
        expect(offset).toBe('0-65535');
      }
    } finally {
      for (const s of stalled) s.destroy();
    }
  }, 60_000);
});
