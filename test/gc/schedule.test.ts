import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blobRef, GcTestClient, image } from '../helpers/gc-client.js';
import { runGcCli } from '../helpers/gc.js';
import { tempDir, waitForLog } from '../helpers/http.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * `hoist serve` with `gc.schedule` (every second, grace 2 s): collections run by themselves, in the default registry
 * and in every namespace (each an isolated registry under /namespaces/<name>), and a
 * configured expiration hides tags and lets them be collected. `hoist gc` run by hand while
 * the server runs finds the lease free between scheduled runs.
 */

describe('scheduled collections in hoist serve', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let server: TestServer;
  beforeAll(async () => {
    dir = await tempDir('hoist-gc-schedule-');
    server = await startServer({
      storage: `fs:${dir.path}`,
      frontend: 'node',
      env: {
        HOIST_GC_SCHEDULE: '1s',
        // Longer than a push here takes: with 0s a collection could sweep a blob between its
        // upload and its manifest (gc/collector.ts, B).
        HOIST_GC_GRACE: '2s',
        HOIST_NAMESPACES: JSON.stringify([{ name: 'team-a', pathPrefix: 'team-a' }]),
      },
      args: ['--config', await yamlConfig(dir.path)],
    });
  });
  afterAll(async () => {
    await server?.stop();
    await dir?.cleanup();
  });

  it('collects in the default registry and in namespaces, and expires tags by configuration', async () => {
    const root = new GcTestClient(server.url);
    const ns = new GcTestClient(server.url, 64 * 1024, '/team-a');
    const keep = image('app', [blobRef(randomBytes(2000))]);
    const drop = image('app', [blobRef(randomBytes(3000))]);
    const nsDrop = image('lib', [blobRef(randomBytes(4000))]);
    const tmp = image('ci/tmp/build', [blobRef(randomBytes(5000))]);
    await root.push(keep, 'v1');
    await root.push(drop, 'v2');
    await ns.push(nsDrop, 'v1');
    await root.push(tmp, 'v1');
    await root.deleteTag('app', 'v2');
    await ns.deleteTag('lib', 'v1');
    // ci/tmp expires 1 s after a push (configuration): gone from the API by then. After the
    // grace period, what was deleted is collectable.
    await new Promise((resolve) => setTimeout(resolve, 1100));
    expect(await root.tags('ci/tmp/build')).toEqual([]);
    await new Promise((resolve) => setTimeout(resolve, 1100));

    const done = (r: { msg?: unknown; registries?: unknown }) =>
      r.msg === 'garbage collection done' && JSON.stringify(r.registries).includes('"team-a"');
    const seen = server.records().filter(done).length;
    await waitForLog(server, 'a scheduled collection after the deletes', (r) => done(r) && server.records().filter(done).indexOf(r) >= seen, 15_000);
    // Let one more run finish so that every delete above is behind a whole collection.
    const count = server.records().filter(done).length;
    await waitForLog(server, 'another scheduled collection', () => server.records().filter(done).length > count, 15_000);

    expect(await root.headBlob('app', drop.blobs[1]!.digest)).toBe(false);
    expect(await ns.headBlob('lib', nsDrop.blobs[1]!.digest)).toBe(false);
    expect(await root.headBlob('ci/tmp/build', tmp.blobs[1]!.digest)).toBe(false);
    await root.pull('app', 'v1');

    // By hand, while the server runs: nothing left to remove.
    const r = await runGcCli(['--storage', `fs:${dir.path}`, '--grace', '0s', '--json']);
    if (r.code === 3) return; // a scheduled run held the lease just then
    expect(r.code, r.stderr).toBe(0);
    const run = JSON.parse(r.stdout) as { registries: Array<{ registry: string; report: { manifests: number } }> };
    expect(run.registries.map((x) => x.registry)).toEqual(['', 'team-a']);
    expect(run.registries.every((x) => x.report.manifests === 0)).toBe(true);
  });
});

async function yamlConfig(dir: string): Promise<string> {
  const { writeFile } = await import('node:fs/promises');
  // A name starting with '.' is no storage path: the fs driver leaves it alone.
  const file = `${dir}/.hoist.yaml`;
  await writeFile(file, 'gc:\n  expiration:\n    repositories:\n      ci/tmp: 1s\n');
  return file;
}
