import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectError, expectStatus, parseRawReply, request, socketExchange } from '../helpers/http.js';
import { sha256 } from '../helpers/oci.js';
import { startServer, type TestServer } from '../helpers/server.js';
import {
  basic, fetchToken, parseChallenge, pushBlobAs, pushImageAs, signToken, writeConfig, writeHtpasswd, writeKeyPair, type KeyPairFiles,
} from './fixtures.js';

/**
 * Bearer tokens (Docker token authentication spec): the challenge, Hoist's own issuer at
 * GET /token, tokens checked for signature, iss, aud, exp and nbf, `access` claims honoured,
 * tokens of an external RS256 issuer, and a namespace's tokens bound to its own service.
 */

const USERS = { admin: 'admin-pw', carol: 'carol-pw' };
const bearer = (token: string): string => `Bearer ${token}`;

let work: string;
let server: TestServer;
let base: string;
let own: KeyPairFiles;
let external: KeyPairFiles;
let stranger: KeyPairFiles;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'hoist-auth-token-'));
  own = await writeKeyPair(work, 'ec', 'hoist');
  external = await writeKeyPair(work, 'rsa', 'external');
  stranger = await writeKeyPair(work, 'ec', 'stranger');
  const config = await writeConfig(work, {
    auth: {
      htpasswd: await writeHtpasswd(work, USERS),
      token: { privateKeyFile: own.privateKeyFile, publicKeyFiles: [external.publicKeyFile], expiry: '2m' },
      access: [
        { repository: '*', users: ['admin'], actions: ['pull', 'push', 'delete'] },
        { repository: 'team-a/*', users: ['carol'], actions: ['pull', 'push'] },
        { repository: 'public/*', users: ['anonymous'], actions: ['pull'] },
      ],
    },
    namespaces: [{ name: 'team-b', host: 'team-b.registry.test' }],
  });
  server = await startServer({ storage: 'memory:', frontend: 'node', args: ['--config', config] });
  base = server.url;
});

afterAll(async () => {
  await server?.kill();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('the challenge', () => {
  it('GET /v2/ without a token → 401 Bearer realm=<Hoist>/token, service=hoist', async () => {
    const r = await request(base, '/v2/');
    expectError(r, 401, 'UNAUTHORIZED');
    expect(r.header('www-authenticate')).toBe(`Bearer realm="http://${server.host}/token",service="hoist"`);
  });

  it('names the scope a request needs: pull, pull and push for writes, and the source of a mount', async () => {
    const scope = async (method: string, path: string): Promise<string | undefined> =>
      parseChallenge((await request(base, path, { method })).header('www-authenticate')).scope;
    expect(await scope('GET', '/v2/team-a/app/manifests/v1')).toBe('repository:team-a/app:pull');
    expect(await scope('POST', '/v2/team-a/app/blobs/uploads/')).toBe('repository:team-a/app:pull,push');
    expect(await scope('DELETE', '/v2/team-a/app/manifests/v1')).toBe('repository:team-a/app:delete');
    expect(await scope('POST', `/v2/team-a/app/blobs/uploads/?mount=${sha256('x')}&from=team-a/base`))
      .toBe('repository:team-a/app:pull,push repository:team-a/base:pull');
    expect(await scope('GET', '/v2/_catalog')).toBe('registry:catalog:*');
  });
});

describe('GET /token (Hoist as issuer)', () => {
  it('issues an ES256 JWT with the Docker-spec claims, granting what was asked as far as the rules allow', async () => {
    const before = Math.floor(Date.now() / 1000);
    const g = await fetchToken(base, ['repository:team-a/app:pull,push,delete', 'repository:team-b/app:pull', 'registry:catalog:*'], ['carol', USERS.carol]);
    const body = g.reply.json<Record<string, unknown>>();
    expect(body.access_token).toBe(body.token);
    expect(body.expires_in).toBe(120);
    expect(new Date(body.issued_at as string).getTime() / 1000).toBeGreaterThanOrEqual(before - 1);
    expect(g.reply.header('cache-control')).toBe('no-store');
    expect(g.header).toMatchObject({ alg: 'ES256', typ: 'JWT' });
    expect(typeof g.header.kid).toBe('string');
    expect(g.claims).toMatchObject({ iss: 'hoist', sub: 'carol', aud: 'hoist' });
    expect(g.claims.exp! - g.claims.iat!).toBe(120);
    expect(g.claims.nbf).toBe(g.claims.iat);
    expect(typeof g.claims.jti).toBe('string');
    expect(g.claims.access).toEqual([{ type: 'repository', name: 'team-a/app', actions: ['pull', 'push'] }]);
  });

  it('grants `*` as every action the rules allow, and the catalog to those who may pull everything', async () => {
    const g = await fetchToken(base, ['repository:x/y:*', 'registry:catalog:*'], ['admin', USERS.admin]);
    expect(g.claims.access).toEqual([
      { type: 'repository', name: 'x/y', actions: ['pull', 'push', 'delete'] },
      { type: 'registry', name: 'catalog', actions: ['*'] },
    ]);
  });

  it('takes scopes space-separated in one parameter too (OAuth 2 style)', async () => {
    const g = await fetchToken(base, ['repository:team-a/a:pull repository:team-a/b:push'], ['carol', USERS.carol]);
    expect(g.claims.access).toEqual([
      { type: 'repository', name: 'team-a/a', actions: ['pull'] },
      { type: 'repository', name: 'team-a/b', actions: ['push'] },
    ]);
  });

  it('gives anonymous clients a token with what anonymous users may do', async () => {
    const g = await fetchToken(base, ['repository:public/tools:pull,push', 'repository:team-a/app:pull']);
    expect(g.claims.sub).toBe('');
    expect(g.claims.access).toEqual([{ type: 'repository', name: 'public/tools', actions: ['pull'] }]);
  });

  it('a wrong password → 401 with a Basic challenge; a bearer token is no credential here', async () => {
    const r = await request(base, '/token?service=hoist&scope=repository:team-a/app:pull', { headers: { authorization: basic('carol', 'wrong') } });
    expectError(r, 401, 'UNAUTHORIZED');
    expect(r.header('www-authenticate')).toMatch(/^Basic realm=/);
    const t = await fetchToken(base, [], ['carol', USERS.carol]);
    expectError(await request(base, '/token?service=hoist', { headers: { authorization: bearer(t.token) } }), 401, 'UNAUTHORIZED');
  });

  it('a service that is not this registry → 403 DENIED', async () => {
    expectError(await request(base, '/token?service=elsewhere', { headers: { authorization: basic('carol', USERS.carol) } }), 403, 'DENIED');
  });
});

describe('requests with tokens', () => {
  it('push and pull with a token carrying the scope', async () => {
    const g = await fetchToken(base, ['repository:team-a/app:pull,push'], ['carol', USERS.carol]);
    expectStatus(await request(base, '/v2/', { headers: { authorization: bearer(g.token) } }), 200, 'GET /v2/ with a token');
    const { reply, digest } = await pushImageAs(base, 'team-a/app', 'v1', bearer(g.token));
    expectStatus(reply, 201, 'manifest PUT with a token');
    const got = await request(base, '/v2/team-a/app/manifests/v1', { headers: { authorization: bearer(g.token) } });
    expectStatus(got, 200);
    expect(sha256(got.body)).toBe(digest);
  });

  it('an anonymous token opens /v2/ and pulls public/*', async () => {
    await pushImageAs(base, 'public/tools', 'v1', bearer((await fetchToken(base, ['repository:public/tools:push,pull'], ['admin', USERS.admin])).token));
    const g = await fetchToken(base, ['repository:public/tools:pull']);
    expectStatus(await request(base, '/v2/', { headers: { authorization: bearer(g.token) } }), 200);
    expectStatus(await request(base, '/v2/public/tools/manifests/v1', { headers: { authorization: bearer(g.token) } }), 200);
  });

  it('a token without the scope its user could get → 401 insufficient_scope, naming the scope', async () => {
    const g = await fetchToken(base, ['repository:team-a/app:pull'], ['carol', USERS.carol]);
    const r = await request(base, '/v2/team-a/app/blobs/uploads/', { method: 'POST', headers: { authorization: bearer(g.token) } });
    expectError(r, 401, 'UNAUTHORIZED');
    expect(parseChallenge(r.header('www-authenticate'))).toMatchObject({
      scheme: 'Bearer', service: 'hoist', scope: 'repository:team-a/app:pull,push', error: 'insufficient_scope',
    });
  });

  it('a token whose user the rules refuse → 403 DENIED (a new token would not help)', async () => {
    const g = await fetchToken(base, ['repository:team-b/app:pull,push'], ['carol', USERS.carol]);
    expect(g.claims.access).toEqual([]);
    expectError(await request(base, '/v2/team-b/app/blobs/uploads/', { method: 'POST', headers: { authorization: bearer(g.token) } }), 403, 'DENIED');
    const anon = await fetchToken(base, []);
    expectError(await request(base, '/v2/team-b/app/tags/list', { headers: { authorization: bearer(anon.token) } }), 401, 'UNAUTHORIZED');
  });

  it('a mount needs a token with pull on the source too', async () => {
    const admin = bearer((await fetchToken(base, ['repository:team-a/src:pull,push'], ['admin', USERS.admin])).token);
    const blob = Buffer.from(`mounted ${Math.random()}`);
    expectStatus(await pushBlobAs(base, 'team-a/src', blob, admin), 201);
    const mount = `/v2/team-a/dst/blobs/uploads/?mount=${sha256(blob)}&from=team-a/src`;
    const targetOnly = await fetchToken(base, ['repository:team-a/dst:pull,push'], ['carol', USERS.carol]);
    const r = await request(base, mount, { method: 'POST', headers: { authorization: bearer(targetOnly.token) } });
    expectError(r, 401, 'UNAUTHORIZED');
    expect(parseChallenge(r.header('www-authenticate')).error).toBe('insufficient_scope');
    const both = await fetchToken(base, ['repository:team-a/dst:pull,push', 'repository:team-a/src:pull'], ['carol', USERS.carol]);
    expectStatus(await request(base, mount, { method: 'POST', headers: { authorization: bearer(both.token) } }), 201, 'mount with both scopes');
    // From a repository the rules keep carol out of, no token can have the scope: the upload
    // starts without the mount (202), as when the source does not have the blob.
    const adminBlob = Buffer.from(`private ${Math.random()}`);
    expectStatus(await pushBlobAs(base, 'team-b/src', adminBlob, bearer((await fetchToken(base, ['repository:team-b/src:pull,push'], ['admin', USERS.admin])).token)), 201);
    const asked = await fetchToken(base, ['repository:team-a/dst:pull,push', 'repository:team-b/src:pull'], ['carol', USERS.carol]);
    const refused = await request(base, `/v2/team-a/dst/blobs/uploads/?mount=${sha256(adminBlob)}&from=team-b/src`, { method: 'POST', headers: { authorization: bearer(asked.token) } });
    expectStatus(refused, 202, 'mount from team-b/src');
    expectError(await request(base, `/v2/team-a/dst/blobs/${sha256(adminBlob)}`, { method: 'HEAD', headers: { authorization: bearer(asked.token) } }), 404, undefined, 'HEAD');
  });

  it('lists the catalog with a registry:catalog:* token', async () => {
    const g = await fetchToken(base, ['registry:catalog:*'], ['admin', USERS.admin]);
    const r = await request(base, '/v2/_catalog', { headers: { authorization: bearer(g.token) } });
    expectStatus(r, 200);
    expect(r.json<{ repositories: string[] }>().repositories).toContain('team-a/app');
    const carol = await fetchToken(base, ['registry:catalog:*'], ['carol', USERS.carol]);
    expectError(await request(base, '/v2/_catalog', { headers: { authorization: bearer(carol.token) } }), 403, 'DENIED');
  });
});

describe('tokens that do not pass', () => {
  const access = [{ type: 'repository', name: 'public/tools', actions: ['pull'] }];
  const now = (): number => Math.floor(Date.now() / 1000);
  const cases: Array<[string, () => Promise<string>]> = [
    ['expired (beyond the 30 s clock tolerance)', () => signToken(external.privateKey, 'RS256', { access, exp: now() - 60, iat: now() - 400, nbf: now() - 400 })],
    ['not yet valid (nbf in a minute)', () => signToken(external.privateKey, 'RS256', { access, nbf: now() + 60 })],
    ['without exp', async () => signToken(external.privateKey, 'RS256', { access, exp: undefined })],
    ['for another audience', () => signToken(external.privateKey, 'RS256', { access, aud: 'other-registry' })],
    ['from another issuer', () => signToken(external.privateKey, 'RS256', { access, iss: 'someone-else' })],
    ['signed by an unknown key', () => signToken(stranger.privateKey, 'ES256', { access })],
    ['with a malformed access claim', () => signToken(external.privateKey, 'RS256', { access: 'everything' })],
    ['unsigned (alg none)', async () => {
      const enc = (o: object): string => Buffer.from(JSON.stringify(o)).toString('base64url');
      return `${enc({ alg: 'none', typ: 'JWT' })}.${enc({ iss: 'hoist', aud: 'hoist', exp: now() + 300, access })}.`;
    }],
    ['with its payload altered', async () => {
      const [h, , s] = (await signToken(external.privateKey, 'RS256', { access })).split('.');
      const payload = Buffer.from(JSON.stringify({ iss: 'hoist', aud: 'hoist', exp: now() + 300, access: [{ type: 'repository', name: '*', actions: ['*'] }] })).toString('base64url');
      return `${h}.${payload}.${s}`;
    }],
    ['not a JWT', async () => 'garbage'],
  ];

  it.each(cases)('a token %s → 401 invalid_token', async (_, make) => {
    const r = await request(base, '/v2/public/tools/tags/list', { headers: { authorization: bearer(await make()) } });
    expectError(r, 401, 'UNAUTHORIZED');
    expect(parseChallenge(r.header('www-authenticate'))).toMatchObject({ scheme: 'Bearer', error: 'invalid_token' });
  });
});

describe('an external issuer (RS256 public key in auth.token.publicKeyFiles)', () => {
  it('its tokens are verified and their access claims honoured, whatever the rules say about the subject', async () => {
    const token = await signToken(external.privateKey, 'RS256', {
      sub: 'ci-robot',
      access: [{ type: 'repository', name: 'ci/cache', actions: ['pull', 'push'] }],
    });
    const { reply, digest } = await pushImageAs(base, 'ci/cache', 'v1', bearer(token));
    expectStatus(reply, 201, 'push with the external token');
    const got = await request(base, '/v2/ci/cache/manifests/v1', { headers: { authorization: bearer(token) } });
    expect(sha256(got.body)).toBe(digest);
    // What the claim does not grant, the external issuer might: 401 insufficient_scope.
    const r = await request(base, '/v2/ci/cache/manifests/v1', { method: 'DELETE', headers: { authorization: bearer(token) } });
    expectError(r, 401, 'UNAUTHORIZED');
    expect(parseChallenge(r.header('www-authenticate')).error).toBe('insufficient_scope');
  });

  it('with a kid that matches none of the keys, each key is tried', async () => {
    const token = await signToken(external.privateKey, 'RS256', { access: [{ type: 'repository', name: 'public/tools', actions: ['pull'] }] }, { kid: 'libtrust:ABCD:EFGH' });
    expectStatus(await request(base, '/v2/public/tools/tags/list', { headers: { authorization: bearer(token) } }), 200);
  });
});

describe('namespaces', () => {
  const teamB = { host: 'team-b.registry.test' };

  it('a namespace has its own service, and the token issuer binds tokens to it', async () => {
    const r = await request(base, '/v2/', { headers: teamB });
    expect(parseChallenge(r.header('www-authenticate'))).toMatchObject({ realm: 'http://team-b.registry.test/token', service: 'hoist/team-b' });
    const forB = await fetchToken(base, ['repository:team-a/app:pull,push'], ['carol', USERS.carol], 'hoist/team-b');
    expect(forB.claims.aud).toBe('hoist/team-b');
    const forDefault = await fetchToken(base, ['repository:team-a/app:pull,push'], ['carol', USERS.carol]);
    const post = (token: string, headers: Record<string, string> = {}) =>
      request(base, '/v2/team-a/app/blobs/uploads/', { method: 'POST', headers: { ...headers, authorization: bearer(token) } });
    expectStatus(await post(forB.token, teamB), 202, "team-b's token in team-b");
    expectError(await post(forB.token), 401, 'UNAUTHORIZED');
    expectError(await post(forDefault.token, teamB), 401, 'UNAUTHORIZED');
  });

  // RFC 9112 §3.2.2: the absolute-form's authority replaces Host. Routing and the gate take
  // the namespace from the one resolution (handlers.ts), so they cannot disagree; and a
  // request whose Host is ambiguous is refused before either (src/http/host.ts).
  it("an absolute-form target's authority picks the namespace for auth as for routing, whatever Host says", async () => {
    const send = (head: string) => socketExchange(server.port, `${head}\r\nConnection: close\r\n\r\n`, { timeoutMs: 5000 });
    const challenge = await send(`GET http://team-b.registry.test/v2/ HTTP/1.1\r\nHost: ${server.host}`);
    expect(parseRawReply(challenge.text).status, challenge.text).toBe(401);
    expect(parseChallenge(/^www-authenticate: (.*)$/im.exec(challenge.text)?.[1])).toMatchObject({ realm: 'http://team-b.registry.test/token', service: 'hoist/team-b' });
    const forB = await fetchToken(base, ['repository:team-a/app:pull,push'], ['carol', USERS.carol], 'hoist/team-b');
    const post = (authority: string, host: string) =>
      send(`POST http://${authority}/v2/team-a/app/blobs/uploads/ HTTP/1.1\r\nHost: ${host}\r\nAuthorization: ${bearer(forB.token)}\r\nContent-Length: 0`);
    expect(parseRawReply((await post('team-b.registry.test', server.host)).text).status).toBe(202);
    expect(parseRawReply((await post(server.host, 'team-b.registry.test')).text)).toMatchObject({ status: 401, codes: ['UNAUTHORIZED'] });
  });

  it('two Host lines naming two namespaces → 400 NAME_INVALID, before any credential is checked', async () => {
    const r = await socketExchange(server.port, `GET /v2/ HTTP/1.1\r\nHost: team-b.registry.test\r\nHost: ${server.host}\r\n\r\n`, { timeoutMs: 5000 });
    expect(parseRawReply(r.text), r.text).toMatchObject({ status: 400, codes: ['NAME_INVALID'] });
  });
});
