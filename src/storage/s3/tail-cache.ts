import type { PartBuffer, PartBufferPool } from './part-buffers.js';
import type { WriterState } from './writer.js';

/**
 * What an upload left in memory on this instance when its last PATCH closed: the writer
 * state as this instance wrote it, the ETag the store gave that write, and the pending tail
 * (the bytes after the last full part) in the part buffer it was gathered in.
 *
 * Those bytes are staged in the bucket already (writer.ts: pieces), so holding them is only
 * a shortcut: the next PATCH on this instance asks the store whether the state is still the
 * one it wrote (a GET with If-None-Match: 304 costs no bytes) and, if so, continues from
 * memory without reading the pieces back. If another instance wrote since, or the entry is
 * gone, the writer reads the pieces back (the rare path).
 */
export interface HeldTail {
  readonly state: WriterState;
  readonly etag: string;
  /** Holds the staged pieces' bytes, in order; undefined when there are none, or after eviction. */
  readonly buf: PartBuffer | undefined;
}

/**
 * Held tails, least recently used first. Their buffers come from the driver's part buffer
 * pool and go back to it whenever a writer needs one and the pool has none free
 * (evictOne()), and never stay while writers wait in line for a buffer (put()). So holding
 * tails never makes a writer wait: the pool's bound and the engine's admission (one filling
 * buffer per writer, see S3Driver.maxConcurrentWriters) stay as they were.
 */
export class TailCache {
  readonly #pool: PartBufferPool;
  readonly #maxEntries: number;
  readonly #entries = new Map<string, HeldTail>();

  constructor(pool: PartBufferPool, maxEntries: number) {
    this.#pool = pool;
    this.#maxEntries = maxEntries;
  }

  /** Removes and returns the entry for `path`: the caller now owns its buffer. */
  take(path: string): HeldTail | undefined {
    const held = this.#entries.get(path);
    this.#entries.delete(path);
    return held;
  }

  /** Keeps `held` (and its buffer) for the next writer of `path`. */
  put(path: string, held: HeldTail): void {
    this.drop(path);
    if (held.buf && this.#pool.waiting > 0) {
      // Writers are waiting for buffers: theirs is the better use of this one.
      this.#pool.release(held.buf);
      held = { ...held, buf: undefined };
    }
    this.#entries.set(path, held);
    while (this.#entries.size > this.#maxEntries) this.drop(this.#entries.keys().next().value!);
  }

  /** Forgets `path`'s entry, returning its buffer to the pool. */
  drop(path: string): void {
    const held = this.take(path);
    if (held?.buf) this.#pool.release(held.buf);
  }

  /**
   * Returns the buffer of the least recently held tail to the pool (to a waiting writer, if
   * any); the entry stays, without bytes. False when no entry holds a buffer.
   */
  evictOne(): boolean {
    for (const [path, held] of this.#entries) {
      if (!held.buf) continue;
      this.#entries.set(path, { ...held, buf: undefined });
      this.#pool.release(held.buf);
      return true;
    }
    return false;
  }

  /** Returns every buffer (driver close). */
  clear(): void {
    for (const path of [...this.#entries.keys()]) this.drop(path);
  }

  /** Entries holding a buffer. */
  get buffersHeld(): number {
    let n = 0;
    for (const held of this.#entries.values()) if (held.buf) n++;
    return n;
  }
}
