import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blobRef, GcTestClient, image } from '../helpers/gc-client.js';
import { runGcCli } from '../helpers/gc.js';
import { tempDir } from '../helpers/http.js';
import { startServer } from '../helpers/server.js';

/**
 * Found by probing: a namespace renamed in the configuration (or removed, or missing from one
 * instance's configuration) is still on the store, and `hoist gc` collected it by the default
 * expiration, though its own setting kept its tags for good: one collection took its images.
 * A namespace the configuration does not name is collected without a configured expiration.
 */
describe('a namespace on the store that the configuration does not name', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  beforeAll(async () => {
    dir = await tempDir('hoist-gc-unconfigured-');
  });
  afterAll(async () => {
    await dir?.cleanup();
  });

  it('keeps its tags when tags elsewhere expire by configuration', async () => {
    const config = async (name: string): Promise<string> => {
      // A name starting with '.' is no storage path: the fs driver leaves it alone.
      const file = `${dir.path}/.${name}.yaml`;
      await writeFile(file, [
        'namespaces:',
        `  - { name: ${name}, pathPrefix: team-b }`,
        'gc:',
        '  expiration:',
        '    default: 1s',
        `    namespaces: { ${name}: 0 }`,
        '',
      ].join('\n'));
      return file;
    };
    const original = await config('team-b');
    const renamed = await config('team-bee');
    const kept = image('keep/app', [blobRef(randomBytes(3000))]);
    const expiring = image('tmp/app', [blobRef(randomBytes(2000))]);
    const pusher = await startServer({ storage: `fs:${dir.path}`, frontend: 'node', args: ['--config', original] });
    try {
      await new GcTestClient(pusher.url, 64 * 1024, '/team-b').push(kept, 'v1');
      await new GcTestClient(pusher.url).push(expiring, 'v1');
    } finally {
      expect(await pusher.stop()).toBe(0);
    }
    // Past the default expiration.
    await new Promise((r) => setTimeout(r, 1500));
    const r = await runGcCli(['--storage', `fs:${dir.path}`, '--config', renamed, '--grace', '0s', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const run = JSON.parse(r.stdout) as { registries: Array<{ registry: string; report: { expiredTags: number } }> };
    expect(run.registries.map((x) => [x.registry, x.report.expiredTags])).toEqual([['', 1], ['team-b', 0], ['team-bee', 0]]);

    const server = await startServer({ storage: `fs:${dir.path}`, frontend: 'node', args: ['--config', original] });
    try {
      const ns = new GcTestClient(server.url, 64 * 1024, '/team-b');
      expect(await ns.tags('keep/app')).toEqual(['v1']);
      await ns.pull('keep/app', 'v1');
      expect(await new GcTestClient(server.url).headBlob('tmp/app', expiring.blobs[1]!.digest)).toBe(false);
    } finally {
      expect(await server.stop()).toBe(0);
    }
  }, 120_000);
});
