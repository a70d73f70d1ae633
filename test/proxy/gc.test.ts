import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeConfig } from '../auth/fixtures.js';
import { startDockerRegistry, type DockerRegistry } from '../helpers/docker-registry.js';
import { runGcCli } from '../helpers/gc.js';
import { expectError, request, tempDir, waitForLog } from '../helpers/http.js';
import { rawGet, tapUpstream, type UpstreamTap } from '../helpers/mirror.js';
import { makeImage, pushImage, sha256, type Image } from '../helpers/oci.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { processClock } from '../helpers/clock.js';

/**
 * `hoist gc` on a pull-through cache (issue 13, item 5): what nobody pulled for proxy.ttl
 * goes, whatever its tags; what was pulled within it stays; a fetch in progress during the
 * collection is stored whole afterwards.
 *
 * Timeline (ttl 10 s, so the collection's grace is 11 s, gc/mirror.ts), by the cache's clock:
 *
 *   tA           pull A (manifest by tag, every blob) has ended; pull B
 *   tA + 9 s     pull B again (its tag is re-checked, its manifest and blobs touched)
 *   then         a fetch of C starts and is held after 1 MiB; hoist gc runs; C is let go
 *
 * The collection runs on a clock of its own (./clock.ts) that reads tA + 11.2 s when it is
 * started, however late a loaded machine gets there: A (11.2 s) is older than the
 * grace, B's second pull (2.2 s) is not, and B stays as long as the collection judges it
 * within 7.8 s of starting (its tag then expires, 10 s after tA + 9 s). The sleep is a lower
 * bound only: B's second pull must be newer than its first by more than the 1 s tagTtl and
 * the 1 s marker refresh (pullRefreshMs), and it can only be later than planned.
 */

let work: string;
let cleanup: () => Promise<void>;
let upstream: DockerRegistry;
let tap: UpstreamTap;
let mirror: TestServer;
let config: string;
const images: Record<'a' | 'b' | 'c', Image> = { a: makeImage(), b: makeImage(), c: makeImage({ layerSizesBytes: [6 * 1024 * 1024] }) };

const storage = (): string => join(work, 'mirror');

async function stored(digest: string): Promise<boolean> {
  const hex = digest.slice('sha256:'.length);
  return (await readdir(join(storage(), 'blobs/sha256', hex.slice(0, 2))).catch(() => [] as string[])).includes(hex);
}

/** A manifest is stored in its revision, bytes and all (src/registry/paths.ts), in some repository. */
async function manifestStored(digest: string): Promise<boolean> {
  const hex = digest.slice('sha256:'.length);
  const files = await readdir(join(storage(), 'repositories'), { recursive: true }).catch(() => [] as string[]);
  return files.some((f) => f.endsWith(`_manifests/revisions/sha256/${hex}`));
}

async function pull(repo: string, img: Image): Promise<void> {
  expect(sha256((await request(mirror.url, `/v2/${repo}/manifests/v1`)).body)).toBe(img.manifestDigest);
  for (const b of [img.config, ...img.layers]) expect(sha256((await rawGet(mirror.url, `/v2/${repo}/blobs/${b.descriptor.digest}`)).body)).toBe(b.descriptor.digest);
}

beforeAll(async () => {
  ({ path: work, cleanup } = await tempDir('hoist-mirror-gc-'));
  upstream = await startDockerRegistry({ dir: join(work, 'upstream') });
  tap = await tapUpstream(upstream.url);
  for (const [name, img] of Object.entries(images)) await pushImage(upstream.url, `library/${name}`, 'v1', img);
  config = await writeConfig(work, { storage: `fs:${storage()}`, proxy: { remoteUrl: tap.endpoint, tagTtl: '1s', ttl: '10s' } });
  mirror = await startServer({ storage: `fs:${storage()}`, frontend: 'node', args: ['--config', config] });
});

afterAll(async () => {
  await mirror?.stop();
  await tap?.close();
  await upstream?.stop();
  await cleanup?.();
});

describe('hoist gc on a cache', () => {
  it('collects what was not pulled for proxy.ttl, keeps what was, and a fetch running meanwhile stores whole', async () => {
    await pull('library/a', images.a);
    const tA = Date.now();
    await pull('library/b', images.b);
    await sleep(Math.max(0, tA + 9000 - Date.now()));
    await pull('library/b', images.b);

    // C's only layer is held after 1 MiB: a fetch in flight while the collection runs.
    expect(sha256((await request(mirror.url, '/v2/library/c/manifests/v1')).body)).toBe(images.c.manifestDigest);
    expect(sha256((await rawGet(mirror.url, `/v2/library/c/blobs/${images.c.config.descriptor.digest}`)).body)).toBe(images.c.config.descriptor.digest);
    const layer = images.c.layers[0]!.descriptor.digest;
    let holding!: () => void;
    const held = new Promise<void>((r) => (holding = r));
    let release!: () => void;
    tap.faults.set(`/blobs/${layer}`, { holdAfter: 1024 * 1024, onHold: holding, release: new Promise((r) => (release = r)) });
    const pending = rawGet(mirror.url, `/v2/library/c/blobs/${layer}`);
    await held;

    const clock = processClock(work, 'gc');
    await clock.setNow(tA + 11_200);
    const gc = await runGcCli(['--config', config, '--json'], clock.env());
    expect(gc.code, gc.stderr).toBe(0);
    const report = (JSON.parse(gc.stdout) as { registries: Array<{ report: { expiredTags: number; manifests: number; blobs: { count: number } } }> }).registries[0]!.report;
    release();
    const c = await pending;
    expect(c.complete).toBe(true);
    expect(sha256(c.body)).toBe(layer);
    await waitForLog(mirror, 'C stored', (l) => l.msg === 'blob fetched from upstream and stored' && l.digest === layer);

    // A: its tag expired, its manifest and blobs unpulled for longer than the ttl: gone.
    // (Its manifest's bytes went with its revision: 3 blobs.)
    expect(report, gc.stdout).toMatchObject({ expiredTags: 1, manifests: 1, blobs: { count: 3 } });
    expect(await manifestStored(images.a.manifestDigest)).toBe(false);
    for (const d of [images.a.config.descriptor.digest, ...images.a.layers.map((l) => l.descriptor.digest)]) expect(await stored(d), d).toBe(false);
    // B and C: all there.
    for (const img of [images.b, images.c]) {
      expect(await manifestStored(img.manifestDigest)).toBe(true);
      for (const d of [img.config.descriptor.digest, ...img.layers.map((l) => l.descriptor.digest)]) expect(await stored(d), d).toBe(true);
    }

    // Without the upstream, the cache serves B and C, and says it cannot for A.
    await upstream.stop();
    await pull('library/b', images.b);
    await pull('library/c', images.c);
    expectError(await request(mirror.url, '/v2/library/a/manifests/v1'), 503, 'UNAVAILABLE');
    expectError(await request(mirror.url, `/v2/library/a/blobs/${images.a.layers[0]!.descriptor.digest}`), 503, 'UNAVAILABLE');
  });
});
