// Run: npm run bench:micro, or after `npx tsc -p bench`:
//   node dist/bench/micro/engine/hash-pool.js [--size-mib 1024] [--chunk-mib 4] [--runs 1] [--json out.json]
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createSHA256 } from 'hash-wasm';
import { Piscina } from 'piscina';
import { HashPool, type BytesRef } from '../../../src/engine/hash-pool.js';
import { machine, measure, MiB, print, writeReport, type MicroResult } from '../common.js';

/**
 * Why the hashing pool pins an upload to one worker (STYLE.md, "A blob's SHA-256 runs
 * across every chunk"). One upload's bytes go through src/engine/hash-pool.ts in
 * engine-sized chunks, one chunk in flight per upload as the upload engine sends them,
 * the next chunk being copied in meanwhile:
 *
 * - pinned: node:crypto's running state lives in one worker, which gets all the upload's
 *   chunks, passed as
 *     - a SharedArrayBuffer slab (what the engine does: no copy, no transfer),
 *     - a fresh ArrayBuffer moved to the worker (transferList),
 *     - an ArrayBuffer copied by postMessage's structured clone;
 * - unpinned: hash-wasm in a plain piscina pool, the state (about 100 bytes) saved after
 *   every chunk and loaded by whichever worker takes the next one;
 *
 * each with 1 upload and with 4 at once, and for reference one core on the main thread:
 * node:crypto, hash-wasm, and hash-wasm with a save/load per chunk.
 */

const { values } = parseArgs({
  options: {
    'size-mib': { type: 'string', default: '1024' },
    'chunk-mib': { type: 'string', default: '4' },
    runs: { type: 'string', default: '1' },
    json: { type: 'string' },
  },
});
const sizeBytes = Number(values['size-mib']) * MiB;
const chunkBytes = Number(values['chunk-mib']) * MiB;
const runs = Number(values.runs);
const threads = os.availableParallelism();

/** 64 MiB of random bytes, cycled: every upload is the same stream, so one digest checks all. */
const source = randomBytes(64 * MiB);
function chunkAt(offset: number, length: number): Buffer {
  const at = offset % source.length;
  return source.subarray(at, at + length);
}

function expectedDigest(bytes: number): string {
  const h = createHash('sha256');
  for (let off = 0; off < bytes; off += chunkBytes) h.update(chunkAt(off, Math.min(chunkBytes, bytes - off)));
  return h.digest('hex');
}

type Passing = 'shared' | 'transfer' | 'copy';

/** Worker thread ids the pinned uploads of the current measurement landed on. */
const pinsSeen = new Set<number>();

/** One upload through the real HashPool, pinned to the worker that holds its state. */
async function pinnedUpload(pool: HashPool, bytes: number, passing: Passing): Promise<string> {
  const key = randomUUID();
  let pin: number | undefined;
  const slabs = [new SharedArrayBuffer(chunkBytes), new SharedArrayBuffer(chunkBytes)];
  const fill = (n: number, off: number, len: number): BytesRef => {
    if (passing === 'shared') {
      new Uint8Array(slabs[n % 2]!).set(chunkAt(off, len));
      return { buffer: slabs[n % 2]!, byteOffset: 0, length: len };
    }
    // transfer: a new buffer each time (the old one went to the worker); copy: structured clone copies it again.
    const ab = new ArrayBuffer(len);
    new Uint8Array(ab).set(chunkAt(off, len));
    return { buffer: ab, byteOffset: 0, length: len };
  };
  const send = async (ref: BytesRef, off: number): Promise<void> => {
    const r = await pool.update(key, pin, ref, off, passing === 'transfer');
    if (!r.ok) throw new Error('hash state missing');
    pin = r.threadId;
  };
  let pending = send(fill(0, 0, Math.min(chunkBytes, bytes)), 0);
  for (let off = chunkBytes, n = 1; off < bytes; off += chunkBytes, n++) {
    const ref = fill(n, off, Math.min(chunkBytes, bytes - off));
    await pending;
    pending = send(ref, off);
  }
  await pending;
  pinsSeen.add(pin!);
  const d = await pool.digest(key, pin, bytes, true);
  if (!d.ok) throw new Error('hash state missing at digest');
  return d.hex;
}

/** One upload through a plain pool of hash-wasm workers, the state travelling with each task. */
async function unpinnedUpload(pool: Piscina, bytes: number): Promise<string> {
  let state: Uint8Array | null = null;
  const slabs = [new SharedArrayBuffer(chunkBytes), new SharedArrayBuffer(chunkBytes)];
  const fill = (n: number, off: number, len: number): { buffer: SharedArrayBuffer; byteOffset: number; length: number } => {
    new Uint8Array(slabs[n % 2]!).set(chunkAt(off, len));
    return { buffer: slabs[n % 2]!, byteOffset: 0, length: len };
  };
  const send = async (ref: ReturnType<typeof fill>): Promise<void> => {
    state = (await pool.run({ state, ...ref }, { name: 'update' })) as Uint8Array;
  };
  let pending = send(fill(0, 0, Math.min(chunkBytes, bytes)));
  for (let off = chunkBytes, n = 1; off < bytes; off += chunkBytes, n++) {
    const ref = fill(n, off, Math.min(chunkBytes, bytes - off));
    await pending;
    pending = send(ref);
  }
  await pending;
  return (await pool.run({ state }, { name: 'digest' })) as string;
}

async function main(): Promise<void> {
  const results: MicroResult[] = [];
  const hashPool = new HashPool({ threads, maxQueue: 1024 });
  const wasmPool = new Piscina({
    filename: fileURLToPath(new URL('../registry/hash-wasm-task.js', import.meta.url)),
    minThreads: threads, maxThreads: threads, idleTimeout: Infinity, concurrentTasksPerWorker: 1,
  });
  try {
    console.log(`hashing ${sizeBytes / MiB} MiB in ${chunkBytes / MiB} MiB chunks, ${threads} workers, ${runs} run(s)`);
    const wholeDigest = expectedDigest(sizeBytes);
    const check = (got: string[], bytesEach: number): void => {
      const want = bytesEach === sizeBytes ? wholeDigest : expectedDigest(bytesEach);
      if (got.some((d) => d !== want)) throw new Error(`wrong digest ${got[0]} want ${want}`);
    };
    // Warm-up: start every worker and compile hash-wasm in each.
    await Promise.all(Array.from({ length: threads * 2 }, () => pinnedUpload(hashPool, 8 * MiB, 'shared')));
    await Promise.all(Array.from({ length: threads * 2 }, () => unpinnedUpload(wasmPool, 8 * MiB)));

    for (let run = 1; run <= runs; run++) {
      for (const uploads of [1, 4]) {
        const each = sizeBytes / uploads;
        const variants: Array<[string, () => Promise<string>]> = [
          ['pinned node:crypto, SharedArrayBuffer slab (the engine)', () => pinnedUpload(hashPool, each, 'shared')],
          ['pinned node:crypto, ArrayBuffer moved (transferList)', () => pinnedUpload(hashPool, each, 'transfer')],
          ['pinned node:crypto, ArrayBuffer copied (structured clone)', () => pinnedUpload(hashPool, each, 'copy')],
          ['unpinned hash-wasm, state saved/loaded per chunk', () => unpinnedUpload(wasmPool, each)],
        ];
        for (const [label, one] of variants) {
          let digests: string[] = [];
          pinsSeen.clear();
          const r = await measure(`${label}, ${uploads} upload${uploads > 1 ? 's' : ''} at once`, sizeBytes, async () => {
            digests = await Promise.all(Array.from({ length: uploads }, one));
          }, { run, uploads, group: 'pool' });
          check(digests, each);
          if (pinsSeen.size) r.workersUsed = pinsSeen.size;
          print(r);
          results.push(r);
        }
      }
      // One core, main thread: what each hash costs by itself.
      const cores: Array<[string, () => Promise<string>]> = [
        ['node:crypto SHA-256, one core (main thread)', async () => {
          const h = createHash('sha256');
          for (let off = 0; off < sizeBytes; off += chunkBytes) h.update(chunkAt(off, chunkBytes));
          return h.digest('hex');
        }],
        ['hash-wasm SHA-256, one core (main thread)', async () => {
          const h = await createSHA256();
          h.init();
          for (let off = 0; off < sizeBytes; off += chunkBytes) h.update(chunkAt(off, chunkBytes));
          return h.digest('hex');
        }],
        ['hash-wasm SHA-256 with save/load per chunk, one core (main thread)', async () => {
          const h = await createSHA256();
          h.init();
          let state = h.save();
          for (let off = 0; off < sizeBytes; off += chunkBytes) {
            h.load(state);
            h.update(chunkAt(off, chunkBytes));
            state = h.save();
          }
          h.load(state);
          return h.digest('hex');
        }],
      ];
      for (const [label, fn] of cores) {
        let d = '';
        const r = await measure(label, sizeBytes, async () => { d = await fn(); }, { run, group: 'one core' });
        check([d], sizeBytes);
        delete r.mainThreadBusy;
        print(r);
        results.push(r);
      }
    }
  } finally {
    await hashPool.close();
    await wasmPool.close({ force: true });
  }
  writeReport(values.json, {
    bench: 'micro/engine/hash-pool',
    date: new Date().toISOString(),
    machine: machine(),
    settings: { sizeBytes, chunkBytes, threads, runs },
    results,
    notes: [
      'Pool rows: one upload sends its next chunk once the previous one is hashed (as the upload engine does); "4 uploads" run side by side, 1/4 of the bytes each.',
      'main thread busy: event-loop utilisation of the thread that feeds the pool; cores: process CPU (all threads) per wall second.',
    ],
  });
}

await main();
