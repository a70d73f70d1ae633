import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { processClock } from '../helpers/clock.js';
import { blobRef, GcTestClient, image } from '../helpers/gc-client.js';
import { runGcCli } from '../helpers/gc.js';
import { tempDir } from '../helpers/http.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * Found by probing: pushing a tag again did not restart the configured expiration. README
 * says tags expire `gc.expiration` "after their last push" (zuul-registry's `expiration`,
 * and zuul-registry rewrites the tag on every push), but a push of the manifest the tag named
 * already rewrote nothing, so the expiration ran from the first push: with 3 s, a tag pushed
 * again at 2 s answered 404 at 3.5 s and `hoist gc` deleted it.
 *
 * Here the expiration is an hour and the server and the collector run on a test clock
 * (helpers/clock.ts): `latest` and `other` are pushed at 0, `latest` again at 40 min, and at
 * 80 min `latest` is live and kept, `other` gone. Only requests by tag are asked: tags/list
 * judges a configured expiration by the tag files' times, which the file system dates by the
 * real clock, not the test's.
 */

const MINUTE = 60_000;

describe('a push restarts the configured expiration', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let config: string;
  let server: TestServer | undefined;
  beforeAll(async () => {
    dir = await tempDir('hoist-repush-expiration-');
    // A name starting with '.' is no storage path: the fs driver leaves it alone.
    config = join(dir.path, '.hoist.yaml');
    await writeFile(config, 'gc:\n  expiration: 1h\n');
  });
  afterAll(async () => {
    try {
      if (server) await server.stop();
    } finally {
      await dir?.cleanup();
    }
  });

  it('a tag pushed again lives an expiration from then; one not pushed again expires and is collected', async () => {
    const clock = processClock(dir.path);
    const t0 = Date.now();
    await clock.setNow(t0);
    const start = () => startServer({ storage: `fs:${dir.path}`, frontend: 'node', env: clock.env(), args: ['--config', config] });
    server = await start();
    const client = new GcTestClient(server.url);
    const latest = image('ci/app', [blobRef(randomBytes(2000))]);
    const other = image('ci/app', [blobRef(randomBytes(3000))]);
    const head = async (tag: string) => (await client.fetch(`/v2/ci/app/manifests/${tag}`, { method: 'HEAD' })).status;
    await client.push(latest, 'latest');
    await client.push(other, 'other');

    await clock.setNow(t0 + 40 * MINUTE);
    await client.push(latest, 'latest');
    await clock.setNow(t0 + 80 * MINUTE);
    expect(await head('latest')).toBe(200);
    expect(await head('other')).toBe(404);

    expect(await server.stop()).toBe(0);
    server = undefined;
    const gc = await runGcCli(['--config', config, '--storage', `fs:${dir.path}`, '--grace', '0s', '--json'], clock.env());
    expect(gc.code, gc.stderr).toBe(0);
    const report = (JSON.parse(gc.stdout) as { registries: Array<{ report: { expiredTags: number; manifests: number } }> }).registries[0]!.report;
    expect(report, gc.stdout).toMatchObject({ expiredTags: 1, manifests: 1 });

    server = await start();
    const after = new GcTestClient(server.url);
    await after.pull('ci/app', 'latest');
    expect((await after.fetch(`/v2/ci/app/manifests/${other.digest}`, { method: 'HEAD' })).status).toBe(404);
    // And it still ends: an hour after its last push.
    await clock.setNow(t0 + 101 * MINUTE);
    expect((await after.fetch('/v2/ci/app/manifests/latest', { method: 'HEAD' })).status).toBe(404);
  }, 120_000);
});
