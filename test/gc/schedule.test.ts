import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blobRef, GcTestClient, image } from '../helpers/gc-client.js';
import { runGcCli, type CliResult } from '../helpers/gc.js';
import { tempDir, waitFor } from '../helpers/http.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * `hoist serve` with `gc.schedule` (every second): collections run by themselves, in the
 * default registry and in every namespace (each an isolated registry under /namespaces/<name>),
 * and a configured expiration hides tags and lets them be collected. `hoist gc` run by hand
 * while the server runs finds the lease free between scheduled runs.
 *
 * The images are pushed, and tags deleted, by a first server without a schedule, which then
 * stops; the scheduled one starts on the same directory with grace 0. So no collection runs
 * while a push is under way, and nothing depends on a push finishing within a grace period
 * (gc/collector.ts, B), however loaded the machine.
 */

const NAMESPACES = JSON.stringify([{ name: 'team-a', pathPrefix: 'team-a' }]);

describe('scheduled collections in hoist serve', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let config: string;
  let server: TestServer | undefined;
  beforeAll(async () => {
    dir = await tempDir('hoist-gc-schedule-');
    config = await yamlConfig(dir.path);
  });
  afterAll(async () => {
    try {
      if (server) expect(await server.stop()).toBe(0);
    } finally {
      await dir?.cleanup();
    }
  });

  it('collects in the default registry and in namespaces, and expires tags by configuration', async () => {
    const pusher = await startServer({
      storage: `fs:${dir.path}`, frontend: 'node', env: { HOIST_NAMESPACES: NAMESPACES }, args: ['--config', config],
    });
    const keep = image('app', [blobRef(randomBytes(2000))]);
    const drop = image('app', [blobRef(randomBytes(3000))]);
    const nsDrop = image('lib', [blobRef(randomBytes(4000))]);
    const tmp = image('ci/tmp/build', [blobRef(randomBytes(5000))]);
    {
      const root = new GcTestClient(pusher.url);
      const ns = new GcTestClient(pusher.url, 64 * 1024, '/team-a');
      await root.push(keep, 'v1');
      await root.push(drop, 'v2');
      await ns.push(nsDrop, 'v1');
      await root.push(tmp, 'v1');
      await root.deleteTag('app', 'v2');
      await ns.deleteTag('lib', 'v1');
    }
    expect(await pusher.stop()).toBe(0);

    server = await startServer({
      storage: `fs:${dir.path}`,
      frontend: 'node',
      env: { HOIST_GC_SCHEDULE: '1s', HOIST_GC_GRACE: '0s', HOIST_NAMESPACES: NAMESPACES },
      args: ['--config', config],
    });
    const root = new GcTestClient(server.url);
    const ns = new GcTestClient(server.url, 64 * 1024, '/team-a');
    // ci/tmp expires 1 s after its push (configuration): then gone from the API.
    await waitFor('ci/tmp/build:v1 to expire', async () => ((await root.tags('ci/tmp/build')).length === 0 ? true : undefined), 30_000);
    // The second collection to finish from now on started after the expiry (one server runs
    // one at a time): it removed what was deleted, in both registries, and what expired.
    // (No HEAD while waiting: a blob HEAD touches the blob, which may spare it a collection.)
    const isDone = (r: { msg?: unknown }): boolean => r.msg === 'garbage collection done';
    const before = server.records().filter(isDone).length;
    await waitFor('two more scheduled collections', () => (server!.records().filter(isDone).length >= before + 2 ? true : undefined), 60_000);
    expect(await root.headBlob('app', drop.blobs[1]!.digest)).toBe(false);
    expect(await ns.headBlob('lib', nsDrop.blobs[1]!.digest)).toBe(false);
    expect(await root.headBlob('ci/tmp/build', tmp.blobs[1]!.digest)).toBe(false);
    const done = server.records().filter((r) => r.msg === 'garbage collection done');
    expect(done.some((r) => JSON.stringify(r.registries).includes('"team-a"'))).toBe(true);
    expect(server.records().filter((r) => r.msg === 'garbage collection failed')).toEqual([]);
    await root.pull('app', 'v1');

    // By hand, while the server runs: nothing left to remove. A scheduled run may hold the
    // lease just then (exit 3); the next try comes after it (each takes milliseconds here).
    const tries: CliResult[] = [];
    for (let i = 0; i < 20; i++) {
      const r = await runGcCli(['--storage', `fs:${dir.path}`, '--grace', '0s', '--json']);
      tries.push(r);
      if (r.code !== 3) break;
      expect(r.stderr).toMatch(/a collection is running already|another collection claimed generation/);
    }
    const r = tries[tries.length - 1]!;
    expect(r.code, `after ${tries.length} tries: ${r.stderr}`).toBe(0);
    const run = JSON.parse(r.stdout) as { registries: Array<{ registry: string; report: { manifests: number } }> };
    expect(run.registries.map((x) => x.registry)).toEqual(['', 'team-a']);
    expect(run.registries.every((x) => x.report.manifests === 0)).toBe(true);
  }, 300_000);
});

async function yamlConfig(dir: string): Promise<string> {
  const { writeFile } = await import('node:fs/promises');
  // A name starting with '.' is no storage path: the fs driver leaves it alone.
  const file = `${dir}/.hoist.yaml`;
  await writeFile(file, 'gc:\n  expiration:\n    repositories:\n      ci/tmp: 1s\n');
  return file;
}
