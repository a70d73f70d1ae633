import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT, startServer, type TestServer } from '../helpers/server.js';
import { basic, parseChallenge, writeHtpasswd, writeSelfSigned } from './fixtures.js';

/**
 * README "Secure deployment" works as written: its key command makes a key Hoist takes, and
 * its YAML (with /etc/hoist/ pointing at a temporary directory) starts a registry that asks
 * for tokens over HTTPS, issues them to alice for team-a/*, and lets anonymous users pull
 * public/* only.
 */

let work: string;
let server: TestServer;
let section: string;

function get(path: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port: server.port, path, headers, rejectUnauthorized: false, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (s: string) => { body += s; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'hoist-readme-secure-'));
  const readme = await readFile(join(REPO_ROOT, 'README.md'), 'utf8');
  section = /^## Secure deployment$([\s\S]*?)^## /m.exec(readme)?.[1] ?? '';
  expect(section, 'README.md has a "Secure deployment" section').not.toBe('');
  // The key command, as written, with the directory swapped.
  const keyCommand = /^(openssl ecparam .*)$/m.exec(section)?.[1];
  expect(keyCommand, 'the token key command').toBeDefined();
  execFileSync('sh', ['-c', keyCommand!.replaceAll('/etc/hoist/', `${work}/`)]);
  await writeHtpasswd(work, { alice: 'alice-pw', admin: 'admin-pw' });
  const tls = writeSelfSigned(work, 'tls');
  const yamlText = /```yaml\n([\s\S]*?)```/.exec(section)?.[1];
  expect(yamlText, 'the YAML example').toBeDefined();
  const config = parseYaml(yamlText!.replaceAll('/etc/hoist/', `${work}/`)) as Record<string, unknown>;
  // Only what cannot work here changes: a free port, a temporary store, the test certificate.
  Object.assign(config, { listen: '127.0.0.1:0', storage: `fs:${join(work, 'data')}`, tls });
  await writeFile(join(work, 'hoist.yaml'), JSON.stringify(config));
  server = await startServer({ env: { HOIST_LISTEN: '127.0.0.1:0', HOIST_STORAGE: `fs:${join(work, 'data')}` }, args: ['--config', join(work, 'hoist.yaml')] });
});

afterAll(async () => {
  await server?.kill();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('README "Secure deployment"', () => {
  it('starts over HTTPS with bearer tokens, on the node:http front end', async () => {
    const listening = server.records().find((r) => r.msg === 'listening');
    expect(listening).toMatchObject({ tls: true, auth: 'bearer', frontend: 'node' });
    const r = await get('/v2/');
    expect(r.status).toBe(401);
    expect(parseChallenge(r.headers['www-authenticate'] as string)).toMatchObject({ scheme: 'Bearer', service: 'registry.example.com' });
  });

  it('issues alice a token for team-a/*, and nothing for team-b', async () => {
    const r = await get('/token?service=registry.example.com&scope=repository:team-a/app:pull,push,delete&scope=repository:team-b/app:pull', {
      authorization: basic('alice', 'alice-pw'),
    });
    expect(r.status).toBe(200);
    const token = (JSON.parse(r.body) as { token: string }).token;
    const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { access: unknown; aud: string };
    expect(claims.aud).toBe('registry.example.com');
    expect(claims.access).toEqual([{ type: 'repository', name: 'team-a/app', actions: ['pull', 'push'] }]);
    expect((await get('/v2/team-a/app/tags/list', { authorization: `Bearer ${token}` })).status).toBe(404); // allowed; nothing pushed yet
  });

  it('anonymous users get pull on public/* only', async () => {
    const r = await get('/token?service=registry.example.com&scope=repository:public/tools:pull,push&scope=repository:team-a/app:pull');
    const token = (JSON.parse(r.body) as { token: string }).token;
    const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { access: unknown; sub: string };
    expect(claims.sub).toBe('');
    expect(claims.access).toEqual([{ type: 'repository', name: 'public/tools', actions: ['pull'] }]);
  });

  it('documents the env variable of every auth, tls and limits option', async () => {
    for (const name of ['HOIST_AUTH_HTPASSWD', 'HOIST_AUTH_TOKEN_REALM', 'HOIST_AUTH_TOKEN_PRIVATE_KEY_FILE', 'HOIST_AUTH_TOKEN_PUBLIC_KEY_FILES',
      'HOIST_AUTH_TOKEN_EXPIRY', 'HOIST_AUTH_GROUPS', 'HOIST_AUTH_ACCESS', 'HOIST_TLS_CERT_FILE', 'HOIST_TLS_KEY_FILE']) {
      expect(section).toContain(name);
    }
    for (const option of ['maxUrlBytes', 'maxHeaderBytes', 'idleTimeout', 'maxConcurrentUploads', 'requestsPerSecond', 'burst']) {
      expect(section).toContain(`limits.${option}`);
    }
  });
});
