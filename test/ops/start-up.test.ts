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
});
