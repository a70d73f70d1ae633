import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runCli, startServer } from '../helpers/server.js';

/**
 * What `hoist serve` says about its configuration at start-up. A number without a unit is
 * milliseconds, so `limits.idleTimeout: 5` meant as seconds used to start a server that
 * dropped every client after 5 ms: a duration under its floor now stops start-up (exit 2)
 * naming the option and the variable it came from. And a misspelt variable
 * (HOIST_LIMITS_IDLE_TIMOUT) was ignored without a word, leaving the default in force, where a
 * misspelt YAML key is refused: it is now a warning naming it. The harnesses' own variables
 * (HOIST_TEST_*, HOIST_BENCH_*, HOIST_FUZZ_*, HOIST_E2E_*) and HOIST_CONFIG are not options
 * and stay silent.
 */

const SERVE = ['serve', '--listen', '127.0.0.1:0', '--storage', 'memory:'];

describe('hoist serve start-up', () => {
  it('refuses HOIST_LIMITS_IDLE_TIMEOUT=5 (5 ms), naming the option and the variable', async () => {
    // Without the floor the server starts and runs until the hang guard kills it.
    const r = await runCli(SERVE, { HOIST_LIMITS_IDLE_TIMEOUT: '5' }, 15_000);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toContain('limits.idleTimeout (from HOIST_LIMITS_IDLE_TIMEOUT): 0 (never) or at least 1s, got 5 ms');
  });

  it('warns of a HOIST_* variable that names no option, naming it, and of no harness variable', async () => {
    const server = await startServer({
      env: {
        HOIST_LIMITS_IDLE_TIMOUT: '120s', HOIST_UPLOADS: '1',
        HOIST_TEST_CLOCK_FILE: '/nonexistent', HOIST_BENCH_CLI: 'x', HOIST_FUZZ_SEED: '1', HOIST_E2E_REGISTRY: 'x', HOIST_CONFIG: '',
      },
    });
    try {
      const warnings = server.records().filter((r) => r.level === 40 && String(r.msg).includes('HOIST_'));
      expect(warnings, server.logs().join('\n')).toHaveLength(1);
      expect(server.logs().join('\n')).not.toMatch(/HOIST_(TEST|BENCH|FUZZ|E2E)_|HOIST_CONFIG/);
      expect(warnings[0]).toMatchObject({
        variables: ['HOIST_LIMITS_IDLE_TIMOUT', 'HOIST_UPLOADS'],
        msg: 'ignoring environment variables that name no option: HOIST_LIMITS_IDLE_TIMOUT, HOIST_UPLOADS',
      });
    } finally {
      expect(await server.stop()).toBe(0);
    }
  });

  // Found by probing: a file an option names that does not hold what it should (an htpasswd
  // line that is not bcrypt, a certificate file without a certificate) stopped start-up with
  // exit 1, a fatal log line carrying the error's stack trace and the message again on
  // stderr, where a bad value in the configuration itself exits 2 with one line.
  it('a file an option names that holds the wrong thing → exit 2, one line naming the option, no stack trace', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'hoist-start-up-'));
    try {
      const htpasswd = join(dir, 'htpasswd');
      await writeFile(htpasswd, 'dave:plaintextPassw0rd\n');
      const cert = join(dir, 'tls.crt');
      await writeFile(cert, 'not a certificate\n');
      const cases: [Record<string, string>, string][] = [
        [{ HOIST_AUTH_HTPASSWD: htpasswd }, `hoist: auth.htpasswd: ${htpasswd} line 1: the hash of "dave" is not bcrypt (create it with htpasswd -B)\n`],
        [{ HOIST_TLS_CERT_FILE: cert, HOIST_TLS_KEY_FILE: cert }, `hoist: tls.certFile: ${cert} holds no PEM certificate\n`],
      ];
      for (const [env, stderr] of cases) {
        const r = await runCli(SERVE, { ...env, HOIST_LOG_FORMAT: 'json' }, 15_000);
        expect(r.code, r.stderr).toBe(2);
        expect(r.stderr).toBe(stderr);
        expect(r.stdout + r.stderr, 'no stack trace').not.toMatch(/\bat .*\.js:\d+/);
        expect(r.stdout, 'the password is not quoted').not.toContain('plaintextPassw0rd');
        const fatal = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.level === 60);
        expect(fatal).toHaveLength(1);
        expect(fatal[0]!.msg).toBe(`invalid configuration: ${stderr.slice('hoist: '.length, -1)}`);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
