/** OCI-Chunk-Min-Length (distribution-spec v1.1) is advertised on every upload-session reply. */
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type TestServer } from '../helpers/server.js';

function send(port: number, method: string, path: string): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('OCI-Chunk-Min-Length', () => {
  let defaults: TestServer;
  let configured: TestServer;
  beforeAll(async () => {
    [defaults, configured] = await Promise.all([startServer(), startServer({ env: { HOIST_UPLOADS_MIN_CHUNK_BYTES: '5MiB' } })]);
  });
  afterAll(async () => {
    // A crash on shutdown is a failure too.
    const running = [defaults, configured].filter((s) => s !== undefined);
    expect(await Promise.all(running.map((s) => s.stop()))).toEqual(running.map(() => 0));
  });

  it.each([
    ['default', () => defaults, String(1024 * 1024)],
    ['configured', () => configured, String(5 * 1024 * 1024)],
  ])('is sent on POST, PATCH and GET of an upload (%s)', async (_label, server, expected) => {
    const port = server().port;
    const post = await send(port, 'POST', '/v2/chunks/blobs/uploads/');
    expect(post.statusCode).toBe(202);
    expect(post.headers['oci-chunk-min-length']).toBe(expected);
    const location = String(post.headers.location);
    const status = await send(port, 'GET', location);
    expect(status.statusCode).toBe(204);
    expect(status.headers['oci-chunk-min-length']).toBe(expected);
    const patch = await send(port, 'PATCH', location);
    expect(patch.statusCode).toBe(202);
    expect(patch.headers['oci-chunk-min-length']).toBe(expected);
  });
});
