import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../helpers/commands.js';
import { startContainerd, type Containerd } from '../helpers/containerd.js';
import { tempDir, waitFor } from '../helpers/http.js';
import { blobFile, skopeo, writePolicy } from '../helpers/mirror.js';
import { randomBlob } from '../helpers/oci.js';
import { s3EnvOrFail, s3ServerEnv, useTestBucket, type TestBucket } from '../helpers/s3-http.js';
import { startServer, tail, type Frontend, type LogRecord, type TestServer } from '../helpers/server.js';

/**
 * containerd as the client of a registry, the way users push and pull with it: an image
 * umoci built (a ~40 MiB layer of random data and a small one) goes into containerd with
 * `ctr images import` (from an oci-archive skopeo made of the layout), `ctr images push
 * --plain-http` sends it to Hoist, the image is removed from containerd (its content with it,
 * so nothing is left to reuse), and `ctr images pull --plain-http` fetches it back. The pulled
 * manifest, config and layers must be the pushed digests, and Hoist's request log must show
 * every blob going each way. A second tag of the same image must then push without a byte of
 * blob data: containerd HEADs each blob, finds it, and sends only the manifest.
 *
 *   umoci ─► oci layout ─► skopeo ─► oci-archive ─► ctr import ─► ctr push ─► Hoist
 *                                                   ctr pull ◄──────────────────┘
 *
 * Runs on fs and S3 storage (radosgw, 5 MiB parts so the big layer is a multipart upload),
 * each with the node and the uWS front end. One containerd daemon serves the whole file
 * (test/helpers/containerd.ts: root, its own socket, root and state directories, CRI off);
 * each run uses a containerd namespace of its own and empties it at its end, because
 * containerd shares content between namespaces: a blob another namespace still held would
 * let a pull skip the fetch this test is about.
 *
 * Needs containerd and ctr (Debian package `containerd`), skopeo and umoci. Without
 * HOIST_TEST_S3_ENDPOINT the S3 runs fail, saying how to start radosgw.
 */

const MiB = 1024 * 1024;
const BIG_LAYER_BYTES = 40 * MiB;
const LOCAL_NAME = 'import.local/e2e/app';
const REPO = 'e2e/app';

interface Target {
  storage: 'fs' | 's3';
  frontend: Frontend;
}

const targets: Target[] = [
  { storage: 'fs', frontend: 'node' },
  { storage: 'fs', frontend: 'uws' },
  { storage: 's3', frontend: 'node' },
  { storage: 's3', frontend: 'uws' },
];

/** The image as umoci wrote it: what every push and pull is compared with. */
interface Image {
  manifestDigest: string;
  configDigest: string;
  /** The big layer first, then the small one. */
  layerDigests: string[];
  /** Config and layers: the blobs a push uploads. */
  blobDigests: string[];
  sizes: Map<string, number>;
}

let work: string;
let cleanup: () => Promise<void>;
let containerd: Containerd;
let archive: string;
let image: Image;

/**
 * Two layers: the rootfs umoci repacks with 40 MiB of random data (new digests every run, so
 * nothing can be left over from elsewhere), and a small directory added with `umoci insert`.
 */
async function buildImage(policy: string): Promise<void> {
  const dir = join(work, 'layout');
  const bundle = join(work, 'bundle');
  const small = join(work, 'small');
  await run('umoci', ['init', '--layout', dir]);
  await run('umoci', ['new', '--image', `${dir}:v1`]);
  await run('umoci', ['unpack', '--rootless', '--image', `${dir}:v1`, bundle]);
  await mkdir(join(bundle, 'rootfs/data'), { recursive: true });
  await writeFile(join(bundle, 'rootfs/data/random.bin'), randomBlob(BIG_LAYER_BYTES));
  await mkdir(small);
  await writeFile(join(small, 'hello.txt'), `hello from the ctr end-to-end test ${randomBlob(8).toString('hex')}\n`);
  await run('umoci', ['repack', '--image', `${dir}:v1`, bundle]);
  await run('umoci', ['insert', '--rootless', '--image', `${dir}:v1`, small, '/etc/hoist-e2e']);
  await run('umoci', ['config', '--image', `${dir}:v1`, '--config.cmd', '/bin/true']);
  await run('umoci', ['gc', '--layout', dir]);

  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
  const manifestDigest = index.manifests[0]!.digest;
  const manifest = JSON.parse(await readFile(blobFile(dir, manifestDigest), 'utf8')) as { config: { digest: string }; layers: Array<{ digest: string }> };
  const layerDigests = manifest.layers.map((l) => l.digest);
  const blobDigests = [manifest.config.digest, ...layerDigests];
  const sizes = new Map<string, number>();
  for (const d of [manifestDigest, ...blobDigests]) sizes.set(d, (await stat(blobFile(dir, d))).size);
  image = { manifestDigest, configDigest: manifest.config.digest, layerDigests, blobDigests, sizes };
  // The image must be what this test thinks, or its comparisons prove nothing.
  expect(layerDigests).toHaveLength(2);
  expect(sizes.get(layerDigests[0]!)).toBeGreaterThan(BIG_LAYER_BYTES);
  expect(sizes.get(layerDigests[1]!)).toBeLessThan(64 * 1024);

  // ctr imports tar streams (oci.v1, docker): skopeo packs the layout as one, unchanged.
  archive = join(work, 'app.tar');
  await skopeo(policy, ['copy', `oci:${dir}:v1`, `oci-archive:${archive}:v1`]);
}

beforeAll(async () => {
  await run('skopeo', ['--version']);
  await run('umoci', ['--version']);
  ({ path: work, cleanup } = await tempDir('hoist-e2e-ctr-'));
  await buildImage(await writePolicy(work));
  containerd = await startContainerd(join(work, 'containerd'));
});

afterAll(async () => {
  await containerd?.stop();
  await cleanup?.();
});

/** Hoist's `request` log lines. */
const requests = (records: LogRecord[]): LogRecord[] => records.filter((r) => r.msg === 'request');
const line = (r: LogRecord): string => `${String(r.method)} ${String(r.path)} ${String(r.status)} bytesIn=${String(r.bytesIn)}`;

for (const target of targets) describe(`ctr push and pull, ${target.storage} storage, ${target.frontend} front end`, () => {
  const namespace = `e2e-${target.storage}-${target.frontend}`;
  let server: TestServer;
  let storageDir: string;
  let bucket: TestBucket | undefined;
  if (target.storage === 's3') {
    const env = s3EnvOrFail();
    if (!env) return;
    bucket = useTestBucket(env, 'ctr');
  }

  const ctr = (args: string[]) => containerd.ctr(namespace, args, () => tail(server.logs(), 40));
  const remote = (tag: string): string => `${server.host}/${REPO}:${tag}`;

  /** Runs `ctr args` and returns Hoist's request lines since, once `done` says they are all there. */
  async function logged(args: string[], done: (lines: LogRecord[]) => boolean): Promise<LogRecord[]> {
    const mark = server.records().length;
    await ctr(args);
    // A request's line is written after its response is sent: ctr may be done first.
    return waitFor(`the request log lines of ctr ${args.join(' ')}`, () => {
      const lines = requests(server.records().slice(mark));
      return done(lines) ? lines : undefined;
    });
  }
  const manifestPut = (tag: string) => (r: LogRecord): boolean => r.method === 'PUT' && r.path === `/v2/${REPO}/manifests/${tag}`;

  /** Digest of each image in the namespace, by name. */
  async function images(): Promise<Map<string, string>> {
    const { stdout } = await ctr(['images', 'ls']);
    const out = new Map<string, string>();
    // REF TYPE DIGEST SIZE PLATFORMS LABELS
    for (const l of stdout.trim().split('\n').slice(1)) {
      const cols = l.split(/\s+/);
      if (cols.length >= 3) out.set(cols[0]!, cols[2]!);
    }
    return out;
  }

  async function contentDigests(): Promise<string[]> {
    const { stdout } = await ctr(['content', 'ls', '--quiet']);
    return stdout.split('\n').map((s) => s.trim()).filter(Boolean);
  }

  beforeAll(async () => {
    if (target.storage === 'fs') storageDir = join(work, `storage-${target.frontend}`);
    server = bucket
      ? await startServer({ storage: bucket.url('registry'), frontend: target.frontend, env: s3ServerEnv() })
      : await startServer({ storage: `fs:${storageDir}`, frontend: target.frontend });
    expect(server.frontend, 'front end reported by the server').toBe(target.frontend);
  });

  afterAll(async () => {
    // Empty the namespace: the next run's pull must not find these blobs in the shared store.
    if (containerd) {
      const names = await images().catch(() => new Map<string, string>());
      if (names.size > 0) await ctr(['images', 'rm', '--sync', ...names.keys()]);
    }
    if (server) expect(await server.stop()).toBe(0);
  });

  it('pushes an imported image, uploading every blob', async () => {
    await ctr(['images', 'import', '--no-unpack', '--base-name', LOCAL_NAME, archive]);
    expect((await images()).get(`${LOCAL_NAME}:v1`), 'the imported manifest is the layout\'s').toBe(image.manifestDigest);

    const lines = await logged(
      ['images', 'push', '--plain-http', remote('v1'), `${LOCAL_NAME}:v1`],
      (ls) => ls.some(manifestPut('v1')),
    );
    const failed = lines.filter((r) => Number(r.status) >= 400 && r.method !== 'HEAD');
    expect(failed.map(line), 'no request failed but a HEAD for a blob not there yet').toEqual([]);
    // Each blob went up in an upload of its own: POST, then one PUT carrying all its bytes
    // (containerd pushes monolithically). The log has no query strings, so the digests are
    // matched by size, and checked by the HEADs below.
    const uploads = lines.filter((r) => String(r.path).startsWith(`/v2/${REPO}/blobs/uploads/`));
    expect(uploads.filter((r) => r.method === 'POST').map((r) => r.status), 'uploads started').toEqual([202, 202, 202]);
    const puts = uploads.filter((r) => r.method === 'PUT');
    expect(puts.map((r) => r.status), 'uploads completed').toEqual([201, 201, 201]);
    const bySize = (a: number, b: number): number => a - b;
    expect(uploads.filter((r) => Number(r.bytesIn) > 0).map((r) => Number(r.bytesIn)).sort(bySize), 'bytes received per blob')
      .toEqual(image.blobDigests.map((d) => image.sizes.get(d)!).sort(bySize));
    expect(lines.filter(manifestPut('v1')).map((r) => r.status)).toEqual([201]);

    // And Hoist serves them, looked at over plain HTTP rather than through containerd's eyes.
    const head = await fetch(`${server.url}/v2/${REPO}/manifests/v1`, { method: 'HEAD', headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
    expect(head.status).toBe(200);
    expect(head.headers.get('docker-content-digest')).toBe(image.manifestDigest);
    for (const d of image.blobDigests) {
      const res = await fetch(`${server.url}/v2/${REPO}/blobs/${d}`, { method: 'HEAD' });
      expect(res.status, `HEAD blob ${d}`).toBe(200);
      expect(Number(res.headers.get('content-length')), `Content-Length of ${d}`).toBe(image.sizes.get(d));
    }
  });

  it('pulls it back after removing it from containerd, fetching every blob from Hoist', async () => {
    // Gone from containerd, content and all, so the pull has nothing local to reuse.
    await ctr(['images', 'rm', '--sync', `${LOCAL_NAME}:v1`]);
    expect(await images()).toEqual(new Map());
    const left = await contentDigests();
    for (const d of [image.manifestDigest, ...image.blobDigests]) expect(left, `${d} still in containerd`).not.toContain(d);

    const fetched = (ls: LogRecord[], d: string): boolean => ls.some((r) => r.method === 'GET' && r.path === `/v2/${REPO}/blobs/${d}` && r.status === 200);
    const lines = await logged(
      ['images', 'pull', '--plain-http', '--snapshotter', 'native', remote('v1')],
      (ls) => image.blobDigests.every((d) => fetched(ls, d)),
    );
    // Each blob came from Hoist once, whole: the pull really reached it.
    for (const d of image.blobDigests) {
      expect(lines.filter((r) => r.method === 'GET' && r.path === `/v2/${REPO}/blobs/${d}`).map((r) => r.status), d).toEqual([200]);
    }
    expect(lines.filter((r) => r.method === 'GET' && String(r.path).startsWith(`/v2/${REPO}/manifests/`)).map((r) => r.status)).toContain(200);

    expect((await images()).get(remote('v1')), 'digest of the pulled image').toBe(image.manifestDigest);
    // The manifest containerd stored names the pushed config and layers.
    const pulled = JSON.parse((await ctr(['content', 'get', image.manifestDigest])).stdout) as { config: { digest: string }; layers: Array<{ digest: string }> };
    expect(pulled.config.digest).toBe(image.configDigest);
    expect(pulled.layers.map((l) => l.digest)).toEqual(image.layerDigests);
    const content = await contentDigests();
    for (const d of [image.manifestDigest, ...image.blobDigests]) expect(content, `${d} in containerd after the pull`).toContain(d);
    const check = await ctr(['images', 'check']);
    expect(check.stdout).toMatch(new RegExp(`${remote('v1').replace(/[.:/]/g, '\\$&')}\\s.*complete`));
  });

  it('pushes a second tag of the same image without sending blob bytes', async () => {
    const lines = await logged(
      ['images', 'push', '--plain-http', remote('v2'), remote('v1')],
      (ls) => ls.some(manifestPut('v2')),
    );
    // containerd HEADs each blob, finds it, and skips it: only the manifest is written.
    const writes = lines.filter((r) => r.method !== 'GET' && r.method !== 'HEAD');
    expect(writes.map(line), lines.map(line).join('\n')).toEqual([
      line({ method: 'PUT', path: `/v2/${REPO}/manifests/v2`, status: 201, bytesIn: image.sizes.get(image.manifestDigest) }),
    ]);
    for (const d of image.blobDigests) {
      expect(lines.filter((r) => r.method === 'HEAD' && r.path === `/v2/${REPO}/blobs/${d}`).map((r) => r.status), d).toEqual([200]);
    }
    const res = await fetch(`${server.url}/v2/${REPO}/manifests/v2`, { method: 'HEAD', headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } });
    expect(res.headers.get('docker-content-digest')).toBe(image.manifestDigest);
    const tags = await (await fetch(`${server.url}/v2/${REPO}/tags/list`)).json() as { tags: string[] };
    expect(tags.tags.sort()).toEqual(['v1', 'v2']);
  });
});
