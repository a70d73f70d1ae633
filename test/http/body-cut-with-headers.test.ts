import net from 'node:net';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from '../helpers/http.js';
import { sha256 } from '../helpers/oci.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * Found by probing (2026-12-03): a client that sent a PATCH's headers, part of its body and
 * its FIN together (a process that dies right after a write) lost that part on node:http: the
 * request was destroyed, with the bytes still buffered, before the handler started reading,
 * and the upload stayed where it was. What a client sent is kept, as it is when the body is cut
 * later (and as uWS already did), so the upload resumes from there.
 */
describe.each(['node', 'uws'] as const)('a body cut short in the read that brought its headers (%s front end)', (frontend) => {
  let server: TestServer;
  let dir: string;
  beforeAll(async () => {
    // On fs, the handler waits for the upload's lock and record on disk before it reads the
    // body, so the client's FIN is in before it does.
    dir = await mkdtemp(join(tmpdir(), 'hoist-cut-'));
    server = await startServer({ frontend, storage: `fs:${dir}` });
  });
  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
    await rm(dir, { recursive: true, force: true });
  });

  it.each([1, 2, 3])('what arrived is kept, and the upload resumes from there (%i)', async () => {
    const blob = Buffer.alloc(100, 'x');
    blob.write('head', 0);
    const started = await request(server.url, '/v2/cut/blobs/uploads/', { method: 'POST' });
    expect(started.status).toBe(202);
    const location = started.header('location')!;
    const socket = net.connect(server.port, '127.0.0.1');
    socket.on('error', () => {});
    socket.resume();
    socket.end(Buffer.concat([Buffer.from(`PATCH ${location} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n`), blob.subarray(0, 40)]));
    await once(socket, 'close');
    let range: string | undefined;
    for (let i = 0; i < 40 && range !== '0-39'; i++) {
      if (i > 0) await sleep(50);
      const status = await request(server.url, location);
      expect(status.status).toBe(204);
      range = status.header('range');
    }
    expect(range).toBe('0-39');
    // The cut request may still hold the upload for a moment (416 while it is busy).
    let rest = await request(server.url, location, { method: 'PATCH', headers: { 'content-range': '40-99' }, body: blob.subarray(40) });
    for (let i = 0; i < 40 && rest.status === 416; i++) {
      await sleep(50);
      rest = await request(server.url, location, { method: 'PATCH', headers: { 'content-range': '40-99' }, body: blob.subarray(40) });
    }
    expect(rest.status).toBe(202);
    const digest = sha256(blob);
    expect((await request(server.url, `${location}${location.includes('?') ? '&' : '?'}digest=${digest}`, { method: 'PUT' })).status).toBe(201);
    const got = await request(server.url, `/v2/cut/blobs/${digest}`);
    expect(Buffer.compare(got.body, blob)).toBe(0);
  });
});
