// Run: npm run bench:micro, or after `npx tsc -p bench`:
//   node dist/bench/micro/engine/upload-write.js [--size-mib 1024] [--runs 1] [--json out.json]
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import os from 'node:os';
import { parseArgs } from 'node:util';
import { HashPool } from '../../../src/engine/hash-pool.js';
import { SlabPool } from '../../../src/engine/slab-pool.js';
import { UploadWrite } from '../../../src/engine/upload-write.js';
import type { FileWriter } from '../../../src/storage/driver.js';
import { machine, measure, MiB, print, writeReport, type MicroResult } from '../common.js';

/**
 * Part assembly: what the upload engine costs by itself. 1 GiB arrives in 64 KiB socket
 * reads (node:http's usual read size) and goes through src/engine/upload-write.ts into a
 * storage writer that discards, so the figure is the engine alone: copying reads into
 * slabs, the pinned SHA-256 in the hashing pool, and the bookkeeping, with backpressure
 * honoured as a front end does. Slab sizes 1, 4 (the default uploads.chunkBytes) and
 * 16 MiB, with the slab budget the registry gives one upload (uploads.maxSessionBufferedBytes
 * 16 MiB: floor(16 MiB / slab) - 1 slabs in flight).
 */

const { values } = parseArgs({
  options: {
    'size-mib': { type: 'string', default: '1024' },
    'read-kib': { type: 'string', default: '64' },
    runs: { type: 'string', default: '1' },
    json: { type: 'string' },
  },
});
const sizeBytes = Number(values['size-mib']) * MiB;
const readBytes = Number(values['read-kib']) * 1024;
const runs = Number(values.runs);
const threads = os.availableParallelism();
const SESSION_BUFFERED_BYTES = 16 * MiB;

const source = randomBytes(64 * MiB);

/** A storage writer that takes every write at once and keeps nothing. */
function discardingWriter(): FileWriter & { written: number } {
  return {
    size: 0,
    written: 0,
    async write(data: Uint8Array) { this.written += data.length; },
    async close() {},
    async commit() {},
    async cancel() {},
  };
}

async function main(): Promise<void> {
  const want = (() => {
    const h = createHash('sha256');
    for (let off = 0; off < sizeBytes; off += source.length) h.update(source.subarray(0, Math.min(source.length, sizeBytes - off)));
    return h.digest('hex');
  })();
  const hashPool = new HashPool({ threads, maxQueue: 1024 });
  const results: MicroResult[] = [];
  try {
    console.log(`${sizeBytes / MiB} MiB in ${readBytes / 1024} KiB reads through UploadWrite into a discarding writer, ${threads} hash workers`);
    for (let run = 1; run <= runs; run++) {
      for (const slabMiB of [1, 4, 16]) {
        const slabBytes = slabMiB * MiB;
        const slabs = new SlabPool(slabBytes, 256 * MiB);
        const maxInflightSlabs = Math.max(1, Math.floor(SESSION_BUFFERED_BYTES / slabBytes) - 1);
        const push = async (bytes: number): Promise<{ hex: string; pauses: number }> => {
          const writer = discardingWriter();
          const key = randomUUID();
          const w = new UploadWrite({
            writer, hashPool, slabs, maxInflightSlabs, maxBlobBytes: 0, hashKey: key, pin: undefined,
            rebuildHash: () => Promise.reject(new Error('no rebuild in this bench')),
          });
          let pauses = 0;
          for (let off = 0; off < bytes; off += readBytes) {
            const at = off % source.length;
            // A front end's read buffer is reused after write() returns: hand over a view, as uWS does.
            if (!w.write(source.subarray(at, at + Math.min(readBytes, bytes - off)))) {
              pauses++;
              await w.drained();
            }
          }
          await w.flush();
          if (w.hashDirty) throw new Error('hash went dirty');
          const d = await hashPool.digest(key, w.pin, bytes, true);
          if (!d.ok) throw new Error('hash state missing');
          if (writer.written !== bytes) throw new Error(`wrote ${writer.written} of ${bytes}`);
          return { hex: d.hex, pauses };
        };
        await push(64 * MiB); // warm-up
        let out = { hex: '', pauses: 0 };
        const r = await measure(`${slabMiB} MiB slabs, ${maxInflightSlabs} in flight`, sizeBytes, async () => { out = await push(sizeBytes); },
          { run, slabBytes, maxInflightSlabs });
        if (out.hex !== want) throw new Error(`digest ${out.hex}, want ${want}`);
        r.socketPauses = out.pauses;
        print(r);
        results.push(r);
      }
    }
  } finally {
    await hashPool.close();
  }
  writeReport(values.json, {
    bench: 'micro/engine/upload-write',
    date: new Date().toISOString(),
    machine: machine(),
    settings: { sizeBytes, readBytes, threads, runs, sessionBufferedBytes: SESSION_BUFFERED_BYTES },
    results,
    notes: [
      'main thread busy: event-loop utilisation of the thread running UploadWrite (copies into slabs, bookkeeping); cores: process CPU, hashing workers included.',
      'socketPauses: how often write() asked the front end to pause the socket.',
    ],
  });
}

await main();
