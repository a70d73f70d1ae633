import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Auth } from '../../../src/auth/auth.js';
import { RegistryError, TooManyRequestsError, UnauthorizedError } from '../../../src/errors.js';
import type { IncomingRequest } from '../../../src/http/adapter.js';
import { RequestGate, type GateOptions } from '../../../src/http/auth.js';
import { matchRoute } from '../../../src/http/routes.js';

/**
 * The gate before every handler (src/http/auth.ts), with real Auth (an htpasswd file, access
 * rules, Hoist's own token key): what each route and method require, the 401 challenge a client
 * follows (Docker token spec, RFC 6750 §3), 403 for users the rules refuse, and the per-client
 * rate and upload limits (429). Requests are plain objects: the gate reads only the method,
 * target, headers and address. test/auth/ runs the same through real HTTP and real clients.
 */

let dir: string;
let htpasswd: string;
let privateKeyFile: string;
const basic = (u: string, p: string): string => `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}`;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hoist-gate-unit-'));
  htpasswd = join(dir, 'htpasswd');
  await writeFile(htpasswd, `alice:${bcrypt.hashSync('pw', 4)}\nbob:${bcrypt.hashSync('pw', 4)}\n`);
  privateKeyFile = join(dir, 'token.key');
  await writeFile(privateKeyFile, generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function req(method: string, target: string, headers: Record<string, string> = {}, remoteAddress = '192.0.2.1'): IncomingRequest {
  const q = target.indexOf('?');
  const path = q < 0 ? target : target.slice(0, q);
  const rawQuery = q < 0 ? '' : target.slice(q + 1);
  const h: Record<string, string> = { host: 'registry.test:5000', ...headers };
  return {
    method, path, rawQuery, query: new URLSearchParams(rawQuery), remoteAddress,
    header: (name) => h[name],
    headers: () => ({ ...h }),
    readBody: () => Promise.reject(new Error('the gate never reads a body')),
  };
}

function gate(o: Partial<GateOptions>): RequestGate {
  return new RequestGate({ maxUrlBytes: 8192, maxConcurrentUploads: 0, requestsPerSecond: 0, burst: 0, https: false, ...o });
}

async function admit(g: RequestGate, r: IncomingRequest, namespace?: string) {
  const m = matchRoute(r.path);
  if (!m) throw new Error(`no route for ${r.path}`);
  return g.admit(r, m, namespace);
}

/** The error admit() threw (fails when it admitted). */
async function refused(g: RequestGate, r: IncomingRequest): Promise<RegistryError> {
  const err = await admit(g, r).then(() => undefined, (e: unknown) => e);
  expect(err, `${r.method} ${r.path} was admitted`).toBeInstanceOf(RegistryError);
  return err as RegistryError;
}

const DIGEST = `sha256:${'a'.repeat(64)}`;

describe('without access control', () => {
  it('admits every route anonymously and derives nothing from the name', async () => {
    const g = gate({});
    for (const r of [req('GET', '/v2/'), req('GET', '/v2/_catalog'), req('DELETE', '/v2/a/manifests/v1'), req('GET', '/v2/Not-Valid/tags/list')]) {
      const a = await admit(g, r);
      expect(a.identity).toEqual({ kind: 'anonymous' });
      expect(a.user).toBeUndefined();
      a.release();
    }
    expect(g.issuesTokens).toBe(false);
  });

  it('refuses a request target longer than maxUrlBytes (400 NAME_INVALID) before anything else', async () => {
    const g = gate({ maxUrlBytes: 100 });
    const err = await refused(g, req('GET', `/v2/${'a'.repeat(90)}/tags/list?n=1`));
    expect(err.code).toBe('NAME_INVALID');
    expect(err.detail).toEqual({ length: '/v2/'.length + 90 + '/tags/list?n=1'.length, limit: 100 });
  });
});

describe('HTTP Basic (htpasswd, no tokens)', () => {
  let auth: Auth;
  beforeAll(async () => {
    // alice may do everything in alice/*; bob may only pull alice/shared.
    auth = await Auth.load({
      htpasswd, groups: {}, access: [
        { repository: 'alice/*', users: ['alice'], groups: [], actions: ['pull', 'push', 'delete'] },
        { repository: 'alice/shared', users: ['bob'], groups: [], actions: ['pull'] },
      ],
    });
  });

  it('no credentials → 401 with the Basic challenge; a wrong password → the same', async () => {
    const g = gate({ auth });
    for (const headers of [{}, { authorization: basic('alice', 'wrong') }, { authorization: 'Bearer x.y.z' }] as Array<Record<string, string>>) {
      const err = await refused(g, req('GET', '/v2/', headers));
      expect(err).toBeInstanceOf(UnauthorizedError);
      expect((err as UnauthorizedError).challenge).toBe('Basic realm="hoist", charset="UTF-8"');
    }
  });

  it('a user is admitted by the rules, per route and method, and 403 DENIED outside them', async () => {
    const g = gate({ auth });
    const alice = { authorization: basic('alice', 'pw') };
    const bob = { authorization: basic('bob', 'pw') };
    expect((await admit(g, req('GET', '/v2/', bob))).user).toBe('bob');
    for (const r of [req('PUT', '/v2/alice/app/manifests/v1', alice), req('DELETE', `/v2/alice/app/blobs/${DIGEST}`, alice), req('POST', '/v2/alice/app/blobs/uploads/', alice)]) {
      expect((await admit(g, r)).identity).toEqual({ kind: 'user', user: 'alice' });
    }
    expect((await admit(g, req('GET', '/v2/alice/shared/manifests/v1', bob))).user).toBe('bob');
    expect((await admit(g, req('GET', '/v2/alice/shared/tags/list', bob))).user).toBe('bob');
    // Pull only: every write, and every other repository, is refused.
    for (const [method, path, action] of [
      ['PUT', '/v2/alice/shared/manifests/v1', 'push'],
      ['DELETE', '/v2/alice/shared/manifests/v1', 'delete'],
      ['POST', '/v2/alice/shared/blobs/uploads/', 'push'],
      ['PATCH', '/v2/alice/shared/blobs/uploads/3f2b1c7e-0000-4000-8000-000000000001', 'push'],
      ['GET', '/v2/alice/app/manifests/v1', 'pull'],
    ] as const) {
      const err = await refused(g, req(method, path, bob));
      expect(err.code, `${method} ${path}`).toBe('DENIED');
      expect(err.detail).toEqual([{ Type: 'repository', Name: path.split('/').slice(2, 4).join('/'), Action: action }]);
    }
    expect((await refused(g, req('GET', '/v2/_catalog', bob))).code).toBe('DENIED');
  });

  it('a mount needs pull where the blob comes from: without it the upload starts without the mount', async () => {
    const g = gate({ auth });
    const alice = { authorization: basic('alice', 'pw') };
    expect((await admit(g, req('POST', `/v2/alice/app/blobs/uploads/?mount=${DIGEST}&from=alice/other`, alice))).mountRefused).toBeUndefined();
    // Not refused (containerd fails a push on a 403 to its mount): admitted, with the mount refused.
    expect((await admit(g, req('POST', `/v2/alice/app/blobs/uploads/?mount=${DIGEST}&from=bob/private`, alice))).mountRefused).toBe(true);
    // Push on the target is still needed.
    expect((await refused(g, req('POST', `/v2/bob/private/blobs/uploads/?mount=${DIGEST}&from=alice/other`, alice))).code).toBe('DENIED');
    // A `from` that is no name asks for nothing more (the core answers it as a plain upload).
    await admit(g, req('POST', `/v2/alice/app/blobs/uploads/?mount=${DIGEST}&from=Bad..Name`, alice));
  });

  it('an invalid repository name → 400 NAME_INVALID, not a challenge that names it', async () => {
    const g = gate({ auth });
    const err = await refused(g, req('GET', '/v2/Upper/Case/manifests/v1', { authorization: basic('alice', 'pw') }));
    expect(err.code).toBe('NAME_INVALID');
  });
});

describe('tokens issued by Hoist', () => {
  let auth: Auth;
  beforeAll(async () => {
    auth = await Auth.load({
      htpasswd, groups: {},
      token: { service: 'hoist', issuer: 'hoist', privateKeyFile, publicKeyFiles: [], expiryMs: 60_000 },
      access: [{ repository: 'alice/*', users: ['alice'], groups: [], actions: ['pull', 'push'] }],
    });
  });

  // A push scope asks for pull too: clients that push also read (auth/scope.ts formatScopes).
  it('challenges with Bearer realm (where the client reached us), service and the scope the request needs', async () => {
    const g = gate({ auth });
    expect(g.issuesTokens).toBe(true);
    const base = (await refused(g, req('GET', '/v2/'))) as UnauthorizedError;
    expect(base.challenge).toBe('Bearer realm="http://registry.test:5000/token",service="hoist"');
    const push = (await refused(g, req('PUT', '/v2/alice/app/manifests/v1'))) as UnauthorizedError;
    expect(push.challenge).toBe('Bearer realm="http://registry.test:5000/token",service="hoist",scope="repository:alice/app:pull,push"');
    const mount = (await refused(g, req('POST', `/v2/alice/app/blobs/uploads/?mount=${DIGEST}&from=alice/base`))) as UnauthorizedError;
    expect(mount.challenge).toBe('Bearer realm="http://registry.test:5000/token",service="hoist",scope="repository:alice/app:pull,push repository:alice/base:pull"');
    // HTTPS front end: the realm says https. A Host that could inject into the header: localhost.
    const https = (await refused(gate({ auth, https: true }), req('GET', '/v2/'))) as UnauthorizedError;
    expect(https.challenge).toContain('realm="https://registry.test:5000/token"');
    const hostile = (await refused(g, req('GET', '/v2/', { host: 'evil",error="x' }))) as UnauthorizedError;
    expect(hostile.challenge).toBe('Bearer realm="http://localhost/token",service="hoist"');
  });

  it('an invalid bearer token → 401 error="invalid_token"; a token without the scope → error="insufficient_scope"', async () => {
    const g = gate({ auth });
    const bad = (await refused(g, req('GET', '/v2/alice/app/tags/list', { authorization: 'Bearer not.a.token' }))) as UnauthorizedError;
    expect(bad.challenge).toBe('Bearer realm="http://registry.test:5000/token",service="hoist",scope="repository:alice/app:pull",error="invalid_token"');
    // A real token for pull only, from the gate's own token endpoint.
    const tokenReq = req('GET', '/token?service=hoist&scope=repository:alice/app:pull', { authorization: basic('alice', 'pw') });
    const admission = await admit(g, tokenReq);
    const reply = await g.issueToken(tokenReq, admission, undefined);
    expect(reply.token).toBe(reply.access_token);
    expect(reply.expires_in).toBe(60);
    const bearer = { authorization: `Bearer ${reply.token}` };
    const ok = await admit(g, req('GET', '/v2/alice/app/manifests/v1', bearer));
    expect(ok.identity.kind).toBe('token');
    const scope = (await refused(g, req('PUT', '/v2/alice/app/manifests/v1', bearer))) as UnauthorizedError;
    expect(scope.challenge).toBe('Bearer realm="http://registry.test:5000/token",service="hoist",scope="repository:alice/app:pull,push",error="insufficient_scope"');
    expect(scope.detail).toEqual([{ Type: 'repository', Name: 'alice/app', Action: 'push' }]);
  });

  it('the token endpoint: a wrong password → 401 Basic; a bearer token → 401 Basic; another service → 403 DENIED', async () => {
    const g = gate({ auth });
    const wrong = (await refused(g, req('GET', '/token?service=hoist', { authorization: basic('alice', 'nope') }))) as UnauthorizedError;
    expect(wrong.challenge).toBe('Basic realm="hoist", charset="UTF-8"');

    const first = req('GET', '/token?service=hoist', { authorization: basic('alice', 'pw') });
    const token = (await g.issueToken(first, await admit(g, first), undefined)).token;
    const withToken = req('GET', '/token?service=hoist', { authorization: `Bearer ${token}` });
    await expect(g.issueToken(withToken, await admit(g, withToken), undefined)).rejects.toMatchObject({ code: 'UNAUTHORIZED', challenge: 'Basic realm="hoist", charset="UTF-8"' });

    const other = req('GET', '/token?service=elsewhere', { authorization: basic('alice', 'pw') });
    await expect(g.issueToken(other, await admit(g, other), undefined)).rejects.toMatchObject({ code: 'DENIED', detail: { service: 'elsewhere' } });
  });

  it('without an issuer, GET /token is 404 NOT_FOUND', async () => {
    const g = gate({});
    const r = req('GET', '/token?service=hoist');
    await expect(g.issueToken(r, await admit(g, r), undefined)).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });
});

describe('per-client limits', () => {
  it('a rate limit per address: the burst, then 429 with Retry-After; other addresses unaffected', async () => {
    // One request per 1000 s after the burst: no refill however slowly this test runs.
    const g = gate({ requestsPerSecond: 0.001, burst: 2 });
    await admit(g, req('GET', '/v2/', {}, '192.0.2.7'));
    await admit(g, req('GET', '/v2/', {}, '192.0.2.7'));
    const err = await refused(g, req('GET', '/v2/', {}, '192.0.2.7'));
    expect(err).toBeInstanceOf(TooManyRequestsError);
    expect((err as TooManyRequestsError).retryAfterSeconds).toBeGreaterThan(900);
    await admit(g, req('GET', '/v2/', {}, '192.0.2.8'));
  });

  it('wrong passwords count against the address, so guessing is rate-limited too', async () => {
    const auth = await Auth.load({ htpasswd, groups: {} });
    const g = gate({ auth, requestsPerSecond: 0.001, burst: 2 });
    for (let i = 0; i < 2; i++) expect((await refused(g, req('GET', '/v2/', { authorization: basic('alice', `guess${i}`) }, '192.0.2.9'))).code).toBe('UNAUTHORIZED');
    // The address's bucket is empty now: the next guess is not even checked.
    expect(await refused(g, req('GET', '/v2/', { authorization: basic('alice', 'guess2') }, '192.0.2.9'))).toBeInstanceOf(TooManyRequestsError);
    // Nor is the right one, until the bucket refills: a guess is a guess.
    expect(await refused(g, req('GET', '/v2/', { authorization: basic('alice', 'pw') }, '192.0.2.9'))).toBeInstanceOf(TooManyRequestsError);
    // From elsewhere it counts against the user, not the address; once remembered, it is not checked again.
    expect((await admit(g, req('GET', '/v2/', { authorization: basic('alice', 'pw') }, '192.0.2.10'))).user).toBe('alice');
    expect((await admit(g, req('GET', '/v2/', { authorization: basic('alice', 'pw') }, '192.0.2.9'))).user).toBe('alice');
  });

  it('concurrent uploads per client: only requests that carry blob bytes take a slot, and release frees it', async () => {
    const g = gate({ maxConcurrentUploads: 1 });
    const upload = '/v2/a/blobs/uploads/3f2b1c7e-0000-4000-8000-000000000001';
    const first = await admit(g, req('PATCH', upload, { 'content-length': '10' }));
    expect(await refused(g, req('PATCH', upload, { 'content-length': '10' }))).toBeInstanceOf(TooManyRequestsError);
    expect(await refused(g, req('POST', '/v2/a/blobs/uploads/?digest=' + DIGEST, { 'content-length': '10' }))).toBeInstanceOf(TooManyRequestsError);
    // No bytes: a status GET, a POST that opens a session, a closing PUT without body, another client.
    (await admit(g, req('GET', upload))).release();
    (await admit(g, req('POST', '/v2/a/blobs/uploads/', { 'content-length': '0' }))).release();
    (await admit(g, req('PUT', `${upload}?digest=${DIGEST}`, { 'content-length': '0' }))).release();
    (await admit(g, req('PATCH', upload, { 'content-length': '10' }, '192.0.2.99'))).release();
    first.release();
    (await admit(g, req('PATCH', upload, { 'transfer-encoding': 'chunked' }))).release();
  });
});
