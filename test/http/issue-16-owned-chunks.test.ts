/**
 * Issue 16: a GiB pushed through node:http cost the main thread three copies (socket to the
 * parser's buffer, parser to a Buffer per chunk, Buffer to a SharedArrayBuffer slab) and a
 * full mark-compact every 20-30 MiB, set off by those short-lived Buffers. The engine now
 * keeps node:http's Buffers as they are (they are the request's own) and moves them to the
 * hashing worker; uWS chunks, gone when the callback returns, are copied once.
 *
 * What can undo it silently is a sink in between that drops the chunks' ownership (the
 * request handler's byte counter once did, and every node:http body was copied again). So
 * this runs the real server, both front ends, and reads from the hoist:upload:body channel
 * how many bytes the engine had to copy.
 */
import { createHash, randomBytes } from 'node:crypto';
import diagnostics from 'node:diagnostics_channel';
import http from 'node:http';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import type { UploadBodyMessage } from '../../src/diagnostics.js';
import { startServer, type RunningServer } from '../../src/server.js';

function send(port: number, method: string, path: string, body?: Buffer, chunked = false): Promise<{ status: number; location: string | undefined }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = chunked ? { 'transfer-encoding': 'chunked' } : { 'content-length': body?.length ?? 0 };
    const req = http.request({ host: '127.0.0.1', port, method, path, headers }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, location: res.headers.location }));
    });
    req.on('error', reject);
    if (chunked && body) {
      // Slices of 256 KiB, as a client streaming a layer writes them.
      for (let pos = 0; pos < body.length; pos += 256 * 1024) req.write(body.subarray(pos, pos + 256 * 1024));
      req.end();
    } else {
      req.end(body);
    }
  });
}

describe.each(['node', 'uws'] as const)('issue 16: request bodies the engine copies (%s front end)', (frontend) => {
  let server: RunningServer;
  const seen: UploadBodyMessage[] = [];
  const listen = (msg: unknown): void => void seen.push(msg as UploadBodyMessage);

  beforeAll(async () => {
    diagnostics.subscribe('hoist:upload:body', listen);
    const config = loadConfig({
      overrides: { listen: '127.0.0.1:0', storage: 'memory:', frontend, logLevel: 'silent', uploads: { hashThreads: 1, chunkBytes: '1MiB' } },
    });
    server = await startServer(config, pino({ level: 'silent' }));
  });

  afterAll(async () => {
    diagnostics.unsubscribe('hoist:upload:body', listen);
    await server?.close();
  });

  it.each([false, true])('a streamed PATCH (chunked encoding: %s) is stored right, with next to nothing copied on node:http and everything once on uWS', async (chunked) => {
    const data = randomBytes(8 * 1024 * 1024 + 5);
    const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
    const start = await send(server.port, 'POST', '/v2/issue16/blobs/uploads/');
    expect(start.status).toBe(202);
    seen.length = 0;
    const patch = await send(server.port, 'PATCH', start.location!, data, chunked);
    expect(patch.status).toBe(202);
    const put = await send(server.port, 'PUT', `${patch.location}?digest=${digest}`);
    expect(put.status).toBe(201);

    const body = seen.find((m) => m.bytes === data.length);
    expect(body, JSON.stringify(seen)).toBeDefined();
    expect(body!.batches).toBeGreaterThanOrEqual(8);
    // node:http: only pieces under 1/4096 of a slab are copied (upload-write.ts: a chunked
    // body of one-byte chunks must not become millions of parts), a few where chunk framing
    // splits a read.
    if (frontend === 'node') expect(body!.copiedBytes).toBeLessThan(data.length / 1000);
    else expect(body!.copiedBytes).toBe(data.length);
  });
});
