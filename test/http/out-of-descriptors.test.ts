import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../helpers/http.js';
import { MEDIA_TYPES, makeImage, pushImage, sha256 } from '../helpers/oci.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * fs storage in a process out of file descriptors (EMFILE: idle connections hold them too, so
 * anyone who can open 1,000 TCP connections can cause it): every storage request answered
 * 500 UNKNOWN, which clients do not retry, where a store that cannot answer for now gets 503
 * UNAVAILABLE. The driver mapped only ENOSPC, EDQUOT and EROFS to its storage-unavailable
 * error. Found by probing with `ulimit -n 300` and 400 idle connections.
 *
 * The server's soft descriptor limit is lowered, while it runs, to the number it has open
 * (prlimit(1)), so that nothing more can be opened; the requests go on a connection opened
 * before. Raised again, the same requests succeed.
 */

function hasPrlimit(): boolean {
  try {
    execFileSync('prlimit', ['--version'], { stdio: 'ignore' });
    return process.platform === 'linux';
  } catch {
    return false;
  }
}

interface Answer { status: number; code: string | undefined; text?: string }

describe.skipIf(!hasPrlimit()).each(['node', 'uws'] as const)('fs storage out of file descriptors (%s front end)', (frontend) => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let server: TestServer;
  // One connection, opened before the limit is lowered, for every request.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const image = makeImage({ layerSizesBytes: [4096] });
  const layer = image.layers[0]!.descriptor.digest;

  beforeAll(async () => {
    dir = await tempDir('hoist-emfile-');
    server = await startServer({ storage: `fs:${dir.path}/storage`, frontend });
    await pushImage(server.url, 'fd/app', 'v1', image);
  });

  afterAll(async () => {
    agent.destroy();
    await server?.kill();
    await dir?.cleanup();
  });

  function ask(method: string, path: string, body?: Buffer): Promise<Answer> {
    return new Promise((resolve, reject) => {
      const headers: Record<string, string | number> = { accept: MEDIA_TYPES.imageManifest };
      if (body) headers['content-length'] = body.byteLength;
      const req = http.request({ host: '127.0.0.1', port: server.port, method, path, agent, headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          const code = /"code":"([A-Z_]+)"/.exec(text)?.[1];
          resolve(path === '/readyz' ? { status: res.statusCode ?? 0, code, text } : { status: res.statusCode ?? 0, code });
        });
      });
      req.on('error', reject);
      req.end(body);
    });
  }

  const requests: Array<[string, string, string, Buffer?]> = [
    ['manifest GET', 'GET', '/v2/fd/app/manifests/v1'],
    ['manifest HEAD', 'HEAD', '/v2/fd/app/manifests/v1'],
    ['blob GET', 'GET', `/v2/fd/app/blobs/${layer}`],
    ['tags/list', 'GET', '/v2/fd/app/tags/list'],
    ['monolithic POST', 'POST', `/v2/fd/app/blobs/uploads/?digest=${sha256(Buffer.from('new'))}`, Buffer.from('new')],
  ];

  it('answers 503 UNAVAILABLE, which clients retry, and serves again once descriptors are free', async () => {
    expect((await ask('GET', '/v2/')).status).toBe(200);
    const soft = execFileSync('prlimit', ['--pid', String(server.pid), '--nofile', '--output=SOFT', '--noheadings'], { encoding: 'utf8' }).trim();
    // A new descriptor takes the lowest free number, and fails (EMFILE) if that is not below the limit.
    const open = new Set(readdirSync(`/proc/${server.pid}/fd`).map(Number));
    let lowestFree = 0;
    while (open.has(lowestFree)) lowestFree++;
    execFileSync('prlimit', ['--pid', String(server.pid), `--nofile=${lowestFree}:`]);
    const during: Record<string, Answer> = {};
    try {
      for (const [what, method, path, body] of requests) during[what] = await ask(method, path, body);
      during.readyz = await ask('GET', '/readyz');
    } finally {
      execFileSync('prlimit', ['--pid', String(server.pid), `--nofile=${soft}:`]);
    }
    // HEAD has no body: its code cannot be seen.
    const expected: Record<string, Answer> = Object.fromEntries(requests.map(([what, method]) => [what, { status: 503, code: method === 'HEAD' ? undefined : 'UNAVAILABLE' }]));
    expected.readyz = { status: 503, code: undefined, text: JSON.stringify({ status: 'not ready', reason: 'storage (fs) failed: EMFILE' }) };
    expect(during).toEqual(expected);
    const after: Record<string, number> = {};
    for (const [what, method, path, body] of requests) after[what] = (await ask(method, path, body)).status;
    expect(after).toEqual({ 'manifest GET': 200, 'manifest HEAD': 200, 'blob GET': 200, 'tags/list': 200, 'monolithic POST': 201 });
  });
});
