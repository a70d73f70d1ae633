import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, type RunResult } from '../helpers/commands.js';
import { pushBlob, pushManifest, randomBlob, sha256 } from '../helpers/oci.js';
import { startServer, tail, type Frontend, type TestServer } from '../helpers/server.js';

/**
 * End to end with real clients, for what goes beyond one image:
 *
 * - a multi-arch image: umoci builds three platform images (different files, different
 *   architectures) in one OCI layout, the test writes an OCI image index over them, skopeo
 *   pushes all of it with `copy --all`, pulls it back with `--all` byte for byte, and pulls a
 *   single platform through the index with `--override-arch`;
 * - an artifact with a `subject` (a signature-like manifest with an empty config) attached to
 *   that index, found again through the referrers API. `oras` would be the natural client,
 *   but Debian 12 does not package it, so the artifact is pushed over plain HTTP;
 * - a namespace chosen by host name, as real clients reach one: `localhost:<port>` and
 *   `127.0.0.1:<port>` are two registries in one process.
 *
 * skopeo and umoci are Debian packages (scripts/test-all.sh installs them); this file fails
 * rather than skips when they are missing.
 */

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const EMPTY_CONFIG = { mediaType: 'application/vnd.oci.empty.v1+json', digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a', size: 2 };
const SIGNATURE_TYPE = 'application/vnd.example.hoist.signature.v1';
const TAG = 'multi';
const PLATFORMS = [
  { architecture: 'amd64', os: 'linux' },
  { architecture: 'arm64', os: 'linux', variant: 'v8' },
  { architecture: 'arm', os: 'linux', variant: 'v7' },
] as const;

interface Target {
  label: string;
  storage: 'memory' | 'fs';
  frontend: Frontend;
}

// node:http only: the uws front end gets the same requests in test/http/, and skopeo.test.ts
// runs skopeo against it; here it would cost 10 s a skopeo call (skopeo first tries TLS on
// the plain-HTTP port, which uWS leaves hanging until its idle timeout), some 150 s a run.
const targets: Target[] = [
  { label: 'memory storage, node front end', storage: 'memory', frontend: 'node' },
  { label: 'fs storage, node front end', storage: 'fs', frontend: 'node' },
];

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: Record<string, string>;
  annotations?: Record<string, string>;
}

interface MultiArch {
  layout: string;
  indexDigest: string;
  indexBytes: Buffer;
  children: Array<{ platform: (typeof PLATFORMS)[number]; digest: string; blobs: string[] }>;
  /** index, child manifests, their configs and layers */
  digests: string[];
}

function blobPath(layout: string, digest: string): string {
  const [algorithm, hex] = digest.split(':');
  return join(layout, 'blobs', algorithm!, hex!);
}

async function readIndexJson(layout: string): Promise<{ schemaVersion: number; manifests: Descriptor[] }> {
  return JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as { schemaVersion: number; manifests: Descriptor[] };
}

function refOf(index: { manifests: Descriptor[] }, ref: string): Descriptor {
  const d = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === ref);
  if (!d) throw new Error(`no ${ref} in index.json: ${JSON.stringify(index)}`);
  return d;
}

let work: string;
let policyPath: string;
let multi: MultiArch;

/**
 * Three platform images with umoci, each with its own files and its architecture in the
 * config, then an OCI image index over both, tagged `multi` in the layout's index.json.
 */
async function buildMultiArch(): Promise<void> {
  const layout = join(work, 'layout');
  const nonce = randomBlob(8).toString('hex');
  await run('umoci', ['init', '--layout', layout]);
  for (const p of PLATFORMS) {
    const tag = p.architecture;
    const bundle = join(work, `bundle-${tag}`);
    await run('umoci', ['new', '--image', `${layout}:${tag}`]);
    await run('umoci', ['unpack', '--rootless', '--image', `${layout}:${tag}`, bundle]);
    await mkdir(join(bundle, 'rootfs/etc/hoist'), { recursive: true });
    await writeFile(join(bundle, 'rootfs/etc/hoist/platform'), `${tag} ${nonce}\n`);
    await writeFile(join(bundle, `rootfs/etc/hoist/${tag}.bin`), randomBlob(200 * 1024));
    await run('umoci', ['repack', '--image', `${layout}:${tag}`, bundle]);
    await run('umoci', [
      'config', '--image', `${layout}:${tag}`, '--architecture', p.architecture, '--os', p.os,
      '--config.label', `org.example.platform=${tag}`,
    ]);
  }
  await run('umoci', ['gc', '--layout', layout]);

  const index = await readIndexJson(layout);
  const children: MultiArch['children'] = [];
  const manifests: Descriptor[] = [];
  for (const p of PLATFORMS) {
    const d = refOf(index, p.architecture);
    const m = JSON.parse(await readFile(blobPath(layout, d.digest), 'utf8')) as { config: Descriptor; layers: Descriptor[] };
    children.push({ platform: p, digest: d.digest, blobs: [m.config.digest, ...m.layers.map((l) => l.digest)] });
    manifests.push({ mediaType: OCI_MANIFEST, digest: d.digest, size: d.size, platform: { ...p } });
  }
  const indexBytes = Buffer.from(`${JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests }, null, 2)}\n`);
  const indexDigest = sha256(indexBytes);
  await writeFile(blobPath(layout, indexDigest), indexBytes);
  index.manifests.push({
    mediaType: OCI_INDEX, digest: indexDigest, size: indexBytes.length, annotations: { 'org.opencontainers.image.ref.name': TAG },
  });
  await writeFile(join(layout, 'index.json'), JSON.stringify(index));
  multi = {
    layout,
    indexDigest,
    indexBytes,
    children,
    digests: [indexDigest, ...children.flatMap((c) => [c.digest, ...c.blobs])],
  };
  // Different files per platform: no layer is shared, so both really are pushed.
  expect(new Set(children.flatMap((c) => c.blobs)).size).toBe(children.flatMap((c) => c.blobs).length);
}

beforeAll(async () => {
  await run('skopeo', ['--version']);
  await run('umoci', ['--version']);
  work = await mkdtemp(join(tmpdir(), 'hoist-e2e-index-'));
  policyPath = join(work, 'policy.json');
  await writeFile(policyPath, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  await buildMultiArch();
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

for (const target of targets) describe(`skopeo: indexes, referrers and namespaces (${target.label})`, () => {
  let server: TestServer;
  let host: string;
  let storageDir: string | undefined;
  let outputs = 0;
  const repo = 'e2e/multi';

  const registryLogs = (): string => (server ? tail(server.logs(), 80) : '');
  const skopeo = (args: string[]): Promise<RunResult> => run('skopeo', ['--policy', policyPath, ...args], registryLogs);
  const newOutputDir = (): string => join(work, `out-${target.storage}-${target.frontend}-${++outputs}`);

  beforeAll(async () => {
    if (target.storage === 'fs') storageDir = await mkdtemp(join(tmpdir(), 'hoist-e2e-index-fs-'));
    server = await startServer({
      storage: storageDir ? `fs:${storageDir}` : 'memory:',
      frontend: target.frontend,
      env: { HOIST_NAMESPACES: JSON.stringify([{ name: 'local', host: 'localhost' }]) },
    });
    host = server.host;
  });

  afterAll(async () => {
    await server?.kill();
    if (storageDir) await rm(storageDir, { recursive: true, force: true });
  });

  it('pushes a multi-arch index with copy --all, and the registry serves it as pushed', async () => {
    await skopeo(['copy', '--all', '--dest-tls-verify=false', `oci:${multi.layout}:${TAG}`, `docker://${host}/${repo}:${TAG}`]);
    const r = await fetch(`http://${host}/v2/${repo}/manifests/${TAG}`, { headers: { accept: OCI_INDEX } });
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toBe(OCI_INDEX);
    expect(r.headers.get('docker-content-digest')).toBe(multi.indexDigest);
    expect(Buffer.from(await r.arrayBuffer()).equals(multi.indexBytes)).toBe(true);
    for (const c of multi.children) {
      const m = await fetch(`http://${host}/v2/${repo}/manifests/${c.digest}`, { method: 'HEAD' });
      expect(m.status, `child ${c.platform.architecture}`).toBe(200);
      for (const b of c.blobs) expect((await fetch(`http://${host}/v2/${repo}/blobs/${b}`, { method: 'HEAD' })).status, b).toBe(200);
    }
    const raw = await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${host}/${repo}:${TAG}`]);
    expect(raw.stdout.replace(/\n$/, '')).toBe(multi.indexBytes.toString().replace(/\n$/, ''));
  });

  it('pulls every platform back with copy --all, byte-identical', async () => {
    const out = newOutputDir();
    await skopeo(['copy', '--all', '--src-tls-verify=false', `docker://${host}/${repo}:${TAG}`, `oci:${out}:${TAG}`]);
    expect(refOf(await readIndexJson(out), TAG).digest).toBe(multi.indexDigest);
    const files = (await readdir(join(out, 'blobs', 'sha256'))).map((f) => `sha256:${f}`).sort();
    expect(files).toEqual([...new Set(multi.digests)].sort());
    for (const digest of multi.digests) {
      const [got, want] = await Promise.all([readFile(blobPath(out, digest)), readFile(blobPath(multi.layout, digest))]);
      expect(got.equals(want), `bytes of ${digest}`).toBe(true);
    }
  });

  it('resolves one platform through the index', async () => {
    for (const c of multi.children) {
      const out = newOutputDir();
      const args = ['--override-arch', c.platform.architecture, '--override-os', c.platform.os];
      if ('variant' in c.platform) args.push('--override-variant', c.platform.variant);
      await skopeo([...args, 'copy', '--src-tls-verify=false', `docker://${host}/${repo}:${TAG}`, `oci:${out}:one`]);
      expect(refOf(await readIndexJson(out), 'one').digest, c.platform.architecture).toBe(c.digest);
      const { stdout } = await skopeo([...args, 'inspect', '--tls-verify=false', `docker://${host}/${repo}:${TAG}`]);
      const info = JSON.parse(stdout) as { Architecture: string; Labels: Record<string, string> };
      expect(info.Architecture).toBe(c.platform.architecture);
      expect(info.Labels['org.example.platform']).toBe(c.platform.architecture);
    }
  });

  it('finds an artifact attached to the index through the referrers API', async () => {
    const base = `http://${host}`;
    const payload = Buffer.from(JSON.stringify({ signed: multi.indexDigest, by: 'hoist e2e', nonce: randomBlob(8).toString('hex') }));
    await pushBlob(base, repo, payload);
    const artifact = {
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      artifactType: SIGNATURE_TYPE,
      config: EMPTY_CONFIG,
      layers: [{ mediaType: 'application/vnd.example.hoist.signature.payload+json', digest: sha256(payload), size: payload.length }],
      subject: { mediaType: OCI_INDEX, digest: multi.indexDigest, size: multi.indexBytes.length },
      annotations: { 'org.opencontainers.image.created': new Date().toISOString() },
    };
    const pushed = await pushManifest(base, repo, sha256(JSON.stringify(artifact)), artifact, OCI_MANIFEST);
    expect(pushed.headers.get('oci-subject')).toBe(multi.indexDigest);

    const r = await fetch(`${base}/v2/${repo}/referrers/${multi.indexDigest}?artifactType=${encodeURIComponent(SIGNATURE_TYPE)}`);
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toBe(OCI_INDEX);
    expect(r.headers.get('oci-filters-applied')).toBe('artifactType');
    const listed = (await r.json()) as { manifests: Descriptor[] };
    expect(listed.manifests).toEqual([
      { mediaType: OCI_MANIFEST, digest: pushed.digest, size: pushed.bytes.length, artifactType: SIGNATURE_TYPE, annotations: artifact.annotations },
    ]);
    // A real client reads the artifact back by the digest it found.
    const raw = await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${host}/${repo}@${pushed.digest}`]);
    expect(raw.stdout.replace(/\n$/, '')).toBe(pushed.bytes.toString());
    // The referrer is no tag, and the children have no referrers.
    const { stdout } = await skopeo(['list-tags', '--tls-verify=false', `docker://${host}/${repo}`]);
    expect((JSON.parse(stdout) as { Tags: string[] }).Tags).toEqual([TAG]);
    const none = (await (await fetch(`${base}/v2/${repo}/referrers/${multi.children[0]!.digest}`)).json()) as { manifests: unknown[] };
    expect(none.manifests).toEqual([]);
  });

  it('keeps a namespace reached by host name apart (localhost vs 127.0.0.1)', async () => {
    const local = `localhost:${server.port}`;
    await skopeo(['copy', '--dest-tls-verify=false', `oci:${multi.layout}:amd64`, `docker://${local}/ns/app:v1`]);
    const { stdout } = await skopeo(['list-tags', '--tls-verify=false', `docker://${local}/ns/app`]);
    expect((JSON.parse(stdout) as { Tags: string[] }).Tags).toEqual(['v1']);
    // The default registry (127.0.0.1) has no such repository …
    expect((await fetch(`http://${host}/v2/ns/app/tags/list`)).status).toBe(404);
    // … and the namespace none of the default registry's.
    await expect(skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${local}/${repo}:${TAG}`])).rejects.toThrow(/manifest unknown/i);
    const out = newOutputDir();
    await skopeo(['copy', '--src-tls-verify=false', `docker://${local}/ns/app:v1`, `oci:${out}:v1`]);
    expect(refOf(await readIndexJson(out), 'v1').digest).toBe(multi.children[0]!.digest);
  });
});
