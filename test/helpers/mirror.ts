import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from './commands.js';
import { startFaultyProxy, type FaultyProxy, type ResponseFault } from './faulty-proxy.js';
import { randomBlob, sha256 } from './oci.js';

/**
 * Helpers for the pull-through cache tests (test/proxy/, test/e2e/ctr-mirror.test.ts): an
 * upstream seen through a proxy that counts what the cache asks it and can tamper with the
 * replies, images built with umoci, skopeo with its own policy, and raw GETs that tell a
 * complete response from a cut one.
 */

export interface UpstreamTap {
  /** Point the cache here: requests go on to the upstream. */
  readonly endpoint: string;
  /** `METHOD /path` of every request, in order. */
  readonly requests: string[];
  /** Requests with this method whose path ends with `suffix`. */
  count(method: string, suffix: string): number;
  /** Faults for requests whose path ends with a key (removed after one use unless `sticky`). */
  readonly faults: Map<string, ResponseFault & { sticky?: boolean }>;
  readonly proxy: FaultyProxy;
  close(): Promise<void>;
}

export async function tapUpstream(target: string): Promise<UpstreamTap> {
  const requests: string[] = [];
  const faults = new Map<string, ResponseFault & { sticky?: boolean }>();
  const proxy = await startFaultyProxy(target, (op, _n, url) => {
    requests.push(`${op} ${url.pathname}`);
    for (const [suffix, fault] of faults) {
      if (url.pathname.endsWith(suffix) && op === 'GET') {
        if (!fault.sticky) faults.delete(suffix);
        return fault;
      }
    }
    return undefined;
  });
  return {
    endpoint: proxy.endpoint,
    requests,
    count: (method, suffix) => requests.filter((r) => r.startsWith(`${method} `) && r.endsWith(suffix)).length,
    faults,
    proxy,
    close: () => proxy.close(),
  };
}

// The mirror suites' GET without registry credentials; it lives with the other raw HTTP helpers.
export { rawGet, type RawReply } from './http.js';

export interface LayoutImage {
  /** The OCI layout directory (`oci:<dir>:<tag>`). */
  readonly dir: string;
  readonly tag: string;
  readonly manifestDigest: string;
  /** Manifest, config, layers. */
  readonly digests: string[];
}

/**
 * A real image (gzipped tar layers a container runtime can unpack) built with umoci: a base
 * rootfs plus a layer of `randomBytes` random bytes, so each call gives new digests.
 */
export async function buildLayout(work: string, name: string, randomBytes: number, tag = 'v1'): Promise<LayoutImage> {
  const dir = join(work, `${name}-layout`);
  const bundle = join(work, `${name}-bundle`);
  await run('umoci', ['init', '--layout', dir]);
  await run('umoci', ['new', '--image', `${dir}:${tag}`]);
  await run('umoci', ['unpack', '--rootless', '--image', `${dir}:${tag}`, bundle]);
  await mkdir(join(bundle, 'rootfs/data'), { recursive: true });
  await writeFile(join(bundle, 'rootfs/data/random.bin'), randomBlob(randomBytes));
  await writeFile(join(bundle, 'rootfs/data/name'), `${name}\n`);
  await run('umoci', ['repack', '--image', `${dir}:${tag}`, bundle]);
  await run('umoci', ['config', '--image', `${dir}:${tag}`, '--config.cmd', '/data/name']);
  await run('umoci', ['gc', '--layout', dir]);
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string; annotations?: Record<string, string> }> };
  const entry = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag)!;
  const manifest = JSON.parse(await readFile(blobFile(dir, entry.digest), 'utf8')) as { config: { digest: string }; layers: Array<{ digest: string }> };
  return { dir, tag, manifestDigest: entry.digest, digests: [entry.digest, manifest.config.digest, ...manifest.layers.map((l) => l.digest)] };
}

export function blobFile(layoutDir: string, digest: string): string {
  const [algorithm, hex] = digest.split(':');
  return join(layoutDir, 'blobs', algorithm!, hex!);
}

/** Reads an image back from a layout skopeo wrote, with every blob checked against its digest. */
export async function readPulled(dir: string, tag: string): Promise<{ manifestDigest: string; digests: string[] }> {
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string; annotations?: Record<string, string> }> };
  const entry = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag);
  if (!entry) throw new Error(`no ${tag} in ${dir}/index.json`);
  const manifest = JSON.parse(await readFile(blobFile(dir, entry.digest), 'utf8')) as { config: { digest: string }; layers: Array<{ digest: string }> };
  const digests = [entry.digest, manifest.config.digest, ...manifest.layers.map((l) => l.digest)];
  for (const d of digests) {
    const got = sha256(await readFile(blobFile(dir, d)));
    if (got !== d) throw new Error(`${dir}: blob ${d} holds ${got}`);
  }
  return { manifestDigest: entry.digest, digests };
}

/** skopeo with a policy of its own (Debian's may lack /etc/containers/policy.json) and plain HTTP. */
export async function writePolicy(work: string): Promise<string> {
  const path = join(work, 'policy.json');
  await writeFile(path, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  return path;
}

export function skopeo(policy: string, args: string[], context?: () => string) {
  return run('skopeo', ['--policy', policy, ...args], context);
}
