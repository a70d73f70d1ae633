import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request, waitForLog } from '../helpers/http.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { basic, fetchToken, pushImageAs, writeConfig, writeHtpasswd } from './fixtures.js';

/**
 * Secrets never reach the log (issue item 5): passwords, Basic credentials, bearer tokens
 * (and their signatures), tokens and passwords in query strings, and S3 credentials or
 * signatures in a storage URL, at debug level, on success, on failure and at start-up.
 */

const PASSWORD = 'hunter2-but-longer';

let work: string;
let server: TestServer;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'hoist-auth-logs-'));
  const config = await writeConfig(work, {
    logLevel: 'trace',
    auth: { htpasswd: await writeHtpasswd(work, { alice: PASSWORD }), token: { expiry: '1m' } },
  });
  server = await startServer({ storage: 'memory:', frontend: 'node', args: ['--config', config] });
});

afterAll(async () => {
  await server?.kill();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('secrets in logs', () => {
  it('no password, credential, token or signature appears in the log of a busy session', async () => {
    const base = server.url;
    const g = await fetchToken(base, ['repository:team/app:pull,push'], ['alice', PASSWORD]);
    const bearer = `Bearer ${g.token}`;
    await pushImageAs(base, 'team/app', 'v1', bearer);
    await request(base, '/v2/team/app/manifests/v1', { headers: { authorization: bearer } });
    await request(base, '/v2/', { headers: { authorization: basic('alice', PASSWORD) } });
    await request(base, '/v2/', { headers: { authorization: basic('alice', `${PASSWORD}-wrong`) } });
    await request(base, `/v2/team/app/tags/list?token=${g.token}&password=${PASSWORD}`, { headers: { authorization: bearer } });
    await request(base, `/token?service=hoist&scope=repository:team/app:pull&password=${PASSWORD}`, { headers: { authorization: basic('alice', PASSWORD) } });
    await request(base, '/v2/team/app/manifests/v1', { headers: { authorization: `Bearer ${g.token}x` } });
    process.kill(server.pid, 'SIGHUP');
    await waitForLog(server, 'the reload line', (r) => r.msg === 'reloaded the htpasswd file and TLS certificate');

    const lines = server.logs();
    expect(lines.filter((l) => l.includes('"msg":"request"')).length).toBeGreaterThan(8);
    const signature = g.token.split('.')[2]!;
    const secrets = {
      password: PASSWORD,
      'Basic credentials': Buffer.from(`alice:${PASSWORD}`).toString('base64'),
      token: g.token,
      'token signature': signature,
      'token payload': g.token.split('.')[1]!,
    };
    for (const [what, secret] of Object.entries(secrets)) {
      expect(lines.filter((l) => l.includes(secret)), `${what} in the log`).toEqual([]);
    }
  });

  it('a storage URL carrying S3 keys or a signature is refused without echoing them', async () => {
    const bad = [
      's3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI-K7MDENG@bucket/prefix?endpoint=http://127.0.0.1:1',
      's3://bucket/prefix?endpoint=http://127.0.0.1:1&secretAccessKey=wJalrXUtnFEMI-K7MDENG&X-Amz-Signature=0123456789abcdef',
    ];
    for (const storage of bad) {
      const err = await startServer({ storage, startTimeoutMs: 10_000 }).then(
        async (s) => {
          await s.kill();
          return undefined;
        },
        (e: Error) => e,
      );
      expect(err, `the server should refuse ${storage}`).toBeInstanceOf(Error);
      // The error carries the server's whole output (log lines and stderr).
      const output = err!.message.slice(err!.message.indexOf('\n'));
      expect(output).toMatch(/start-up failed/);
      for (const secret of ['wJalrXUtnFEMI-K7MDENG', '0123456789abcdef']) expect(output).not.toContain(secret);
    }
  });
});
