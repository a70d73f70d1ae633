import { spawn, spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/server.js';

/**
 * Smoke test of the macro bench (bench/macro/run.ts): a tiny quick run, two small scenarios
 * against Hoist and the sink, into a temporary directory; then the report files must be
 * there and well-formed: JSON with the machine, settings and one result per target and
 * scenario, a Markdown table with rows, and SVG charts that parse as XML with an <svg> root.
 * It checks that the bench works, not how fast anything is: speed targets belong in the
 * bench.
 *
 * The bench is compiled here (tsc -p bench/tsconfig.json, type-checked) into a temporary
 * directory, and everything but dist/src/ and dist/workers/ is copied into dist/: the bench's
 * own files and what it imports from outside src (test/helpers' S3 operation names), while the
 * shared dist/src/ that other test files run is left as global-setup built it.
 */

const SCENARIOS = ['monolithic', 'sweep-c1'];
const TARGETS = ['hoist', 'sink'];
const RUN_TIMEOUT_MS = 100_000;

let work: string;
let out: string;
let run: { code: number | null; stdout: string; stderr: string };

function runBench(args: string[]): Promise<typeof run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(REPO_ROOT, 'dist/bench/macro/run.js'), ...args], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      // No S3 or external settings from the developer's shell: this run needs neither.
      env: { ...process.env, HOIST_BENCH_S3_ENDPOINT: 'http://127.0.0.1:9' },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => { stdout += b.toString(); });
    child.stderr.on('data', (b: Buffer) => { stderr += b.toString(); });
    const timer = setTimeout(() => child.kill('SIGKILL'), RUN_TIMEOUT_MS);
    child.on('error', reject);
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
}

/**
 * Minimal XML well-formedness: one root element, every tag closed in order, attribute values
 * quoted, and no bare '<' or '&' in text. Enough to catch a broken SVG writer.
 */
function parseXml(text: string): { root: string; rootAttrs: string; elements: number } {
  const body = text.replace(/^<\?xml[^?]*\?>\s*/, '').trim();
  const stack: string[] = [];
  let root = '';
  let rootAttrs = '';
  let elements = 0;
  let pos = 0;
  const tagRe = /<(\/?)([A-Za-z][\w:.-]*)((?:\s+[\w:.-]+\s*=\s*(?:"[^"<]*"|'[^'<]*'))*)\s*(\/?)>/y;
  while (pos < body.length) {
    const lt = body.indexOf('<', pos);
    const textEnd = lt === -1 ? body.length : lt;
    const textPart = body.slice(pos, textEnd);
    if (/&(?!(?:amp|lt|gt|quot|apos|#\d+|#x[0-9a-f]+);)/i.test(textPart)) throw new Error(`bare & in text near ${pos}`);
    if (stack.length === 0 && textPart.trim() !== '') throw new Error(`text outside the root element near ${pos}`);
    if (lt === -1) break;
    tagRe.lastIndex = lt;
    const m = tagRe.exec(body);
    if (!m) throw new Error(`malformed tag at ${lt}: ${body.slice(lt, lt + 60)}`);
    const [, closing, name, attrs, selfClosing] = m;
    if (closing) {
      const open = stack.pop();
      if (open !== name) throw new Error(`</${name}> closes <${open ?? 'nothing'}>`);
    } else {
      if (stack.length === 0) {
        if (root) throw new Error('more than one root element');
        root = name!;
        rootAttrs = attrs!;
      }
      elements++;
      if (!selfClosing) stack.push(name!);
    }
    pos = tagRe.lastIndex;
  }
  if (stack.length) throw new Error(`unclosed <${stack.join('>, <')}>`);
  return { root, rootAttrs, elements };
}

describe('npm run bench -- --quick (smoke)', () => {
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'hoist-bench-smoke-'));
    out = join(work, 'results');
    const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
    const build = spawnSync(process.execPath, [tsc, '-p', 'bench/tsconfig.json', '--outDir', join(work, 'dist')], { cwd: REPO_ROOT, encoding: 'utf8' });
    if (build.status !== 0) throw new Error(`bench does not compile:\n${build.stdout}${build.stderr}`);
    for (const dir of readdirSync(join(work, 'dist'))) {
      if (dir !== 'src' && dir !== 'workers') cpSync(join(work, 'dist', dir), join(REPO_ROOT, 'dist', dir), { recursive: true });
    }
    run = await runBench(['--quick', '--no-build', '--targets', TARGETS.join(','), '--scenario', SCENARIOS.join(','), '--out', out]);
  }, RUN_TIMEOUT_MS + 60_000);

  afterAll(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('exits 0 and shows progress', () => {
    expect(run.code, `${run.stderr.slice(-3000)}`).toBe(0);
    expect(run.stderr).toMatch(/hoist: \d+ x 1 MiB monolithic at c16: [\d.]+ MiB\/s/);
  });

  it('writes a JSON report with the machine, settings and every result', () => {
    const files = readdirSync(out);
    const stamped = files.filter((f) => /^\d{4}-\d\d-\d\dT[\d-]+Z\.json$/.test(f));
    expect(stamped).toHaveLength(1);
    const report = JSON.parse(readFileSync(join(out, stamped[0]!), 'utf8'));
    expect(JSON.parse(readFileSync(join(out, 'latest.json'), 'utf8'))).toEqual(report);
    expect(report.machine).toMatchObject({ node: process.version, cores: expect.any(Number) });
    expect(report.settings.quick).toBe(true);
    expect(report.settings.scenarios.map((s: { id: string }) => s.id)).toEqual(SCENARIOS);
    expect(report.hashes.sha256MiBps).toBeGreaterThan(0);
    expect(report.hashes.md5MiBps).toBeGreaterThan(0);
    expect(report.targets.map((t: { name: string }) => t.name)).toEqual(TARGETS);
    expect(report.results).toHaveLength(TARGETS.length * SCENARIOS.length);
    for (const r of report.results) {
      expect(r).toMatchObject({ errors: 0, target: expect.any(String), scenario: expect.any(String), title: expect.any(String) });
      expect(r.ok).toBeGreaterThan(0);
      expect(r.mibPerSec).toBeGreaterThan(0);
      expect(r.p99Ms).toBeGreaterThanOrEqual(r.p50Ms);
      expect(r.usage.peakRssMiB).toBeGreaterThan(0);
      expect(r.vsSink).toBeGreaterThan(0);
      // What a GiB cost the server: its own CPU, all threads, user + sys.
      expect(r.cpuSecPerGiB).toBeGreaterThan(0);
      expect(r.usage.cpuUserSeconds + r.usage.cpuSysSeconds).toBeCloseTo(r.usage.cpuSeconds, 6);
    }
    const streamed = report.results.find((r: { target: string; scenario: string }) => r.target === 'hoist' && r.scenario === 'sweep-c1');
    expect(streamed.putP50Ms).toBeGreaterThan(0);
  });

  it('writes Markdown tables of MiB/s and of CPU per GiB, with a row per scenario', () => {
    const md = readFileSync(join(out, 'latest.md'), 'utf8');
    const titles: string[] = JSON.parse(readFileSync(join(out, 'latest.json'), 'utf8')).settings.scenarios.map((s: { title: string }) => s.title);
    const section = (heading: string): string[] => {
      const lines = md.split('\n');
      const at = lines.findIndex((l) => l.startsWith(`### ${heading}`));
      expect(at, heading).toBeGreaterThanOrEqual(0);
      const end = lines.findIndex((l, i) => i > at && l.startsWith('### '));
      return lines.slice(at, end < 0 ? undefined : end);
    };
    const speed = section('fs storage on the disk: MiB/s');
    const header = speed.find((l) => l.startsWith('| scenario |'));
    expect(header).toContain('hoist');
    expect(header).toContain('sink');
    const rows = speed.filter((l) => titles.some((t) => l.startsWith(`| ${t} |`)));
    expect(rows).toHaveLength(SCENARIOS.length);
    // | title | hoist: MiB/s (share of sink) | sink: MiB/s |
    for (const r of rows) expect(r).toMatch(/^\|[^|]+\|\s*[\d.]+ \(\d+%\)\s*\|\s*[\d.]+\s*\|$/);
    // | title | hoist: CPU s per GiB |  (the sink is no registry: no CPU column)
    const cpu = section('fs storage on the disk: server CPU seconds per GiB').filter((l) => titles.some((t) => l.startsWith(`| ${t} |`)));
    expect(cpu).toHaveLength(SCENARIOS.length);
    for (const r of cpu) expect(r).toMatch(/^\|[^|]+\|\s*[\d.]+\s*\|$/);
    // and the detailed table: a row per target and scenario
    for (const t of titles) for (const target of TARGETS) expect(md).toContain(`| ${target} | ${t} | `);
  });

  it('writes SVG charts that are well-formed XML with an <svg> root', () => {
    const svgs = readdirSync(out).filter((f) => f.endsWith('.svg'));
    expect(svgs).toEqual(expect.arrayContaining(['latest-sweep-fs.svg', 'latest-scenarios-fs.svg', 'latest-cpu-fs.svg']));
    for (const f of svgs) {
      const xml = parseXml(readFileSync(join(out, f), 'utf8'));
      expect(xml.root, f).toBe('svg');
      expect(xml.rootAttrs, f).toContain('xmlns="http://www.w3.org/2000/svg"');
      expect(xml.elements, f).toBeGreaterThan(10);
    }
    const sweep = readFileSync(join(out, 'latest-sweep-fs.svg'), 'utf8');
    expect(sweep).toContain('<circle');
  });

  it('(the XML check itself rejects broken documents)', () => {
    expect(parseXml('<svg xmlns="x"><g><text>a &amp; b</text></g></svg>').root).toBe('svg');
    expect(() => parseXml('<svg><g></svg>')).toThrow();
    expect(() => parseXml('<svg><text>a & b</text></svg>')).toThrow();
    expect(() => parseXml('<svg></svg><svg></svg>')).toThrow();
    expect(() => parseXml('<svg width=1></svg>')).toThrow();
  });
});
