import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeConfig, writeHtpasswd, writeLayout } from '../auth/fixtures.js';
import { startDockerRegistry, type DockerRegistry } from '../helpers/docker-registry.js';
import { expectError, request, tempDir } from '../helpers/http.js';
import { readPulled, skopeo, writePolicy } from '../helpers/mirror.js';
import { sha256 } from '../helpers/oci.js';
import { startServer, tail, type TestServer } from '../helpers/server.js';
import { processClock } from '../helpers/clock.js';

/**
 * The cache's upstream asks for credentials (issue 13, item 4), as real registries do:
 *
 *   - Debian's docker-registry with an htpasswd file: HTTP Basic;
 *   - a second Hoist with `auth.token`: the Docker token flow (401 with `Bearer realm=…`,
 *     a token from its /token for the scope, reused until it expires), with credentials
 *     and anonymously (a rule lets anonymous users pull public/*).
 *
 * skopeo pulls through the cache; the upstream Hoist's request log tells how many tokens the
 * cache fetched.
 */

let work: string;
let cleanup: () => Promise<void>;
let policy: string;
let layout: string;
let digests: string[];
const started: Array<{ stop(): Promise<unknown> }> = [];

async function mirrorOf(remote: string, proxy: Record<string, string> = {}, env: Record<string, string> = {}): Promise<TestServer> {
  const config = await writeConfig(work, { proxy: { remoteUrl: remote, ...proxy } }, `mirror-${started.length}.yaml`);
  const s = await startServer({ storage: 'memory:', frontend: 'node', args: ['--config', config], env: { HOIST_LOG_LEVEL: 'debug', ...env } });
  started.push(s);
  return s;
}

beforeAll(async () => {
  ({ path: work, cleanup } = await tempDir('hoist-mirror-auth-'));
  policy = await writePolicy(work);
  layout = join(work, 'layout');
  digests = await writeLayout(layout);
});

afterAll(async () => {
  for (const s of started.reverse()) await s.stop().catch(() => undefined);
  await cleanup?.();
});

async function pullThrough(mirror: TestServer, ref: string, out: string): Promise<void> {
  await skopeo(policy, ['copy', '--src-tls-verify=false', `docker://${mirror.host}/${ref}`, `oci:${join(work, out)}:v1`], () => tail(mirror.logs()));
  expect((await readPulled(join(work, out), 'v1')).digests).toEqual(digests);
}

describe('HTTP Basic (docker-registry with htpasswd)', () => {
  let upstream: DockerRegistry;

  beforeAll(async () => {
    const htpasswd = await writeHtpasswd(work, { puller: 'puller-pw' }, 'upstream.htpasswd');
    upstream = await startDockerRegistry({ dir: join(work, 'basic-upstream'), htpasswd });
    started.push(upstream);
    await skopeo(policy, ['copy', '--dest-tls-verify=false', '--dest-creds', 'puller:puller-pw', `oci:${layout}:v1`, `docker://${upstream.host}/team/app:v1`]);
  });

  it('pulls with the configured user and password', async () => {
    const mirror = await mirrorOf(upstream.url, { username: 'puller', password: 'puller-pw' });
    await pullThrough(mirror, 'team/app:v1', 'basic-pulled');
  });

  it('takes the password from passwordFile (its last line break is not part of it)', async () => {
    const file = join(work, 'upstream-password');
    await writeFile(file, 'puller-pw\n');
    const mirror = await mirrorOf(upstream.url, { username: 'puller', passwordFile: file });
    await pullThrough(mirror, 'team/app:v1', 'basic-file-pulled');
  });

  it('without credentials, or with wrong ones: 403 DENIED saying the upstream refused', async () => {
    for (const proxy of [{}, { username: 'puller', password: 'wrong' }] as Array<Record<string, string>>) {
      const mirror = await mirrorOf(upstream.url, proxy);
      const r = await request(mirror.url, '/v2/team/app/manifests/v1');
      const [e] = expectError(r, 403, 'DENIED');
      expect(e!.message).toMatch(/^upstream registry 127\.0\.0\.1:\d+ refused access/);
    }
  });
});

describe('the Docker token flow (a second Hoist with auth.token)', () => {
  let upstream: TestServer;

  /** GET /token requests the upstream answered, and for which scopes. */
  const tokenRequests = (): string[] =>
    upstream.records().filter((r) => r.msg === 'request' && typeof r.path === 'string' && r.path === '/token' && r.status === 200).map((r) => String(r.user ?? ''));

  beforeAll(async () => {
    const config = await writeConfig(work, {
      auth: {
        htpasswd: await writeHtpasswd(work, { admin: 'admin-pw', mirror: 'mirror-pw' }, 'token.htpasswd'),
        // Long enough that no stall of a loaded machine outlasts it; the test that needs it
        // expired moves the cache's clock instead.
        token: { expiry: '1h' },
        access: [
          { repository: '*', users: ['admin'], actions: ['pull', 'push', 'delete'] },
          { repository: '*', users: ['mirror'], actions: ['pull'] },
          { repository: 'public/*', users: ['anonymous'], actions: ['pull'] },
        ],
      },
    }, 'token-upstream.yaml');
    upstream = await startServer({ storage: 'memory:', frontend: 'node', args: ['--config', config] });
    started.push(upstream);
    for (const repo of ['team/app', 'public/tools']) {
      await skopeo(policy, ['copy', '--dest-tls-verify=false', '--dest-creds', 'admin:admin-pw', `oci:${layout}:v1`, `docker://${upstream.host}/${repo}:v1`]);
    }
  });

  it('answers the Bearer challenge with a token for the repository, fetched once and reused for every request', async () => {
    const before = tokenRequests().length;
    const mirror = await mirrorOf(upstream.url, { username: 'mirror', password: 'mirror-pw', tagTtl: '0s' });
    await pullThrough(mirror, 'team/app:v1', 'token-pulled');
    // A manifest and two blobs, and one token for them all, asked for as `mirror`.
    expect(tokenRequests().slice(before)).toEqual(['mirror']);
    expect(upstream.records().filter((r) => r.msg === 'request' && r.status === 401 && r.path !== '/token').length).toBeGreaterThanOrEqual(1);
  });

  it('fetches a new token once the last one expired', async () => {
    const clock = processClock(work, 'token-mirror');
    const mirror = await mirrorOf(upstream.url, { username: 'mirror', password: 'mirror-pw', tagTtl: '0s' }, clock.env());
    const before = tokenRequests().length;
    // tagTtl 0s: every manifest GET by tag asks the upstream (a HEAD).
    expect((await request(mirror.url, '/v2/team/app/manifests/v1')).status).toBe(200);
    expect((await request(mirror.url, '/v2/team/app/manifests/v1')).status).toBe(200);
    expect(tokenRequests().length - before).toBe(1);
    // The upstream's tokens last an hour; the cache renews 30 s before. A minute before that
    // it still uses the token (a minute: more than the real time since it was fetched).
    await clock.advance(3_600_000 - 90_000);
    expect((await request(mirror.url, '/v2/team/app/manifests/v1')).status).toBe(200);
    expect(tokenRequests().length - before).toBe(1);
    await clock.advance(90_000);
    expect((await request(mirror.url, '/v2/team/app/manifests/v1')).status).toBe(200);
    expect(tokenRequests().length - before).toBe(2);
  });

  it('anonymously: pulls what anonymous users may; for the rest an anonymous token gets 403 DENIED', async () => {
    const mirror = await mirrorOf(upstream.url);
    // Hoist lets anonymous users pull public/* without a token at all.
    await pullThrough(mirror, 'public/tools:v1', 'anonymous-pulled');
    const before = tokenRequests().length;
    const r = await request(mirror.url, '/v2/team/app/manifests/v1');
    expectError(r, 403, 'DENIED');
    // The challenge was answered with an anonymous token, which grants nothing there.
    expect(tokenRequests().slice(before)).toEqual(['']);
    expectError(await request(mirror.url, `/v2/team/app/blobs/${digests[2]}`), 403, 'DENIED');
    expect(sha256((await request(mirror.url, `/v2/public/tools/blobs/${digests[2]}`)).body)).toBe(digests[2]);
  });
});
