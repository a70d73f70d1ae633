import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectError, expectStatus, listTree, parseRawReply, request, socketExchange } from '../helpers/http.js';
import { sha256 } from '../helpers/oci.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { basic, parseChallenge, pushBlobAs, pushImageAs, writeConfig, writeHtpasswd } from './fixtures.js';

/**
 * Access control with an htpasswd file and HTTP Basic (no tokens): who may pull, push and
 * delete where, by user, group, '*' and anonymous, with repository patterns; a mount needs
 * pull on its source; denied requests write nothing (fs storage, compared file by file).
 * On both front ends: the check sits before dispatch, behind the adapter.
 */

const USERS = { admin: 'admin-pw', carol: 'carol-pw', dave: 'dave-pw', erin: 'erin-pw' };
const ADMIN = basic('admin', USERS.admin);
const CAROL = basic('carol', USERS.carol);
const DAVE = basic('dave', USERS.dave);

for (const frontend of ['node', 'uws'] as const) describe(`htpasswd and HTTP Basic (${frontend} front end)`, () => {
  let work: string;
  let storage: string;
  let server: TestServer;
  let base: string;

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), `hoist-auth-basic-${frontend}-`));
    storage = join(work, 'data');
    const config = await writeConfig(work, {
      auth: {
        // dave's at htpasswd -B's cost: a check of his password takes ~80 ms, as in production.
        htpasswd: await writeHtpasswd(work, USERS, 'htpasswd', { dave: 10, erin: 10 }),
        groups: { 'team-a': ['carol'] },
        access: [
          { repository: '*', users: ['admin'], actions: ['pull', 'push', 'delete'] },
          { repository: 'team-a/*', groups: ['team-a'], actions: ['pull', 'push'] },
          { repository: 'public/*', users: ['anonymous'], actions: ['pull'] },
          { repository: 'drop/*', users: ['dave'], actions: ['push'] },
        ],
      },
    });
    server = await startServer({ storage: `fs:${storage}`, frontend, args: ['--config', config] });
    base = server.url;
    // What the tests pull or mount from.
    expectStatus((await pushImageAs(base, 'public/tools', 'v1', ADMIN)).reply, 201, 'admin pushes public/tools');
    expectStatus((await pushImageAs(base, 'private/app', 'v1', ADMIN)).reply, 201, 'admin pushes private/app');
  });

  afterAll(async () => {
    await server?.kill();
    if (work) await rm(work, { recursive: true, force: true });
  });

  /**
   * Storage as a list of paths, without garbage collection's bookkeeping (gc/: markers of
   * manifest PUTs in flight, which a finished PUT removes a moment later).
   */
  async function storedPaths(): Promise<string[]> {
    for (let attempt = 0; ; attempt++) {
      try {
        return (await listTree(storage)).filter((p) => !p.startsWith('gc/'));
      } catch (err) {
        // A marker went away while the tree was read.
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || attempt > 20) throw err;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }

  /** Runs `fn` and checks that storage holds exactly what it held before. */
  async function writesNothing(fn: () => Promise<void>): Promise<void> {
    const before = await storedPaths();
    await fn();
    expect(await storedPaths()).toEqual(before);
  }

    it('GET /v2/ without credentials → 401 UNAUTHORIZED with a Basic challenge', async () => {
      const r = await request(base, '/v2/');
      expectError(r, 401, 'UNAUTHORIZED');
      expect(parseChallenge(r.header('www-authenticate'))).toMatchObject({ scheme: 'Basic', realm: 'hoist' });
    });

    it('GET /v2/ with a good password → 200; a wrong password, an unknown user or a garbled header → 401', async () => {
      expectStatus(await request(base, '/v2/', { headers: { authorization: CAROL } }), 200);
      for (const authorization of [basic('carol', 'nope'), basic('mallory', 'carol-pw'), 'Basic !!!', 'Basic ' + Buffer.from('nocolon').toString('base64'), 'Digest x', 'Bearer abc']) {
        const r = await request(base, '/v2/', { headers: { authorization } });
        expectError(r, 401, 'UNAUTHORIZED');
        expect(r.header('www-authenticate')).toMatch(/^Basic /);
      }
    });

    // Found by probing (2026-12-02): each wrong password cost ~80 ms of bcrypt on the main
    // thread, so twenty a second took an anonymous GET /v2/ from 2 ms to 2-4 s, and a burst of
    // 200 held even remembered users for 14-16 s. The checks now run on a thread of their own,
    // at most 32 waiting; more are refused with 429.
    it('a storm of wrong passwords neither stalls other requests nor queues without bound', async () => {
      const storm = Array.from({ length: 48 }, (_, i) =>
        request(base, '/v2/', { headers: { authorization: basic('dave', `wrong-${i}`) } }));
      await new Promise((r) => setTimeout(r, 100));
      const started = performance.now();
      expectStatus(await request(base, '/v2/'), 401, 'anonymous GET /v2/ during the storm');
      expectStatus(await request(base, '/v2/public/tools/tags/list'), 200, 'anonymous pull during the storm');
      const tookMs = performance.now() - started;
      const replies = await Promise.all(storm);
      // 48 checks of ~80 ms each are almost 4 s of bcrypt; the two requests waited for none of it.
      expect(tookMs).toBeLessThan(1000);
      const statuses = replies.map((r) => r.status);
      expect(statuses.every((s) => s === 401 || s === 429), statuses.join(' ')).toBe(true);
      const refused = replies.filter((r) => r.status === 429);
      expect(refused.length).toBeGreaterThan(0);
      for (const r of refused) {
        expectError(r, 429, 'TOOMANYREQUESTS');
        expect(r.header('retry-after')).toBe('1');
      }
      // The right password still works afterwards.
      expectStatus(await request(base, '/v2/', { headers: { authorization: ADMIN } }), 200);
    });

    // Found by probing (2026-12-02): the line of 32 was everybody's, so one address sending
    // wrong passwords kept it full, and every other user's login got 429 while it did.
    it('one address\'s storm of wrong passwords does not hold up another address\'s login', async () => {
      const storm = Array.from({ length: 48 }, (_, i) => statusFrom('127.0.0.2', basic('dave', `storm-${i}`)));
      await new Promise((r) => setTimeout(r, 50));
      // erin's password is checked for the first time here (cost 10, as dave's).
      expect(await statusFrom('127.0.0.3', basic('erin', USERS.erin)), 'erin logs in during the storm').toBe(200);
      const statuses = await Promise.all(storm);
      expect(statuses.every((s) => s === 401 || s === 429), statuses.join(' ')).toBe(true);
      // A few checks at a time per address: the rest are refused without one.
      expect(statuses.filter((s) => s === 401).length, statuses.join(' ')).toBeLessThanOrEqual(8);
    });

    /** The status of GET /v2/ sent from `localAddress` (any 127.x.y.z is this machine). */
    function statusFrom(localAddress: string, authorization: string): Promise<number> {
      return new Promise((resolve, reject) => {
        const req = http.get(`${base}/v2/`, { localAddress, headers: { authorization }, agent: false }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        });
        req.on('error', reject);
      });
    }

    it('anonymous users pull public/* and nothing else', async () => {
      expectStatus(await request(base, '/v2/public/tools/manifests/v1'), 200, 'anonymous GET manifest');
      expectStatus(await request(base, '/v2/public/tools/manifests/v1', { method: 'HEAD' }), 200, 'anonymous HEAD manifest');
      expectStatus(await request(base, '/v2/public/tools/tags/list'), 200, 'anonymous tags');
      const r = await request(base, '/v2/private/app/manifests/v1');
      expectError(r, 401, 'UNAUTHORIZED');
      expect(r.json<{ errors: Array<{ detail: unknown }> }>().errors[0]!.detail).toEqual([{ Type: 'repository', Name: 'private/app', Action: 'pull' }]);
    });

    it('anonymous push is never allowed, even where anonymous may pull: 401 and nothing written', async () => {
      await writesNothing(async () => {
        expectError(await request(base, '/v2/public/tools/blobs/uploads/', { method: 'POST' }), 401, 'UNAUTHORIZED');
        const blob = Buffer.from('anonymous blob');
        expectError(await request(base, `/v2/public/tools/blobs/uploads/?digest=${sha256(blob)}`, { method: 'POST', body: blob }), 401, 'UNAUTHORIZED');
        expectError(await request(base, '/v2/public/tools/manifests/v2', {
          method: 'PUT', headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' }, body: '{}',
        }), 401, 'UNAUTHORIZED');
        expectError(await request(base, '/v2/public/tools/manifests/v1', { method: 'DELETE' }), 401, 'UNAUTHORIZED');
      });
    });

    it('a group member pushes and pulls in its team pattern, including nested names', async () => {
      for (const repo of ['team-a/app', 'team-a/x/y']) {
        const { reply, digest } = await pushImageAs(base, repo, 'v1', CAROL);
        expectStatus(reply, 201, `carol pushes ${repo}`);
        const got = await request(base, `/v2/${repo}/manifests/v1`, { headers: { authorization: CAROL } });
        expectStatus(got, 200);
        expect(sha256(got.body)).toBe(digest);
      }
    });

    it('an authenticated user outside the rules → 403 DENIED naming the action, and nothing written', async () => {
      await writesNothing(async () => {
        const r = await request(base, '/v2/team-b/app/blobs/uploads/', { method: 'POST', headers: { authorization: CAROL } });
        expectError(r, 403, 'DENIED');
        expect(r.json<{ errors: Array<{ detail: unknown }> }>().errors[0]!.detail).toEqual([{ Type: 'repository', Name: 'team-b/app', Action: 'push' }]);
        expectError(await request(base, '/v2/private/app/manifests/v1', { headers: { authorization: CAROL } }), 403, 'DENIED');
        // The pattern is team-a/*, not team-a itself, nor a name that merely starts with it.
        expectError(await request(base, '/v2/team-a/blobs/uploads/', { method: 'POST', headers: { authorization: CAROL } }), 403, 'DENIED');
        expectError(await request(base, '/v2/team-ab/x/blobs/uploads/', { method: 'POST', headers: { authorization: CAROL } }), 403, 'DENIED');
      });
    });

    it('delete needs the delete action: push and pull are not enough', async () => {
      const { digest } = await pushImageAs(base, 'team-a/del', 'v1', CAROL);
      await writesNothing(async () => {
        expectError(await request(base, `/v2/team-a/del/manifests/${digest}`, { method: 'DELETE', headers: { authorization: CAROL } }), 403, 'DENIED');
        expectError(await request(base, '/v2/team-a/del/manifests/v1', { method: 'DELETE', headers: { authorization: CAROL } }), 403, 'DENIED');
      });
      expectStatus(await request(base, '/v2/team-a/del/manifests/v1', { method: 'DELETE', headers: { authorization: ADMIN } }), 202, 'admin deletes the tag');
    });

    it('push without pull: a drop box takes blobs but does not show them', async () => {
      const blob = Buffer.from(`dropped ${Math.random()}`);
      expectStatus(await pushBlobAs(base, 'drop/inbox', blob, DAVE), 201, 'dave pushes');
      expectError(await request(base, `/v2/drop/inbox/blobs/${sha256(blob)}`, { method: 'HEAD', headers: { authorization: DAVE } }), 403, undefined, 'HEAD');
      expectStatus(await request(base, `/v2/drop/inbox/blobs/${sha256(blob)}`, { method: 'HEAD', headers: { authorization: ADMIN } }), 200);
    });

    // Found by probing (2026-12-02): the mount without pull on its source was refused with 403,
    // and containerd fails a push on any answer to a mount but 201, 202 and 401.
    it('a cross-repository mount needs pull on the source: without it an upload starts instead (202, no link), 201 with it', async () => {
      const { layer } = await pushImageAs(base, 'private/mountsrc', 'v1', ADMIN);
      const digest = sha256(layer);
      const r = await request(base, `/v2/team-a/app/blobs/uploads/?mount=${digest}&from=private/mountsrc`, { method: 'POST', headers: { authorization: CAROL } });
      expectStatus(r, 202, 'mount from a repository carol may not pull');
      expect(r.header('location')).toMatch(/^\/v2\/team-a\/app\/blobs\/uploads\/[0-9a-f-]{36}/);
      expectError(await request(base, `/v2/team-a/app/blobs/${digest}`, { method: 'HEAD', headers: { authorization: CAROL } }), 404, undefined, 'HEAD');
      // The session is an ordinary one: carol pushes the bytes herself.
      expectStatus(await request(base, `${r.header('location')!}${r.header('location')!.includes('?') ? '&' : '?'}digest=${digest}`, {
        method: 'PUT', headers: { authorization: CAROL, 'content-type': 'application/octet-stream' }, body: layer,
      }), 201, 'carol uploads it');
      // From a repository anyone may pull, the same user may mount.
      const pub = await pushImageAs(base, 'public/mountsrc', 'v1', ADMIN);
      const ok = await request(base, `/v2/team-a/app/blobs/uploads/?mount=${sha256(pub.layer)}&from=public/mountsrc`, { method: 'POST', headers: { authorization: CAROL } });
      expectStatus(ok, 201, 'mount from public/*');
      // And pull on the source does not replace push on the target.
      await writesNothing(async () => {
        expectError(await request(base, `/v2/team-b/app/blobs/uploads/?mount=${sha256(pub.layer)}&from=public/mountsrc`, { method: 'POST', headers: { authorization: CAROL } }), 403, 'DENIED');
      });
    });

    it('the catalog is for those who may pull every repository', async () => {
      const r = await request(base, '/v2/_catalog', { headers: { authorization: ADMIN } });
      expectStatus(r, 200);
      expect(r.json<{ repositories: string[] }>().repositories).toContain('private/app');
      expectError(await request(base, '/v2/_catalog', { headers: { authorization: CAROL } }), 403, 'DENIED');
      expectError(await request(base, '/v2/_catalog'), 401, 'UNAUTHORIZED');
    });

    it('there is no token endpoint without tokens', async () => {
      expectError(await request(base, '/token?service=hoist', { headers: { authorization: CAROL } }), 404, 'NOT_FOUND');
    });

    it('an invalid name is NAME_INVALID before anything else, and does not reach the challenge', async () => {
      const r = await request(base, '/v2/%2e%2e/blobs/uploads/', { method: 'POST' });
      expectError(r, 400, 'NAME_INVALID');
      expect(r.header('www-authenticate')).toBeUndefined();
    });

    // uWS answers `Expect: 100-continue` natively, before any handler runs (README, Front ends).
    if (frontend === 'node') it('Expect: 100-continue: a refused push gets its 401 instead of the 100, so the body is never sent', async () => {
      const data = Buffer.alloc(1 << 20, 7);
      const head = (auth?: string): string =>
        `POST /v2/drop/expect/blobs/uploads/?digest=${sha256(data)} HTTP/1.1\r\nHost: x\r\nContent-Length: ${data.byteLength}\r\n` +
        `Content-Type: application/octet-stream\r\nExpect: 100-continue\r\n${auth ? `Authorization: ${auth}\r\n` : ''}\r\n`;
      await writesNothing(async () => {
        // Without credentials: the answer comes with no body sent, and the connection goes
        // (the server cannot know whether the client will send the body after all).
        const refused = await socketExchange(server.port, head(), { timeoutMs: 5000 });
        expect(refused.timedOut).toBe(false);
        expect(refused.text).not.toContain('100 Continue');
        const r = parseRawReply(refused.text);
        expect(r.status).toBe(401);
        expect(r.codes).toEqual(['UNAUTHORIZED']);
        expect(r.headers.toLowerCase()).toContain('connection: close');
        expect(refused.closed).toBe(true);
      });
      // With them: 100 first, then the body, then 201.
      const socket = net.connect(server.port, '127.0.0.1');
      let received = '';
      socket.on('data', (d: Buffer) => (received += d.toString('latin1')));
      socket.write(head(DAVE));
      await expect.poll(() => received, { timeout: 5000 }).toContain('\r\n\r\n');
      expect(received).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\n$/);
      socket.write(data);
      await expect.poll(() => received, { timeout: 5000 }).toMatch(/HTTP\/1\.1 201 Created/);
      socket.destroy();
    });

    it('logs the user of each request, never the password', async () => {
      const lines = server.logs();
      expect(lines.some((l) => l.includes('"user":"carol"'))).toBe(true);
      for (const [user, password] of Object.entries(USERS)) {
        expect(lines.filter((l) => l.includes(password)), `${user}'s password in the log`).toEqual([]);
        expect(lines.filter((l) => l.includes(basic(user, password).slice(6))), `${user}'s Basic credentials in the log`).toEqual([]);
      }
    });
});
