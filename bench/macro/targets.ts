import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { BlobRef, BlobSet, LoadOptions, PhaseResult } from './loadgen.js';
import {
  createBucket, deleteBucket, getText, s3Client, startCountingProxy, storeRow, type S3Endpoint, type StoreTraffic,
} from './s3.js';

/**
 * Registries under test, each a child process on a free loopback port with fresh storage,
 * plus a sampler of that process's memory and CPU from /proc.
 *
 *   hoist               Hoist's default front end (node:http, `--frontend auto`), fs storage
 *   hoist-uws           Hoist on uWebSockets.js (`--frontend uws`), fs storage
 *   docker-registry     Debian's docker-registry (CNCF distribution 2.8), fs storage
 *   hoist-tmpfs, hoist-uws-tmpfs, docker-registry-tmpfs
 *                       the same with their fs storage on tmpfs (/dev/shm): the registries
 *                       without the disk, what a byte costs them in CPU
 *   sink                receives and discards (sink.ts): the load generator's ceiling
 *   store-s3            no registry: blobs PUT straight to the store as multipart parts
 *                       (s3.ts storeRow), the S3 targets' limit row
 *   hoist-s3            Hoist, S3 storage (a fresh bucket on the bench's S3 endpoint)
 *   docker-registry-s3  docker-registry with its s3 driver, same endpoint, its own bucket
 *
 * The S3 targets reach the store through a counting proxy (s3.ts startCountingProxy), so
 * each scenario reports what was sent to the store and read back.
 */

/** This file runs as dist/bench/macro/targets.js. */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
/**
 * The Hoist server the hoist targets run. HOIST_BENCH_CLI names another build's cli.js (an
 * older commit's worktree), so that a before/after comparison runs the same bench, scenarios
 * and docker-registry in both runs.
 */
export const HOIST_CLI = process.env.HOIST_BENCH_CLI ?? join(ROOT, 'dist/src/cli.js');

/**
 * The Node.js options `npm start` gives that build's server (its src/node-options.ts; none for
 * a build from before there were any), so that a before/after run gives each its own.
 */
const HOIST_NODE_OPTIONS: readonly string[] = await (async () => {
  const file = join(dirname(HOIST_CLI), 'node-options.js');
  if (!existsSync(file)) return [];
  return ((await import(pathToFileURL(file).href)) as { SERVE_NODE_OPTIONS: readonly string[] }).SERVE_NODE_OPTIONS;
})();

/** node's arguments for `hoist <args>`, as `npm start` runs it. */
export function hoistArgs(...args: string[]): string[] {
  return [...HOIST_NODE_OPTIONS, HOIST_CLI, ...args];
}
export const DOCKER_REGISTRY = '/usr/bin/docker-registry';
/** Storage lives on the repo's disk (git-ignored), not a tmpfs, so fs numbers mean disk. */
export const TMP = join(ROOT, 'bench/results/tmp');

export const TARGETS = [
  'hoist', 'hoist-uws', 'docker-registry', 'hoist-tmpfs', 'hoist-uws-tmpfs', 'docker-registry-tmpfs', 'sink', 'store-s3', 'hoist-s3', 'docker-registry-s3',
] as const;
export type TargetName = (typeof TARGETS)[number];

/** fs on the repo's disk; tmpfs: fs storage in memory (/dev/shm); s3; none (the sink). */
export type StorageKind = 'fs' | 'tmpfs' | 's3' | 'none';

/** Where the tmpfs targets keep their storage. */
export const SHM = '/dev/shm';

export function storageOf(name: TargetName): StorageKind {
  return name === 'sink' ? 'none' : name.endsWith('-s3') ? 's3' : name.endsWith('-tmpfs') ? 'tmpfs' : 'fs';
}

/** Same registry kind on the same storage, for "vs docker-registry" ratios. */
export function referenceOf(name: string): string | undefined {
  const m = /^hoist(?:-uws)?(-tmpfs|-s3)?$/.exec(name);
  return m ? `docker-registry${m[1] ?? ''}` : undefined;
}

/** Hoist's S3 prefix and distribution's rootdirectory inside their buckets. */
const HOIST_S3_PREFIX = 'hoist';
const DR_S3_ROOT = 'dr';
/** Both write 16 MiB parts (Hoist's default partSize; distribution's chunksize set to match). */
export const S3_PART_BYTES = 16 * 1024 ** 2;
/** Parts one upload sends at once: Hoist's default maxPartsInFlight, and the store row's. */
export const S3_PARTS_IN_FLIGHT = 4;

/** The S3 targets' limit: the store's own speed, same part size and parallelism. */
export const STORE_ROW = 'store-s3';

export interface Target {
  name: string;
  url: string;
  /** Server process to sample; undefined for an external registry. */
  pid?: number;
  /** The server process has exited (crashed); later scenarios are skipped. */
  exited?: () => string | undefined;
  /** S3 targets: the bucket, and the key holding a blob's bytes. */
  s3?: { client: S3Client; bucket: string; blobKey(digest: string): Promise<string> };
  /** Command line and settings, for the report. */
  settings?: Record<string, unknown>;
  /** S3 targets: what was sent to the store and read back so far (counting proxy). */
  traffic?: () => Promise<StoreTraffic>;
  /** A target that is no registry (store-s3): runs the load itself instead of the load generator. */
  direct?: {
    push(o: LoadOptions, blobs: BlobSet): Promise<PhaseResult & { blobs: BlobRef[] }>;
    pull(o: LoadOptions, blobs: BlobRef[]): Promise<PhaseResult>;
  };
  stop(): Promise<void>;
}

/** Why a target can't run here, or undefined when it can. */
export function unavailable(name: TargetName, s3Unreachable?: string): string | undefined {
  if (name === STORE_ROW) return s3Unreachable ? `no S3 endpoint (${s3Unreachable}); start one with: bash scripts/rgw-start.sh` : undefined;
  if (name.startsWith('hoist') && !existsSync(HOIST_CLI)) return `${HOIST_CLI} missing: run npm run build`;
  if (name.startsWith('docker-registry') && !existsSync(DOCKER_REGISTRY)) {
    return `${DOCKER_REGISTRY} missing; install the reference registry with: apt-get install docker-registry`;
  }
  if (storageOf(name) === 's3' && s3Unreachable) return `no S3 endpoint (${s3Unreachable}); start one with: bash scripts/rgw-start.sh`;
  if (storageOf(name) === 'tmpfs' && !existsSync(SHM)) return `${SHM} missing (the tmpfs targets keep their storage there)`;
  return undefined;
}

export function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => ok(port));
    }).on('error', fail);
  });
}

/** Resolves once GET /v2/ answers at all (200 or 401): the registry is serving. */
function ping(url: string): Promise<boolean> {
  return new Promise((ok) => {
    http.get(`${url}/v2/`, { agent: false, timeout: 1000 }, (res) => { res.resume(); ok(true); })
      .on('error', () => ok(false)).on('timeout', function (this: http.ClientRequest) { this.destroy(); });
  });
}

export async function launch(name: string, cmd: string, args: string[], env: NodeJS.ProcessEnv, port: number, cleanup: () => Promise<void>): Promise<Target> {
  const child: ChildProcess = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  // Keep the last output for error messages, and keep reading so a chatty server never blocks on a full pipe.
  let tail = '';
  const keep = (b: Buffer): void => { tail = (tail + b.toString()).slice(-4000); };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  let exited: string | undefined;
  let stopping = false;
  const exit = new Promise<void>((done) => child.once('exit', (code, sig) => {
    exited = `exited ${code ?? sig}${stopping ? '' : `: ${tail.trim().split('\n').slice(-3).join(' / ').slice(0, 400)}`}`;
    done();
  }));
  const url = `http://127.0.0.1:${port}`;
  const stop = async (): Promise<void> => {
    stopping = true;
    if (!exited) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exit;
      clearTimeout(t);
    }
    await cleanup();
  };
  for (const deadline = Date.now() + 30_000; Date.now() < deadline;) {
    if (exited) break;
    if (await ping(url)) return { name, url, pid: child.pid!, exited: () => exited, stop, settings: { command: [cmd, ...args].join(' ') } };
    await new Promise((r) => setTimeout(r, 100));
  }
  await stop();
  throw new Error(`${name} did not start (${exited ?? 'no answer on /v2/ in 30 s'}):\n${tail.trim()}`);
}

/** The environment without HOIST_* settings from the developer's shell, which would change what runs. */
export function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('HOIST_') || k.startsWith('HOIST_BENCH_')) env[k] = v;
  return { ...env, ...extra };
}

export interface StartOptions {
  /** Needed by the S3 targets. */
  s3?: S3Endpoint;
}

export async function start(name: TargetName, opts: StartOptions = {}): Promise<Target> {
  await mkdir(TMP, { recursive: true });
  const dir = await mkdtemp(join(TMP, `${name}-`));
  const removeDir = (): Promise<void> => rm(dir, { recursive: true, force: true });
  const port = await freePort();
  const listen = `127.0.0.1:${port}`;
  // Per-request info logs would cost the server CPU that the benchmark should measure.
  const hoistEnv = { HOIST_LOG_LEVEL: 'warn' };
  let s3: Target['s3'];
  let cleanup = removeDir;
  // fs storage: on the repo's disk, or (tmpfs targets) in memory; removed with the target.
  let data = join(dir, 'data');
  if (storageOf(name) === 'tmpfs') {
    data = await mkdtemp(join(SHM, `hoist-bench-${name}-`));
    cleanup = async () => {
      try { await rm(data, { recursive: true, force: true }); } finally { await removeDir(); }
    };
  }
  let traffic: Target['traffic'];
  /** Where the target sends its S3 requests: the counting proxy in front of the store. */
  let s3Endpoint: S3Endpoint | undefined;
  if (storageOf(name) === 's3') {
    if (!opts.s3) throw new Error(`${name} needs an S3 endpoint`);
    const client = s3Client(opts.s3);
    const bucket = await createBucket(client, name.replace(/-s3$/, ''));
    // Over TLS the proxy could not read the requests: then nothing is counted.
    const proxy = opts.s3.endpoint.startsWith('http:') ? await startCountingProxy(opts.s3.endpoint) : undefined;
    traffic = proxy?.snapshot;
    s3Endpoint = proxy ? { ...opts.s3, endpoint: proxy.endpoint } : opts.s3;
    cleanup = async () => {
      try { await proxy?.close(); await deleteBucket(client, bucket); } finally { client.destroy(); await removeDir(); }
    };
    if (name === STORE_ROW) {
      const viaProxy = s3Client(s3Endpoint);
      const row = storeRow({ client: viaProxy, bucket, partBytes: S3_PART_BYTES, partsInFlight: S3_PARTS_IN_FLIGHT });
      const stopRow = cleanup;
      return {
        name, url: opts.s3.endpoint, traffic, direct: row,
        settings: { partBytes: S3_PART_BYTES, partsInFlight: S3_PARTS_IN_FLIGHT, how: 'presigned UploadPart/PutObject/GetObject URLs over node:http' },
        stop: async () => { viaProxy.destroy(); await stopRow(); },
      };
    }
    const blobKey = name === 'hoist-s3'
      // Hoist: a blob record (src/registry/paths.ts) names the data object, {"data": "/blobs/data/<id>"}.
      ? async (digest: string) => {
        const hex = digest.slice('sha256:'.length);
        const rec = JSON.parse(await getText(client, bucket, `${HOIST_S3_PREFIX}/blobs/sha256/${hex.slice(0, 2)}/${hex}`)) as { data: string };
        return `${HOIST_S3_PREFIX}${rec.data}`;
      }
      // distribution: registry/storage/paths.go, blobDataPathSpec.
      : async (digest: string) => {
        const hex = digest.slice('sha256:'.length);
        return `${DR_S3_ROOT}/docker/registry/v2/blobs/sha256/${hex.slice(0, 2)}/${hex}/data`;
      };
    s3 = { client, bucket, blobKey };
  }
  let target: Target;
  try {
    switch (name) {
      case 'hoist':
      case 'hoist-uws':
      case 'hoist-tmpfs':
      case 'hoist-uws-tmpfs':
      case 'hoist-s3': {
        const storage = name === 'hoist-s3'
          ? `s3://${s3!.bucket}/${HOIST_S3_PREFIX}?endpoint=${encodeURIComponent(s3Endpoint!.endpoint)}&region=${opts.s3!.region}&forcePathStyle=true`
          : `fs:${data}`;
        const env = name === 'hoist-s3'
          ? cleanEnv({ ...hoistEnv, AWS_ACCESS_KEY_ID: opts.s3!.accessKeyId, AWS_SECRET_ACCESS_KEY: opts.s3!.secretAccessKey })
          : cleanEnv(hoistEnv);
        target = await launch(name, process.execPath, hoistArgs('serve', '--listen', listen, '--storage', storage,
          ...(name.startsWith('hoist-uws') ? ['--frontend', 'uws'] : [])), env, port, cleanup);
        break;
      }
      case 'docker-registry':
      case 'docker-registry-tmpfs':
      case 'docker-registry-s3': {
        const config = join(dir, 'config.yml');
        // distribution 2.8's s3 driver (docs/storage-drivers/s3.md): with regionendpoint set it
        // addresses buckets by path. chunksize is its multipart part size; redirects are off so
        // pulls go through the registry, as Hoist's do by default.
        const storage = name === 'docker-registry-s3'
          ? [
            'storage:',
            '  s3:',
            `    accesskey: ${opts.s3!.accessKeyId}`,
            `    secretkey: ${opts.s3!.secretAccessKey}`,
            `    region: ${opts.s3!.region}`,
            `    regionendpoint: ${s3Endpoint!.endpoint}`,
            `    bucket: ${s3!.bucket}`,
            `    rootdirectory: /${DR_S3_ROOT}`,
            `    secure: ${opts.s3!.endpoint.startsWith('https:')}`,
            '    v4auth: true',
            `    chunksize: ${S3_PART_BYTES}`,
            '  delete: {enabled: true}',
            '  redirect: {disable: true}',
          ]
          : [`storage: {filesystem: {rootdirectory: ${data}}, delete: {enabled: true}}`];
        await writeFile(config, ['version: 0.1', 'log: {level: error}', ...storage, `http: {addr: "${listen}"}`, ''].join('\n'));
        // Its s3 driver refuses to start while AWS_CA_BUNDLE is set: drop it for this process only.
        const { AWS_CA_BUNDLE: _, ...env } = process.env;
        target = await launch(name, DOCKER_REGISTRY, ['serve', config], env, port, cleanup);
        target.settings = { ...target.settings, config: (await readFile(config, 'utf8')).replace(/secretkey: .*/, 'secretkey: ***') };
        break;
      }
      case 'store-s3':
        throw new Error('store-s3 has no server (started above)');
      case 'sink':
        target = await launch(name, process.execPath, [fileURLToPath(new URL('./sink.js', import.meta.url)), '--listen', listen], process.env, port, cleanup);
        break;
    }
  } catch (err) {
    // launch() cleans up after a failed start; only a failure before it needs this.
    if (!(err instanceof Error && err.message.includes('did not start'))) await cleanup().catch(() => {});
    throw err;
  }
  return s3 ? { ...target, s3, ...(traffic ? { traffic } : {}) } : target;
}

export interface Usage {
  peakRssMiB: number;
  /** CPU seconds used per wall second: 1.0 is one core busy throughout. */
  cpuCores: number;
  /** CPU seconds the process used meanwhile, all its threads (user + sys, and each apart). */
  cpuSeconds: number;
  cpuUserSeconds: number;
  cpuSysSeconds: number;
}

/** Clock ticks per second for /proc/PID/stat times; 100 on every Linux we run. */
const CLK_TCK = 100;

/** utime and stime of the whole process (every thread), in clock ticks. */
function cpuTicks(pid: number): { user: number; sys: number } {
  // Fields after the ")" that ends comm; utime and stime are fields 14 and 15 of the line.
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return { user: Number(f[11]), sys: Number(f[12]) };
}

function rssKiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
}

/**
 * Samples a process's RSS every 100 ms until stop() and reports the peak. CPU is the
 * utime+stime difference between start and stop (the process's own, all threads, not its
 * children's): exact, so it needs no sampling.
 */
export function sample(pid: number | undefined): { stop(): Usage | undefined } {
  if (pid === undefined || !existsSync(`/proc/${pid}/stat`)) return { stop: () => undefined };
  const t0 = performance.now();
  const ticks0 = cpuTicks(pid);
  let peak = rssKiB(pid);
  const timer = setInterval(() => {
    try { peak = Math.max(peak, rssKiB(pid)); } catch { /* exited; stop() reports what we have */ }
  }, 100);
  return {
    stop() {
      clearInterval(timer);
      try {
        peak = Math.max(peak, rssKiB(pid));
        const ticks = cpuTicks(pid);
        const user = (ticks.user - ticks0.user) / CLK_TCK;
        const sys = (ticks.sys - ticks0.sys) / CLK_TCK;
        return {
          peakRssMiB: peak / 1024, cpuCores: (user + sys) / ((performance.now() - t0) / 1000),
          cpuSeconds: user + sys, cpuUserSeconds: user, cpuSysSeconds: sys,
        };
      } catch {
        return undefined;
      }
    },
  };
}
