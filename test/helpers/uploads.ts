import type { Readable } from 'node:stream';
import { ClientAbortError } from '../../src/errors.js';
import type { BodySource, ByteSink } from '../../src/engine/upload-write.js';
import type { FileInfo, FileWriter, PutOptions, StorageDriver } from '../../src/storage/driver.js';
import { MemoryDriver } from '../../src/storage/memory.js';

/**
 * Helpers for upload-engine unit tests: request bodies fed the way a front end feeds them, and
 * a storage driver that injects failures and delays. The driver is a test double for storage
 * only; the engine under test is always the real one.
 */

export interface BodyStats {
  /** write() calls. */
  writes: number;
  /** write() calls that returned false (the front end paused the socket). */
  paused: number;
  /** drained() promises that were still pending on the next turn of the event loop. */
  waitedForDrain: number;
  /** Bytes handed to the sink. */
  sent: number;
}

export interface BodyOptions {
  /** Chunk sizes, cycled. */
  sizes?: number[];
  /** Stop with a ClientAbortError after this many bytes (the client went away). */
  abortAfterBytes?: number;
  /** Called after each write() with its result. */
  onWrite?: (accepted: boolean, sent: number) => void;
  stats?: BodyStats;
}

export function newStats(): BodyStats {
  return { writes: 0, paused: 0, waitedForDrain: 0, sent: 0 };
}

/**
 * A request body carrying `data` in chunks of the given sizes. Like uWS, it reuses one buffer
 * for every chunk and scribbles over it once write() returns, so a sink that keeps a
 * reference instead of copying stores garbage. It honours backpressure: after write()
 * returns false it waits for drained().
 */
export function bodyOf(data: Uint8Array, opts: BodyOptions = {}): BodySource {
  const sizes = opts.sizes ?? [65_536];
  const stats = opts.stats ?? newStats();
  const limit = Math.min(data.length, opts.abortAfterBytes ?? Infinity);
  return async (sink: ByteSink) => {
    const scratch = new Uint8Array(Math.max(1, ...sizes));
    let pos = 0;
    for (let i = 0; pos < limit; i++) {
      const n = Math.min(sizes[i % sizes.length]!, limit - pos);
      const chunk = scratch.subarray(0, n);
      chunk.set(data.subarray(pos, pos + n));
      const accepted = sink.write(chunk);
      chunk.fill(0xee);
      pos += n;
      stats.writes++;
      stats.sent += n;
      opts.onWrite?.(accepted, pos);
      if (!accepted) {
        stats.paused++;
        let settled = false;
        const drained = sink.drained().finally(() => {
          settled = true;
        });
        // Awaited below; until then a rejection must not count as unhandled.
        drained.catch(() => undefined);
        await new Promise<void>((resolve) => setImmediate(resolve));
        if (!settled) stats.waitedForDrain++;
        await drained;
      }
    }
    if (opts.abortAfterBytes !== undefined) throw new ClientAbortError();
    return pos;
  };
}

/** Odd chunk sizes, none a divisor of a power of two. */
export const ODD_SIZES = [1, 7, 13, 4099, 65_537, 3, 131_071, 999, 12_345, 65_535, 2];

export interface FaultyDriverOptions {
  /** Fail the Nth FileWriter.write() call (1-based, counted across all writers). */
  failWriteAt?: number;
  /** When failing, first store the first half of the data (as a short write on a disk would). */
  partialFailure?: boolean;
  /** Called before each FileWriter.write(), with the call number; may delay it. */
  beforeWrite?: (n: number, data: Uint8Array) => void | Promise<void>;
}

/**
 * A MemoryDriver whose writers can fail or stall on chosen write() calls: storage faults for
 * testing how the core handles them.
 */
export class FaultyDriver implements StorageDriver {
  readonly name = 'faulty';
  readonly inner: StorageDriver;
  readonly opts: FaultyDriverOptions;
  /** FileWriter.write() and writev() calls so far. */
  writes = 0;
  /** Bytes each of those calls carried, in order. */
  readonly writeSizes: number[] = [];
  /** Parts each of those calls carried (1 for a write()). */
  readonly writeParts: number[] = [];

  constructor(opts: FaultyDriverOptions = {}, inner: StorageDriver = new MemoryDriver()) {
    this.opts = opts;
    this.inner = inner;
  }

  getContent(path: string): Promise<Buffer> {
    return this.inner.getContent(path);
  }

  putContent(path: string, content: Uint8Array, opts?: PutOptions): Promise<boolean> {
    return this.inner.putContent(path, content, opts);
  }

  reader(path: string, offset?: number, length?: number): Promise<Readable> {
    return this.inner.reader(path, offset, length);
  }

  async writer(path: string, append: boolean): Promise<FileWriter> {
    const w = await this.inner.writer(path, append);
    const driver = this;
    /** Counts one write of `data` and injects what the options ask for before it goes through. */
    const before = async (data: Uint8Array): Promise<void> => {
      const n = ++driver.writes;
      driver.writeSizes.push(data.byteLength);
      await driver.opts.beforeWrite?.(n, data);
      if (n === driver.opts.failWriteAt) {
        if (driver.opts.partialFailure) await w.write(data.subarray(0, Math.floor(data.length / 2)));
        throw new Error(`injected failure of write #${n}`);
      }
    };
    return {
      get size() {
        return w.size;
      },
      async write(data: Uint8Array) {
        driver.writeParts.push(1);
        await before(data);
        await w.write(data);
      },
      // One call, one write: a failure hits a whole batch of parts, as a failed pwritev would.
      async writev(parts: readonly Uint8Array[]) {
        driver.writeParts.push(parts.length);
        await before(Buffer.concat(parts));
        if (w.writev) await w.writev(parts);
        else for (const p of parts) await w.write(p);
      },
      close: () => w.close(),
      commit: () => w.commit(),
      cancel: () => w.cancel(),
    };
  }

  stat(path: string): Promise<FileInfo> {
    return this.inner.stat(path);
  }

  list(path: string): Promise<string[]> {
    return this.inner.list(path);
  }

  move(source: string, dest: string): Promise<void> {
    return this.inner.move(source, dest);
  }

  delete(path: string): Promise<void> {
    return this.inner.delete(path);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Asserts two byte sequences are equal. (vitest's toEqual walks large buffers element by
 * element and takes seconds; this names the length and first differing offset instead.)
 */
export function expectSameBytes(actual: Uint8Array, expected: Uint8Array): void {
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength);
  const e = Buffer.from(expected.buffer, expected.byteOffset, expected.byteLength);
  if (a.equals(e)) return;
  let i = 0;
  while (i < a.length && i < e.length && a[i] === e[i]) i++;
  throw new Error(`bytes differ: got ${a.length} bytes, expected ${e.length}; first difference at offset ${i}`);
}
