import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startDockerRegistry, type DockerRegistry } from '../helpers/docker-registry.js';
import { expectError, request, tempDir, waitFor, waitForLog } from '../helpers/http.js';
import { buildLayout, rawGet, readPulled, skopeo, tapUpstream, writePolicy, type LayoutImage, type UpstreamTap } from '../helpers/mirror.js';
import { makeImage, MEDIA_TYPES, pushImage, sha256, type Image } from '../helpers/oci.js';
import { startServer, tail, type TestServer } from '../helpers/server.js';

/**
 * Hoist as a pull-through cache of Debian's docker-registry (issue 13), seen through a proxy
 * that counts what the cache asks the upstream and can tamper with its replies:
 *
 *   skopeo / raw HTTP ──► Hoist (proxy: remoteUrl) ──► tap (count, corrupt, cut, hold) ──► docker-registry
 *
 * The default registry re-checks tags after an hour; the `quick` namespace (path prefix
 * /quick) mirrors the same upstream with a 1 s tagTtl, for the re-check tests.
 */

let work: string;
let cleanup: () => Promise<void>;
let upstream: DockerRegistry;
let tap: UpstreamTap;
let mirror: TestServer;
let policy: string;
let layout: LayoutImage;

const REPO = 'library/app';

async function startMirror(storageDir: string, remote: string, env: Record<string, string> = {}): Promise<TestServer> {
  return startServer({
    storage: `fs:${storageDir}`,
    frontend: 'node',
    env: {
      HOIST_PROXY_REMOTE_URL: remote,
      HOIST_PROXY_TAG_TTL: '1h',
      // Says when a client joins a fetch in progress, and how.
      HOIST_LOG_LEVEL: 'debug',
      HOIST_NAMESPACES: JSON.stringify([{ name: 'quick', pathPrefix: 'quick', proxy: { remoteUrl: remote, tagTtl: '1s' } }]),
      ...env,
    },
  });
}

const logs = (): string => `--- mirror ---\n${tail(mirror.logs(), 40)}\n--- upstream requests ---\n${tap.requests.slice(-40).join('\n')}`;

/** The cache's fs storage holds a blob record for the digest. */
async function storedInMirror(dir: string, digest: string): Promise<boolean> {
  const hex = digest.slice('sha256:'.length);
  return (await readdir(join(dir, 'blobs/sha256', hex.slice(0, 2))).catch(() => [] as string[])).includes(hex);
}

/** Data objects under blobs/data that no blob record names (what a failed fetch must not leave). */
async function unnamedData(dir: string): Promise<string[]> {
  const named = new Set<string>();
  for (const prefix of await readdir(join(dir, 'blobs/sha256')).catch(() => [] as string[])) {
    for (const f of await readdir(join(dir, 'blobs/sha256', prefix))) {
      if (f.endsWith('.touched')) continue;
      named.add((JSON.parse(await readFile(join(dir, 'blobs/sha256', prefix, f), 'utf8')) as { data: string }).data);
    }
  }
  return (await readdir(join(dir, 'blobs/data')).catch(() => [] as string[])).filter((id) => !named.has(`/blobs/data/${id}`));
}

beforeAll(async () => {
  ({ path: work, cleanup } = await tempDir('hoist-mirror-'));
  policy = await writePolicy(work);
  upstream = await startDockerRegistry({ dir: join(work, 'upstream') });
  tap = await tapUpstream(upstream.url);
  layout = await buildLayout(work, 'app', 3 * 1024 * 1024 + 17);
  await skopeo(policy, ['copy', '--dest-tls-verify=false', `oci:${layout.dir}:${layout.tag}`, `docker://${upstream.host}/${REPO}:v1`]);
  mirror = await startMirror(join(work, 'mirror'), tap.endpoint);
});

afterAll(async () => {
  await mirror?.stop();
  await tap?.close();
  await upstream?.stop();
  await cleanup?.();
});

describe('pulls through the cache', () => {
  it('skopeo pulls an image through the mirror; the second pull is served from the cache', async () => {
    const out = join(work, 'pulled-1');
    await skopeo(policy, ['copy', '--src-tls-verify=false', `docker://${mirror.host}/${REPO}:v1`, `oci:${out}:v1`], logs);
    const pulled = await readPulled(out, 'v1');
    expect(pulled).toEqual({ manifestDigest: layout.manifestDigest, digests: layout.digests });
    // Each blob came from the upstream once (the manifest by tag: a GET).
    for (const d of layout.digests.slice(1)) expect(tap.count('GET', `/blobs/${d}`), d).toBe(1);
    expect(tap.count('GET', `/manifests/v1`)).toBe(1);

    const before = tap.requests.length;
    const again = join(work, 'pulled-2');
    await skopeo(policy, ['copy', '--src-tls-verify=false', `docker://${mirror.host}/${REPO}:v1`, `oci:${again}:v1`], logs);
    expect(await readPulled(again, 'v1')).toEqual(pulled);
    // Within tagTtl nothing goes upstream at all.
    expect(tap.requests.slice(before)).toEqual([]);
  });

  it('refuses pushes and deletes with 405 UNSUPPORTED', async () => {
    const img = makeImage();
    const d = img.layers[0]!.descriptor.digest;
    expectError(await request(mirror.url, `/v2/${REPO}/blobs/uploads/`, { method: 'POST' }), 405, 'UNSUPPORTED');
    expectError(await request(mirror.url, `/v2/${REPO}/blobs/uploads/?digest=${d}`, { method: 'POST', body: img.layers[0]!.bytes }), 405, 'UNSUPPORTED');
    expectError(await request(mirror.url, `/v2/${REPO}/blobs/uploads/?mount=${d}&from=other`, { method: 'POST' }), 405, 'UNSUPPORTED');
    expectError(await request(mirror.url, `/v2/${REPO}/manifests/v2`, { method: 'PUT', headers: { 'content-type': img.mediaType }, body: img.manifestBytes }), 405, 'UNSUPPORTED');
    expectError(await request(mirror.url, `/v2/${REPO}/manifests/v1`, { method: 'DELETE' }), 405, 'UNSUPPORTED');
    expectError(await request(mirror.url, `/v2/${REPO}/blobs/${layout.digests[1]}`, { method: 'DELETE' }), 405, 'UNSUPPORTED');
    // Nothing reached the upstream, and the cached image is whole.
    expect(tap.requests.filter((r) => !r.startsWith('GET ') && !r.startsWith('HEAD '))).toEqual([]);
    expect((await request(mirror.url, `/v2/${REPO}/manifests/v1`)).status).toBe(200);
  });

  it('lists the upstream\'s tags', async () => {
    const r = await request(mirror.url, `/v2/${REPO}/tags/list`);
    expect(r.status).toBe(200);
    expect(r.json()).toEqual({ name: REPO, tags: ['v1'] });
    expectError(await request(mirror.url, '/v2/library/nothing-here/tags/list'), 404, 'NAME_UNKNOWN');
  });

  it('answers a Range request for a blob it does not hold yet, and stores the whole blob', async () => {
    const img = makeImage({ layerSizesBytes: [2 * 1024 * 1024] });
    await pushImage(upstream.url, 'library/ranged', 'v1', img);
    const layer = img.layers[0]!;
    const r = await rawGet(mirror.url, `/v2/library/ranged/blobs/${layer.descriptor.digest}`, { range: 'bytes=1000-1999' });
    expect(r.status).toBe(206);
    expect(r.headers['content-range']).toBe(`bytes 1000-1999/${layer.bytes.length}`);
    expect(r.complete).toBe(true);
    expect(r.body.equals(layer.bytes.subarray(1000, 2000))).toBe(true);
    await waitFor('the blob stored', async () => ((await storedInMirror(join(work, 'mirror'), layer.descriptor.digest)) ? true : undefined));
    const whole = await rawGet(mirror.url, `/v2/library/ranged/blobs/${layer.descriptor.digest}`);
    expect(sha256(whole.body)).toBe(layer.descriptor.digest);
    expect(tap.count('GET', `/blobs/${layer.descriptor.digest}`)).toBe(1);
  });

  it('HEAD of a blob not cached asks the upstream, and fetches nothing', async () => {
    const img = makeImage({ layerSizesBytes: [4096] });
    await pushImage(upstream.url, 'library/headed', 'v1', img);
    const d = img.layers[0]!.descriptor.digest;
    const r = await request(mirror.url, `/v2/library/headed/blobs/${d}`, { method: 'HEAD' });
    expect(r.status).toBe(200);
    expect(r.header('content-length')).toBe('4096');
    expect(tap.count('HEAD', `/blobs/${d}`)).toBe(1);
    expect(tap.count('GET', `/blobs/${d}`)).toBe(0);
    expectError(await request(mirror.url, `/v2/library/headed/blobs/${sha256('nowhere')}`, { method: 'HEAD' }), 404, undefined, 'HEAD');
  });

  it('a blob cached for one repository is linked into another once the upstream says it has it there', async () => {
    const img = makeImage({ layerSizesBytes: [100_000] });
    await pushImage(upstream.url, 'library/first', 'v1', img);
    await pushImage(upstream.url, 'library/second', 'v1', img);
    const d = img.layers[0]!.descriptor.digest;
    expect(sha256((await rawGet(mirror.url, `/v2/library/first/blobs/${d}`)).body)).toBe(d);
    await waitFor('the blob stored', async () => ((await storedInMirror(join(work, 'mirror'), d)) ? true : undefined));
    const second = await rawGet(mirror.url, `/v2/library/second/blobs/${d}`);
    expect(sha256(second.body)).toBe(d);
    // One transfer: the second repository cost a HEAD.
    expect(tap.count('GET', `/blobs/${d}`)).toBe(1);
    expect(tap.count('HEAD', `/v2/library/second/blobs/${d}`)).toBe(1);
    // A repository the upstream does not have it in gets nothing from the cache.
    expectError(await request(mirror.url, `/v2/library/third/blobs/${d}`), 404, 'BLOB_UNKNOWN');
  });
});

describe('tags', () => {
  it('re-checks a tag older than tagTtl with a HEAD, and follows it when it moved', async () => {
    const repo = 'library/moving';
    const first = makeImage();
    await pushImage(upstream.url, repo, 'latest', first);
    const get = () => request(mirror.url, `/quick/v2/${repo}/manifests/latest`);
    expect(sha256((await get()).body)).toBe(first.manifestDigest);
    expect(tap.count('GET', `/v2/${repo}/manifests/latest`)).toBe(1);
    // Older than the 1 s tagTtl: a HEAD confirms it, no GET.
    await sleep(1100);
    expect(sha256((await get()).body)).toBe(first.manifestDigest);
    expect(tap.count('HEAD', `/v2/${repo}/manifests/latest`)).toBe(1);
    expect(tap.count('GET', `/v2/${repo}/manifests/latest`)).toBe(1);
    // Moved upstream: the next check sees another digest and fetches it.
    const second = makeImage();
    await pushImage(upstream.url, repo, 'latest', second);
    await sleep(1100);
    const r = await get();
    expect(sha256(r.body)).toBe(second.manifestDigest);
    expect(r.header('docker-content-digest')).toBe(second.manifestDigest);
    expect(tap.count('GET', `/v2/${repo}/manifests/latest`)).toBe(2);
  });

  it('never re-checks a manifest by digest', async () => {
    const repo = 'library/pinned';
    const img = makeImage();
    await pushImage(upstream.url, repo, 'v1', img);
    const path = `/quick/v2/${repo}/manifests/${img.manifestDigest}`;
    expect(sha256((await request(mirror.url, path)).body)).toBe(img.manifestDigest);
    await sleep(1100);
    expect(sha256((await request(mirror.url, path)).body)).toBe(img.manifestDigest);
    expect(tap.count('GET', `/manifests/${img.manifestDigest}`)).toBe(1);
    expect(tap.count('HEAD', `/manifests/${img.manifestDigest}`)).toBe(0);
  });
});

describe('one fetch per blob and manifest', () => {
  let img: Image;
  const repo = 'library/crowd';

  beforeAll(async () => {
    img = makeImage({ layerSizesBytes: [24 * 1024 * 1024] });
    await pushImage(upstream.url, repo, 'v1', img);
  });

  it('eight clients asking at once for a manifest and a blob the cache lacks: one upstream GET each, every client gets the bytes', async () => {
    const manifests = await Promise.all(Array.from({ length: 8 }, () => request(mirror.url, `/v2/${repo}/manifests/v1`)));
    for (const m of manifests) expect(sha256(m.body)).toBe(img.manifestDigest);
    expect(tap.count('GET', `/v2/${repo}/manifests/v1`)).toBe(1);

    const d = img.layers[0]!.descriptor.digest;
    const replies = await Promise.all(Array.from({ length: 8 }, () => rawGet(mirror.url, `/v2/${repo}/blobs/${d}`)));
    for (const r of replies) {
      expect(r.status).toBe(200);
      expect(r.complete).toBe(true);
      expect(sha256(r.body)).toBe(d);
    }
    expect(tap.count('GET', `/blobs/${d}`), logs()).toBe(1);
  });

  it('the first client going away mid-fetch leaves the fetch to the others, and the blob is stored', async () => {
    const blob = makeImage({ layerSizesBytes: [16 * 1024 * 1024] });
    await pushImage(upstream.url, 'library/leaver', 'v1', blob);
    const d = blob.layers[0]!.descriptor.digest;
    const path = `/v2/library/leaver/blobs/${d}`;
    let holding!: () => void;
    const held = new Promise<void>((r) => (holding = r));
    let release!: () => void;
    tap.faults.set(`/blobs/${d}`, { holdAfter: 256 * 1024, onHold: holding, release: new Promise((r) => (release = r)) });

    // The first client reads a little, then hangs up.
    let firstGotBytes!: () => void;
    const firstBytes = new Promise<void>((r) => (firstGotBytes = r));
    const first = rawGet(mirror.url, path, {}, (res, req) => {
      res.once('data', () => {
        firstGotBytes();
        req.destroy();
      });
    });
    await held;
    await firstBytes;
    // Joins within the first MiB: streamed live from the same fetch.
    const second = rawGet(mirror.url, path);
    const joined = await waitForLog(mirror, 'the second client joining', (l) => l.msg === 'client joined a blob fetch in progress' && l.digest === d);
    expect(joined.live).toBe(true);
    await waitForLog(mirror, 'the first client\'s request line', (r) => r.msg === 'request' && r.path === path && r.status === 499);
    release();
    const [a, b] = await Promise.all([first, second]);
    expect(a.complete).toBe(false);
    expect(b.complete, `${b.body.length} ${logs()}`).toBe(true);
    expect(sha256(b.body)).toBe(d);
    expect(tap.count('GET', `/blobs/${d}`)).toBe(1);
    await waitFor('the blob stored', async () => ((await storedInMirror(join(work, 'mirror'), d)) ? true : undefined));
  });

  it('a client that joins after the first MiB went by waits, then reads the blob from storage', async () => {
    const blob = makeImage({ layerSizesBytes: [8 * 1024 * 1024] });
    await pushImage(upstream.url, 'library/latecomer', 'v1', blob);
    const d = blob.layers[0]!.descriptor.digest;
    const path = `/v2/library/latecomer/blobs/${d}`;
    let release!: () => void;
    tap.faults.set(`/blobs/${d}`, { holdAfter: 3 * 1024 * 1024, release: new Promise((r) => (release = r)) });
    // Once the first client has 1.5 MiB, the cache has let the first MiB go by.
    let firstBytes = 0;
    let pastWindow!: () => void;
    const past = new Promise<void>((r) => (pastWindow = r));
    const first = rawGet(mirror.url, path, {}, (res) => res.on('data', (c: Buffer) => {
      firstBytes += c.length;
      if (firstBytes > 1.5 * 1024 * 1024) pastWindow();
    }));
    await past;
    const late = rawGet(mirror.url, path);
    const joined = await waitForLog(mirror, 'the latecomer joining', (l) => l.msg === 'client joined a blob fetch in progress' && l.digest === d && (l.receivedBytes as number) > 1024 * 1024);
    expect(joined.live).toBe(false);
    release();
    const [a, b] = await Promise.all([first, late]);
    expect(sha256(a.body)).toBe(d);
    expect(b.complete).toBe(true);
    expect(sha256(b.body)).toBe(d);
    expect(tap.count('GET', `/blobs/${d}`)).toBe(1);
  });
});

describe('a faulty upstream', () => {
  it('lies about a blob (one byte flipped): the client is cut off, nothing is stored, and the next pull fetches again', async () => {
    const img = makeImage({ layerSizesBytes: [3 * 1024 * 1024] });
    await pushImage(upstream.url, 'library/liar', 'v1', img);
    const layer = img.layers[0]!;
    const d = layer.descriptor.digest;
    tap.faults.set(`/blobs/${d}`, { corruptAt: 2 * 1024 * 1024 + 5 });
    const path = `/v2/library/liar/blobs/${d}`;
    const r = await rawGet(mirror.url, path);
    expect(r.status).toBe(200);
    expect(r.complete, 'a response with wrong bytes must not end cleanly').toBe(false);
    expect(r.body.length).toBeLessThan(layer.bytes.length);
    await waitForLog(mirror, 'the digest warning', (l) => l.msg === 'upstream sent a blob that does not match its digest: not stored, clients cut off' && l.digest === d);
    expect(await storedInMirror(join(work, 'mirror'), d)).toBe(false);
    // Its data went with it.
    await waitFor('no unnamed data', async () => ((await unnamedData(join(work, 'mirror'))).length === 0 ? true : undefined));
    const again = await rawGet(mirror.url, path);
    expect(again.complete).toBe(true);
    expect(sha256(again.body)).toBe(d);
    expect(tap.count('GET', `/blobs/${d}`)).toBe(2);
  });

  it('lies about a manifest: 503, nothing stored', async () => {
    const img = makeImage();
    await pushImage(upstream.url, 'library/liar-manifest', 'v1', img);
    tap.faults.set(`/manifests/${img.manifestDigest}`, { corruptAt: 20 });
    const path = `/v2/library/liar-manifest/manifests/${img.manifestDigest}`;
    expectError(await request(mirror.url, path, { headers: { accept: MEDIA_TYPES.imageManifest } }), 503, 'UNAVAILABLE');
    expect(sha256((await request(mirror.url, path)).body)).toBe(img.manifestDigest);
    expect(tap.count('GET', `/manifests/${img.manifestDigest}`)).toBe(2);
  });

  it('dies in the middle of a blob (docker-registry killed): the client is cut off, nothing is stored; back up, the pull works', async () => {
    const img = makeImage({ layerSizesBytes: [64 * 1024 * 1024] });
    await pushImage(upstream.url, 'library/killed', 'v1', img);
    const d = img.layers[0]!.descriptor.digest;
    let holding!: () => void;
    const held = new Promise<void>((r) => (holding = r));
    let release!: () => void;
    tap.faults.set(`/blobs/${d}`, { holdAfter: 1024 * 1024, onHold: holding, release: new Promise((r) => (release = r)) });
    const path = `/v2/library/killed/blobs/${d}`;
    const pending = rawGet(mirror.url, path);
    await held;
    await upstream.kill();
    release();
    const r = await pending;
    expect(r.status).toBe(200);
    expect(r.complete).toBe(false);
    await waitForLog(mirror, 'the failed fetch', (l) => l.msg === 'blob fetch from upstream failed: nothing stored, clients cut off' && l.digest === d);
    expect(await storedInMirror(join(work, 'mirror'), d)).toBe(false);
    await waitFor('no unnamed data', async () => ((await unnamedData(join(work, 'mirror'))).length === 0 ? true : undefined));
    // While it is down: a blob the cache lacks is a clear 503; one it holds still comes.
    expectError(await request(mirror.url, path), 503, 'UNAVAILABLE');
    expect(sha256((await rawGet(mirror.url, `/v2/${REPO}/blobs/${layout.digests[2]}`)).body)).toBe(layout.digests[2]);
    await upstream.start();
    const again = await rawGet(mirror.url, path);
    expect(again.complete).toBe(true);
    expect(sha256(again.body)).toBe(d);
  });
});

describe('on the uWebSockets.js front end', () => {
  let uws: TestServer;

  beforeAll(async () => {
    uws = await startServer({ storage: 'memory:', frontend: 'uws', env: { HOIST_PROXY_REMOTE_URL: tap.endpoint } });
  });

  afterAll(async () => {
    await uws?.stop();
  });

  it('streams one fetch to several clients, and cuts them off when the upstream lies', async () => {
    const img = makeImage({ layerSizesBytes: [6 * 1024 * 1024, 5 * 1024 * 1024] });
    await pushImage(upstream.url, 'library/uws', 'v1', img);
    const [good, bad] = img.layers.map((l) => l.descriptor.digest) as [string, string];
    const replies = await Promise.all([1, 2, 3].map(() => rawGet(uws.url, `/v2/library/uws/blobs/${good}`)));
    for (const r of replies) {
      expect(r.complete).toBe(true);
      expect(sha256(r.body)).toBe(good);
    }
    expect(tap.count('GET', `/blobs/${good}`)).toBe(1);
    tap.faults.set(`/blobs/${bad}`, { corruptAt: 4 * 1024 * 1024 });
    const cut = await rawGet(uws.url, `/v2/library/uws/blobs/${bad}`);
    expect(cut.status).toBe(200);
    expect(cut.complete).toBe(false);
    expect(sha256((await rawGet(uws.url, `/v2/library/uws/blobs/${bad}`)).body)).toBe(bad);
  });
});

describe('an upstream that is down from the start', () => {
  let down: TestServer;
  let nowhere: number;

  beforeAll(async () => {
    // The same storage the first cache filled, no upstream at all, and tags always re-checked.
    await mirror.stop();
    nowhere = await freePort();
    mirror = await startMirror(join(work, 'mirror'), `http://127.0.0.1:${nowhere}`, { HOIST_PROXY_TAG_TTL: '0s' });
    down = mirror;
  });

  it('serves what is cached (a log line says the upstream is unavailable), and a clear error for the rest', async () => {
    const out = join(work, 'pulled-down');
    await skopeo(policy, ['copy', '--src-tls-verify=false', `docker://${down.host}/${REPO}:v1`, `oci:${out}:v1`], logs);
    expect(await readPulled(out, 'v1')).toEqual({ manifestDigest: layout.manifestDigest, digests: layout.digests });
    await waitForLog(down, 'the stale-tag warning', (l) => l.msg === 'upstream unavailable: serving the cached tag' && l.tag === 'v1');

    const err = await skopeo(policy, ['inspect', '--tls-verify=false', `docker://${down.host}/library/never-pulled:v1`]).then(
      () => undefined,
      (e: Error) => e.message,
    );
    expect(err, 'pulling what is not cached must fail').toBeDefined();
    // skopeo names the status only; the body says why.
    expect(err).toMatch(/503 Service Unavailable/);
    const r = await request(down.url, '/v2/library/never-pulled/manifests/v1');
    const [e] = expectError(r, 503, 'UNAVAILABLE');
    expect(e!.message).toBe(`upstream registry 127.0.0.1:${nowhere} is unavailable: ECONNREFUSED`);
    await rm(out, { recursive: true, force: true });
  });
});
