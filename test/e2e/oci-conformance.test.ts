import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { s3EnvOrFail, s3ServerEnv, useTestBucket } from '../helpers/s3-http.js';
import { REPO_ROOT, startServer, type Frontend, type TestServer } from '../helpers/server.js';

/**
 * The OCI distribution-spec conformance suites (oci-conformance.mjs: both generations, every
 * optional workflow on: pull, push in all forms, discovery with referrers, deletes, mounts,
 * sha512, tag parameters) against Hoist on each front end, on fs and once on S3. Every check
 * must pass. The only skips allowed are what the suite itself accepts as unsupported:
 * - a mount without `from` answered 202 (no automatic content discovery), and
 * - a DELETE of the empty JSON blob `{}` answered 405 (it exists in every repository).
 *
 * HOIST_E2E_REGISTRY=host:port (or a URL) runs it against a registry already running instead
 * (distribution's docker-registry, say, which fails the referrers and tag-parameter checks:
 * the test can fail).
 */

const external = process.env.HOIST_E2E_REGISTRY?.trim() || undefined;
const EXTERNAL = external && !/^https?:\/\//.test(external) ? `http://${external}` : external;
const PROBE = join(REPO_ROOT, 'test/e2e/oci-conformance.mjs');
const ALLOWED_SKIPS = [/mount anonymous: unsupported: mount answered 202/, /blob DELETE sha256:44136fa3: unsupported 405/];

function runProbe(url: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [PROBE, url], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out }));
  });
}

function expectConformant(run: { code: number | null; out: string }): void {
  const failed = run.out.split('\n').filter((l) => l.startsWith('FAIL'));
  expect(failed, run.out.slice(-4000)).toEqual([]);
  expect(run.code, run.out.slice(-4000)).toBe(0);
  expect(run.out).toMatch(/total: \d{4,} checks, 0 failed/);
  const skips = run.out.split('\n').filter((l) => l.startsWith('SKIP'));
  for (const s of skips) expect(ALLOWED_SKIPS.some((re) => re.test(s)), s).toBe(true);
}

type Target = { label: string; frontend: Frontend; storage: 'fs' | 's3' };
const targets: Target[] = [
  { label: 'fs storage, node front end', frontend: 'node', storage: 'fs' },
  { label: 'fs storage, uws front end', frontend: 'uws', storage: 'fs' },
  { label: 's3 storage, node front end', frontend: 'node', storage: 's3' },
];

if (EXTERNAL) {
  describe(`OCI conformance suites against ${EXTERNAL}`, () => {
    it('passes every check', async () => expectConformant(await runProbe(EXTERNAL)), 600_000);
  });
} else {
  describe.each(targets)('OCI conformance suites ($label)', ({ label, frontend, storage }) => {
    const s3 = storage === 's3' ? s3EnvOrFail() : undefined;
    if (storage === 's3' && !s3) return;
    const bucket = s3 ? useTestBucket(s3, 'conformance') : undefined;
    let server: TestServer;
    let dir: string | undefined;

    beforeAll(async () => {
      if (bucket) {
        server = await startServer({ storage: bucket.url('conformance'), frontend, env: s3ServerEnv() });
      } else {
        dir = await mkdtemp(join(tmpdir(), 'hoist-conformance-'));
        server = await startServer({ storage: `fs:${dir}`, frontend });
      }
    });

    afterAll(async () => {
      if (server) expect(await server.stop()).toBe(0);
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    it(`passes every check (${label})`, async () => expectConformant(await runProbe(server.url)), 600_000);
  });
}
