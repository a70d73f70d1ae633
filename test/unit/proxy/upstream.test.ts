import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../../src/logger.js';
import { UpstreamClient, UpstreamUnavailableError } from '../../../src/proxy/upstream.js';

/**
 * Found by probing (2026-12-03): an upstream that sent a manifest's headers and then stalled,
 * or dripped a byte every few seconds, held the cache's fetch of that tag, and with it every
 * client pulling the tag, for five minutes (node's own body timeout) or for ever; a cached tag
 * was not served meanwhile. A small body (manifest, tag list, token) must now arrive whole
 * within the time allowed for headers. Against a real HTTP server on loopback.
 */

const INDEX = Buffer.from('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}');
const timers: NodeJS.Timeout[] = [];
let upstream: http.Server;
let url: string;

beforeAll(async () => {
  upstream = http.createServer((req, res) => {
    const path = req.url ?? '';
    if (path.startsWith('/token')) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"tok');
      return; // and never the rest
    }
    if (path.startsWith('/v2/tokened/')) {
      res.writeHead(401, { 'www-authenticate': `Bearer realm="${url}/token",service="up"` }).end();
      return;
    }
    const type = { 'content-type': 'application/vnd.oci.image.index.v1+json', 'content-length': String(INDEX.byteLength) };
    if (path === '/v2/stall/img/manifests/v1') {
      res.writeHead(200, type);
      res.write(INDEX.subarray(0, 10));
    } else if (path === '/v2/drip/img/manifests/v1') {
      res.writeHead(200, type);
      let i = 0;
      const t = setInterval(() => {
        if (i < INDEX.byteLength) res.write(INDEX.subarray(i, ++i));
        else clearInterval(t);
      }, 50);
      timers.push(t);
    } else if (path === '/v2/fine/img/manifests/v1') {
      res.writeHead(200, type).end(INDEX);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
});

afterAll(() => {
  for (const t of timers) clearInterval(t);
  upstream.closeAllConnections();
  upstream.close();
});

const client = (): UpstreamClient => new UpstreamClient({
  remoteUrl: url,
  log: createLogger('silent', new Writable({ write: (_c, _e, cb) => cb() })),
  headersTimeoutMs: 500,
  maxMetadataRequests: 32,
});

describe('UpstreamClient: small bodies arrive whole in time, or the upstream is unavailable', () => {
  it('reads a manifest that comes at once', async () => {
    const m = await client().getManifest('fine/img', 'v1', 4 * 1024 * 1024);
    expect(m.bytes.equals(INDEX)).toBe(true);
  });

  it.each(['stall', 'drip'])('a manifest body that %ss after its headers: unavailable within the deadline', async (how) => {
    const started = performance.now();
    const err = await client().getManifest(`${how}/img`, 'v1', 4 * 1024 * 1024).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UpstreamUnavailableError);
    expect((err as Error).message).toMatch(/not complete within 500 ms/);
    expect(performance.now() - started).toBeLessThan(2000);
  });

  it('a token service that stalls mid-body: unavailable within the deadline', async () => {
    const started = performance.now();
    const err = await client().getManifest('tokened/img', 'v1', 4 * 1024 * 1024).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UpstreamUnavailableError);
    expect(performance.now() - started).toBeLessThan(2000);
  });
});
