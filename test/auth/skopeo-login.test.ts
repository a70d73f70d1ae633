import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, type RunResult } from '../helpers/commands.js';
import { startServer, tail, type TestServer } from '../helpers/server.js';
import { writeConfig, writeHtpasswd, writeLayout } from './fixtures.js';

/**
 * skopeo logs in and copies images the way users do, against Hoist as its own token issuer
 * (`auth.token: {}`: `skopeo login` gets 401 Bearer from /v2/, trades the password for a
 * token at GET /token, and skopeo copy does so again per repository), and against plain
 * htpasswd Basic auth. node:http front end: skopeo probes HTTPS first (README "Front ends").
 */

const USER = 'alice';
const PASSWORD = 'correct horse battery staple';

let work: string;
let policy: string;
let layout: string;
let layoutDigests: string[];

async function expectSameImage(dir: string): Promise<void> {
  for (const digest of layoutDigests) {
    const hex = digest.slice('sha256:'.length);
    const [got, want] = await Promise.all([readFile(join(dir, 'blobs/sha256', hex)), readFile(join(layout, 'blobs/sha256', hex))]);
    expect(got.equals(want), `blob ${digest}`).toBe(true);
  }
}

beforeAll(async () => {
  await run('skopeo', ['--version']);
  work = await mkdtemp(join(tmpdir(), 'hoist-auth-skopeo-'));
  policy = join(work, 'policy.json');
  await writeFile(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  layout = join(work, 'layout');
  layoutDigests = await writeLayout(layout);
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

const modes = [
  { label: "Hoist's own token issuer (auth.token: {})", token: true },
  { label: 'htpasswd with HTTP Basic', token: false },
];

for (const mode of modes) describe(`skopeo login, ${mode.label}`, () => {
  let server: TestServer;
  let authfile: string;
  let outputs = 0;
  const skopeo = (args: string[]): Promise<RunResult> => run('skopeo', ['--policy', policy, ...args], () => tail(server.logs(), 60));
  const fails = async (args: string[]): Promise<string> => {
    const err = await skopeo(args).then(() => undefined, (e: Error) => e);
    expect(err, `skopeo ${args.join(' ')} should fail`).toBeInstanceOf(Error);
    return err!.message;
  };

  beforeAll(async () => {
    const dir = await mkdtemp(join(work, 'server-'));
    authfile = join(dir, 'auth.json');
    const config = await writeConfig(dir, {
      auth: {
        htpasswd: await writeHtpasswd(dir, { [USER]: PASSWORD, bob: 'bobs password' }),
        ...(mode.token ? { token: {} } : {}),
        access: [
          { repository: '*', users: [USER], actions: ['pull', 'push', 'delete'] },
          { repository: 'public/*', users: ['anonymous'], actions: ['pull'] },
        ],
      },
    });
    server = await startServer({ storage: 'memory:', frontend: 'node', args: ['--config', config] });
  });

  afterAll(async () => {
    await server?.kill();
  });

  it('refuses a wrong password', async () => {
    const message = await fails(['login', '--tls-verify=false', '--authfile', authfile, '-u', USER, '-p', 'wrong', server.host]);
    expect(message).toMatch(/unauthorized|authentication required|invalid username\/password/i);
  });

  it('logs in and keeps the credentials in the authfile', async () => {
    const { stdout } = await skopeo(['login', '--tls-verify=false', '--authfile', authfile, '-u', USER, '-p', PASSWORD, server.host]);
    expect(stdout).toMatch(/Login Succeeded/);
    const saved = JSON.parse(await readFile(authfile, 'utf8')) as { auths: Record<string, { auth: string }> };
    expect(Buffer.from(saved.auths[server.host]!.auth, 'base64').toString()).toBe(`${USER}:${PASSWORD}`);
    if (mode.token) {
      const tokenRequests = server.records().filter((r) => r.msg === 'request' && r.path === '/token');
      expect(tokenRequests.some((r) => r.status === 200 && r.user === USER), 'a token was issued to alice').toBe(true);
    }
  });

  it('pushes and pulls with --authfile, byte-identical', async () => {
    await skopeo(['copy', '--dest-tls-verify=false', '--authfile', authfile, `oci:${layout}:v1`, `docker://${server.host}/team/app:v1`]);
    const out = join(work, `out-${mode.token ? 'token' : 'basic'}-${++outputs}`);
    await skopeo(['copy', '--src-tls-verify=false', '--authfile', authfile, `docker://${server.host}/team/app:v1`, `oci:${out}:v1`]);
    await expectSameImage(out);
    const { stdout } = await skopeo(['list-tags', '--tls-verify=false', '--authfile', authfile, `docker://${server.host}/team/app`]);
    expect((JSON.parse(stdout) as { Tags: string[] }).Tags).toEqual(['v1']);
    if (mode.token) {
      // Every registry request after the ping carried a token.
      const registryRequests = server.records().filter((r) => r.msg === 'request' && String(r.path).startsWith('/v2/team/app'));
      expect(registryRequests.length).toBeGreaterThan(0);
      expect(registryRequests.filter((r) => r.status === 401)).toEqual([]);
    }
  });

  it('without credentials: pulls what anonymous users may, and may not push', async () => {
    await skopeo(['copy', '--dest-tls-verify=false', '--authfile', authfile, `oci:${layout}:v1`, `docker://${server.host}/public/app:v1`]);
    const empty = join(work, `empty-auth-${mode.token ? 'token' : 'basic'}.json`);
    await writeFile(empty, '{"auths":{}}');
    const out = join(work, `anon-${mode.token ? 'token' : 'basic'}`);
    await skopeo(['copy', '--src-tls-verify=false', '--authfile', empty, `docker://${server.host}/public/app:v1`, `oci:${out}:v1`]);
    await expectSameImage(out);
    const message = await fails(['copy', '--dest-tls-verify=false', '--authfile', empty, `oci:${layout}:v1`, `docker://${server.host}/public/app:v2`]);
    expect(message).toMatch(/unauthorized|authentication required/i);
    expect(server.records().filter((r) => r.msg === 'request' && r.method === 'PUT' && r.path === '/v2/public/app/manifests/v2' && r.status === 201)).toEqual([]);
  });

  it('a user the rules do not name may log in, but not push', async () => {
    const bobAuth = join(work, `bob-${mode.token ? 'token' : 'basic'}.json`);
    await skopeo(['login', '--tls-verify=false', '--authfile', bobAuth, '-u', 'bob', '-p', 'bobs password', server.host]);
    const message = await fails(['copy', '--dest-tls-verify=false', '--authfile', bobAuth, `oci:${layout}:v1`, `docker://${server.host}/team/app:bob`]);
    // A HEAD has no body to quote: skopeo says 403 (Forbidden).
    expect(message).toMatch(/denied|forbidden/i);
  });

  it('logs out', async () => {
    await skopeo(['logout', '--authfile', authfile, server.host]);
    const saved = JSON.parse(await readFile(authfile, 'utf8')) as { auths: Record<string, unknown> };
    expect(saved.auths[server.host]).toBeUndefined();
  });

  it('never logs the password', () => {
    const encoded = Buffer.from(`${USER}:${PASSWORD}`).toString('base64');
    expect(server.logs().filter((l) => l.includes(PASSWORD) || l.includes(encoded))).toEqual([]);
  });
});
