import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BlobSet, formatBytes, MiB, pull, push, type BlobRef, type PhaseResult, type PushMode } from './loadgen.js';
import { DOCKER_REGISTRY, ROOT, sample, start, TARGETS, unavailable, type Target, type TargetName, type Usage } from './targets.js';

/**
 * Macro benchmark: starts each registry in turn, runs the same scenarios against each, and
 * writes bench/results/<timestamp>.json and .md.
 *
 *   npm run bench                       # full run: hoist, docker-registry, sink
 *   npm run bench -- --quick            # ~1 minute
 *   npm run bench -- --targets hoist,sink --scenario chunked,pull
 *   npm run bench -- --url http://127.0.0.1:5000 [--user u:p]   # an external registry only
 *
 * With a hoist target the runner first runs `npm run build` (skip with --no-build), and leaves
 * hoist out, with a note, if that fails. Storage goes under bench/results/tmp/ (git-ignored) and
 * is removed with each target.
 *
 * The load generator runs in this process and the server in a child on the same machine, so
 * on 2 cores they compete: the sink row shows what the client manages at all.
 */

interface Scenario {
  id: string;
  kind: 'push' | 'pull';
  mode: PushMode;
  count: number;
  sizeBytes: number;
  concurrency: number;
  chunkBytes: number;
  /** Only run when named with --scenario. */
  optional?: boolean;
}

function scenarios(quick: boolean): Scenario[] {
  const big = quick ? 512 * MiB : 1024 * MiB;
  const mid = quick ? 32 * MiB : 64 * MiB;
  const chunk = 8 * MiB;
  const small = 256;
  const s = (id: string, kind: Scenario['kind'], mode: PushMode, count: number, sizeBytes: number, concurrency: number, optional = false): Scenario =>
    ({ id, kind, mode, count, sizeBytes, concurrency, chunkBytes: chunk, optional });
  return [
    s('stream-one', 'push', 'streamed', 1, big, 1),
    s('stream-many', 'push', 'streamed', 16, mid, 16),
    s('chunked', 'push', 'chunked', 16, mid, 16),
    s('monolithic', 'push', 'monolithic', small, MiB, 16),
    s('monolithic-post', 'push', 'monolithic-post', small, MiB, 16, true),
    // Pulls what stream-many pushed (or pushes the same shape first, untimed, if it didn't run).
    s('pull', 'pull', 'streamed', 16, mid, 16),
  ];
}

function title(s: Scenario): string {
  const what = s.kind === 'pull' ? 'pull' : s.mode === 'chunked' ? `chunked (${formatBytes(s.chunkBytes)} chunks)` : s.mode;
  return `${s.count} x ${formatBytes(s.sizeBytes)} ${what}${s.concurrency > 1 && s.concurrency !== s.count ? ` at c${s.concurrency}` : ''}`;
}

interface Row extends PhaseResult {
  target: string;
  scenario: string;
  title: string;
  usage?: Usage;
  vsSink?: number;
}

function hashMiBps(algorithm: string, data: Buffer): number {
  const t = performance.now();
  createHash(algorithm).update(data).digest();
  return data.length / MiB / ((performance.now() - t) / 1000);
}

function tryRun(cmd: string, args: string[]): string | undefined {
  try {
    return execFileSync(cmd, args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return undefined;
  }
}

function table(rows: Row[]): string {
  const f = (n: number | undefined, d = 0): string => (n === undefined ? '–' : n.toFixed(d));
  const lines = [
    '| target | scenario | MiB/s | req/s | p50 ms | p99 ms | errors | peak RSS MiB | CPU cores | vs sink |',
    '|---|---|--:|--:|--:|--:|--:|--:|--:|--:|',
    ...rows.map((r) => `| ${r.target} | ${r.title} | ${f(r.mibPerSec, 1)} | ${f(r.reqPerSec, 1)} | ${f(r.p50Ms)} | ${f(r.p99Ms)} | ` +
      `${r.errors} | ${f(r.usage?.peakRssMiB)} | ${f(r.usage?.cpuCores, 2)} | ${r.vsSink === undefined ? '–' : `${(r.vsSink * 100).toFixed(0)}%`} |`),
  ];
  return lines.join('\n');
}

async function main(): Promise<void> {
  const { values: v } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      targets: { type: 'string', default: 'hoist,docker-registry,sink' },
      scenario: { type: 'string' },
      url: { type: 'string' },
      user: { type: 'string' },
      'no-build': { type: 'boolean', default: false },
      out: { type: 'string', default: join(ROOT, 'bench/results') },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  const all = scenarios(v.quick!);
  if (v.help) {
    console.log(`usage: npm run bench -- [--quick] [--targets ${TARGETS.join(',')}] [--scenario ${all.map((s) => s.id).join(',')}]
                          [--url URL [--user u:p]] [--no-build] [--out DIR]`);
    return;
  }
  const wanted = v.scenario?.split(',');
  const chosen = all.filter((s) => (wanted ? wanted.includes(s.id) : !s.optional));
  if (chosen.length === 0) throw new Error(`no scenario matches; choose from ${all.map((s) => s.id).join(', ')}`);
  const names = v.targets!.split(',') as TargetName[];
  for (const n of names) if (!TARGETS.includes(n)) throw new Error(`unknown target ${n}; choose from ${TARGETS.join(', ')}`);

  const t0 = performance.now();
  const log = (msg: string): void => console.error(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${msg}`);
  const notes: string[] = [];

  if (!v.url && names.some((n) => n.startsWith('hoist')) && !v['no-build']) {
    log('building hoist (npm run build)');
    const b = spawnSync('npm', ['run', 'build', '--silent'], { cwd: ROOT, encoding: 'utf8' });
    if (b.status !== 0) {
      notes.push(`hoist: build failed, skipped: ${(b.stdout + b.stderr).trim().split('\n').slice(0, 3).join(' / ')}`);
      names.splice(0, names.length, ...names.filter((n) => !n.startsWith('hoist')));
    }
  }

  const data = randomFillSync(Buffer.allocUnsafe(256 * MiB));
  const hashes = { sha256MiBps: hashMiBps('sha256', data), md5MiBps: hashMiBps('md5', data), bytes: data.length };
  log(`node:crypto on one core: sha256 ${hashes.sha256MiBps.toFixed(0)} MiB/s, md5 ${hashes.md5MiBps.toFixed(0)} MiB/s`);

  // Blob contents and digests are made once per scenario, before any clock starts.
  const blobSets = new Map<string, BlobSet>();
  const blobsFor = (s: Scenario): BlobSet => {
    const key = `${s.count}x${s.sizeBytes}`;
    if (!blobSets.has(key)) blobSets.set(key, new BlobSet(s.count, s.sizeBytes));
    return blobSets.get(key)!;
  };

  const rows: Row[] = [];
  const plan: Array<{ name: string; start: () => Promise<Target> }> = v.url
    ? [{ name: new URL(v.url).host, start: async () => ({ name: new URL(v.url!).host, url: v.url!.replace(/\/$/, ''), stop: async () => {} }) }]
    : names.map((n) => ({ name: n, start: () => start(n) }));
  for (const p of plan) {
    const why = v.url ? undefined : unavailable(p.name as TargetName);
    if (why) { notes.push(`${p.name}: skipped, ${why}`); log(`${p.name}: skipped, ${why}`); continue; }
    let target: Target;
    try {
      target = await p.start();
    } catch (err) {
      notes.push(`${p.name}: ${(err as Error).message.split('\n')[0]}`);
      log(`${p.name}: ${(err as Error).message}`);
      continue;
    }
    log(`${p.name}: serving at ${target.url}`);
    const base = { url: target.url, ...(v.user ? { user: v.user } : {}) };
    try {
      // Warm-up: opens connections, JIT-compiles both sides, creates the repository's layout.
      const warm = await push({ ...base, repo: 'bench/warmup', mode: 'monolithic', count: 8, sizeBytes: MiB, concurrency: 4, chunkBytes: MiB }, new BlobSet(8, MiB));
      if (warm.errors) log(`${p.name}: warm-up errors: ${warm.errorSamples[0]}`);
      const pushed = new Map<string, BlobRef[]>();
      for (const s of chosen) {
        const repo = `bench/${s.kind === 'pull' ? 'stream-many' : s.id}`;
        const o = { ...base, repo, mode: s.mode, count: s.count, sizeBytes: s.sizeBytes, concurrency: s.concurrency, chunkBytes: s.chunkBytes };
        let toPull = pushed.get('stream-many');
        if (s.kind === 'pull' && !toPull) toPull = (await push(o, blobsFor(s))).blobs;
        // Flush the previous scenario's writes so its writeback doesn't bill this one.
        spawnSync('sync');
        log(`${p.name}: ${title(s)} ...`);
        const usage = sample(target.pid);
        let r: PhaseResult;
        if (s.kind === 'pull') r = await pull(o, toPull!);
        else {
          const { blobs, ...rest } = await push(o, blobsFor(s));
          pushed.set(s.id, blobs);
          r = rest;
        }
        const u = usage.stop();
        rows.push({ target: p.name, scenario: s.id, title: title(s), ...r, ...(u ? { usage: u } : {}) });
        log(`${p.name}: ${title(s)}: ${r.mibPerSec.toFixed(1)} MiB/s in ${(r.wallMs / 1000).toFixed(1)} s` +
          (r.errors ? `, ${r.errors} errors: ${r.errorSamples[0]}` : ''));
      }
    } finally {
      await target.stop();
    }
  }
  for (const r of rows) {
    const sink = rows.find((x) => x.target === 'sink' && x.scenario === r.scenario);
    if (sink && sink.mibPerSec > 0) r.vsSink = r.mibPerSec / sink.mibPerSec;
  }

  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const report = {
    date: new Date().toISOString(),
    machine: {
      cpuModel: os.cpus()[0]?.model, cores: os.availableParallelism(), memoryGiB: +(os.totalmem() / 1024 ** 3).toFixed(1),
      node: process.version, kernel: os.release(),
      dockerRegistry: tryRun(DOCKER_REGISTRY, ['--version']),
    },
    git: { commit: tryRun('git', ['rev-parse', 'HEAD']), dirty: Boolean(tryRun('git', ['status', '--porcelain', '--untracked-files=no'])) },
    settings: { quick: v.quick, client: 'node:http keep-alive Agent', url: v.url, scenarios: chosen.map((s) => ({ ...s, title: title(s) })) },
    hashes,
    notes,
    results: rows,
  };
  mkdirSync(v.out!, { recursive: true });
  const md = `# Hoist macro benchmark ${report.date}\n\n${report.machine.cpuModel} (${report.machine.cores} cores), ${report.machine.memoryGiB} GiB, ` +
    `Node ${process.version}${v.quick ? ', --quick' : ''}. node:crypto one core: SHA-256 ${hashes.sha256MiBps.toFixed(0)} MiB/s, ` +
    `MD5 ${hashes.md5MiBps.toFixed(0)} MiB/s.\n\n${table(rows)}\n${notes.map((n) => `\n- ${n}`).join('')}\n`;
  writeFileSync(join(v.out!, `${stamp}.json`), `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(join(v.out!, `${stamp}.md`), md);
  console.log(`\n${md}`);
  log(`wrote ${join(v.out!, `${stamp}.json`)}`);
  if (rows.some((r) => r.errors)) process.exitCode = 1;
}

main().catch((err: Error) => { console.error(err.stack ?? err.message); process.exit(2); });
