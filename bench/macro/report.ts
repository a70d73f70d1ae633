import { barChart, colorOf, lineChart } from './chart.js';
import { formatBytes, type PhaseResult } from './loadgen.js';
import { describeSizes, type PartLayout, type StoreTraffic } from './s3.js';
import type { Usage } from './targets.js';

/**
 * The macro bench's report: the JSON document the runner writes, and the Markdown tables and
 * SVG charts made from it. Figures are MiB/s and ratios to the sink (the load generator's
 * ceiling on this machine), to docker-registry on the same storage, and to one core's
 * SHA-256, because absolute figures on a shared machine drift from run to run.
 */

export interface ScenarioInfo {
  id: string;
  title: string;
  kind: 'push' | 'pull';
  mode: string;
  count: number;
  sizeBytes: number;
  concurrency: number;
  chunkBytes: number;
  /** Point on the concurrency sweep chart. */
  sweep?: number;
  /** Shown in the scenario bar chart and the summary tables. */
  main?: boolean;
}

export interface Row extends PhaseResult {
  target: string;
  /** fs, s3, none (the sink) or external (--url). */
  storage: string;
  scenario: string;
  title: string;
  usage?: Usage;
  /** Server CPU seconds (user + sys, all threads) per GiB of blob bytes moved. */
  cpuSecPerGiB?: number;
  /**
   * The disk's durable write speed for the scenario's bytes, measured right before it (fs
   * targets on the disk, scenarios with a disk limit): what the push is held against.
   */
  diskMiBps?: number;
  /**
   * tmpfs pushes: CPU s per GiB of writing the scenario's bytes into the tmpfs page cache,
   * measured right before (disk.ts pageCacheCpuSecPerGiB); part of the floor.
   */
  pageCacheCpuSecPerGiB?: number;
  /** MiB/s over the sink's in the same scenario. */
  vsSink?: number;
  /** MiB/s over docker-registry's on the same storage in the same scenario. */
  vsReference?: number;
  /** CPU s/GiB over docker-registry's on the same storage in the same scenario. */
  cpuVsReference?: number;
  /** MiB/s over node:crypto SHA-256 on one core. */
  vsSha256?: number;
  /** S3 targets: how the scenario's (last) blob is stored. */
  parts?: PartLayout;
  /** S3 targets: what the scenario sent to the store and read back (counting proxy). */
  store?: StoreTraffic;
  /** S3 targets: MiB/s over the store row's (store-s3) in the same scenario. */
  vsStore?: number;
}

export interface Report {
  date: string;
  machine: Record<string, unknown>;
  git: { commit?: string | undefined; dirty: boolean; hoistCommit?: string | undefined };
  settings: Record<string, unknown> & { quick: boolean; scenarios: ScenarioInfo[] };
  hashes: { sha256MiBps: number; md5MiBps: number; bytes: number };
  targets: Array<{ name: string; storage: string; settings?: Record<string, unknown> }>;
  notes: string[];
  results: Row[];
}

/** Fills in the ratio fields of every row. */
export function addRatios(report: Report, reference: (target: string) => string | undefined): void {
  const rows = report.results;
  for (const r of rows) {
    const sink = rows.find((x) => x.target === 'sink' && x.scenario === r.scenario);
    if (sink && sink.mibPerSec > 0 && r.ok > 0) r.vsSink = r.mibPerSec / sink.mibPerSec;
    const refName = reference(r.target);
    const ref = refName ? rows.find((x) => x.target === refName && x.scenario === r.scenario) : undefined;
    if (ref && ref.mibPerSec > 0 && r.ok > 0) r.vsReference = r.mibPerSec / ref.mibPerSec;
    if (ref?.cpuSecPerGiB && r.cpuSecPerGiB !== undefined && r.ok > 0) r.cpuVsReference = r.cpuSecPerGiB / ref.cpuSecPerGiB;
    if (report.hashes.sha256MiBps > 0) r.vsSha256 = r.mibPerSec / report.hashes.sha256MiBps;
    const store = r.storage === 's3' && r.target !== STORE_ROW ? rows.find((x) => x.target === STORE_ROW && x.scenario === r.scenario) : undefined;
    if (store && store.mibPerSec > 0 && r.ok > 0) r.vsStore = r.mibPerSec / store.mibPerSec;
  }
}

/** The S3 targets' limit row (targets.ts): the store's own speed. */
const STORE_ROW = 'store-s3';

const f = (n: number | undefined, d = 0): string => (n === undefined || Number.isNaN(n) ? '–' : n.toFixed(d));
const pct = (n: number | undefined): string => (n === undefined ? '–' : `${(n * 100).toFixed(0)}%`);

function targetsOf(report: Report, storage: string): string[] {
  return report.targets.filter((t) => t.storage === storage).map((t) => t.name);
}

function hasSink(report: Report): boolean {
  return report.targets.some((t) => t.name === 'sink');
}

/** What a pivot table shows: MiB/s (with the share of the sink), or server CPU s per GiB. */
type Metric = 'mibps' | 'cpu';

/** The storage kinds in the order the report shows them, with their headings. */
const STORAGES: ReadonlyArray<readonly [string, string]> = [
  ['fs', 'fs storage on the disk'],
  ['tmpfs', 'fs storage on tmpfs (the registries without the disk)'],
  ['s3', 'S3 storage'],
  ['external', 'External registry'],
];

/**
 * Scenario × target, plus Hoist ÷ docker-registry where both ran. MiB/s cells carry the share
 * of the sink; CPU cells are seconds per GiB (lower is better). On disk storage the MiB/s
 * table ends with the limit row: the disk's durable write speed measured before each target's
 * push (disk.ts), and that push as a share of it.
 */
function pivot(report: Report, storage: string, reference: (t: string) => string | undefined, metric: Metric): string {
  const withSink = metric === 'mibps' && hasSink(report);
  const names = [...targetsOf(report, storage), ...(withSink ? ['sink'] : [])];
  const scenarios = report.settings.scenarios.filter((s) => report.results.some((r) => r.scenario === s.id && names.includes(r.target) && r.target !== 'sink'));
  if (scenarios.length === 0) return '';
  const pairs = names.map((n) => [n, reference(n)] as const).filter((p): p is readonly [string, string] => p[1] !== undefined && names.includes(p[1]));
  // On S3, each registry against the store's own speed too.
  if (names.includes(STORE_ROW)) for (const n of names) if (n !== STORE_ROW && n !== 'sink') pairs.push([n, STORE_ROW] as const);
  const head = ['scenario', ...names, ...pairs.map(([a, b]) => `${a} ÷ ${b}`)];
  const lines = [`| ${head.join(' | ')} |`, `|---|${head.slice(1).map(() => '--:').join('|')}|`];
  const rowOf = (n: string, id: string): Row | undefined => report.results.find((x) => x.target === n && x.scenario === id);
  for (const s of scenarios) {
    const cell = (n: string): string => {
      const r = rowOf(n, s.id);
      if (!r) return '–';
      if (r.ok === 0) return `failed (${r.errors} errors)`;
      if (metric === 'cpu') return f(r.cpuSecPerGiB, 2);
      if (n === 'sink') return f(r.mibPerSec);
      const inBrackets = [...(r.vsSink !== undefined ? [pct(r.vsSink)] : []), ...(r.errors ? [`${r.errors} errors`] : [])];
      return `${f(r.mibPerSec)}${inBrackets.length ? ` (${inBrackets.join(', ')})` : ''}`;
    };
    const ratio = ([a, b]: readonly [string, string]): string => {
      const r = rowOf(a, s.id);
      const v = metric === 'cpu' ? (b === STORE_ROW ? undefined : r?.cpuVsReference) : b === STORE_ROW ? r?.vsStore : r?.vsReference;
      return v === undefined ? '–' : `${v.toFixed(2)}x`;
    };
    lines.push(`| ${s.title} | ${names.map(cell).join(' | ')}${pairs.length ? ` | ${pairs.map(ratio).join(' | ')}` : ''} |`);
  }
  if (metric === 'mibps') {
    for (const s of scenarios) {
      const limited = names.map((n) => rowOf(n, s.id)).filter((r): r is Row => r?.diskMiBps !== undefined);
      if (limited.length === 0) continue;
      const cell = (n: string): string => {
        const r = rowOf(n, s.id);
        return r?.diskMiBps === undefined ? '–' : `${f(r.diskMiBps)} (push ${pct(r.mibPerSec / r.diskMiBps)})`;
      };
      lines.push(`| limit: the disk, ${formatBytes(s.count * s.sizeBytes)} written and fdatasync'ed before ${s.title} | ${names.map(cell).join(' | ')}${pairs.length ? ` | ${pairs.map(() => '').join(' | ')}` : ''} |`);
    }
  }
  return lines.join('\n');
}

function detail(rows: Row[]): string {
  const x = (v: number | undefined): string => (v === undefined ? '–' : `${v.toFixed(2)}x`);
  return [
    '| target | scenario | MiB/s | req/s | p50 ms | p99 ms | PUT ?digest= p50 ms | errors | peak RSS MiB | CPU cores | CPU s/GiB (user + sys) | vs sink | vs docker-registry | CPU vs docker-registry | vs SHA-256 core |',
    '|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|',
    ...rows.map((r) => `| ${r.target} | ${r.title} | ${f(r.mibPerSec, 1)} | ${f(r.reqPerSec, 1)} | ${f(r.p50Ms)} | ${f(r.p99Ms)} | ${f(r.putP50Ms)} | ` +
      `${r.errors} | ${f(r.usage?.peakRssMiB)} | ${f(r.usage?.cpuCores, 2)} | ` +
      `${r.cpuSecPerGiB === undefined ? '–' : `${f(r.cpuSecPerGiB, 2)} (${f(perGiB(r, r.usage?.cpuUserSeconds), 2)} + ${f(perGiB(r, r.usage?.cpuSysSeconds), 2)})`} | ` +
      `${pct(r.vsSink)} | ${x(r.vsReference)} | ${x(r.cpuVsReference)} | ${x(r.vsSha256)} |`),
  ].join('\n');
}

function perGiB(r: Row, seconds: number | undefined): number | undefined {
  return seconds === undefined || r.bytes === 0 ? undefined : seconds / (r.bytes / 1024 ** 3);
}

/** The issue's spot figures: commit latency, multipart layout, memory under load. */
export function spotTables(report: Report): string {
  const out: string[] = [];
  const registries = report.targets.filter((t) => t.name !== 'sink').map((t) => t.name);
  const row = (t: string, id: string): Row | undefined => report.results.find((r) => r.target === t && r.scenario === id);
  const sc = (id: string) => report.settings.scenarios.find((s) => s.id === id);
  // A single 64 MiB upload (the c1 sweep point: p50 of its blobs) and the 1 GiB one.
  const cols = [sc('sweep-c1'), sc('stream-one')].filter((c): c is ScenarioInfo => c !== undefined);
  const putRows = registries.filter((t) => cols.some((c) => row(t, c.id)?.putP50Ms !== undefined));
  if (putRows.length) {
    out.push('### `PUT ?digest=` latency', '',
      'The closing PUT of a streamed upload (no body): the registry checks the digest and makes the blob durable and visible. ' +
      'p50 over the scenario\'s blobs, uploaded one at a time.', '',
      `| target | ${cols.map((c) => `${formatBytes(c.sizeBytes)} blob (${c.title})`).join(' | ')} |`, `|---|${cols.map(() => '--:').join('|')}|`,
      ...putRows.map((t) => `| ${t} | ${cols.map((c) => `${f(row(t, c.id)?.putP50Ms)} ms`).join(' | ')} |`), '');
  }
  const withParts = report.results.filter((r) => r.parts);
  if (withParts.length) {
    out.push('### S3 multipart layout', '',
      'Parts the registry had uploaded before the closing PUT (ListParts on the uploads in progress), and the stored ' +
      'blob\'s part count afterwards (its multipart ETag; 1 means a single-part object).', '',
      '| target | scenario | parts before the PUT | stored object | its parts |', '|---|---|---|--:|--:|',
      ...withParts.map((r) => {
        const p = r.parts!;
        const before = p.beforePut?.length ? p.beforePut.map((u) => `${u.partSizesBytes.length}: ${describeSizes(u.partSizesBytes)}`).join('; ') : 'no multipart upload';
        return `| ${r.target} | ${r.title} | ${before} | ${f(p.sizeBytes / 1024 ** 2, 1)} MiB | ${p.partCount} |`;
      }), '');
  }
  const engineGoals = engineGoalsTable(report);
  if (engineGoals) out.push(engineGoals);
  const s3Goals = s3GoalsTable(report);
  if (s3Goals) out.push(s3Goals);
  const traffic = report.results.filter((r) => r.store && r.ok > 0);
  if (traffic.length) {
    const mib = (b: number): string => f(b / 1024 ** 2, 1);
    out.push('### S3 traffic', '',
      'What each S3 target sent to the store and read back during the scenario (a counting proxy between it and the store): ' +
      'bytes on the wire both ways (also as a multiple of the blob bytes pushed or pulled), object GETs and all S3 requests.', '',
      '| target | scenario | sent to the store MiB | ÷ blob bytes | read back MiB | object GETs | requests | by operation |', '|---|---|--:|--:|--:|--:|--:|---|',
      ...traffic.map((r) => {
        const t = r.store!;
        const total = Object.values(t.requests).reduce((a, b) => a + b, 0);
        const ops = Object.entries(t.requests).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(', ');
        const base = r.bytes > 0 ? (r.scenario.startsWith('pull') ? t.receivedBytes : t.sentBytes) / r.bytes : undefined;
        return `| ${r.target} | ${r.title} | ${mib(t.sentBytes)} | ${base === undefined ? '–' : `${base.toFixed(2)}x`} | ${mib(t.receivedBytes)} | ${t.requests.GetObject ?? 0} | ${total} | ${ops} |`;
      }), '');
  }
  const rss = report.results.filter((r) => r.scenario === 'stream-big');
  if (rss.length) {
    out.push('### Memory under load', '', '| target | scenario | MiB/s | peak RSS MiB | CPU cores | errors |', '|---|---|--:|--:|--:|--:|',
      ...rss.map((r) => `| ${r.target} | ${r.title} | ${f(r.mibPerSec)} | ${f(r.usage?.peakRssMiB)} | ${f(r.usage?.cpuCores, 2)} | ${r.errors} |`), '');
  }
  return out.join('\n');
}

/**
 * The S3 figures issue 14 sets goals for, per S3 registry, each a ratio within this run:
 * streamed push against the store's own speed, one upload in 8 MiB PATCHes against the
 * streamed push and against the store's own 8 MiB parts one at a time (s3.ts storeRow), what
 * 1 MiB PATCHes send to the store, and pulls against docker-registry.
 */
function s3GoalsTable(report: Report): string | undefined {
  const regs = report.targets.filter((t) => t.storage === 's3' && t.name !== STORE_ROW).map((t) => t.name);
  const row = (t: string, id: string): Row | undefined => report.results.find((r) => r.target === t && r.scenario === id && r.ok > 0);
  const x = (v: number | undefined): string => (v === undefined || !Number.isFinite(v) ? '–' : `${v.toFixed(2)}x`);
  const ratio = (a: Row | undefined, b: Row | undefined): number | undefined => (a && b ? a.mibPerSec / b.mibPerSec : undefined);
  const lines = regs.map((t) => {
    const stream = row(t, 'stream-one');
    const p1 = row(t, 'patch-1m');
    const sent = p1?.store ? `${x(p1.store.sentBytes / p1.bytes)}, ${p1.store.requests.GetObject ?? 0} GETs, ${f(p1.store.receivedBytes / 1024 ** 2, 1)} MiB read` : '–';
    const ref = referenceOfS3(t);
    const p8 = row(t, 'patch-8m');
    return `| ${t} | ${x(stream?.vsStore)} | ${x(ratio(p8, stream))} | ${x(p8?.vsStore)} | ${sent} | ` +
      `${x(ref ? ratio(row(t, 'pull'), row(ref, 'pull')) : undefined)} | ${x(ref ? ratio(row(t, 'pull-one'), row(ref, 'pull-one')) : undefined)} |`;
  });
  if (regs.length === 0 || !report.results.some((r) => r.storage === 's3' && r.target !== STORE_ROW)) return undefined;
  return ['### S3 goals (issue 14)', '',
    'Ratios within this run. Goals for hoist-s3: streamed push at 0.85x the store row or more; one upload in 8 MiB PATCHes at ' +
    '0.8x its streamed push or more; 1 MiB PATCHes sending at most 2.2x the blob to the store with no re-reads; pulls at 1.2x docker-registry or more. ' +
    'The store row of the 8 MiB PATCHes sends each blob as such a client does, one 8 MiB part after another, each answered before the next: ' +
    'what the store itself allows that client.', '',
    '| target | streamed push ÷ store row | 8 MiB PATCHes ÷ streamed push | 8 MiB PATCHes ÷ store row (8 MiB parts one at a time) | 1 MiB PATCHes: sent ÷ blob, object GETs, read back | pull 16 at c16 ÷ docker-registry | pull 1 large ÷ docker-registry |',
    '|---|--:|--:|--:|---|--:|--:|', ...lines, ''].join('\n');
}

/**
 * The figures issue 16 sets goals for, each a ratio within this run: on tmpfs, the streamed
 * pushes' CPU per GiB and MiB/s against docker-registry's; on the disk, the durable large
 * push against the disk's own fdatasync'ed write measured just before it; pulls' CPU per GiB.
 */
function engineGoalsTable(report: Report): string | undefined {
  const row = (t: string, id: string): Row | undefined => report.results.find((r) => r.target === t && r.scenario === id && r.ok > 0);
  const x = (v: number | undefined): string => (v === undefined || !Number.isFinite(v) ? '–' : `${v.toFixed(2)}x`);
  const lines: string[] = [];
  for (const t of ['hoist-tmpfs', 'hoist-uws-tmpfs', 'hoist', 'hoist-uws']) {
    if (!report.targets.some((g) => g.name === t)) continue;
    const one = row(t, 'stream-one');
    const many = row(t, 'stream-many');
    const pull = row(t, 'pull');
    if (!one && !many && !pull) continue;
    const durable = one?.diskMiBps === undefined ? undefined : one.mibPerSec / one.diskMiBps;
    lines.push(`| ${t} | ${x(one?.cpuVsReference)} | ${x(one?.vsReference)} | ${x(many?.cpuVsReference)} | ${x(many?.vsReference)} | ` +
      `${x(durable)} | ${pull?.cpuSecPerGiB === undefined ? '–' : f(pull.cpuSecPerGiB, 2)} (${x(pull?.cpuVsReference)}) |`);
  }
  if (lines.length === 0) return undefined;
  const floors = ['stream-one', 'stream-many'].map((id) => floorOf(report, id));
  if (floors.some((v) => v !== undefined)) {
    const cell = (v: { secPerGiB: number; vsReference: number } | undefined): string => (v === undefined ? '–' : `${x(v.vsReference)} (${f(v.secPerGiB, 2)} s/GiB)`);
    lines.push(`| floor: the sink + SHA-256 + the tmpfs copy | ${cell(floors[0])} | – | ${cell(floors[1])} | – | – | – |`);
  }
  return ['### Engine goals (issue 16)', '',
    'Ratios within this run, each Hoist target over docker-registry on the same storage. Goals for the tmpfs targets, both ' +
    'front ends: CPU per GiB at most 0.4x and MiB/s at least 2.5x, for the large streamed push and the sixteen at once; on ' +
    'the disk, the durable large push at 0.9x or more of the disk\'s own fdatasync\'ed write just before it.', '',
    '| target | large push: CPU ÷ docker-registry | large push: MiB/s ÷ docker-registry | 16 at once: CPU ÷ | 16 at once: MiB/s ÷ | large push ÷ the disk | pull 16: CPU s/GiB (÷ docker-registry) |',
    '|---|--:|--:|--:|--:|--:|--:|', ...lines, ''].join('\n');
}

/**
 * The least CPU per GiB any registry built like Hoist spends on a tmpfs push in this run:
 * receiving the body (the sink's CPU in the same scenario), hashing it once (SHA-256 on one
 * core), and copying it into the page cache (the median of the tmpfs targets' copies measured
 * before their pushes); and that over docker-registry-tmpfs's CPU per GiB.
 */
function floorOf(report: Report, id: string): { secPerGiB: number; vsReference: number } | undefined {
  const row = (t: string): Row | undefined => report.results.find((r) => r.target === t && r.scenario === id && r.ok > 0);
  const sink = row('sink')?.cpuSecPerGiB;
  const reference = row('docker-registry-tmpfs')?.cpuSecPerGiB;
  const copies = report.results.filter((r) => r.scenario === id && r.pageCacheCpuSecPerGiB !== undefined).map((r) => r.pageCacheCpuSecPerGiB!).sort((a, b) => a - b);
  if (sink === undefined || !reference || copies.length === 0 || !(report.hashes.sha256MiBps > 0)) return undefined;
  const secPerGiB = sink + 1024 / report.hashes.sha256MiBps + copies[Math.floor(copies.length / 2)]!;
  return { secPerGiB, vsReference: secPerGiB / reference };
}

function referenceOfS3(t: string): string | undefined {
  return t === 'hoist-s3' ? 'docker-registry-s3' : undefined;
}

export function machineLine(report: Report): string {
  const m = report.machine;
  return `${String(m.cpuModel)} (${String(m.cores)} cores), ${String(m.memoryGiB)} GiB RAM, Linux ${String(m.kernel)}, Node ${String(m.node)}` +
    `${m.dockerRegistry ? `, docker-registry ${String(m.dockerRegistry).replace(/^\S+\s+/, '')}` : ''}` +
    `. node:crypto on one core: SHA-256 ${f(report.hashes.sha256MiBps)} MiB/s, MD5 ${f(report.hashes.md5MiBps)} MiB/s.`;
}

/** The summary tables (MiB/s, then CPU per GiB, per storage), as the README shows them. */
export function summaryMarkdown(report: Report, reference: (t: string) => string | undefined): string {
  const parts: string[] = [];
  for (const [storage, name] of STORAGES) {
    const heading = storage === 's3' ? `${name} (${String(report.settings.s3Endpoint ?? '')})` : name;
    const t = pivot(report, storage, reference, 'mibps');
    if (t) parts.push(`### ${heading}: MiB/s\n\n${t}\n`);
    const c = pivot(report, storage, reference, 'cpu');
    if (c && report.results.some((r) => r.storage === storage && r.cpuSecPerGiB !== undefined)) {
      parts.push(`### ${heading}: server CPU seconds per GiB\n\nuser + sys of the server process, all its threads, per GiB of blob bytes; lower is better.\n\n${c}\n`);
    }
  }
  return parts.join('\n');
}

export function markdown(report: Report, reference: (t: string) => string | undefined, charts: string[]): string {
  return [
    `# Hoist macro benchmark, ${report.date}${report.settings.quick ? ' (--quick)' : ''}`,
    '',
    machineLine(report),
    `Git ${report.git.commit?.slice(0, 12) ?? 'unknown'}${report.git.dirty ? ' (with local changes)' : ''}${report.git.hoistCommit ? `; the hoist targets ran ${report.git.hoistCommit.slice(0, 12)} (HOIST_BENCH_CLI)` : ''}.`,
    'Load generator and servers share this machine (bench/macro/loadgen.ts, node:http keep-alive client).',
    '',
    'Cells are MiB/s of blob bytes, and in brackets that as a share of the sink in the same scenario: the sink receives and ' +
      'discards, so it is the most the load generator manages here. `A ÷ B` is A\'s MiB/s (or CPU per GiB) over B\'s. ' +
      `Load average at the start ${String((report.machine.loadAverageAtStart as number[] | undefined)?.join(', ') ?? '?')}, ` +
      `at the end ${String((report.machine.loadAverageAtEnd as number[] | undefined)?.join(', ') ?? '?')} (1, 5, 15 min): other work on the machine colours every figure.`,
    '',
    summaryMarkdown(report, reference),
    spotTables(report),
    ...(charts.length ? ['### Charts', '', ...charts.map((c) => `![${c}](${c})`), ''] : []),
    '### All results',
    '',
    detail(report.results),
    '',
    ...(report.notes.length ? ['### Notes', '', ...report.notes.map((n) => `- ${n}`), ''] : []),
  ].join('\n');
}

/** SVG charts per storage kind: MiB/s against concurrency, MiB/s per main scenario, and CPU per GiB. */
export function charts(report: Report): Array<{ name: string; svg: string }> {
  const out: Array<{ name: string; svg: string }> = [];
  const sweep = report.settings.scenarios.filter((s) => s.sweep !== undefined);
  const main = report.settings.scenarios.filter((s) => s.main);
  for (const storage of ['fs', 'tmpfs', 's3', 'external']) {
    const names = targetsOf(report, storage);
    if (names.length === 0) continue;
    const mibps = (t: string, id: string): number | undefined => {
      const r = report.results.find((x) => x.target === t && x.scenario === id);
      return r && r.ok > 0 ? r.mibPerSec : undefined;
    };
    // A sink far above every registry (GiB/s against S3's MiB/s) would flatten their lines:
    // then it is named in the subtitle instead of drawn.
    const ids = [...sweep, ...main].map((s) => s.id);
    const top = (ts: string[]): number => Math.max(0, ...ts.flatMap((t) => ids.map((id) => mibps(t, id) ?? 0)));
    const drawSink = hasSink(report) && top(['sink']) <= 2.5 * top(names);
    const all = [...names, ...(drawSink ? ['sink'] : [])];
    const label = storage === 'fs' ? 'fs storage on the disk' : storage === 'tmpfs' ? 'fs storage on tmpfs' : storage === 's3' ? 'S3 storage' : 'external registry';
    const sinkRange = (ids: string[]): string => {
      const v = ids.map((id) => mibps('sink', id)).filter((x): x is number => x !== undefined);
      return !hasSink(report) || drawSink || v.length === 0 ? ''
        : `; the sink (not drawn) took ${Math.round(Math.min(...v))}–${Math.round(Math.max(...v))} MiB/s`;
    };
    if (sweep.length) {
      const first = sweep[0]!;
      out.push({
        name: `sweep-${storage}`,
        svg: lineChart({
          title: `Streamed push throughput against concurrency, ${label}`,
          subtitle: `${Math.round(first.sizeBytes / 1024 ** 2)} MiB blobs, one PATCH each; ${String(report.machine.cores)} cores${report.settings.quick ? ', --quick' : ''}` +
            sinkRange(sweep.map((s) => s.id)),
          xLabel: 'concurrent uploads',
          yLabel: 'MiB/s',
          xTicks: [...new Set(sweep.map((s) => s.sweep!))].sort((a, b) => a - b),
          series: all.map((t, i) => ({
            name: t,
            color: colorOf(t, i),
            dashed: t === 'sink' || t === STORE_ROW,
            points: sweep.flatMap((s) => { const v = mibps(t, s.id); return v === undefined ? [] : [[s.sweep!, v] as [number, number]]; }),
          })),
        }),
      });
    }
    const cpu = (t: string, id: string): number | undefined => {
      const r = report.results.find((x) => x.target === t && x.scenario === id);
      return r && r.ok > 0 ? r.cpuSecPerGiB : undefined;
    };
    const cpuGroups = main.filter((s) => names.some((t) => cpu(t, s.id) !== undefined));
    if (cpuGroups.length) {
      out.push({
        name: `cpu-${storage}`,
        svg: barChart({
          title: `Server CPU per GiB, ${label}`,
          subtitle: `CPU seconds (user + sys, all threads of the server) per GiB of blob bytes; lower is better${report.settings.quick ? '; --quick' : ''}`,
          yLabel: 'CPU s per GiB',
          groups: cpuGroups.map((s) => s.title),
          series: names.map((t, i) => ({ name: t, color: colorOf(t, i), values: cpuGroups.map((s) => cpu(t, s.id)) })),
        }),
      });
    }
    const groups = main.filter((s) => names.some((t) => mibps(t, s.id) !== undefined));
    out.push({
      name: `scenarios-${storage}`,
      svg: barChart({
        title: `Throughput per scenario, ${label}`,
        subtitle: `MiB/s${drawSink ? '; the sink is the load generator\'s ceiling' : ''}${report.settings.quick ? '; --quick' : ''}${sinkRange(groups.map((s) => s.id))}`,
        yLabel: 'MiB/s',
        groups: groups.map((s) => s.title),
        series: all.map((t, i) => ({ name: t, color: colorOf(t, i), dashed: t === 'sink' || t === STORE_ROW, values: groups.map((s) => mibps(t, s.id)) })),
      }),
    });
  }
  return out;
}
