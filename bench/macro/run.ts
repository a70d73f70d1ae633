import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { BlobSet, formatBytes, MiB, parseBytes, pull, push, type BlobRef, type PhaseResult, type PushMode } from './loadgen.js';

const GiB = 1024 * MiB;
import { mirrorMarkdown, runMirrorBench, type MirrorReport } from './mirror.js';
import { Progress } from './progress.js';
import { addRatios, charts, markdown, type Report, type Row, type ScenarioInfo } from './report.js';
import { runTagScenario, TAG_SCENARIO, tagTables, type TagResult } from './tags.js';
import { objectParts, s3EndpointFromEnv, trafficBetween, unreachable as s3Unreachable, uploadsInProgress, type PartLayout } from './s3.js';
import { durableWriteMiBps, pageCacheCpuSecPerGiB, primeMemory } from './disk.js';
import {
  DOCKER_REGISTRY, referenceOf, ROOT, S3_PART_BYTES, sample, SHM, start, storageOf, TARGETS, TMP, unavailable, type Target, type TargetName,
} from './targets.js';

/**
 * Macro benchmark: starts each registry in turn, runs the same scenarios against each through
 * the real HTTP API, and writes under bench/results/ (or --out DIR):
 *
 *   <timestamp>.json            machine, Node version, settings, every result
 *   <timestamp>.md              the tables (also printed)
 *   <timestamp>-*.svg           charts: MiB/s against concurrency, MiB/s per scenario
 *   latest.{json,md}, latest-*.svg   copies of the newest run, which the README shows
 *
 *   npm run bench                       # full run: every target that can run here
 *   npm run bench -- --quick            # about a minute (longer with the S3 targets)
 *   npm run bench -- --targets hoist,sink --scenario chunked,pull --chunk 16MiB
 *   npm run bench -- --url https://registry.example --user u:p   # another registry only
 *
 * Targets (targets.ts): hoist (node:http front end, Hoist's default), hoist-uws, the
 * reference docker-registry (Debian's distribution 2.8: `apt-get install docker-registry`),
 * the three again with their storage on tmpfs (hoist-tmpfs, hoist-uws-tmpfs,
 * docker-registry-tmpfs: the registries without the disk), the sink (the load generator's
 * ceiling), and hoist-s3 / docker-registry-s3 on an S3 endpoint (HOIST_BENCH_S3_ENDPOINT,
 * default radosgw at http://127.0.0.1:7480; start one with `bash scripts/rgw-start.sh`),
 * which are skipped with a note when nothing answers.
 *
 * Every row has the server's CPU seconds per GiB moved (user + sys of all its threads, from
 * /proc): what a byte costs, which on a shared machine varies less than MiB/s does. Before
 * the 1 GiB push on a target whose storage is on the disk, the runner measures the disk's own
 * durable write speed for as many bytes (disk.ts, as dd with conv=fdatasync does): the limit
 * a push whose 201 means "on disk" is compared with.
 *
 * With a hoist target the runner first runs `npm run build` (skip with --no-build), and leaves
 * hoist out, with a note, if that fails. fs storage goes under bench/results/tmp/
 * (git-ignored), tmpfs storage under /dev/shm, each removed with its target; S3 targets get
 * a bucket each, deleted after.
 *
 * The load generator runs in this process and the server in a child on the same machine, so
 * on 2 cores they compete: the sink row shows what the client manages at all.
 */

interface Scenario extends ScenarioInfo {
  mode: PushMode;
  /** Only on S3 targets (memory under load). */
  s3Only?: boolean;
  /** Only in full runs. */
  fullOnly?: boolean;
  /** Only run when named with --scenario. */
  optional?: boolean;
  /** Read back the blob's multipart layout afterwards (S3 targets). */
  inspectParts?: boolean;
  /**
   * On targets with storage on the disk, first measure the disk's durable write speed for
   * the scenario's bytes (disk.ts): the limit of a push whose 201 means "on disk".
   */
  diskLimit?: boolean;
  /** Pulls: the push scenario whose blobs are pulled (default stream-many). */
  pulls?: string;
}

function scenarios(quick: boolean, chunkBytes: number): Scenario[] {
  // --quick keeps every shape but shrinks the bytes, for S3 most of all (radosgw here takes
  // 1 MiB PATCHes at a few MiB/s).
  const big = quick ? 256 * MiB : 1024 * MiB;
  const mid = quick ? 16 * MiB : 64 * MiB;
  const small = quick ? 64 : 256;
  const patched = quick ? 16 * MiB : 100 * MiB;
  const list: Array<Omit<Scenario, 'title'>> = [
    { id: 'stream-one', kind: 'push', mode: 'streamed', count: 1, sizeBytes: big, concurrency: 1, chunkBytes, main: true, diskLimit: true },
    { id: 'stream-many', kind: 'push', mode: 'streamed', count: 16, sizeBytes: mid, concurrency: 16, chunkBytes, main: true, sweep: 16 },
    { id: 'chunked', kind: 'push', mode: 'chunked', count: 16, sizeBytes: mid, concurrency: 16, chunkBytes, main: true },
    { id: 'monolithic', kind: 'push', mode: 'monolithic', count: small, sizeBytes: MiB, concurrency: 16, chunkBytes, main: true },
    { id: 'monolithic-post', kind: 'push', mode: 'monolithic-post', count: small, sizeBytes: MiB, concurrency: 16, chunkBytes, optional: true },
    // Small PATCHes: how many requests a second, and (S3) whether they become tiny parts.
    { id: 'patch-1m', kind: 'push', mode: 'chunked', count: 1, sizeBytes: patched, concurrency: 1, chunkBytes: MiB, main: true, inspectParts: true },
    // One upload in 8 MiB PATCHes, to set against stream-one: one request after another, so
    // every PATCH waits for its bytes to be stored (S3: a part) before the next one starts.
    { id: 'patch-8m', kind: 'push', mode: 'chunked', count: 1, sizeBytes: big, concurrency: 1, chunkBytes: 8 * MiB, main: true, inspectParts: true },
    // Pulls what stream-many pushed (or pushes the same shape first, untimed, if it didn't run).
    { id: 'pull', kind: 'pull', mode: 'streamed', count: 16, sizeBytes: mid, concurrency: 16, chunkBytes, main: true },
    // Pulls the one large blob stream-one pushed: one client, one long GET.
    { id: 'pull-one', kind: 'pull', mode: 'streamed', count: 1, sizeBytes: big, concurrency: 1, chunkBytes, main: true, pulls: 'stream-one' },
    // The concurrency sweep; its c16 point is stream-many. count = max(concurrency, 4).
    { id: 'sweep-c1', kind: 'push', mode: 'streamed', count: 4, sizeBytes: mid, concurrency: 1, chunkBytes, sweep: 1 },
    { id: 'sweep-c4', kind: 'push', mode: 'streamed', count: 4, sizeBytes: mid, concurrency: 4, chunkBytes, sweep: 4 },
    // Peak RSS with 4 GiB in flight: the S3 writers' part buffers are the memory to watch.
    { id: 'stream-big', kind: 'push', mode: 'streamed', count: 16, sizeBytes: 256 * MiB, concurrency: 16, chunkBytes, s3Only: true, fullOnly: true },
  ];
  return list.map((s) => ({ ...s, title: title(s) }));
}

function title(s: Omit<ScenarioInfo, 'title'>): string {
  if (s.count === 1 && s.mode === 'chunked') return `${formatBytes(s.sizeBytes)} in ${formatBytes(s.chunkBytes)} PATCHes`;
  const what = s.kind === 'pull' ? 'pull' : s.mode === 'chunked' ? `chunked (${formatBytes(s.chunkBytes)} PATCHes)` : s.mode;
  // Sweep points name their concurrency even when it equals the count (4 x 64 MiB at c4).
  const named = s.concurrency !== s.count || (s.sweep !== undefined && s.sweep < 16);
  return `${s.count} x ${formatBytes(s.sizeBytes)} ${what}${named ? ` at c${s.concurrency}` : ''}`;
}

/** Best of three: the fastest pass is the least disturbed by whatever else runs. */
function hashMiBps(algorithm: string, data: Buffer): number {
  let best = 0;
  for (let i = 0; i < 3; i++) {
    const t = performance.now();
    createHash(algorithm).update(data).digest();
    best = Math.max(best, data.length / MiB / ((performance.now() - t) / 1000));
  }
  return best;
}

function tryRun(cmd: string, args: string[]): string | undefined {
  try {
    return execFileSync(cmd, args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } catch {
    return undefined;
  }
}

const USAGE = `usage: npm run bench -- [options]
  --quick               smaller blobs, no 16 x 256 MiB scenario (about a minute; more with S3)
  --targets LIST        comma-separated, from ${TARGETS.join(', ')}
                        (default: all; S3 targets only when the S3 endpoint answers)
  --scenario LIST       comma-separated scenario ids (see the list below); \`mirror\` (only when named)
                        pulls one image through Hoist as a pull-through cache (mirror.ts)
  --chunk SIZE          PATCH size of the 'chunked' scenario (default 8MiB)
  --stream-length       streamed PATCHes declare Content-Length (default: chunked encoding, as docker);
                        hoist-uws then resets the 1 GiB one (uWS 20.30 takes 9-digit lengths only)
  --url URL             bench a running registry instead (its blobs are left there)
  --user USER:PASSWORD  HTTP basic auth for --url
  --no-build            use dist/ as it is
  --out DIR             where to write results (default bench/results)
  --render FILE.json    only redraw the tables and charts of an earlier run's JSON into --out
  --tags N              tags the 'tags' scenario pushes (default 10000; 1000 with --quick)
environment: HOIST_BENCH_S3_ENDPOINT (default http://127.0.0.1:7480), AWS_ACCESS_KEY_ID and
  AWS_SECRET_ACCESS_KEY (default testkey/testsecret, the keys scripts/rgw-start.sh creates);
  HOIST_BENCH_CLI: another build's dist/src/cli.js for the hoist targets (a before/after run)`;

/** Writes the JSON, Markdown and SVG files of a report, and their latest.* copies. */
function writeOutputs(report: Report, out: string, log: (msg: string) => void): void {
  mkdirSync(out, { recursive: true });
  const stamp = report.date.replace(/[:.]/g, '-');
  const svgs = charts(report);
  for (const c of svgs) {
    writeFileSync(join(out, `${stamp}-${c.name}.svg`), c.svg);
    copyFileSync(join(out, `${stamp}-${c.name}.svg`), join(out, `latest-${c.name}.svg`));
  }
  const mirror = (report as Report & { mirror?: MirrorReport }).mirror;
  const tags = tagTables((report as Report & { tags?: TagResult[] }).tags ?? []);
  const extra = (md: string): string => `${md}${mirror ? `\n${mirrorMarkdown(mirror)}` : ''}${tags ? `\n${tags}` : ''}`;
  const md = extra(markdown(report, referenceOf, svgs.map((c) => `${stamp}-${c.name}.svg`)));
  writeFileSync(join(out, `${stamp}.json`), `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(join(out, `${stamp}.md`), md);
  writeFileSync(join(out, 'latest.json'), `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(join(out, 'latest.md'), extra(markdown(report, referenceOf, svgs.map((c) => `latest-${c.name}.svg`))));
  console.log(`\n${md}`);
  log(`wrote ${join(out, `${stamp}.json`)}, .md and ${svgs.length} charts; copies as latest.*`);
}

async function main(): Promise<void> {
  const { values: v } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      targets: { type: 'string' },
      scenario: { type: 'string' },
      chunk: { type: 'string', default: '8MiB' },
      'stream-length': { type: 'boolean', default: false },
      url: { type: 'string' },
      user: { type: 'string' },
      'no-build': { type: 'boolean', default: false },
      out: { type: 'string', default: join(ROOT, 'bench/results') },
      render: { type: 'string' },
      tags: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  const quick = v.quick!;
  const all = scenarios(quick, parseBytes(v.chunk!));
  if (v.help) {
    console.log(`${USAGE}\nscenarios:\n${all.map((s) => `  ${s.id.padEnd(16)} ${s.title}${s.s3Only ? ' (S3 targets)' : ''}` +
      `${s.fullOnly ? ' (not with --quick)' : ''}${s.optional ? ' (only when named)' : ''}`).join('\n')}\n` +
      `  ${TAG_SCENARIO.padEnd(16)} N tags pushed, then lists, pages, HEAD and GET by tag, with store requests (tags.ts; only when named)`);
    return;
  }
  if (v.render) {
    // Tables and charts again from a run's JSON, e.g. after changing how they are drawn.
    writeOutputs(JSON.parse(readFileSync(v.render, 'utf8')) as Report, v.out!, (msg) => console.error(msg));
    return;
  }
  const wanted = v.scenario?.split(',');
  const tagsWanted = wanted?.includes(TAG_SCENARIO) ?? false;
  const separate = ['mirror', TAG_SCENARIO];
  for (const id of wanted ?? []) if (!separate.includes(id) && !all.some((s) => s.id === id)) throw new Error(`unknown scenario ${id}; choose from ${[...all.map((s) => s.id), ...separate].join(', ')}`);
  const chosen = all.filter((s) => (wanted ? wanted.includes(s.id) : !s.optional && !(quick && s.fullOnly)));
  const names = (v.targets?.split(',') ?? [...TARGETS]) as TargetName[];
  for (const n of names) if (!TARGETS.includes(n)) throw new Error(`unknown target ${n}; choose from ${TARGETS.join(', ')}`);

  const loadAtStart = os.loadavg().map((l) => +l.toFixed(2));
  const progress = new Progress();
  const log = (msg: string): void => progress.log(msg);
  const notes: string[] = [];
  const note = (msg: string): void => { notes.push(msg); log(msg); };

  if (!v.url && names.some((n) => n.startsWith('hoist')) && !v['no-build']) {
    log('building hoist (npm run build)');
    const b = spawnSync('npm', ['run', 'build', '--silent'], { cwd: ROOT, encoding: 'utf8' });
    if (b.status !== 0) {
      note(`hoist: build failed, skipped: ${(b.stdout + b.stderr).trim().split('\n').slice(0, 3).join(' / ')}`);
      names.splice(0, names.length, ...names.filter((n) => !n.startsWith('hoist')));
    }
  }

  const s3 = s3EndpointFromEnv();
  const s3Down = !v.url && names.some((n) => storageOf(n) === 's3') ? await s3Unreachable(s3.endpoint) : undefined;

  const hashData = randomFillSync(Buffer.allocUnsafe((quick ? 128 : 256) * MiB));
  const hashes = { sha256MiBps: hashMiBps('sha256', hashData), md5MiBps: hashMiBps('md5', hashData), bytes: hashData.length };
  log(`node:crypto on one core: sha256 ${hashes.sha256MiBps.toFixed(0)} MiB/s, md5 ${hashes.md5MiBps.toFixed(0)} MiB/s`);

  // Blob contents and digests are made once per scenario, before any clock starts. Every
  // scenario has its own blobs (a registry may skip storing a blob it already has); targets
  // share them, each on storage of its own.
  const blobSets = new Map<string, BlobSet>();
  const blobsFor = (s: Scenario): BlobSet => {
    if (!blobSets.has(s.id)) blobSets.set(s.id, new BlobSet(s.count, s.sizeBytes));
    return blobSets.get(s.id)!;
  };

  // Ctrl-C or SIGTERM mid-run: stop the running registries and remove their storage (buckets
  // too), rather than leave them behind; the tags scenario runs two at once (tagsRunning).
  let current: Target | undefined;
  const tagsRunning = new Set<{ name: string; stop(): Promise<void> }>();
  let interrupted = false;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      interrupted = true;
      const all = [...(current ? [current] : []), ...tagsRunning];
      log(`${sig}: stopping ${all.map((t) => t.name).join(', ') || 'nothing'} and exiting`);
      void Promise.allSettled(all.map((t) => t.stop())).finally(() => process.exit(130));
    });
  }

  const rows: Row[] = [];
  const ran: Report['targets'] = [];
  const plan: Array<{ name: string; storage: string; start: () => Promise<Target> }> = v.url
    ? [{ name: new URL(v.url).host, storage: 'external', start: async () => ({ name: new URL(v.url!).host, url: v.url!.replace(/\/$/, ''), stop: async () => {} }) }]
    : names.map((n) => ({ name: n, storage: storageOf(n), start: () => start(n, { s3 }) }));
  for (const p of plan) {
    const why = v.url ? undefined : unavailable(p.name as TargetName, s3Down);
    if (why) { note(`${p.name}: skipped, ${why}`); continue; }
    const mine = chosen.filter((s) => !s.s3Only || p.storage === 's3');
    if (mine.length === 0) { log(`${p.name}: no chosen scenario applies`); continue; }
    let target: Target;
    try {
      target = await p.start();
    } catch (err) {
      note(`${p.name}: ${(err as Error).message.split('\n')[0]}`);
      continue;
    }
    current = target;
    ran.push({ name: p.name, storage: p.storage, ...(target.settings ? { settings: target.settings } : {}) });
    log(`${p.name}: serving at ${target.url}`);
    const base = { url: target.url, ...(v.user ? { user: v.user } : {}) };
    try {
      // Warm-up: opens connections, JIT-compiles both sides, creates the repository's layout.
      const pushTo = target.direct?.push ?? push;
      const pullFrom = target.direct?.pull ?? pull;
      const warm = await pushTo({ ...base, repo: 'bench/warmup', mode: 'monolithic', count: 8, sizeBytes: MiB, concurrency: 4, chunkBytes: MiB }, new BlobSet(8, MiB));
      if (warm.errors) log(`${p.name}: warm-up errors: ${warm.errorSamples[0]}`);
      const pushed = new Map<string, BlobRef[]>();
      for (const s of mine) {
        const dead = target.exited?.();
        if (dead) { note(`${p.name}: ${s.title} not run: the server ${dead}`); continue; }
        const source = s.pulls ?? 'stream-many';
        const repo = `bench/${s.kind === 'pull' ? source : s.id}`;
        const counter = { bytes: 0 };
        let beforePut: PartLayout['beforePut'];
        const s3t = s.inspectParts ? target.s3 : undefined;
        const o = {
          ...base, repo, mode: s.mode, count: s.count, sizeBytes: s.sizeBytes, concurrency: s.concurrency, chunkBytes: s.chunkBytes,
          streamLength: v['stream-length']!, progress: counter,
          ...(s3t ? { beforePut: async () => { beforePut = await uploadsInProgress(s3t.client, s3t.bucket); } } : {}),
        };
        let toPull = pushed.get(source);
        if (s.kind === 'pull' && !toPull) toPull = (await pushTo({ ...o, progress: { bytes: 0 } }, blobsFor(s))).blobs;
        const blobs = s.kind === 'push' ? blobsFor(s) : undefined;
        // Flush the previous scenario's writes so its writeback doesn't bill this one.
        spawnSync('sync');
        // tmpfs storage: memory the hypervisor backs (disk.ts, primeMemory).
        if (p.storage === 'tmpfs') primeMemory(SHM, s.count * s.sizeBytes + GiB);
        // And what copying a push's bytes into those pages costs: part of the push's floor.
        const pageCache = p.storage === 'tmpfs' && s.kind === 'push' ? pageCacheCpuSecPerGiB(SHM, s.count * s.sizeBytes) : undefined;
        let diskMiBps: number | undefined;
        if (s.diskLimit && p.storage === 'fs') {
          diskMiBps = durableWriteMiBps(TMP, s.count * s.sizeBytes);
          log(`${p.name}: the disk writes ${formatBytes(s.count * s.sizeBytes)} and fdatasyncs it at ${diskMiBps.toFixed(0)} MiB/s`);
        }
        const done = progress.track(`${p.name}: ${s.title}`, counter, s.count * s.sizeBytes);
        const usage = sample(target.pid);
        const traffic0 = await target.traffic?.();
        let r: PhaseResult;
        if (s.kind === 'pull') r = await pullFrom(o, toPull!);
        else {
          const { blobs: refs, ...rest } = await pushTo(o, blobs!);
          pushed.set(s.id, refs);
          r = rest;
        }
        const u = usage.stop();
        const store = traffic0 ? trafficBetween(traffic0, await target.traffic!()) : undefined;
        const row: Row = {
          target: p.name, storage: p.storage, scenario: s.id, title: s.title, ...r,
          ...(u ? { usage: u } : {}),
          // What a GiB cost the server in CPU: all its threads, user + sys (targets.ts sample()).
          ...(u && r.bytes > 0 ? { cpuSecPerGiB: u.cpuSeconds / (r.bytes / GiB) } : {}),
          ...(diskMiBps !== undefined ? { diskMiBps } : {}),
          ...(pageCache !== undefined ? { pageCacheCpuSecPerGiB: pageCache } : {}),
          ...(store ? { store } : {}),
        };
        rows.push(row);
        done(`${p.name}: ${s.title}: ${r.mibPerSec.toFixed(1)} MiB/s in ${(r.wallMs / 1000).toFixed(1)} s` +
          (r.putP50Ms !== undefined ? `, PUT ?digest= p50 ${r.putP50Ms.toFixed(0)} ms` : '') +
          (u ? `, peak RSS ${u.peakRssMiB.toFixed(0)} MiB, ${u.cpuCores.toFixed(2)} cores` : '') +
          (row.cpuSecPerGiB !== undefined ? `, ${row.cpuSecPerGiB.toFixed(2)} CPU s/GiB` : '') +
          (r.errors ? `, ${r.errors} errors: ${r.errorSamples[0]}` : ''));
        const last = pushed.get(s.id)?.at(-1);
        if (s3t && last) {
          try {
            row.parts = { ...await objectParts(s3t.client, s3t.bucket, await s3t.blobKey(last.digest)), ...(beforePut ? { beforePut } : {}) };
          } catch (err) {
            note(`${p.name}: could not read the multipart layout of ${s.title}: ${(err as Error).message}`);
          }
        }
      }
    } finally {
      current = undefined;
      await target.stop().catch((err: Error) => note(`${p.name}: stopping: ${err.message}`));
    }
  }

  // The pull-through cache has targets of its own (an upstream and caches): mirror.ts.
  const mirror = wanted?.includes('mirror') && !v.url ? await runMirrorBench({ quick, log, note }) : undefined;

  // The tags scenario starts each registry again, its S3 targets behind a counting proxy.
  const tagResults = tagsWanted && !v.url
    ? await runTagScenario({
      targets: names, tags: Number(v.tags ?? (quick ? 1000 : 10_000)), runs: quick ? 3 : 5, s3,
      unavailable: (n) => unavailable(n, s3Down), log, note, running: tagsRunning,
    })
    : undefined;

  const report: Report & { mirror?: MirrorReport; tags?: TagResult[] } = {
    date: new Date().toISOString(),
    machine: {
      cpuModel: os.cpus()[0]?.model, cores: os.availableParallelism(), memoryGiB: +(os.totalmem() / 1024 ** 3).toFixed(1),
      node: process.version, kernel: os.release(),
      // 1, 5 and 15 minute load averages: other work on the machine colours the figures.
      loadAverageAtStart: loadAtStart, loadAverageAtEnd: os.loadavg().map((l) => +l.toFixed(2)),
      dockerRegistry: tryRun(DOCKER_REGISTRY, ['--version']),
    },
    git: {
      commit: tryRun('git', ['rev-parse', 'HEAD']), dirty: Boolean(tryRun('git', ['status', '--porcelain', '--untracked-files=no'])),
      // The hoist targets ran another build (HOIST_BENCH_CLI): its commit, if it is in a checkout.
      hoistCommit: process.env.HOIST_BENCH_CLI ? tryRun('git', ['-C', dirname(process.env.HOIST_BENCH_CLI), 'rev-parse', 'HEAD']) : undefined,
    },
    settings: {
      quick, url: v.url, client: 'bench/macro/loadgen.ts: node:http keep-alive Agent, one socket per concurrent upload',
      streamedBody: v['stream-length'] ? 'Content-Length' : 'chunked transfer encoding',
      s3Endpoint: ran.some((t) => t.storage === 's3') ? s3.endpoint : undefined,
      s3PartBytes: S3_PART_BYTES,
      hoist: 'defaults (uploads.chunkBytes 4 MiB, hashThreads one per core); S3: partSize 16 MiB, maxPartsInFlight 4',
      cpu: 'server CPU s/GiB: user + sys of the server process (all threads) from /proc/PID/stat over the scenario, per GiB of blob bytes',
      tmpfs: `tmpfs targets store under ${SHM}; before each of their scenarios the runner writes and deletes its bytes + 1 GiB there (disk.ts primeMemory)`,
      disk: 'before the 1 GiB push on disk targets: the disk\'s durable write speed for as many bytes (1 MiB writes, then fdatasync; disk.ts)',
      s3Traffic: 'S3 targets reach the store through a counting TCP proxy (bench/macro/s3.ts); store-s3 PUTs parts to presigned URLs',
      scenarios: chosen.map(({ id, title: t, kind, mode, count, sizeBytes, concurrency, chunkBytes, sweep, main: m }) =>
        ({ id, title: t, kind, mode, count, sizeBytes, concurrency, chunkBytes, ...(sweep ? { sweep } : {}), ...(m ? { main: m } : {}) })),
    },
    hashes,
    targets: ran,
    notes,
    results: rows,
    ...(mirror ? { mirror } : {}),
    ...(tagResults ? { tags: tagResults } : {}),
  };
  addRatios(report, referenceOf);

  // Interrupted: the scenario that was cut short must not overwrite latest.* on its way out.
  if (interrupted) return;
  writeOutputs(report, v.out!, log);
  if (rows.some((r) => r.errors) || mirror?.rows.some((r) => r.errors)) process.exitCode = 1;
}

main().catch((err: Error) => { console.error(err.stack ?? err.message); process.exit(2); });
