import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startCountingProxy, type CountingProxy, type Counts } from './count-proxy.js';
import type { S3Endpoint } from './s3.js';
import { sample, start, storageOf, type Target, type TargetName } from './targets.js';

/**
 * The tags scenario (issue 11): one repository with N tags, as a CI fleet makes them (a tag
 * per pipeline), Hoist and docker-registry side by side on fs and on S3:
 *
 *   push       one small image (a config, a 1 KiB layer) pushed under N tags, 16 PUTs at once
 *   list all   GET /v2/<repo>/tags/list: all N tags
 *   first page GET .../tags/list?n=100
 *   deep page  GET .../tags/list?n=100&last=<the tag half way>
 *   HEAD, GET  a manifest by tag
 *
 * Hoist and docker-registry on the same kind of storage run at once: each pushes in turn, then
 * they take turns at every read, so that both see the same load. Each read is timed many
 * times and the median reported. Beside each time, the store
 * requests the operation made: on S3 counted by a proxy between the registry and the S3
 * endpoint (every HTTP request); on fs the file system calls (open, stat, getdents, rename,
 * link, unlink, mkdir... as strace -f -c counts them, on a separate pass so that tracing
 * does not slow the timed one). Hoist's server looks at the GC lease once a second and
 * rewrites its presence once a minute whatever it does: those requests are left out of the
 * per-operation counts and reported as background.
 *
 *   npm run bench -- --scenario tags --tags 10000 --targets hoist,docker-registry,hoist-s3,docker-registry-s3
 */

export const TAG_SCENARIO = 'tags';
export const TAG_TARGETS: readonly TargetName[] = ['hoist', 'docker-registry', 'hoist-s3', 'docker-registry-s3'];

const REPO = 'bench/tags';
const PUSH_CONCURRENCY = 16;
const PAGE = 100;
const MANIFEST_TYPE = 'application/vnd.oci.image.manifest.v1+json';

export interface TagOpResult {
  id: string;
  title: string;
  /** Median over the timed runs (push: the whole push). */
  ms: number;
  runs: number;
  /** Store requests per operation (push: per PUT); undefined where not counted. */
  requests?: number;
  /** By kind: S3 operation (GET, HEAD, PutObject, ListObjectsV2...) or system call. */
  requestsByKind?: Record<string, number>;
  /** The server's CPU time per operation (push: per PUT). */
  cpuMsPerOp?: number;
  errors: number;
}

export interface TagResult {
  target: string;
  storage: string;
  tags: number;
  ops: TagOpResult[];
  /** Hoist's lease polls and presence heartbeats per second, counted beside the operations. */
  backgroundPerSecond?: number;
  notes: string[];
}

export interface TagScenarioOptions {
  targets: readonly TargetName[];
  tags: number;
  /** Timed runs per read operation. */
  runs: number;
  s3: S3Endpoint;
  /** Why a target cannot run (targets.ts unavailable()), or undefined. */
  unavailable: (name: TargetName) => string | undefined;
  log: (msg: string) => void;
  note: (msg: string) => void;
  /** The registries it has running at the moment, for the runner to stop on SIGINT/SIGTERM. */
  running?: Set<{ name: string; stop(): Promise<void> }>;
}

export async function runTagScenario(o: TagScenarioOptions): Promise<TagResult[]> {
  const results: TagResult[] = [];
  // Hoist and docker-registry on one kind of storage run at the same time, so that their
  // reads can take turns: on a shared machine a few milliseconds' difference measured a
  // minute apart says more about the load than about either.
  for (const storage of ['fs', 's3'] as const) {
    const names = o.targets.filter((t) => TAG_TARGETS.includes(t) && storageOf(t) === storage);
    const running: Running[] = [];
    try {
      for (const name of names) {
        const why = o.unavailable(name);
        if (why) {
          o.note(`${name}: tags scenario skipped, ${why}`);
          continue;
        }
        const proxy = storage === 's3' ? await startCountingProxy(o.s3.endpoint) : undefined;
        try {
          const target = await start(name, { s3: proxy ? { ...o.s3, endpoint: proxy.endpoint } : o.s3 });
          const r = new Running(name, target, proxy);
          running.push(r);
          o.running?.add(r);
        } catch (err) {
          await proxy?.close();
          o.note(`${name}: tags scenario failed to start: ${(err as Error).message.split('\n')[0]}`);
        }
      }
      if (running.length > 0) results.push(...await measure(running, o));
    } catch (err) {
      o.note(`${storage}: tags scenario failed: ${(err as Error).message.split('\n')[0]}`);
    } finally {
      for (const r of running) {
        await r.stop().catch((err: Error) => o.note(`${r.name}: stopping: ${err.message}`));
        o.running?.delete(r);
      }
    }
  }
  return results;
}

/** One registry under test: its client, its counting proxy (S3), what was measured. */
class Running {
  readonly name: TargetName;
  readonly target: Target;
  readonly proxy: CountingProxy | undefined;
  readonly agent = new http.Agent({ keepAlive: true, maxSockets: PUSH_CONCURRENCY });
  readonly ops: TagOpResult[] = [];
  readonly notes: string[] = [];
  manifest = Buffer.alloc(0);

  constructor(name: TargetName, target: Target, proxy: CountingProxy | undefined) {
    this.name = name;
    this.target = target;
    this.proxy = proxy;
  }

  call(method: string, path: string, body?: Buffer, headers: Record<string, string> = {}): Promise<Reply> {
    return request(this.agent, `${this.target.url}${path}`, method, body, headers);
  }

  pushTag(tag: string): Promise<Reply> {
    return this.call('PUT', `/v2/${REPO}/manifests/${tag}`, this.manifest, { 'content-type': MANIFEST_TYPE });
  }

  async stop(): Promise<void> {
    this.agent.destroy();
    try {
      await this.target.stop();
    } finally {
      await this.proxy?.close();
    }
  }
}

async function measure(running: Running[], o: TagScenarioOptions): Promise<TagResult[]> {
  const names = Array.from({ length: o.tags }, (_, i) => `t${String(i).padStart(6, '0')}`);
  // One small image: a config and a 1 KiB layer, the same for every registry.
  const layer = randomBytes(1024);
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [digestOf(layer)] } }));
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: MANIFEST_TYPE,
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digestOf(config), size: config.length },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: digestOf(layer), size: layer.length }],
  }));

  // --- push: N tags, 16 at once, one registry after the other; requests over the whole push --
  for (const r of running) {
    r.manifest = manifest;
    for (const blob of [layer, config]) {
      const post = await r.call('POST', `/v2/${REPO}/blobs/uploads/`);
      if (post.status !== 202) throw new Error(`${r.name}: POST upload: ${post.status}`);
      const loc = new URL(post.headers.location!, r.target.url);
      loc.searchParams.set('digest', digestOf(blob));
      const put = await r.call('PUT', loc.pathname + loc.search, blob, { 'content-type': 'application/octet-stream' });
      if (put.status !== 201) throw new Error(`${r.name}: PUT blob: ${put.status}`);
    }
    o.log(`${r.name}: tags scenario, pushing ${o.tags} tags`);
    const before = r.proxy?.mark();
    const usage = sample(r.target.pid);
    const t0 = performance.now();
    let errors = 0;
    let next = 0;
    let lastLog = Date.now();
    await Promise.all(Array.from({ length: PUSH_CONCURRENCY }, async () => {
      while (next < names.length) {
        const tag = names[next++]!;
        if ((await r.pushTag(tag)).status !== 201) errors++;
        if (Date.now() - lastLog > 10_000) {
          lastLog = Date.now();
          o.log(`${r.name}: ${next} of ${names.length} tags pushed`);
        }
      }
    }));
    const pushMs = performance.now() - t0;
    const used = usage.stop();
    const counts = before !== undefined ? r.proxy!.since(before) : undefined;
    r.ops.push({
      id: 'push', title: `push ${o.tags} tags (16 at once)`, ms: pushMs, runs: 1, errors,
      ...(used ? { cpuMsPerOp: (used.cpuCores * pushMs) / o.tags } : {}),
      ...(counts ? { requests: counts.total / o.tags, requestsByKind: perOp(counts.byKind, o.tags) } : {}),
    });
  }

  // --- reads, the registries taking turns -------------------------------------------------
  const half = names[Math.floor(names.length / 2)]!;
  const reads: Array<{ id: string; title: string; run: (r: Running, i: number) => Promise<Reply>; check: (r: Reply) => string | undefined }> = [
    { id: 'list-all', title: `tags/list, all ${o.tags}`, run: (r) => r.call('GET', `/v2/${REPO}/tags/list`), check: (x) => expectTags(x, o.tags) },
    { id: 'first-page', title: `tags/list?n=${PAGE}`, run: (r) => r.call('GET', `/v2/${REPO}/tags/list?n=${PAGE}`), check: (x) => expectTags(x, Math.min(PAGE, o.tags)) },
    {
      id: 'deep-page', title: `tags/list?n=${PAGE}&last=<middle>`, run: (r) => r.call('GET', `/v2/${REPO}/tags/list?n=${PAGE}&last=${half}`),
      check: (x) => expectTags(x, Math.min(PAGE, o.tags - names.indexOf(half) - 1)),
    },
    {
      id: 'head-by-tag', title: 'manifest HEAD by tag', run: (r, i) => r.call('HEAD', `/v2/${REPO}/manifests/${names[(i * 7919) % names.length]}`, undefined, { accept: MANIFEST_TYPE }),
      check: (x) => (x.status === 200 ? undefined : `HEAD ${x.status}`),
    },
    {
      id: 'get-by-tag', title: 'manifest GET by tag', run: (r, i) => r.call('GET', `/v2/${REPO}/manifests/${names[(i * 104729) % names.length]}`, undefined, { accept: MANIFEST_TYPE }),
      check: (x) => (x.status === 200 ? undefined : `GET ${x.status}`),
    },
  ];
  o.log(`tags scenario: reads, ${running.map((r) => r.name).join(' and ')} taking turns`);
  for (const read of reads) {
    // Medians of many: on a shared 2-core machine single requests scatter widely.
    const runs = read.id.endsWith('by-tag') ? o.runs * 10 : o.runs * 3;
    const times = new Map<Running, number[]>(running.map((r) => [r, []]));
    const failed = new Map<Running, number>(running.map((r) => [r, 0]));
    const marks = new Map(running.map((r) => [r, r.proxy?.mark()]));
    for (let i = 0; i < runs; i++) {
      // Alternate who goes first, so neither always runs right after the other.
      for (const r of i % 2 === 0 ? running : [...running].reverse()) {
        const t = performance.now();
        const reply = await read.run(r, i);
        times.get(r)!.push(performance.now() - t);
        const bad = read.check(reply);
        if (bad) {
          failed.set(r, failed.get(r)! + 1);
          if (failed.get(r) === 1) r.notes.push(`${read.id}: ${bad}`);
        } else if (i === 0 && read.id.endsWith('page') && (tagCount(reply) ?? 0) > PAGE) {
          r.notes.push(`${read.title} answers with all ${tagCount(reply)} tags (it does not paginate)`);
        }
      }
    }
    for (const r of running) {
      const mark = marks.get(r);
      const counts = mark !== undefined ? r.proxy!.since(mark) : undefined;
      r.ops.push({
        id: read.id, title: read.title, ms: median(times.get(r)!), runs, errors: failed.get(r)!,
        ...(counts ? { requests: counts.total / runs, requestsByKind: perOp(counts.byKind, runs) } : {}),
      });
    }
  }

  // --- fs: file system calls per operation, on a pass of its own under strace -----------
  for (const r of running) {
    if (storageOf(r.name) !== 'fs' || r.target.pid === undefined) continue;
    const traced: Array<[string, () => Promise<Reply>, number]> = [
      ['push', () => r.pushTag(`traced-${randomBytes(4).toString('hex')}`), 20],
      ...reads.map((x): [string, () => Promise<Reply>, number] => [x.id, () => x.run(r, 1), x.id === 'list-all' ? 3 : 20]),
    ];
    for (const [id, fn, times] of traced) {
      try {
        const counts = await syscalls(r.target.pid, async () => {
          for (let i = 0; i < times; i++) await fn();
        });
        const op = r.ops.find((x) => x.id === id)!;
        op.requests = counts.total / times;
        op.requestsByKind = perOp(counts.byKind, times);
      } catch (err) {
        r.notes.push(`${id}: system calls not counted: ${(err as Error).message}`);
        break;
      }
    }
  }
  return running.map((r) => {
    const bg = r.proxy?.background();
    return {
      target: r.name, storage: storageOf(r.name), tags: o.tags, ops: r.ops, notes: r.notes,
      ...(bg ? { backgroundPerSecond: bg.count / Math.max(1, bg.seconds) } : {}),
    };
  });
}

/**
 * What is wrong with a tags/list reply, if anything. More tags than a page asked for is not
 * wrong: docker-registry 2.8 ignores `n` and `last` and always answers with every tag; the
 * table notes it.
 */
function expectTags(r: Reply, count: number): string | undefined {
  if (r.status !== 200) return `status ${r.status}`;
  const tags = (JSON.parse(r.body.toString('utf8')) as { tags?: unknown[] }).tags;
  return (tags?.length ?? 0) >= count ? undefined : `${tags?.length} tags, expected ${count}`;
}

function tagCount(r: Reply): number | undefined {
  try {
    return (JSON.parse(r.body.toString('utf8')) as { tags?: unknown[] }).tags?.length;
  } catch {
    return undefined;
  }
}

function perOp(byKind: Record<string, number>, n: number): Record<string, number> {
  return Object.fromEntries(Object.entries(byKind).map(([k, v]) => [k, +(v / n).toFixed(2)]));
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

function digestOf(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

function request(agent: http.Agent, url: string, method: string, body?: Buffer, headers: Record<string, string> = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, agent, headers: { ...headers, ...(body ? { 'content-length': String(body.length) } : {}) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

// --- counting file system calls -------------------------------------------------------------

/** Calls that ask the file system for something (names, directories, metadata), not data reads and writes. */
const FS_CALLS = 'trace=%file,getdents64';

/**
 * Runs `fn` while strace counts the file system calls of process `pid` and all its threads
 * (`strace -f -c`; needs ptrace permission over the process: kernel.yama.ptrace_scope 0, or
 * the same user's child).
 */
async function syscalls(pid: number, fn: () => Promise<void>): Promise<Counts> {
  const dir = await mkdtemp(join(tmpdir(), 'hoist-bench-strace-'));
  const out = join(dir, 'counts');
  const child = spawn('strace', ['-f', '-qq', '-c', '-e', FS_CALLS, '-o', out, '-p', String(pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  child.once('error', () => undefined);
  try {
    // Attached once the process names a tracer; -f attaches its threads with it.
    for (let i = 0; ; i++) {
      if (tracerOf(pid) !== 0) break;
      if (i > 100 || child.exitCode !== null) throw new Error(`strace did not attach: ${stderr.trim() || 'no output'}`);
      await sleep(20);
    }
    await sleep(100);
    await fn();
    child.kill('SIGINT');
    await exited;
    return parseStraceSummary(await readFile(out, 'utf8'));
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
}

function tracerOf(pid: number): number {
  return Number(/TracerPid:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
}

/** The table strace -c writes: "% time  seconds  usecs/call  calls  errors  syscall". */
function parseStraceSummary(text: string): Counts {
  const byKind: Record<string, number> = {};
  let total = 0;
  for (const line of text.split('\n')) {
    const m = /^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?([a-z0-9_]+)\s*$/.exec(line);
    if (!m || m[2] === 'total') continue;
    byKind[m[2]!] = Number(m[1]);
    total += Number(m[1]);
  }
  return { total, byKind };
}

// --- report -----------------------------------------------------------------------------------

/** Markdown: per storage, each operation's time and store requests, Hoist ÷ docker-registry. */
export function tagTables(results: readonly TagResult[]): string {
  if (results.length === 0) return '';
  const out: string[] = ['## Tags (issue 11)', ''];
  for (const storage of ['fs', 's3']) {
    const hoist = results.find((r) => r.storage === storage && r.target.startsWith('hoist'));
    const dr = results.find((r) => r.storage === storage && r.target.startsWith('docker-registry'));
    const any = hoist ?? dr;
    if (!any) continue;
    const unit = storage === 's3' ? 'S3 requests' : 'fs calls';
    out.push(`### ${storage}, ${any.tags} tags`, '',
      `| operation | Hoist ms | docker-registry ms | Hoist ÷ docker-registry | Hoist ${unit} | docker-registry ${unit} | Hoist CPU ms | docker-registry CPU ms |`,
      '|---|--:|--:|--:|--:|--:|--:|--:|');
    for (const op of any.ops) {
      const h = hoist?.ops.find((x) => x.id === op.id);
      const d = dr?.ops.find((x) => x.id === op.id);
      const ms = (x: TagOpResult | undefined) => (x ? `${x.ms >= 100 ? x.ms.toFixed(0) : x.ms.toFixed(1)}${x.errors ? ` (${x.errors} errors)` : ''}` : '–');
      const req = (x: TagOpResult | undefined) => (x?.requests === undefined ? '–' : x.requests >= 100 ? x.requests.toFixed(0) : x.requests.toFixed(1));
      const ratio = h && d && d.ms > 0 ? `${(h.ms / d.ms).toFixed(2)}x` : '–';
      const cpu = (x: TagOpResult | undefined) => (x?.cpuMsPerOp === undefined ? '–' : x.cpuMsPerOp.toFixed(1));
      out.push(`| ${op.title}${op.id === 'push' ? ' (requests and CPU per PUT)' : ''} | ${ms(h)} | ${ms(d)} | ${ratio} | ${req(h)} | ${req(d)} | ${cpu(h)} | ${cpu(d)} |`);
    }
    if (hoist?.backgroundPerSecond !== undefined) out.push('', `Hoist's background requests (lease polls, presence), left out above: ${hoist.backgroundPerSecond.toFixed(2)} a second.`);
    for (const r of [hoist, dr]) for (const n of r?.notes ?? []) out.push('', `${r!.target}: ${n}`);
    out.push('');
  }
  return out.join('\n');
}
