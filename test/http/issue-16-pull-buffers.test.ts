/**
 * Issue 16: a blob GET read its file with fs.createReadStream, which allocates a new 1 MiB
 * buffer for every read; a gigabyte of pulls left a thousand dead buffers whose external
 * memory set off a full mark-compact every 64 MiB or so (a third of the server's CPU on a
 * pull) and made up most of a pull's peak RSS. The fs driver now reads into recycled
 * buffers, which the front ends give back once the socket has written them.
 *
 * What that risks is a buffer given back while its bytes are still on their way out: the
 * next read, for this blob or another, would overwrite them. So this pulls two different
 * blobs at once through the real server, on both front ends, one of them by a client that
 * keeps stopping reading (the socket's writes then queue and complete late), and checks
 * every byte by its digest.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { startServer, type RunningServer } from '../../src/server.js';

function send(port: number, method: string, path: string, body?: Buffer): Promise<{ status: number; location: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, headers: { 'content-length': body?.length ?? 0 } }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, location: res.headers.location }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** GETs a blob and returns its digest; a slow client pauses after every piece it gets. */
function pullDigest(port: number, path: string, slow: boolean): Promise<{ status: number; digest: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path }, (res) => {
      const hash = createHash('sha256');
      let bytes = 0;
      res.on('data', (chunk: Buffer) => {
        hash.update(chunk);
        bytes += chunk.length;
        if (slow) {
          res.pause();
          setTimeout(() => res.resume(), 2);
        }
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, digest: `sha256:${hash.digest('hex')}`, bytes }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

describe.each(['node', 'uws'] as const)('issue 16: blob GETs through recycled read buffers (%s front end)', (frontend) => {
  let server: RunningServer;
  let root: string;
  const blobs = [randomBytes(6 * 1024 * 1024 + 123), randomBytes(5 * 1024 * 1024 + 77)];
  const digests = blobs.map((b) => `sha256:${createHash('sha256').update(b).digest('hex')}`);

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'hoist-issue16-'));
    const config = loadConfig({
      overrides: { listen: '127.0.0.1:0', storage: `fs:${root}`, frontend, logLevel: 'silent', uploads: { hashThreads: 1 } },
    });
    server = await startServer(config, pino({ level: 'silent' }));
    for (const [i, blob] of blobs.entries()) {
      const start = await send(server.port, 'POST', `/v2/issue16/blobs/uploads/?digest=${digests[i]}`, blob);
      expect(start.status).toBe(201);
    }
  });

  afterAll(async () => {
    await server?.close();
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('serves every byte of two blobs pulled at once, one by a client that keeps pausing, three times over', async () => {
    for (let round = 0; round < 3; round++) {
      const got = await Promise.all([
        pullDigest(server.port, `/v2/issue16/blobs/${digests[0]}`, true),
        pullDigest(server.port, `/v2/issue16/blobs/${digests[1]}`, false),
        pullDigest(server.port, `/v2/issue16/blobs/${digests[1]}`, true),
      ]);
      expect(got.map((g) => g.status)).toEqual([200, 200, 200]);
      expect(got.map((g) => g.bytes)).toEqual([blobs[0]!.length, blobs[1]!.length, blobs[1]!.length]);
      expect(got.map((g) => g.digest)).toEqual([digests[0], digests[1], digests[1]]);
    }
  });
});
