import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ReadinessCheck } from '../health.js';
import type { HoistMetrics } from './metrics.js';

/**
 * The operations listener (`metrics.listen`): a plain node:http server of its own, apart from
 * the registry's port, so that scrapes and probes never wait behind uploads, never pass the
 * registry's auth, and can be kept off the public network.
 *
 *   GET /metrics  →  200, text/plain; version=0.0.4   (Prometheus text exposition)
 *   GET /healthz  →  200 {"status":"ok"}              (the process answers)
 *   GET /readyz   →  200 {"status":"ready"}, or 503 {"status":"not ready","reason":"..."}
 *
 * HEAD works on each; anything else is 404 (unknown path) or 405 (other method).
 */
export class MetricsListener {
  readonly #server: Server;

  constructor(metrics: HoistMetrics, readiness: ReadinessCheck) {
    this.#server = createServer({ keepAlive: true }, (req, res) => {
      void serve(req, res, metrics, readiness).catch((err: unknown) => {
        if (!res.headersSent) send(res, req, 500, 'application/json', JSON.stringify({ error: String((err as Error)?.message ?? err) }));
        else res.destroy();
      });
    });
    // Scrapes and probes are tiny; a client that sends no headers is cut off early.
    this.#server.headersTimeout = 10_000;
    this.#server.requestTimeout = 30_000;
  }

  /** Resolves with the bound port (port 0 picks a free one). */
  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(port, host, () => {
        this.#server.off('error', reject);
        resolve((this.#server.address() as AddressInfo).port);
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }
}

async function serve(req: IncomingMessage, res: ServerResponse, metrics: HoistMetrics, readiness: ReadinessCheck): Promise<void> {
  const path = (req.url ?? '/').split('?')[0];
  const known = path === '/metrics' || path === '/healthz' || path === '/readyz';
  if (!known) return send(res, req, 404, 'application/json', JSON.stringify({ error: 'not found: try /metrics, /healthz or /readyz' }));
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('allow', 'GET, HEAD');
    return send(res, req, 405, 'application/json', JSON.stringify({ error: 'method not allowed' }));
  }
  if (path === '/metrics') return send(res, req, 200, metrics.contentType, await metrics.metrics());
  if (path === '/healthz') return send(res, req, 200, 'application/json', JSON.stringify({ status: 'ok' }));
  const r = await readiness.check();
  send(res, req, r.ready ? 200 : 503, 'application/json', JSON.stringify(r.ready ? { status: 'ready' } : { status: 'not ready', reason: r.reason }));
}

function send(res: ServerResponse, req: IncomingMessage, status: number, contentType: string, body: string): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  res.end(req.method === 'HEAD' ? undefined : body);
}
