import { X509Certificate } from 'node:crypto';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../helpers/commands.js';
import { request, waitForLog } from '../helpers/http.js';
import { startServer, tail, type TestServer } from '../helpers/server.js';
import { parseChallenge, writeConfig, writeHtpasswd, writeLayout, writeSelfSigned } from './fixtures.js';

/**
 * HTTPS on the node:http front end: the configured certificate is served, SIGHUP swaps in
 * the files' new contents (and keeps the old ones when the new do not load), bad files stop
 * start-up naming the option, 'auto' picks node:http for TLS and 'uws' refuses it, and the
 * token realm Hoist names for itself is https. skopeo logs in and copies over it.
 */

interface HttpsReply {
  status: number;
  body: string;
  headers: Record<string, string | string[] | undefined>;
  fingerprint: string;
}

function httpsGet(port: number, path: string, headers: Record<string, string> = {}): Promise<HttpsReply> {
  return new Promise((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port, path, headers, rejectUnauthorized: false, agent: false }, (res) => {
      const fingerprint = (res.socket as import('node:tls').TLSSocket).getPeerCertificate().fingerprint256;
      let body = '';
      res.setEncoding('utf8').on('data', (s: string) => { body += s; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers, fingerprint }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function fingerprintOf(certFile: string): Promise<string> {
  return new X509Certificate(await readFile(certFile)).fingerprint256;
}

let work: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'hoist-auth-tls-'));
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe('TLS with certificate reload on SIGHUP', () => {
  let server: TestServer;
  let live: { certFile: string; keyFile: string };
  let first: { certFile: string; keyFile: string };
  let second: { certFile: string; keyFile: string };

  beforeAll(async () => {
    first = writeSelfSigned(work, 'first');
    second = writeSelfSigned(work, 'second');
    live = { certFile: join(work, 'live.crt'), keyFile: join(work, 'live.key') };
    await copyFile(first.certFile, live.certFile);
    await copyFile(first.keyFile, live.keyFile);
    server = await startServer({
      storage: 'memory:',
      env: { HOIST_TLS_CERT_FILE: live.certFile, HOIST_TLS_KEY_FILE: live.keyFile },
    });
  });

  afterAll(async () => {
    await server?.kill();
  });

  it("'auto' serves TLS on node:http and says why", () => {
    expect(server.frontend).toBe('node');
    const listening = server.records().find((r) => r.msg === 'listening');
    expect(listening?.tls).toBe(true);
    expect(server.records().some((r) => String(r.reason ?? '').includes('only the node:http front end serves HTTPS'))).toBe(true);
  });

  it('serves the configured certificate, HTTP/1.1, and the registry behind it', async () => {
    const r = await httpsGet(server.port, '/v2/');
    expect(r.status).toBe(200);
    expect(r.headers['docker-distribution-api-version']).toBe('registry/2.0');
    expect(r.fingerprint).toBe(await fingerprintOf(first.certFile));
  });

  // As Go's servers (distribution's) answer it: node's TLS layer reset the connection.
  it('answers plain HTTP on the TLS port with a 400 that says so', async () => {
    const r = await request(server.url, '/v2/', { timeoutMs: 5000 });
    expect(r.status).toBe(400);
    expect(r.body.toString()).toMatch(/HTTP request to an HTTPS server/);
    expect((await httpsGet(server.port, '/v2/')).status).toBe(200);
    // A client that keeps its side open after the 400 (found by probing: it held a
    // descriptor for good, and one that trickled bytes too) is cut off soon after.
    const s = net.connect({ port: server.port, host: '127.0.0.1', allowHalfOpen: true });
    s.on('error', () => undefined);
    let reply = '';
    s.setEncoding('latin1').on('data', (d: string) => (reply += d));
    s.write('GET /v2/ HTTP/1.1\r\nHost: x\r\n');
    const trickle = setInterval(() => s.write('x'), 300);
    const closedAfter = await new Promise<number>((resolve) => {
      const t0 = Date.now();
      s.on('close', () => resolve(Date.now() - t0));
      setTimeout(() => resolve(Infinity), 15_000).unref();
    });
    clearInterval(trickle);
    s.destroy();
    expect(reply).toMatch(/^HTTP\/1\.1 400/);
    expect(closedAfter).toBeLessThan(6000);
  });

  it('SIGHUP loads the new certificate for new connections', async () => {
    await copyFile(second.certFile, live.certFile);
    await copyFile(second.keyFile, live.keyFile);
    process.kill(server.pid, 'SIGHUP');
    await waitForLog(server, 'the reload line', (r) => r.msg === 'reloaded the htpasswd file and TLS certificate');
    expect((await httpsGet(server.port, '/v2/')).fingerprint).toBe(await fingerprintOf(second.certFile));
  });

  it('a SIGHUP with files that do not load keeps the certificate it has, and says so', async () => {
    await writeFile(live.certFile, 'not a certificate');
    process.kill(server.pid, 'SIGHUP');
    await waitForLog(server, 'the failed reload line', (r) => r.msg === 'reload failed; still using what was loaded before');
    const r = await httpsGet(server.port, '/v2/');
    expect(r.status).toBe(200);
    expect(r.fingerprint).toBe(await fingerprintOf(second.certFile));
    expect(await server.stop()).toBe(0);
  });
});

describe('TLS start-up errors', () => {
  async function startFails(env: Record<string, string>, args: string[] = []): Promise<string> {
    const err = await startServer({ storage: 'memory:', env, args, startTimeoutMs: 10_000 }).then(
      async (s) => {
        await s.kill();
        return undefined;
      },
      (e: Error) => e,
    );
    expect(err, 'the server should not start').toBeInstanceOf(Error);
    return err!.message;
  }

  it('a missing certificate file names tls.certFile', async () => {
    const message = await startFails({ HOIST_TLS_CERT_FILE: join(work, 'missing.crt'), HOIST_TLS_KEY_FILE: join(work, 'missing.key') });
    expect(message).toMatch(/tls\.certFile: cannot read .*missing\.crt/);
  });

  it('a key that does not match the certificate names both options', async () => {
    const a = writeSelfSigned(work, 'mismatch-a');
    const b = writeSelfSigned(work, 'mismatch-b');
    const message = await startFails({ HOIST_TLS_CERT_FILE: a.certFile, HOIST_TLS_KEY_FILE: b.keyFile });
    expect(message).toMatch(/tls\.certFile, tls\.keyFile: .*(key values mismatch|mismatch)/i);
  });

  // OpenSSL matches a key against a certificate of its own kind only: an RSA key beside an
  // EC certificate started the server, and every handshake failed.
  it('a key of another kind than the certificate names both options', async () => {
    const a = writeSelfSigned(work, 'kind');
    const rsaKey = join(work, 'kind-rsa.key');
    await run('openssl', ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', rsaKey]);
    const message = await startFails({ HOIST_TLS_CERT_FILE: a.certFile, HOIST_TLS_KEY_FILE: rsaKey });
    expect(message).toMatch(/tls\.certFile, tls\.keyFile: .*key values mismatch/i);
  });

  it('only one of the two files → tls.keyFile required', async () => {
    const a = writeSelfSigned(work, 'half');
    const message = await startFails({ HOIST_TLS_CERT_FILE: a.certFile });
    expect(message).toMatch(/tls\.keyFile.*Required/);
  });

  it("--frontend uws with TLS stops start-up, saying why", async () => {
    const a = writeSelfSigned(work, 'uws');
    const message = await startFails({ HOIST_TLS_CERT_FILE: a.certFile, HOIST_TLS_KEY_FILE: a.keyFile }, ['--frontend', 'uws']);
    expect(message).toMatch(/uWebSockets\.js front end serves plain HTTP only/);
  });
});

describe('TLS connections that never finish their handshake', () => {
  let server: TestServer;

  beforeAll(async () => {
    const cert = writeSelfSigned(work, 'silent');
    server = await startServer({
      storage: 'memory:',
      env: { HOIST_TLS_CERT_FILE: cert.certFile, HOIST_TLS_KEY_FILE: cert.keyFile, HOIST_LIMITS_IDLE_TIMEOUT: '1s' },
    });
  });

  afterAll(async () => {
    await server?.kill();
  });

  // The clientError handler answered the handshake's timeout with an HTTP 400 on a socket that
  // had no TLS session: the write never flushed, its callback never destroyed the socket, and
  // every silent connection stayed open for good (a descriptor each).
  it('a client that connects and says nothing is dropped after the idle timeout', async () => {
    const sockets = Array.from({ length: 5 }, () => net.connect(server.port, '127.0.0.1'));
    const closedAfter = await Promise.all(sockets.map((s) => new Promise<number>((resolve) => {
      const t0 = Date.now();
      s.on('error', () => undefined);
      s.on('close', () => resolve(Date.now() - t0));
      setTimeout(() => resolve(Infinity), 15_000).unref();
    })));
    for (const s of sockets) s.destroy();
    for (const ms of closedAfter) expect(ms).toBeLessThan(10_000);
    expect((await httpsGet(server.port, '/v2/')).status).toBe(200);
  });

  // Refused by node's parser before Hoist saw the request: it went unlogged.
  it('a request its parser refuses is logged as refused', async () => {
    const reply = await new Promise<string>((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port: server.port, rejectUnauthorized: false }, () => {
        s.end('GET /v2/refused/tags/list HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n');
      });
      let text = '';
      s.setEncoding('latin1').on('data', (d: string) => { text += d; }).on('close', () => resolve(text)).on('error', reject);
    });
    expect(reply).toMatch(/^HTTP\/1\.1 400/);
    const line = await waitForLog(server, 'the refusal\'s log line', (l) => l.msg === 'request refused' && l.path === '/v2/refused/tags/list');
    expect(line).toMatchObject({ method: 'GET', status: 400, code: 'SIZE_INVALID' });
  });
});

describe('TLS with Hoist as token issuer, and skopeo over HTTPS', () => {
  let server: TestServer;
  let policy: string;
  let authfile: string;

  beforeAll(async () => {
    await run('skopeo', ['--version']);
    const cert = writeSelfSigned(work, 'issuer');
    policy = join(work, 'policy.json');
    authfile = join(work, 'auth.json');
    await writeFile(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
    const config = await writeConfig(work, {
      tls: cert,
      auth: { htpasswd: await writeHtpasswd(work, { alice: 'tls-secret' }), token: {} },
    }, 'tls-token.yaml');
    server = await startServer({ storage: 'memory:', frontend: 'node', args: ['--config', config] });
  });

  afterAll(async () => {
    await server?.kill();
  });

  it('the realm Hoist names for itself is https', async () => {
    const r = await httpsGet(server.port, '/v2/');
    expect(r.status).toBe(401);
    expect(parseChallenge(r.headers['www-authenticate'] as string)).toMatchObject({
      scheme: 'Bearer', realm: `https://${server.host}/token`, service: 'hoist',
    });
  });

  it('skopeo logs in, pushes and lists tags over HTTPS', async () => {
    const context = (): string => tail(server.logs(), 40);
    const layout = join(work, 'layout');
    await writeLayout(layout);
    await run('skopeo', ['login', '--tls-verify=false', '--authfile', authfile, '-u', 'alice', '-p', 'tls-secret', server.host], context);
    await run('skopeo', ['--policy', policy, 'copy', '--dest-tls-verify=false', '--authfile', authfile, `oci:${layout}:v1`, `docker://${server.host}/secure/app:v1`], context);
    const { stdout } = await run('skopeo', ['--policy', policy, 'list-tags', '--tls-verify=false', '--authfile', authfile, `docker://${server.host}/secure/app`], context);
    expect((JSON.parse(stdout) as { Tags: string[] }).Tags).toEqual(['v1']);
    const requests = server.records().filter((r) => r.msg === 'request');
    expect(requests.some((r) => r.path === '/token' && r.status === 200 && r.user === 'alice')).toBe(true);
    expect(requests.some((r) => r.method === 'PUT' && r.path === '/v2/secure/app/manifests/v1' && r.status === 201 && r.user === 'alice')).toBe(true);
  });
});
