import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { s3Operation } from '../../test/helpers/faulty-proxy.js';

/**
 * A proxy between a registry and its S3 endpoint that counts the requests passing through,
 * by S3 operation, for benches that report "store requests per operation" (tags.ts,
 * gc-scale.ts). Requests pass through untouched (SigV4 signs the Host header, which is kept).
 * Hoist's background requests (gc/guard.ts: the lease polls, the presence heartbeats) run
 * whatever the clients do; they are counted apart.
 */

export interface Counts {
  total: number;
  byKind: Record<string, number>;
}

export interface CountingProxy {
  readonly endpoint: string;
  /** A point in the request log. */
  mark(): number;
  /** Requests since `mark` (those `where` keeps, by default all), background ones left out. */
  since(mark: number, where?: (op: string, path: string) => boolean): Counts;
  /** The background requests seen, and over how long. */
  background(): { count: number; seconds: number };
  close(): Promise<void>;
}


/** Hoist's lease polls and presence heartbeats (gc/guard.ts). */
function isBackground(method: string, path: string): boolean {
  return (method === 'HEAD' && path.endsWith('/gc/lease')) || (method === 'PUT' && path.includes('/gc/servers/'));
}

export async function startCountingProxy(target: string): Promise<CountingProxy> {
  const to = new URL(target);
  const log: Array<{ op: string; path: string }> = [];
  let bg = 0;
  const t0 = Date.now();
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://proxy');
    const path = decodeURIComponent(url.pathname);
    if (isBackground(req.method ?? 'GET', path)) bg++;
    else log.push({ op: s3Operation(req.method ?? 'GET', url.searchParams), path });
    const upstream = http.request({ host: to.hostname, port: to.port, method: req.method, path: req.url, headers: req.headers }, (up) => {
      res.writeHead(up.statusCode ?? 502, up.headers);
      up.pipe(res);
    });
    upstream.on('error', () => req.socket.destroy());
    req.pipe(upstream);
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    mark: () => log.length,
    since(mark, where) {
      const byKind: Record<string, number> = {};
      let total = 0;
      for (const { op, path } of log.slice(mark)) {
        if (where && !where(op, path)) continue;
        byKind[op] = (byKind[op] ?? 0) + 1;
        total++;
      }
      return { total, byKind };
    },
    background: () => ({ count: bg, seconds: (Date.now() - t0) / 1000 }),
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}
