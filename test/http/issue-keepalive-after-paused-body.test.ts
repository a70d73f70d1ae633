/**
 * Regression: with the uWS front end, a PATCH whose body made the upload engine pause the
 * socket, and whose last bytes arrived while it was paused, was answered 202 but left the
 * socket paused. The next request on the same keep-alive connection (the client's PUT) was
 * never read: it hung ~10 s and ended in ECONNRESET. Found by the macro bench
 * (16 x 64 MiB streamed); curl showed "Connection died, retrying a fresh connect".
 */
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type TestServer } from '../helpers/server.js';

function send(agent: http.Agent, port: number, method: string, path: string, body?: Buffer): Promise<{ status: number; headers: http.IncomingHttpHeaders; socket: unknown }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ agent, host: '127.0.0.1', port, method, path, headers: body ? { 'content-length': body.length } : {}, timeout: 8000 }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, socket: req.socket }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.on('error', reject);
    req.end(body);
  });
}

describe.each(['uws', 'node'] as const)('keep-alive after a paused request body (%s front end)', (frontend) => {
  let server: TestServer;
  // One socket: every request below must travel on the same connection.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  beforeAll(async () => {
    // Small buffers so a 32 MiB body certainly pauses the socket several times.
    server = await startServer({ frontend, env: { HOIST_UPLOADS_CHUNK_BYTES: '256KiB', HOIST_UPLOADS_MAX_SESSION_BUFFERED_BYTES: '1MiB' } });
  });
  afterAll(async () => {
    agent.destroy();
    if (server) expect(await server.stop()).toBe(0);
  });

  it('serves the next request on the same connection', async () => {
    const data = randomBytes(32 * 1024 * 1024);
    const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
    for (let i = 0; i < 3; i++) {
      const start = await send(agent, server.port, 'POST', '/v2/keepalive/blobs/uploads/');
      expect(start.status).toBe(202);
      const location = String(start.headers.location);
      const patch = await send(agent, server.port, 'PATCH', location, data);
      expect(patch.status).toBe(202);
      expect(patch.socket).toBe(start.socket);
      const put = await send(agent, server.port, 'PUT', `${location}?digest=${digest}`);
      expect(put.status).toBe(201);
      expect(put.socket).toBe(start.socket);
    }
  });
});
