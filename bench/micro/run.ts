import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { s3EndpointFromEnv, unreachable } from '../macro/s3.js';
import { machine, type MicroReport } from './common.js';

/**
 * `npm run bench:micro`: runs every micro bench (they mirror src/), each in a process of its
 * own so one's threads and heap don't colour the next, and writes bench/results/
 * <timestamp>-micro.{json,md} plus latest-micro.{json,md}.
 *
 *   engine/hash-pool      pinned node:crypto vs hash-wasm state passing; SAB vs moved vs copied buffers
 *   engine/upload-write   part assembly: 64 KiB reads through UploadWrite, per slab size
 *   http/frontend           uWebSockets.js vs node:http, chunked and Content-Length bodies
 *   storage/s3-writer       one S3 writer, per checksum configuration (when S3 answers)
 *
 *   npm run bench:micro -- [--quick] [--only hash-pool,upload-write] [--out DIR]
 */

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const HERE = dirname(fileURLToPath(import.meta.url));

interface Bench { id: string; file: string; args: string[]; quickArgs: string[]; needsS3?: boolean }

const BENCHES: Bench[] = [
  { id: 'hash-pool', file: 'engine/hash-pool.js', args: ['--size-mib', '1024'], quickArgs: ['--size-mib', '256'] },
  { id: 'upload-write', file: 'engine/upload-write.js', args: ['--size-mib', '1024'], quickArgs: ['--size-mib', '256'] },
  { id: 'frontend', file: 'http/frontend.js', args: ['--size-mib', '1024', '--runs', '3'], quickArgs: ['--size-mib', '256', '--runs', '1'] },
  { id: 's3-writer', file: 'storage/s3-writer.js', args: ['--size-mib', '1024', '--runs', '2'], quickArgs: ['--size-mib', '128', '--runs', '1'], needsS3: true },
];

const f = (n: unknown, d = 0): string => (typeof n === 'number' ? n.toFixed(d) : '–');

function table(r: MicroReport): string {
  const extra = [...new Set(r.results.flatMap((x) => Object.keys(x)))]
    .filter((k) => ['workersUsed', 'socketPauses'].includes(k));
  const row = (cells: string[]): string => `| ${cells.join(' | ')} |`;
  return [
    row(['measured', 'MiB/s', 'main thread busy', 'CPU cores', ...extra]),
    row(['---', '--:', '--:', '--:', ...extra.map(() => '--:')]),
    ...r.results.map((x) => row([
      `${x.label}${typeof x.run === 'number' && x.run > 1 ? ` (run ${x.run})` : ''}`, f(x.mibPerSecond),
      x.mainThreadBusy === undefined ? '–' : `${(x.mainThreadBusy * 100).toFixed(0)}%`, f(x.cpuCores, 2), ...extra.map((k) => f(x[k])),
    ])),
  ].join('\n');
}

async function main(): Promise<void> {
  const { values: v } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      only: { type: 'string' },
      out: { type: 'string', default: join(ROOT, 'bench/results') },
    },
  });
  const only = v.only?.split(',');
  const s3 = s3EndpointFromEnv();
  const s3Down = await unreachable(s3.endpoint);
  const tmp = mkdtempSync(join(os.tmpdir(), 'hoist-micro-'));
  const reports: MicroReport[] = [];
  const notes: string[] = [];
  try {
    for (const b of BENCHES.filter((x) => !only || only.includes(x.id))) {
      if (b.needsS3 && s3Down) { notes.push(`${b.id}: skipped, no S3 endpoint (${s3Down}); start one with: bash scripts/rgw-start.sh`); continue; }
      const json = join(tmp, `${b.id}.json`);
      const args = [join(HERE, b.file), ...(v.quick ? b.quickArgs : b.args), '--json', json, ...(b.needsS3 ? ['--endpoint', s3.endpoint] : [])];
      console.error(`== ${b.id}: node ${args.map((a) => a.replace(`${ROOT}/`, '')).join(' ')}`);
      const r = spawnSync(process.execPath, args, {
        stdio: ['ignore', 'inherit', 'inherit'],
        env: { ...process.env, AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' },
      });
      if (r.status !== 0) { notes.push(`${b.id}: failed (exit ${r.status ?? r.signal})`); continue; }
      reports.push(JSON.parse(readFileSync(json, 'utf8')) as MicroReport);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  const date = new Date().toISOString();
  const m = machine();
  const doc = { date, machine: m, quick: v.quick, benches: reports, notes };
  const md = [
    `# Hoist micro benchmarks, ${date}${v.quick ? ' (--quick)' : ''}`,
    '',
    `${m.cpuModel} (${m.cores} cores), ${m.memoryGiB} GiB RAM, Node ${m.node}, load average ${m.loadAverage.join(' ')}.`,
    '',
    ...reports.flatMap((r) => [
      `## ${r.bench}`, '',
      `Settings: ${Object.entries(r.settings).map(([k, x]) => `${k} ${typeof x === 'object' ? JSON.stringify(x) : String(x)}`).join(', ')}.`, '',
      table(r), '', ...(r.notes ?? []).map((n) => `- ${n}`), ...(r.notes?.length ? [''] : []),
    ]),
    ...(notes.length ? ['## Notes', '', ...notes.map((n) => `- ${n}`), ''] : []),
  ].join('\n');
  mkdirSync(v.out!, { recursive: true });
  const stamp = date.replace(/[:.]/g, '-');
  writeFileSync(join(v.out!, `${stamp}-micro.json`), `${JSON.stringify(doc, null, 2)}\n`);
  writeFileSync(join(v.out!, `${stamp}-micro.md`), md);
  copyFileSync(join(v.out!, `${stamp}-micro.json`), join(v.out!, 'latest-micro.json'));
  copyFileSync(join(v.out!, `${stamp}-micro.md`), join(v.out!, 'latest-micro.md'));
  console.log(`\n${md}`);
  if (notes.some((n) => n.includes('failed'))) process.exitCode = 1;
}

await main();
