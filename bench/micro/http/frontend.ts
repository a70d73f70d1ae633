// Run: npm run bench:micro, or after `npx tsc -p bench`:
//   node dist/bench/micro/http/frontend.js [--size-mib 1024] [--runs 3] [--json out.json]
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import type { BodySink, FrontEnd } from '../../../src/http/adapter.js';
import { createFrontEnd, UWS_MAX_CONTENT_LENGTH } from '../../../src/http/frontend.js';
import { machine, writeReport, type MicroResult } from '../common.js';

/**
 * Pushes one streamed upload through each front end into a sink that discards, and prints
 * MiB/s: once chunked (as docker sends a PATCH) and once with a Content-Length (a monolithic
 * PUT), the latter at most 999,999,999 bytes because uWS v20.30 drops larger Content-Lengths
 * (src/http/frontend.ts, UWS_MAX_CONTENT_LENGTH).
 * The client runs in a worker thread so it does not share the server's event loop; on a
 * 2-core machine they still share the CPU.
 */

const MiB = 1024 * 1024;

const { values } = parseArgs({
  options: {
    'size-mib': { type: 'string', default: '1024' },
    runs: { type: 'string', default: '3' },
    json: { type: 'string' },
  },
});
const sizeBytes = Number(values['size-mib']) * MiB;
const runs = Number(values.runs);

/** node:http client: one PUT of `size` bytes written from a 1 MiB buffer, honouring drain. Without a content-length node:http sends it chunked. */
const clientSource = `
const http = require('node:http');
const { parentPort, workerData } = require('node:worker_threads');
const { port, size, chunked, chunk } = workerData;
const buf = Buffer.from(chunk);
const started = process.hrtime.bigint();
const headers = { 'content-type': 'application/octet-stream' };
if (!chunked) headers['content-length'] = size;
const req = http.request({ host: '127.0.0.1', port, method: 'PUT', path: '/v2/bench/blobs/uploads/1', headers }, (res) => {
  let body = '';
  res.on('data', (d) => (body += d));
  res.on('end', () => parentPort.postMessage({ status: res.statusCode, body,
    seconds: Number(process.hrtime.bigint() - started) / 1e9 }));
});
req.on('error', (err) => parentPort.postMessage({ error: err.message }));
let sent = 0;
function pump() {
  while (sent < size) {
    const n = Math.min(buf.length, size - sent);
    sent += n;
    if (!req.write(n === buf.length ? buf : buf.subarray(0, n))) return void req.once('drain', pump);
  }
  req.end();
}
pump();
`;

interface ClientResult {
  status?: number;
  body?: string;
  seconds?: number;
  error?: string;
}

function push(port: number, size: number, chunked: boolean): Promise<number> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(clientSource, { eval: true, workerData: { port, size, chunked, chunk } });
    worker.once('message', (result: ClientResult) => {
      void worker.terminate();
      if (result.error !== undefined) return reject(new Error(result.error));
      if (result.status !== 200 || result.body !== String(size)) {
        return reject(new Error(`unexpected reply ${result.status} ${result.body}`));
      }
      resolve(size / MiB / result.seconds!);
    });
    worker.once('error', reject);
  });
}

const discard: BodySink = { write: () => true, drained: () => Promise.resolve() };

async function measure(name: string, port: number, chunked: boolean) {
  const size = chunked ? sizeBytes : Math.min(sizeBytes, UWS_MAX_CONTENT_LENGTH);
  await push(port, Math.min(size, 256 * MiB), chunked); // warm-up
  const mibPerSecond: number[] = [];
  for (let i = 0; i < runs; i++) mibPerSecond.push(Math.round(await push(port, size, chunked)));
  const mode = chunked ? 'chunked' : 'content-length';
  console.log(`${name.padEnd(5)} ${mode.padEnd(14)} ${(size / MiB).toFixed(0)} MiB: ${mibPerSecond.map((v) => `${v} MiB/s`).join('  ')}`);
  return { name, mode, sizeBytes: size, mibPerSecond };
}

const chunk = new Uint8Array(randomBytes(MiB));
const results: Array<{ name: string; mode: string; sizeBytes: number; mibPerSecond: number[] }> = [];
console.log(`one PUT into a discarding sink, ${runs} runs each after a warm-up`);
for (const kind of ['uws', 'node'] as const) {
  const frontEnd: FrontEnd = await createFrontEnd(kind, async (req, res) => {
    const bytes = await req.readBody(discard);
    res.send(200, {}, String(bytes));
  });
  const port = await frontEnd.listen('127.0.0.1', 0);
  results.push(await measure(kind, port, true));
  results.push(await measure(kind, port, false));
  await frontEnd.close(1000);
}

const best = (xs: number[]): number => Math.max(...xs);
writeReport(values.json, {
  bench: 'micro/http/frontend',
  date: new Date().toISOString(),
  machine: machine(),
  settings: { sizeBytes, runs, client: 'node:http in a worker thread, 1 MiB writes' },
  results: results.map((r): MicroResult => ({
    label: `${r.name === 'uws' ? 'uWebSockets.js' : 'node:http'}, ${r.mode === 'chunked' ? 'chunked transfer encoding' : 'Content-Length'}, ${(r.sizeBytes / MiB).toFixed(0)} MiB`,
    mibPerSecond: best(r.mibPerSecond),
    seconds: r.sizeBytes / MiB / best(r.mibPerSecond),
    runs: r.mibPerSecond,
    group: r.name,
  })),
  notes: ['Best of the runs; the client shares the 2 cores with the server.'],
});
