import { GetObjectCommand } from '@aws-sdk/client-s3';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, type RunResult } from '../helpers/commands.js';
import { randomBlob, sha256 } from '../helpers/oci.js';
import { headObject, keyMap, s3EnvOrFail, s3ServerEnv, useTestBucket, type TestBucket } from '../helpers/s3-http.js';
import { listUploads } from '../helpers/s3.js';
import { startServer, tail, type Frontend, type TestServer } from '../helpers/server.js';

/**
 * End to end with real clients, the way users push and pull: umoci builds an OCI image
 * layout on disk, skopeo pushes it to Hoist (HEAD, POST, streamed PATCH, PUT, manifest PUT),
 * pulls it back, inspects it and lists tags; a second push must find every blob already
 * there, and a push to another repository must mount the layers instead of uploading them.
 * Runs once per local storage driver and HTTP front end, and once on S3 (radosgw, 5 MiB
 * parts so the big layer is a multipart upload; node front end). Without
 * HOIST_TEST_S3_ENDPOINT the S3 run fails, saying how to start radosgw.
 *
 * skopeo and umoci are Debian packages (scripts/test-all.sh installs them). If either is
 * missing this file fails rather than skips, so CI cannot pass without running it.
 *
 * HOIST_E2E_REGISTRY=host:port runs the same checks against an already running registry
 * instead (e.g. distribution's docker-registry, to prove the test itself is right).
 */

const EXTERNAL_REGISTRY = process.env.HOIST_E2E_REGISTRY?.trim() || undefined;
const TAG = 'v1';
const RANDOM_LAYER_BYTES = 6 * 1024 * 1024 + 12_345; // spans several upload chunks, odd tail

interface Target {
  label: string;
  storage?: 'memory' | 'fs' | 's3';
  frontend?: Frontend;
}

const targets: Target[] = EXTERNAL_REGISTRY
  ? [{ label: `external registry ${EXTERNAL_REGISTRY}` }]
  : [
      { label: 'memory storage, uws front end', storage: 'memory', frontend: 'uws' },
      { label: 'memory storage, node front end', storage: 'memory', frontend: 'node' },
      { label: 'fs storage, uws front end', storage: 'fs', frontend: 'uws' },
      { label: 'fs storage, node front end', storage: 'fs', frontend: 'node' },
      { label: 's3 storage, node front end', storage: 's3', frontend: 'node' },
    ];

/** One HTTP request skopeo made, as reported by `skopeo --debug` ("PUT http://..."). */
interface LoggedRequest {
  method: string;
  url: URL;
}

/** The request lines and messages of a `skopeo --debug` run (containers/image's logrus output). */
function debugMessages(stderr: string): string[] {
  const out: string[] = [];
  for (const m of stderr.matchAll(/level=debug msg="((?:[^"\\]|\\.)*)"/g)) out.push(m[1]!.replace(/\\"/g, '"'));
  return out;
}

const REQUEST_LINE = /^(GET|HEAD|POST|PUT|PATCH|DELETE) (https?:\/\/\S+)$/;

function requestsOf(stderr: string): LoggedRequest[] {
  const out: LoggedRequest[] = [];
  for (const msg of debugMessages(stderr)) {
    const m = REQUEST_LINE.exec(msg);
    if (m) out.push({ method: m[1]!, url: new URL(m[2]!) });
  }
  return out;
}

/** The blobs of one image in an OCI layout, as pushed or pulled. */
interface LayoutImage {
  dir: string;
  manifestDigest: string;
  configDigest: string;
  layerDigests: string[];
  /** manifest, config and layers */
  digests: string[];
}

function blobPath(layoutDir: string, digest: string): string {
  const [algorithm, hex] = digest.split(':');
  return join(layoutDir, 'blobs', algorithm!, hex!);
}

async function readLayoutImage(dir: string, tag: string): Promise<LayoutImage> {
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as {
    manifests: Array<{ digest: string; annotations?: Record<string, string> }>;
  };
  const entry = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag);
  if (!entry) throw new Error(`no manifest tagged ${tag} in ${dir}/index.json: ${JSON.stringify(index)}`);
  const manifest = JSON.parse(await readFile(blobPath(dir, entry.digest), 'utf8')) as {
    config: { digest: string };
    layers: Array<{ digest: string }>;
  };
  const layerDigests = manifest.layers.map((l) => l.digest);
  return {
    dir,
    manifestDigest: entry.digest,
    configDigest: manifest.config.digest,
    layerDigests,
    digests: [entry.digest, manifest.config.digest, ...layerDigests],
  };
}

/** Every blob of `pushed` is in `pulledDir`, byte-identical, and nothing else is there. */
async function expectSameBlobs(pulledDir: string, tag: string, pushed: LayoutImage): Promise<void> {
  const pulled = await readLayoutImage(pulledDir, tag);
  expect(pulled.manifestDigest, 'pulled manifest digest').toBe(pushed.manifestDigest);
  expect(pulled.digests).toEqual(pushed.digests);
  const files = (await readdir(join(pulledDir, 'blobs', 'sha256'))).map((f) => `sha256:${f}`).sort();
  expect(files, 'blobs in the pulled layout').toEqual([...new Set(pushed.digests)].sort());
  for (const digest of pushed.digests) {
    const [got, want] = await Promise.all([readFile(blobPath(pulledDir, digest)), readFile(blobPath(pushed.dir, digest))]);
    expect(got.byteLength, `size of ${digest}`).toBe(want.byteLength);
    expect(sha256(got), `contents of ${digest}`).toBe(digest);
    expect(got.equals(want), `bytes of ${digest}`).toBe(true);
  }
}

let work: string;
let policyPath: string;
let image: LayoutImage;
let srcLayout: string;

/**
 * Builds a three-layer image with umoci: a repacked rootfs holding a few MiB of random
 * data, a directory added with `umoci insert`, and a layer that deletes a file (a whiteout),
 * then a config with labels.
 * Random contents make every run's digests new, so even a long-lived external registry
 * has to receive real uploads.
 */
async function buildImage(): Promise<void> {
  srcLayout = join(work, 'src');
  const bundle = join(work, 'bundle');
  const nonce = randomBlob(16).toString('hex');
  await run('umoci', ['init', '--layout', srcLayout]);
  await run('umoci', ['new', '--image', `${srcLayout}:base`]);
  await run('umoci', ['unpack', '--rootless', '--image', `${srcLayout}:base`, bundle]);
  const rootfs = join(bundle, 'rootfs');
  await mkdir(join(rootfs, 'etc/hoist-e2e'), { recursive: true });
  await mkdir(join(rootfs, 'app/data'), { recursive: true });
  await writeFile(join(rootfs, 'etc/hoist-e2e/hello.txt'), 'hello from the hoist end-to-end test\n');
  await writeFile(join(rootfs, 'etc/hoist-e2e/nonce'), `${nonce}\n`);
  await writeFile(join(rootfs, 'app/data/random.bin'), randomBlob(RANDOM_LAYER_BYTES));
  await run('umoci', ['repack', '--image', `${srcLayout}:${TAG}`, bundle]);

  const extra = join(work, 'extra');
  await mkdir(join(extra, 'nested'), { recursive: true });
  await writeFile(join(extra, 'README'), `extra layer ${nonce}\n`);
  await writeFile(join(extra, 'nested/small.bin'), randomBlob(300 * 1024));
  await run('umoci', ['insert', '--rootless', '--image', `${srcLayout}:${TAG}`, extra, '/app/extra']);
  // A whiteout on its own would be the same layer in every run; with a new file it is not.
  const bundle2 = join(work, 'bundle2');
  await run('umoci', ['unpack', '--rootless', '--image', `${srcLayout}:${TAG}`, bundle2]);
  await rm(join(bundle2, 'rootfs/etc/hoist-e2e/hello.txt'));
  await writeFile(join(bundle2, 'rootfs/etc/hoist-e2e/goodbye.txt'), `hello.txt was removed in ${nonce}\n`);
  await run('umoci', ['repack', '--image', `${srcLayout}:${TAG}`, bundle2]);

  await run('umoci', [
    'config', '--image', `${srcLayout}:${TAG}`,
    '--config.label', 'org.opencontainers.image.title=hoist-e2e',
    '--config.label', `org.example.nonce=${nonce}`,
    '--config.workingdir', '/app',
    '--config.env', 'HOIST_E2E=1',
    '--config.cmd', '/app/extra/README',
  ]);
  await run('umoci', ['gc', '--layout', srcLayout]);
  image = await readLayoutImage(srcLayout, TAG);
  // The layout must be what we think, or the comparisons below prove nothing.
  expect(image.layerDigests).toHaveLength(3);
  for (const digest of image.digests) expect(sha256(await readFile(blobPath(srcLayout, digest)))).toBe(digest);
  expect((await stat(blobPath(srcLayout, image.layerDigests[0]!))).size).toBeGreaterThan(RANDOM_LAYER_BYTES);
}

beforeAll(async () => {
  // Fail loudly, not skip, when a client is missing.
  await run('skopeo', ['--version']);
  await run('umoci', ['--version']);
  work = await mkdtemp(join(tmpdir(), 'hoist-e2e-skopeo-'));
  // Debian's skopeo may ship without /etc/containers/policy.json; never depend on it.
  policyPath = join(work, 'policy.json');
  await writeFile(policyPath, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  await buildImage();
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

for (const target of targets) describe(`skopeo against ${EXTERNAL_REGISTRY ? 'an' : 'Hoist,'} ${target.label}`, () => {
  let server: TestServer | undefined;
  let host: string;
  let storageDir: string | undefined;
  let outputs = 0;
  // A long-lived external registry may hold repositories from earlier runs.
  const prefix = EXTERNAL_REGISTRY ? `e2e-${randomBlob(4).toString('hex')}` : 'e2e';
  const appRepo = `${prefix}/app`;
  const otherRepo = `${prefix}/other`;

  let bucket: TestBucket | undefined;
  if (target.storage === 's3') {
    const env = s3EnvOrFail();
    if (!env) return;
    bucket = useTestBucket(env, 'e2e');
  }

  const registryLogs = (): string => (server ? tail(server.logs(), 80) : `(external registry ${host})`);
  const skopeo = (args: string[]): Promise<RunResult> =>
    run('skopeo', ['--policy', policyPath, ...args], registryLogs);
  const newOutputDir = (): string => join(work, `out-${target.label.replace(/\W+/g, '-')}-${++outputs}`);

  async function startTarget(): Promise<void> {
    if (EXTERNAL_REGISTRY) {
      host = EXTERNAL_REGISTRY;
      return;
    }
    server = bucket
      ? await startServer({ storage: bucket.url('registry'), frontend: target.frontend, env: s3ServerEnv() })
      : await startServer({ storage: target.storage === 'fs' ? `fs:${storageDir}` : 'memory:', frontend: target.frontend });
    host = server.host;
  }

  async function pull(reference: string, tag = TAG): Promise<string> {
    const out = newOutputDir();
    await skopeo(['copy', '--src-tls-verify=false', `docker://${host}/${reference}`, `oci:${out}:${tag}`]);
    return out;
  }

  async function listTags(repo: string): Promise<string[]> {
    const { stdout } = await skopeo(['list-tags', '--tls-verify=false', `docker://${host}/${repo}`]);
    return (JSON.parse(stdout) as { Tags: string[] }).Tags;
  }

  beforeAll(async () => {
    if (target.storage === 'fs') storageDir = await mkdtemp(join(tmpdir(), 'hoist-e2e-fs-'));
    await startTarget();
    if (server && target.frontend) expect(server.frontend, 'front end reported by the server').toBe(target.frontend);
  });

  afterAll(async () => {
    await server?.kill();
    if (storageDir) await rm(storageDir, { recursive: true, force: true });
  });

  it('pushes the umoci image, uploading every blob', async () => {
    const { stderr } = await skopeo([
      '--debug', 'copy', '--dest-tls-verify=false', `oci:${srcLayout}:${TAG}`, `docker://${host}/${appRepo}:${TAG}`,
    ]);
    const requests = requestsOf(stderr);
    const uploaded = requests
      .filter((r) => r.method === 'PUT' && r.url.pathname.startsWith(`/v2/${appRepo}/blobs/uploads/`))
      .map((r) => r.url.searchParams.get('digest'));
    expect(uploaded.sort(), 'blobs skopeo completed with PUT ...?digest=').toEqual([image.configDigest, ...image.layerDigests].sort());
    expect(requests.some((r) => r.method === 'PATCH'), 'skopeo streams layers with PATCH').toBe(true);
    expect(requests.filter((r) => r.method === 'PUT' && r.url.pathname === `/v2/${appRepo}/manifests/${TAG}`)).toHaveLength(1);

    // Check what landed directly over HTTP too, not only through skopeo's eyes.
    for (const digest of image.digests.slice(1)) {
      const res = await fetch(`http://${host}/v2/${appRepo}/blobs/${digest}`, { method: 'HEAD' });
      expect(res.status, `HEAD blob ${digest}`).toBe(200);
      expect(Number(res.headers.get('content-length')), `Content-Length of ${digest}`)
        .toBe((await stat(blobPath(srcLayout, digest))).size);
    }
  });

  it('pulls it back byte-identical, by tag and by digest', async () => {
    await expectSameBlobs(await pull(`${appRepo}:${TAG}`), TAG, image);
    await expectSameBlobs(await pull(`${appRepo}@${image.manifestDigest}`, 'pinned'), 'pinned', image);
  });

  it('shows the tag, digest and labels in skopeo inspect and list-tags', async () => {
    const { stdout } = await skopeo(['inspect', '--tls-verify=false', `docker://${host}/${appRepo}:${TAG}`]);
    const info = JSON.parse(stdout) as { Digest: string; RepoTags: string[]; Labels: Record<string, string>; Layers: string[] };
    expect(info.Digest).toBe(image.manifestDigest);
    expect(info.RepoTags).toEqual([TAG]);
    expect(info.Labels['org.opencontainers.image.title']).toBe('hoist-e2e');
    expect(info.Layers).toEqual(image.layerDigests);

    const raw = await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${host}/${appRepo}:${TAG}`]);
    const manifest = await readFile(blobPath(srcLayout, image.manifestDigest), 'utf8');
    expect(raw.stdout.replace(/\n$/, '')).toBe(manifest.replace(/\n$/, ''));

    expect(await listTags(appRepo)).toEqual([TAG]);
  });

  it('pushes the same image again without uploading any blob', async () => {
    const { stderr } = await skopeo([
      '--debug', 'copy', '--dest-tls-verify=false', `oci:${srcLayout}:${TAG}`, `docker://${host}/${appRepo}:v2`,
    ]);
    const writes = requestsOf(stderr).filter((r) => r.method !== 'GET' && r.method !== 'HEAD');
    expect(writes.map((r) => `${r.method} ${r.url.pathname}`), 'only the manifest is written').toEqual([`PUT /v2/${appRepo}/manifests/v2`]);
    expect((await listTags(appRepo)).sort()).toEqual([TAG, 'v2']);
    const { stdout } = await skopeo(['inspect', '--tls-verify=false', `docker://${host}/${appRepo}:v2`]);
    expect((JSON.parse(stdout) as { Digest: string }).Digest).toBe(image.manifestDigest);
  });

  it('pushes to a second repository by mounting the layers from the first', async () => {
    const { stderr } = await skopeo([
      '--debug', 'copy', '--dest-tls-verify=false', `oci:${srcLayout}:${TAG}`, `docker://${host}/${otherRepo}:${TAG}`,
    ]);
    // containers/image logs "Trying to mount <path>?from=..&mount=<digest>", then "... mount OK"
    // on 201, or says it started an upload instead on 202. Its blob-info cache remembers that
    // the first push put the layers in appRepo on this registry, so it asks to mount them.
    const mounted = new Map<string, string>();
    let trying: string | undefined;
    for (const msg of debugMessages(stderr)) {
      const attempt = /^Trying to mount (\S+)$/.exec(msg);
      if (attempt) {
        trying = new URL(attempt[1]!, `http://${host}`).searchParams.get('mount') ?? undefined;
        if (trying) mounted.set(trying, 'attempted, no outcome logged');
      } else if (trying && !REQUEST_LINE.test(msg)) {
        // The first message after the POST is the outcome.
        mounted.set(trying, msg);
        trying = undefined;
      }
    }
    const mountLog = debugMessages(stderr).filter((m) => /mount/i.test(m)).join('\n') || '(skopeo tried no mount)';
    for (const digest of image.layerDigests) {
      expect(mounted.get(digest), `mount of layer ${digest}; skopeo's mount messages:\n${mountLog}`).toBe('... mount OK');
    }
    const patched = requestsOf(stderr).filter((r) => r.method === 'PATCH');
    expect(patched.length, 'at most the config is uploaded').toBeLessThanOrEqual(1);

    await expectSameBlobs(await pull(`${otherRepo}:${TAG}`), TAG, image);
    expect(await listTags(otherRepo)).toEqual([TAG]);
  });

  if (target.storage === 's3') {
    it('leaves the bucket clean: the big layer is one multipart object, no upload or staging object remains', async () => {
      const b = bucket!;
      expect(await listUploads(b.client, b.name, 'registry/'), 'multipart uploads in progress').toEqual([]);
      expect(Object.keys(await keyMap(b.client, b.name, 'registry/_s3/')), 'S3 writer staging objects').toEqual([]);
      const big = image.layerDigests[0]!.slice('sha256:'.length);
      const record = JSON.parse(await (await b.client.send(new GetObjectCommand({
        Bucket: b.name,
        Key: `registry/blobs/sha256/${big.slice(0, 2)}/${big}`,
      }))).Body!.transformToString()) as { data: string; size: number };
      const data = await headObject(b.client, b.name, `registry${record.data}`);
      expect(data?.size).toBe(record.size);
      expect(data?.etag, 'a multipart object (ETag "<md5>-<parts>")').toMatch(/-\d+"$/);
    });
  }

  if (!EXTERNAL_REGISTRY) {
    it('shuts down cleanly on SIGTERM', async () => {
      expect(await server!.stop('SIGTERM'), `exit code; server output:\n${registryLogs()}`).toBe(0);
    });
  }

  if (target.storage === 'fs' || target.storage === 's3') {
    it(`serves the same image after a restart on the same ${target.storage === 'fs' ? 'directory' : 'bucket'}`, async () => {
      await startTarget();
      await expectSameBlobs(await pull(`${appRepo}:${TAG}`), TAG, image);
      await expectSameBlobs(await pull(`${otherRepo}:${TAG}`), TAG, image);
      expect((await listTags(appRepo)).sort()).toEqual([TAG, 'v2']);
      expect(await server!.stop('SIGTERM'), `exit code; server output:\n${registryLogs()}`).toBe(0);
    });
  }
});
