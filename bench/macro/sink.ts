import { randomFillSync, randomUUID } from 'node:crypto';
import http from 'node:http';
import { parseArgs } from 'node:util';

/**
 * The load generator's ceiling: a server that speaks just enough of the OCI blob API for the
 * load generator's request shapes, and discards every byte. It trusts the client's digest,
 * stores nothing, and serves pulls from one reused buffer. A registry can't beat it on this
 * machine, so "ratio to sink" is how close a registry gets to what the client can send.
 *
 *   node dist/bench/macro/sink.js --listen 127.0.0.1:0
 *
 * Logs `{"msg":"listening","port":N}` like hoist, so the runner starts both the same way.
 */

const UPLOADS = /^\/v2\/(.+)\/blobs\/uploads\/([^/]*)$/;
const BLOB = /^\/v2\/(.+)\/blobs\/(sha256:[0-9a-f]{64})$/;
/** Pulls are served from this buffer over and over; content doesn't matter to the client. */
const PULL_SLICE = randomFillSync(Buffer.allocUnsafe(4 * 1024 ** 2));

/** Upload session offsets and committed blob sizes; both tiny, so never evicted. */
const sessions = new Map<string, number>();
const blobs = new Map<string, number>();

function reply(res: http.ServerResponse, status: number, headers: Record<string, string | number> = {}): void {
  res.writeHead(status, { 'content-length': 0, 'docker-distribution-api-version': 'registry/2.0', ...headers });
  res.end();
}

/** Counts and drops the request body. */
function discard(req: http.IncomingMessage): Promise<number> {
  return new Promise((resolve, reject) => {
    let n = 0;
    req.on('data', (c: Buffer) => { n += c.length; });
    req.on('end', () => resolve(n));
    req.on('error', reject);
  });
}

function commit(res: http.ServerResponse, name: string, digest: string, size: number): void {
  blobs.set(digest, size);
  reply(res, 201, { location: `/v2/${name}/blobs/${digest}`, 'docker-content-digest': digest });
}

async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://sink');
  const digest = url.searchParams.get('digest');
  const up = UPLOADS.exec(url.pathname);
  const blob = BLOB.exec(url.pathname);
  const n = await discard(req);
  if (url.pathname === '/v2/' && req.method === 'GET') return reply(res, 200);
  if (up && req.method === 'POST' && up[2] === '') {
    if (digest) return commit(res, up[1]!, digest, n);
    const id = randomUUID();
    sessions.set(id, 0);
    return reply(res, 202, { location: `/v2/${up[1]}/blobs/uploads/${id}`, range: '0-0', 'docker-upload-uuid': id });
  }
  const offset = up ? sessions.get(up[2]!) : undefined;
  if (up && offset !== undefined && req.method === 'PATCH') {
    sessions.set(up[2]!, offset + n);
    return reply(res, 202, { location: url.pathname, range: `0-${offset + n - 1}`, 'docker-upload-uuid': up[2]! });
  }
  if (up && offset !== undefined && req.method === 'PUT' && digest) {
    sessions.delete(up[2]!);
    return commit(res, up[1]!, digest, offset + n);
  }
  const size = blob ? blobs.get(blob[2]!) : undefined;
  if (blob && size !== undefined && (req.method === 'GET' || req.method === 'HEAD')) {
    res.writeHead(200, { 'content-length': size, 'content-type': 'application/octet-stream', 'docker-content-digest': blob[2]! });
    if (req.method === 'HEAD') return void res.end();
    for (let left = size; left > 0; left -= PULL_SLICE.length) {
      if (!res.write(PULL_SLICE.subarray(0, Math.min(left, PULL_SLICE.length)))) {
        await new Promise<void>((resolve) => {
          const done = (): void => { res.off('drain', done); res.off('close', done); resolve(); };
          res.on('drain', done);
          res.on('close', done);
        });
        if (res.destroyed) return;
      }
    }
    return void res.end();
  }
  reply(res, 404);
}

const { values } = parseArgs({ options: { listen: { type: 'string', default: '127.0.0.1:0' } } });
const [host, port] = values.listen!.split(/:(?=\d+$)/);
const server = http.createServer((req, res) => {
  handle(req, res).catch(() => res.destroy());
});
// Large bodies at full speed: don't let the default 5 min request timeout cut a slow run.
server.requestTimeout = 0;
server.listen(Number(port), host, () => {
  const addr = server.address();
  console.log(JSON.stringify({ level: 30, msg: 'listening', port: typeof addr === 'object' && addr ? addr.port : Number(port) }));
});
// Nothing to flush or keep: exit at once.
process.on('SIGTERM', () => process.exit(0));
