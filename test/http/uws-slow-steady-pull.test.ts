/**
 * Found by probing: the uWS front end cut a blob GET whose client read slowly but steadily
 * (`curl --limit-rate 60k` of an 8 MiB blob got 5.3 MB, then the connection closed and the
 * server logged 499, as if the client had left). A failed tryEnd() arms uWS's 10 s idle timer
 * and only the next writable event stops it; Linux reports a full socket writable only once
 * a third of its send buffer (grown to 4 MiB on loopback) has drained, which takes more than
 * 10 s below about 140 KB/s. stream() now retries a waiting write every second, so each
 * ~90 KiB the client reads goes out at once, and drops a client that takes nothing for 10 s
 * itself, as uWS did.
 *
 * The blob must outlast what the kernel holds (~4.2 MB here, send and receive buffers) plus
 * what the client reads before uWS's timer fires, so the pull takes about a minute.
 */
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { request, tempDir, waitFor } from '../helpers/http.js';
import { startServer, type TestServer } from '../helpers/server.js';

const sha256 = (data: Uint8Array): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;

interface Pull {
  /** The body bytes that arrived, after the header section. */
  readonly body: Buffer;
  readonly contentLength: number;
  /** Still open when the client stopped reading (`stopAfterBytes`): the caller destroys it. */
  readonly socket: net.Socket;
}

/**
 * GETs `path` on a raw socket and reads the body at about `bytesPerSecond` (the socket is
 * paused whenever a 100 ms window's share has arrived, so TCP holds the server back), until
 * `stopAfterBytes` (then it stops reading for good and resolves) or until the server closes.
 */
function pullAtRate(port: number, path: string, bytesPerSecond: number, stopAfterBytes = Infinity): Promise<Pull> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    const windowMs = 100;
    const windowBytes = (bytesPerSecond * windowMs) / 1000;
    let head = Buffer.alloc(0);
    const body: Buffer[] = [];
    let bodyBytes = 0;
    let contentLength = -1;
    let windowStart = Date.now();
    let inWindow = 0;
    const finish = (): void => {
      resolve({ body: Buffer.concat(body), contentLength, socket });
    };
    socket.on('data', (data: Buffer) => {
      if (contentLength < 0) {
        head = Buffer.concat([head, data]);
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) return;
        contentLength = Number(/content-length: (\d+)/i.exec(head.subarray(0, end).toString('latin1'))?.[1] ?? 0);
        data = head.subarray(end + 4);
      }
      body.push(data);
      bodyBytes += data.length;
      if (bodyBytes >= contentLength) {
        socket.end();
        return;
      }
      if (bodyBytes >= stopAfterBytes) {
        socket.pause();
        finish();
        return;
      }
      inWindow += data.length;
      if (inWindow < windowBytes) return;
      // Wait out the windows this chunk used up.
      const waitMs = windowStart + (inWindow / windowBytes) * windowMs - Date.now();
      socket.pause();
      setTimeout(() => {
        windowStart = Date.now();
        inWindow = 0;
        socket.resume();
      }, Math.max(0, waitMs));
    });
    socket.on('close', finish);
    socket.on('error', reject);
    socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
  });
}

describe('uWS front end: blob GETs by slow clients', () => {
  let server: TestServer;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  const blob = randomBytes(5.5 * 1024 * 1024);
  const digest = sha256(blob);
  const path = `/v2/slow/pull/blobs/${digest}`;

  beforeAll(async () => {
    dir = await tempDir('hoist-slow-pull-');
    server = await startServer({ frontend: 'uws', storage: `fs:${dir.path}` });
    const push = await request(server.url, `/v2/slow/pull/blobs/uploads/?digest=${digest}`, {
      method: 'POST',
      body: blob,
      headers: { 'content-type': 'application/octet-stream' },
    });
    expect(push.status, push.text()).toBe(201);
  });
  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
    await dir?.cleanup();
  });

  it('sends the whole blob to a client that reads steadily at 80 KB/s', async () => {
    const pull = await pullAtRate(server.port, path, 80_000);
    expect(pull.contentLength).toBe(blob.length);
    expect(pull.body.length).toBe(blob.length);
    expect(sha256(pull.body)).toBe(digest);
  }, 120_000);

  it('still drops a client that stops reading, after about uWS\'s 10 s', async () => {
    const seen = server.records().length;
    const t0 = Date.now();
    const pull = await pullAtRate(server.port, path, 10_000_000, 256 * 1024);
    onTestFinished(() => {
      pull.socket.destroy();
    });
    expect(pull.contentLength).toBe(blob.length);
    const logged = await waitFor('the stalled GET to be logged', () =>
      server.records().slice(seen).find((r) => r.msg === 'request' && r.method === 'GET'), 30_000);
    const elapsedMs = Date.now() - t0;
    expect(logged.status).toBe(499);
    expect(elapsedMs).toBeGreaterThan(9_000);
    expect(elapsedMs).toBeLessThan(25_000);
  }, 60_000);
});
