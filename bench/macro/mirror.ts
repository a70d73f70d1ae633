import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { join } from 'node:path';
import { BlobSet, formatBytes, MiB, pull, push, type BlobRef, type PhaseResult } from './loadgen.js';
import {
  cleanEnv, DOCKER_REGISTRY, freePort, hoistArgs, launch, sample, start, TMP, type Target, type Usage,
} from './targets.js';

/**
 * Pull-through cache scenario (`npm run bench -- --scenario mirror`): one image (a config
 * and N random layers) on an upstream docker-registry (fs storage), pulled the way a client
 * does (manifest by tag, then the layers, `CONCURRENCY` at a time) in these cases, side by
 * side in one run:
 *
 *   direct                 from the upstream itself: what the upstream and client manage
 *   hoist, cold            through a fresh Hoist cache (fs): every byte fetched, hashed, stored and streamed
 *   hoist, warm            the same again: served from the cache's storage
 *   hoist, cold, 4 at once four clients pull through another fresh cache at once (one fetch per blob)
 *   docker-registry proxy  distribution's proxy mode (fs), cold and warm: the reference cache
 *
 * MiB/s counts the layer bytes each client received; `÷ direct` is a case's MiB/s over the
 * direct pull's. Clients, caches and the upstream share the machine's cores.
 */

const CONCURRENCY = 4;
const REPO = 'bench/mirror';
const TAG = 'v1';

export interface MirrorRow {
  id: string;
  title: string;
  clients: number;
  bytes: number;
  wallMs: number;
  mibPerSec: number;
  /** MiB/s over the direct pull's. */
  vsDirect?: number;
  errors: number;
  errorSamples: string[];
  /** The cache's process (not the upstream's). */
  usage?: Usage;
}

export interface MirrorReport {
  layers: number;
  layerBytes: number;
  concurrency: number;
  rows: MirrorRow[];
}

export interface MirrorBenchOptions {
  quick: boolean;
  log: (msg: string) => void;
  note: (msg: string) => void;
}

/** An image the way a registry stores it: layers from a BlobSet, a config, a manifest. */
interface BenchImage {
  layers: BlobRef[];
  manifest: Buffer;
  manifestDigest: string;
}

const sha256 = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function request(method: string, url: string, body?: Buffer, headers: Record<string, string> = {}): Promise<{ status: number; body: Buffer; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers: { ...headers, ...(body ? { 'content-length': String(body.length) } : {}) }, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), headers: res.headers }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Pushes the layers (loadgen, monolithic), a config and the manifest to the upstream. */
async function pushImage(url: string, layers: BlobSet): Promise<BenchImage> {
  const r = await push({ url, repo: REPO, mode: 'monolithic', count: layers.digests.length, sizeBytes: layers.sizeBytes, concurrency: 4, chunkBytes: MiB }, layers);
  if (r.errors) throw new Error(`pushing the image to the upstream: ${r.errorSamples[0]}`);
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: r.blobs.map((b) => b.digest) } }));
  const post = await request('POST', `${url}/v2/${REPO}/blobs/uploads/?digest=${sha256(config)}`, config, { 'content-type': 'application/octet-stream' });
  if (post.status !== 201) {
    const start = await request('POST', `${url}/v2/${REPO}/blobs/uploads/`);
    const loc = new URL(String(start.headers.location), url);
    loc.searchParams.set('digest', sha256(config));
    const put = await request('PUT', loc.toString(), config, { 'content-type': 'application/octet-stream' });
    if (put.status !== 201) throw new Error(`pushing the config: HTTP ${put.status}`);
  }
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
    layers: r.blobs.map((b) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: b.digest, size: b.sizeBytes })),
  }));
  const put = await request('PUT', `${url}/v2/${REPO}/manifests/${TAG}`, manifest, { 'content-type': 'application/vnd.oci.image.manifest.v1+json' });
  if (put.status !== 201) throw new Error(`pushing the manifest: HTTP ${put.status} ${put.body.toString().slice(0, 200)}`);
  return { layers: r.blobs, manifest, manifestDigest: sha256(manifest) };
}

/** A client's pull: the manifest by tag, then every layer, CONCURRENCY at a time (lengths and digest headers checked). */
async function pullImage(url: string, image: BenchImage, progress: { bytes: number }): Promise<PhaseResult> {
  const t0 = performance.now();
  const m = await request('GET', `${url}/v2/${REPO}/manifests/${TAG}`, undefined, { accept: 'application/vnd.oci.image.manifest.v1+json' });
  if (m.status !== 200 || sha256(m.body) !== image.manifestDigest) {
    throw new Error(`GET manifest: HTTP ${m.status}${m.status === 200 ? ', other bytes than pushed' : ` ${m.body.toString().slice(0, 200)}`}`);
  }
  const r = await pull({ url, repo: REPO, concurrency: CONCURRENCY, progress }, image.layers);
  const wallMs = performance.now() - t0;
  return { ...r, wallMs, mibPerSec: r.bytes / MiB / (wallMs / 1000) };
}

/** Several clients pulling at once: bytes summed, wall time of the slowest. */
async function pullTogether(url: string, image: BenchImage, clients: number): Promise<Omit<MirrorRow, 'id' | 'title' | 'usage'>> {
  const t0 = performance.now();
  const results = await Promise.all(Array.from({ length: clients }, () => pullImage(url, image, { bytes: 0 }).catch((err: Error) => err)));
  const wallMs = performance.now() - t0;
  const ok = results.filter((r): r is PhaseResult => !(r instanceof Error));
  const bytes = ok.reduce((n, r) => n + r.bytes, 0);
  const errorSamples = results.flatMap((r) => (r instanceof Error ? [r.message] : r.errorSamples)).slice(0, 5);
  const errors = results.reduce((n, r) => n + (r instanceof Error ? 1 : r.errors), 0);
  return { clients, bytes, wallMs, mibPerSec: bytes / MiB / (wallMs / 1000), errors, errorSamples };
}

/** Hoist serving as a cache of `upstream`, on fresh fs storage. */
async function startHoistCache(upstream: string): Promise<Target> {
  await mkdir(TMP, { recursive: true });
  const dir = await mkdtemp(join(TMP, 'hoist-mirror-'));
  const port = await freePort();
  return launch('hoist-mirror', process.execPath, hoistArgs('serve', '--listen', `127.0.0.1:${port}`, '--storage', `fs:${join(dir, 'data')}`),
    cleanEnv({ HOIST_LOG_LEVEL: 'warn', HOIST_PROXY_REMOTE_URL: upstream }), port, () => rm(dir, { recursive: true, force: true }));
}

/** distribution in proxy mode (docs/recipes/mirror.md), fs storage. */
async function startDistributionCache(upstream: string): Promise<Target> {
  await mkdir(TMP, { recursive: true });
  const dir = await mkdtemp(join(TMP, 'dr-mirror-'));
  const port = await freePort();
  const config = join(dir, 'config.yml');
  await writeFile(config, [
    'version: 0.1',
    'log: {level: error}',
    `storage: {filesystem: {rootdirectory: ${join(dir, 'data')}}}`,
    `http: {addr: "127.0.0.1:${port}"}`,
    `proxy: {remoteurl: "${upstream}"}`,
    '',
  ].join('\n'));
  const { AWS_CA_BUNDLE: _, ...env } = process.env;
  return launch('docker-registry-mirror', DOCKER_REGISTRY, ['serve', config], env, port, () => rm(dir, { recursive: true, force: true }));
}

export async function runMirrorBench(o: MirrorBenchOptions): Promise<MirrorReport | undefined> {
  const layers = o.quick ? 4 : 8;
  const layerBytes = (o.quick ? 32 : 128) * MiB;
  const report: MirrorReport = { layers, layerBytes, concurrency: CONCURRENCY, rows: [] };
  let upstream: Target;
  try {
    upstream = await start('docker-registry');
  } catch (err) {
    o.note(`mirror: skipped, no upstream: ${(err as Error).message.split('\n')[0]}`);
    return undefined;
  }
  const caches: Target[] = [];
  const measure = async (id: string, title: string, url: string, clients: number, pid?: number): Promise<void> => {
    o.log(`mirror: ${title}`);
    const usage = sample(pid);
    const r = await pullTogether(url, image, clients);
    const u = usage.stop();
    report.rows.push({ id, title, ...r, ...(u ? { usage: u } : {}) });
    o.log(`mirror: ${title}: ${r.mibPerSec.toFixed(0)} MiB/s in ${(r.wallMs / 1000).toFixed(1)} s${r.errors ? `, ${r.errors} errors: ${r.errorSamples[0]}` : ''}`);
  };
  let image!: BenchImage;
  try {
    o.log(`mirror: pushing ${layers} x ${formatBytes(layerBytes)} to the upstream (docker-registry, fs)`);
    image = await pushImage(upstream.url, new BlobSet(layers, layerBytes));
    // Once untimed, so the upstream's page cache holds the image in every case alike.
    await pullTogether(upstream.url, image, 1);
    await measure('direct', 'direct from the upstream', upstream.url, 1, upstream.pid);

    const hoist = await startHoistCache(upstream.url);
    caches.push(hoist);
    await measure('hoist-cold', 'hoist cache, cold', hoist.url, 1, hoist.pid);
    await measure('hoist-warm', 'hoist cache, warm', hoist.url, 1, hoist.pid);
    const crowd = await startHoistCache(upstream.url);
    caches.push(crowd);
    await measure('hoist-cold-4', 'hoist cache, cold, 4 clients at once', crowd.url, 4, crowd.pid);

    const dr = await startDistributionCache(upstream.url).catch((err: Error) => {
      o.note(`mirror: docker-registry proxy not run: ${err.message.split('\n')[0]}`);
      return undefined;
    });
    if (dr) {
      caches.push(dr);
      await measure('dr-cold', 'docker-registry proxy, cold', dr.url, 1, dr.pid);
      await measure('dr-warm', 'docker-registry proxy, warm', dr.url, 1, dr.pid);
    }
  } finally {
    for (const c of caches) await c.stop().catch(() => undefined);
    await upstream.stop().catch(() => undefined);
  }
  const direct = report.rows.find((r) => r.id === 'direct');
  for (const r of report.rows) if (direct && direct.mibPerSec > 0) r.vsDirect = r.mibPerSec / direct.mibPerSec;
  return report;
}

export function mirrorMarkdown(r: MirrorReport): string {
  const rows = r.rows.map((x) => `| ${x.title} | ${x.clients} | ${x.mibPerSec.toFixed(0)} | ${x.vsDirect?.toFixed(2) ?? '–'}x | ${(x.wallMs / 1000).toFixed(1)} | ` +
    `${x.usage ? x.usage.cpuCores.toFixed(2) : '–'} | ${x.usage ? x.usage.peakRssMiB.toFixed(0) : '–'} | ${x.errors} |`);
  return [
    '### Pull-through cache',
    '',
    `One image, ${r.layers} x ${formatBytes(r.layerBytes)} layers, on an upstream docker-registry (fs); each client pulls the manifest by tag, ` +
      `then the layers ${r.concurrency} at a time. CPU and RSS are the cache's (for "direct", the upstream's).`,
    '',
    '| case | clients | MiB/s | ÷ direct | s | CPU cores | peak RSS MiB | errors |',
    '|---|--:|--:|--:|--:|--:|--:|--:|',
    ...rows,
    '',
  ].join('\n');
}
