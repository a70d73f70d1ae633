import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../../src/config.js';
import { configError, useYamlFiles } from '../../helpers/config.js';

/**
 * Values a start-up must refuse, naming the option and saying what it takes. Found by probing
 * `hoist serve` with bad values through flags, the environment and YAML:
 * - `limits.requestsPerSecond: .inf` (YAML's infinity) started a server with an infinite rate,
 *   whose token bucket turns to NaN (0 × Infinity) when two of a client's requests are taken
 *   at the same clock reading, and from then on refuses that client every request, 429 with
 *   `Retry-After: NaN` (RateLimiter, checked: 1000 ms ok, 1000 ms refused, 60000 ms refused);
 * - `manifests.maxBytes: 0`, which reads as "no limit" as `uploads.maxBlobBytes: 0` does,
 *   started a server that refused every manifest push with 413;
 * - a count or rate that is no number (`HOIST_UPLOADS_HASH_THREADS=two`, `hashThreads: true`)
 *   was refused with zod's bare "Invalid input", which says nothing of what the option takes.
 */

const yamlFile = useYamlFiles('hoist-config-bad-');

describe('loadConfig refuses values that would run a server wrongly', () => {
  it('refuses an infinite or NaN limits.requestsPerSecond from YAML, and a number too large for a double from the environment', async () => {
    for (const [v, got] of [['.inf', 'Infinity'], ['-.inf', '-Infinity'], ['.nan', 'NaN']]) {
      const err = configError({ file: await yamlFile(`limits:\n  requestsPerSecond: ${v}\n`) });
      expect(err.message).toContain(`limits.requestsPerSecond: expected a finite number, got ${got}`);
    }
    const env = configError({ env: { HOIST_LIMITS_REQUESTS_PER_SECOND: `1${'0'.repeat(400)}` } });
    expect(env.message).toMatch(/limits\.requestsPerSecond \(from HOIST_LIMITS_REQUESTS_PER_SECOND\): expected a finite number/);
    expect(loadConfig({ env: { HOIST_LIMITS_REQUESTS_PER_SECOND: '0.5' } }).limits.requestsPerSecond).toBe(0.5);
  });

  it('refuses manifests.maxBytes 0 (every manifest refused), saying it is no "no limit"', async () => {
    const err = configError({ file: await yamlFile('manifests:\n  maxBytes: 0\n') });
    expect(err.message).toMatch(/manifests\.maxBytes: at least 1KiB \(0 is not "no limit" here/);
    expect(configError({ env: { HOIST_MANIFESTS_MAX_BYTES: '100' } }).message).toContain('manifests.maxBytes (from HOIST_MANIFESTS_MAX_BYTES): at least 1KiB');
    expect(loadConfig({ env: { HOIST_MANIFESTS_MAX_BYTES: '1KiB' } }).manifests.maxBytes).toBe(1024);
  });

  it('says what a count or a rate takes, and what it got, for every kind of wrong value', async () => {
    const cases: [Parameters<typeof loadConfig>[0], RegExp][] = [
      [{ env: { HOIST_UPLOADS_HASH_THREADS: 'two' } }, /uploads\.hashThreads \(from HOIST_UPLOADS_HASH_THREADS\): expected a whole number, got "two"/],
      [{ env: { HOIST_UPLOADS_HASH_THREADS: '1.5' } }, /uploads\.hashThreads \(from HOIST_UPLOADS_HASH_THREADS\): expected a whole number, got "1.5"/],
      [{ file: await yamlFile('uploads:\n  hashThreads: true\n') }, /uploads\.hashThreads: expected a whole number, got true/],
      [{ file: await yamlFile('limits:\n  burst: 2.5\n') }, /limits\.burst: expected a whole number, got 2\.5/],
      [{ file: await yamlFile('limits:\n  maxConcurrentUploads: [1]\n') }, /limits\.maxConcurrentUploads: expected a whole number, got \[1\]/],
      [{ env: { HOIST_LIMITS_REQUESTS_PER_SECOND: 'fast' } }, /limits\.requestsPerSecond \(from HOIST_LIMITS_REQUESTS_PER_SECOND\): expected a finite number, got "fast"/],
      [{ env: { HOIST_LIMITS_REQUESTS_PER_SECOND: '1e3' } }, /limits\.requestsPerSecond \(from HOIST_LIMITS_REQUESTS_PER_SECOND\): expected a finite number, got "1e3"/],
      [{ file: await yamlFile('proxy:\n  remoteUrl: https://r.example\n  maxBlobFetches: lots\n') }, /proxy\.maxBlobFetches: expected a whole number, got "lots"/],
    ];
    for (const [opts, message] of cases) {
      const err = configError(opts);
      expect(err.message).toMatch(message);
      expect(err.message).not.toContain('Invalid input');
    }
  });

  it('still takes counts and rates as numbers and as digit strings, and keeps their bounds', async () => {
    const cfg = loadConfig({ file: await yamlFile('uploads:\n  hashThreads: 3\nlimits:\n  burst: 10\n  requestsPerSecond: 2.5\n'), env: { HOIST_LIMITS_MAX_CONCURRENT_UPLOADS: '4' } });
    expect([cfg.uploads.hashThreads, cfg.limits.burst, cfg.limits.requestsPerSecond, cfg.limits.maxConcurrentUploads]).toEqual([3, 10, 2.5, 4]);
    expect(configError({ env: { HOIST_UPLOADS_HASH_THREADS: '65' } }).message).toContain('uploads.hashThreads (from HOIST_UPLOADS_HASH_THREADS)');
    expect(configError({ file: await yamlFile('limits:\n  burst: -1\n') }).message).toContain('limits.burst');
  });

  // Found by probing: uploads.maxBlobBytes: 1TiB, a limit a registry of VM images might well
  // set, was refused as "not a byte size" (the units stopped at GiB, so it took 1024GiB).
  it('takes terabytes as a size unit, decimal and binary', () => {
    expect(loadConfig({ env: { HOIST_UPLOADS_MAX_BLOB_BYTES: '1TiB' } }).uploads.maxBlobBytes).toBe(1024 ** 4);
    expect(loadConfig({ env: { HOIST_UPLOADS_MAX_BLOB_BYTES: '2T' } }).uploads.maxBlobBytes).toBe(2e12);
    expect(loadConfig({ env: { HOIST_UPLOADS_MAX_BLOB_BYTES: '1.5TB' } }).uploads.maxBlobBytes).toBe(1.5e12);
    expect(configError({ env: { HOIST_UPLOADS_MAX_BLOB_BYTES: '1PiB' } }).message).toContain('not a byte size: "1PiB"');
  });
});
