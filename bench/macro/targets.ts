import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Registries under test, each a child process on a free loopback port with fresh storage,
 * plus a sampler of that process's memory and CPU from /proc.
 */

/** This file runs as dist/bench/macro/targets.js. */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const HOIST_CLI = join(ROOT, 'dist/src/cli.js');
export const DOCKER_REGISTRY = '/usr/bin/docker-registry';
/** Storage lives on the repo's disk (git-ignored), not a tmpfs, so fs numbers mean disk. */
const TMP = join(ROOT, 'bench/results/tmp');

export type TargetName = 'hoist' | 'hoist-node' | 'docker-registry' | 'sink';
export const TARGETS: readonly TargetName[] = ['hoist', 'hoist-node', 'docker-registry', 'sink'];

export interface Target {
  name: string;
  url: string;
  /** Server process to sample; undefined for an external registry. */
  pid?: number;
  stop(): Promise<void>;
}

/** Why a target can't run here, or undefined when it can. */
export function unavailable(name: TargetName): string | undefined {
  if (name.startsWith('hoist') && !existsSync(HOIST_CLI)) return `${HOIST_CLI} missing: run npm run build`;
  if (name === 'docker-registry' && !existsSync(DOCKER_REGISTRY)) return `${DOCKER_REGISTRY} missing: apt-get install docker-registry`;
  return undefined;
}

function freePort(): Promise<number> {
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

async function launch(name: string, cmd: string, args: string[], env: NodeJS.ProcessEnv, port: number, dir: string): Promise<Target> {
  const child: ChildProcess = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  // Keep the last output for error messages, and keep reading so a chatty server never blocks on a full pipe.
  let tail = '';
  const keep = (b: Buffer): void => { tail = (tail + b.toString()).slice(-4000); };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  let exited: string | undefined;
  const exit = new Promise<void>((done) => child.once('exit', (code, sig) => { exited = `exited ${code ?? sig}`; done(); }));
  const url = `http://127.0.0.1:${port}`;
  const stop = async (): Promise<void> => {
    if (!exited) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exit;
      clearTimeout(t);
    }
    await rm(dir, { recursive: true, force: true });
  };
  for (const deadline = Date.now() + 30_000; Date.now() < deadline;) {
    if (exited) break;
    if (await ping(url)) return { name, url, pid: child.pid!, stop };
    await new Promise((r) => setTimeout(r, 100));
  }
  await stop();
  throw new Error(`${name} did not start (${exited ?? 'no answer on /v2/ in 30 s'}):\n${tail.trim()}`);
}

export async function start(name: TargetName): Promise<Target> {
  await mkdir(TMP, { recursive: true });
  const dir = await mkdtemp(join(TMP, `${name}-`));
  const port = await freePort();
  const listen = `127.0.0.1:${port}`;
  switch (name) {
    case 'hoist':
    case 'hoist-node':
      return launch(name, process.execPath, [HOIST_CLI, 'serve', '--listen', listen, '--storage', `fs:${join(dir, 'data')}`,
        ...(name === 'hoist-node' ? ['--frontend', 'node'] : [])],
      // Per-request info logs would cost the server CPU that the benchmark should measure.
      { ...process.env, HOIST_LOG_LEVEL: 'warn' }, port, dir);
    case 'docker-registry': {
      const config = join(dir, 'config.yml');
      await writeFile(config, [
        'version: 0.1',
        'log: {level: error}',
        `storage: {filesystem: {rootdirectory: ${join(dir, 'data')}}, delete: {enabled: true}}`,
        `http: {addr: "${listen}"}`,
        '',
      ].join('\n'));
      // Its s3 driver refuses to start when AWS_CA_BUNDLE is set; irrelevant for fs, so drop it.
      const { AWS_CA_BUNDLE: _, ...env } = process.env;
      return launch(name, DOCKER_REGISTRY, ['serve', config], env, port, dir);
    }
    case 'sink':
      return launch(name, process.execPath, [fileURLToPath(new URL('./sink.js', import.meta.url)), '--listen', listen], process.env, port, dir);
  }
}

export interface Usage {
  peakRssMiB: number;
  /** CPU seconds used per wall second: 1.0 is one core busy throughout. */
  cpuCores: number;
}

/** Clock ticks per second for /proc/PID/stat times; 100 on every Linux we run. */
const CLK_TCK = 100;

function cpuTicks(pid: number): number {
  // Fields after the ")" that ends comm; utime and stime are fields 14 and 15 of the line.
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return Number(f[11]) + Number(f[12]);
}

function rssKiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
}

/**
 * Samples a process's RSS every 100 ms until stop() and reports the peak. CPU is the
 * utime+stime difference between start and stop: exact, so it needs no sampling.
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
        return { peakRssMiB: peak / 1024, cpuCores: (cpuTicks(pid) - ticks0) / CLK_TCK / ((performance.now() - t0) / 1000) };
      } catch {
        return undefined;
      }
    },
  };
}
