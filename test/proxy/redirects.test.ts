import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { networkInterfaces } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeSelfSigned } from '../auth/fixtures.js';
import { expectError, request, tempDir, waitFor } from '../helpers/http.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * Redirects of a pull-through cache's upstream, found by probing: fetch() followed every
 * redirect of a blob, 20 deep, from https to http, and to 127.0.0.1 or the cloud's metadata
 * service (169.254.169.254) alike, so that an upstream (or whoever controls where its blobs
 * redirect) could make the cache fetch from services only its host may reach. Now redirects
 * are followed by hand: at most 5, never from https to http, never to a loopback or
 * link-local address unless the upstream is at one itself; a refused one is a 503, and logged.
 * Credentials go to the upstream's origin only (fetch() did that too: this guards it).
 *
 * A redirect to a loopback address is refused only for an upstream that is not at one, so
 * the cache under test must reach its upstream at an address that is not loopback: this
 * machine's own address on a network interface (not a name that resolves to loopback, which
 * is loopback to the cache, rightly). The servers listen on every address, so the same
 * servers are loopback for the other caches here.
 */

const USER = 'mirror-user';
const PASSWORD = 'mirror-secret';
const BASIC = `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}`;

const blob = randomBytes(32 * 1024);
const digest = `sha256:${createHash('sha256').update(blob).digest('hex')}`;

/** This machine's first IPv4 address that is not loopback; the refusals below need one. */
const external = Object.values(networkInterfaces()).flat().find((i) => i && i.family === 'IPv4' && !i.internal)?.address;

/** Where redirects lead: serves the blob at /cdn/..., and notes what it was sent. */
let target: http.Server;
const targetSaw: string[] = [];
/** The upstream: what its blobs do depends on the repository (see the handler). */
let upstream: http.Server;
/** The same upstream over https (a self-signed certificate the caches are told to trust). */
let secureUpstream: https.Server;
/** Upstream at this machine's external address (not loopback), with credentials. */
let remote: TestServer | undefined;
/** Upstream at 127.0.0.1, with credentials. */
let local: TestServer;
/** Upstream at https://127.0.0.1. */
let secure: TestServer;
let cleanup: () => Promise<void>;

const portOf = (s: http.Server | https.Server): number => (s.address() as AddressInfo).port;

/** Hosts the upstream redirects blobs to, by the code in a repository's name (`away/<code>`). */
function targetHost(code: string): string {
  const port = portOf(target);
  switch (code) {
    case 'loopback': return `127.0.0.1:${port}`;
    case 'zero': return `0.0.0.0:${port}`;
    case 'localhost': return `localhost:${port}`;
    case 'mapped': return `[::ffff:127.0.0.1]:${port}`;
    case 'external': return `${external}:${port}`;
    default: throw new Error(`no target ${code}`);
  }
}

/**
 * The upstream, by repository:
 *   away/<code>    302 to the target (targetHost)
 *   auth/<code>    wants the credentials; 307 within the upstream to /same/<code>/..., which
 *                  wants them too, then 302 to the target
 *   chain/<n>      n redirects within the upstream (/hop/<left>/...), then the blob
 *   realm/<code>   401 with a bearer challenge whose realm is the target (targetHost)
 */
function handler(req: http.IncomingMessage, res: http.ServerResponse): void {
  const url = req.url ?? '/';
  const m = /^\/v2\/(away|auth|chain|realm)\/(\w+)\/blobs\/sha256:[0-9a-f]{64}$/.exec(url) ?? /^\/(same|hop)\/(\w+)\/sha256:[0-9a-f]{64}$/.exec(url);
  if (!m) {
    res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"NAME_UNKNOWN"}]}');
    return;
  }
  const [, kind, param] = m as unknown as [string, string, string];
  if ((kind === 'auth' || kind === 'same') && req.headers.authorization !== BASIC) {
    res.writeHead(401, { 'www-authenticate': 'Basic realm="upstream"' }).end();
  } else if (kind === 'realm') {
    res.writeHead(401, { 'www-authenticate': `Bearer realm="http://${targetHost(param)}/token",service="upstream"` }).end();
  } else if (kind === 'auth') {
    res.writeHead(307, { location: `/same/${param}/${digest}` }).end();
  } else if (kind === 'chain' || kind === 'hop') {
    const left = Number(param);
    if (left === 0) res.writeHead(200, { 'content-length': String(blob.byteLength) }).end(blob);
    else res.writeHead(302, { location: `/hop/${left - 1}/${digest}` }).end();
  } else {
    res.writeHead(302, { location: `http://${targetHost(param)}/cdn/${digest}` }).end();
  }
}

beforeAll(async () => {
  target = http.createServer((req, res) => {
    targetSaw.push(`${req.url} ${req.headers.authorization ?? '-'}`);
    res.writeHead(200, { 'content-length': String(blob.byteLength) }).end(blob);
  });
  upstream = http.createServer(handler);
  let dir: string;
  ({ path: dir, cleanup } = await tempDir('hoist-redirects-'));
  const { certFile, keyFile } = writeSelfSigned(dir, 'upstream');
  secureUpstream = https.createServer({ cert: readFileSync(certFile), key: readFileSync(keyFile) }, handler);
  // Every address: loopback for two of the caches, the external one for the third.
  await Promise.all([target, upstream, secureUpstream].map((s) => new Promise<void>((resolve) => s.listen(0, '0.0.0.0', resolve))));
  const credentials = { HOIST_PROXY_USERNAME: USER, HOIST_PROXY_PASSWORD: PASSWORD };
  local = await startServer({ frontend: 'node', env: { HOIST_PROXY_REMOTE_URL: `http://127.0.0.1:${portOf(upstream)}`, ...credentials } });
  secure = await startServer({
    frontend: 'node',
    env: { HOIST_PROXY_REMOTE_URL: `https://127.0.0.1:${portOf(secureUpstream)}`, NODE_EXTRA_CA_CERTS: certFile },
  });
  if (external) remote = await startServer({ frontend: 'node', env: { HOIST_PROXY_REMOTE_URL: `http://${external}:${portOf(upstream)}`, ...credentials } });
});

afterAll(async () => {
  await remote?.stop();
  await local?.stop();
  await secure?.stop();
  for (const s of [target, upstream, secureUpstream]) {
    s?.closeAllConnections();
    s?.close();
  }
  await cleanup?.();
});

const refusals = (server: TestServer, reason: string): number => server.records().filter((r) => r.msg === 'upstream redirect refused' && r.reason === reason).length;

/** Waits for a refusal's warning past the `seen` before (the log line may come after the response). */
const refusedLog = (server: TestServer, reason: string, seen = 0): Promise<unknown> =>
  waitFor(`upstream redirect refused (${reason})`, () => (refusals(server, reason) > seen ? true : undefined), 5_000);

describe('redirects of a pull-through cache\'s upstream', () => {
  it('an upstream at a loopback address may redirect to one', async () => {
    const r = await request(local.url, `/v2/away/loopback/blobs/${digest}`);
    expect(r.status, r.text()).toBe(200);
    expect(r.body.equals(blob)).toBe(true);
  });

  it('follows 5 redirects, and refuses a sixth (503, logged)', async () => {
    const five = await request(local.url, `/v2/chain/5/blobs/${digest}`);
    expect(five.status, five.text()).toBe(200);
    expect(five.body.equals(blob)).toBe(true);
    const six = await request(local.url, `/v2/chain/6/blobs/${digest}`);
    expectError(six, 503, 'UNAVAILABLE');
    expect(six.text()).toContain('redirect refused (more than 5 redirects)');
    await refusedLog(local, 'more than 5 redirects');
  });

  it('sends the credentials to the upstream after a redirect within it, never to a host it redirected to', async () => {
    targetSaw.length = 0;
    const r = await request(local.url, `/v2/auth/localhost/blobs/${digest}`);
    expect(r.status, r.text()).toBe(200);
    expect(r.body.equals(blob)).toBe(true);
    expect(targetSaw).toEqual([`/cdn/${digest} -`]);
  });

  it('refuses a redirect from https to http (503, logged)', async () => {
    targetSaw.length = 0;
    const r = await request(secure.url, `/v2/away/loopback/blobs/${digest}`);
    expectError(r, 503, 'UNAVAILABLE');
    expect(r.text()).toContain('redirect refused (from https to http)');
    await refusedLog(secure, 'from https to http');
    expect(targetSaw).toEqual([]);
  });

  // Conditional, not skipped: without an address other than loopback, no upstream can be
  // reached at one, and these refusals cannot be shown.
  if (external) {
    it('an upstream at another address may redirect to another (the credentials stay behind)', async () => {
      targetSaw.length = 0;
      const r = await request(remote!.url, `/v2/auth/external/blobs/${digest}`);
      expect(r.status, r.text()).toBe(200);
      expect(r.body.equals(blob)).toBe(true);
      expect(targetSaw).toEqual([`/cdn/${digest} -`]);
    });

    it.each([
      ['127.0.0.1', 'loopback'],
      ['0.0.0.0', 'zero'],
      ['localhost (a name of a loopback address)', 'localhost'],
      ['::ffff:127.0.0.1 (IPv4-mapped)', 'mapped'],
    ])('an upstream at another address may not redirect to %s (503, logged)', async (_, code) => {
      targetSaw.length = 0;
      const seen = refusals(remote!, 'to a loopback or link-local address');
      const r = await request(remote!.url, `/v2/away/${code}/blobs/${digest}`);
      expectError(r, 503, 'UNAVAILABLE');
      expect(r.text()).toContain('redirect refused (to a loopback or link-local address)');
      expect(targetSaw, 'the target was never asked').toEqual([]);
      await refusedLog(remote!, 'to a loopback or link-local address', seen);
    });

    // A name is checked by what it resolves to where it is connected to, not by a lookup
    // before: one DNS server answering a public address for the check and 127.0.0.1 for the
    // connection (rebinding) got the cache to its own loopback. The log names the address
    // the connection resolved it to.
    it('refuses localhost where it connects (the log names the address it resolved to)', async () => {
      targetSaw.length = 0;
      const r = await request(remote!.url, `/v2/away/localhost/blobs/${digest}`);
      expectError(r, 503, 'UNAVAILABLE');
      expect(r.text()).toContain('redirect refused (to a loopback or link-local address)');
      const logged = await waitFor('the refusal at connect', () => remote!.records().find((x) => x.msg === 'upstream redirect refused' && x.to === `localhost:${portOf(target)}` && x.address !== undefined));
      expect(['127.0.0.1', '::1']).toContain(logged.address);
      expect(logged.hop).toBe(1);
      expect(targetSaw, 'the target was never asked').toEqual([]);
    });

    it('refuses a token realm at localhost where it connects (503, logged; the realm never asked)', async () => {
      targetSaw.length = 0;
      const r = await request(remote!.url, `/v2/realm/localhost/blobs/${digest}`);
      expectError(r, 503, 'UNAVAILABLE');
      expect(r.text()).toContain('token realm refused (a loopback or link-local address)');
      const logged = await waitFor('the realm refused', () => remote!.records().find((x) => x.msg === 'upstream token realm refused: a loopback or link-local address'));
      expect(['127.0.0.1', '::1']).toContain(logged.address);
      expect(targetSaw, 'the realm was never asked').toEqual([]);
    });
  }
});
