import { describe, expect, it } from 'vitest';
import { runCli } from '../helpers/server.js';

/**
 * What `hoist serve` says about its configuration at start-up. A number without a unit is
 * milliseconds, so `limits.idleTimeout: 5` meant as seconds used to start a server that
 * dropped every client after 5 ms: a duration under its floor now stops start-up (exit 2)
 * naming the option and the variable it came from.
 */

const SERVE = ['serve', '--listen', '127.0.0.1:0', '--storage', 'memory:'];

describe('hoist serve start-up', () => {
  it('refuses HOIST_LIMITS_IDLE_TIMEOUT=5 (5 ms), naming the option and the variable', async () => {
    // Without the floor the server starts and runs until the hang guard kills it.
    const r = await runCli(SERVE, { HOIST_LIMITS_IDLE_TIMEOUT: '5' }, 15_000);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toContain('limits.idleTimeout (from HOIST_LIMITS_IDLE_TIMEOUT): 0 (never) or at least 1s, got 5 ms');
  });
});
