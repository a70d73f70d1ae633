import { RegistryError } from '../errors.js';
import type { FileWriter } from '../storage/driver.js';
import type { HashPool } from './hash-pool.js';
import type { Slab, SlabPool } from './slab-pool.js';

/**
 * Where request bytes go. The front end calls write() with each chunk (valid only during the
 * call) and pauses the socket while drained() is pending. Structurally the same as the HTTP
 * adapter's BodySink; defined here because the core knows no HTTP.
 */
export interface ByteSink {
  write(chunk: Uint8Array): boolean;
  drained(): Promise<void>;
}

/** Pumps a request body into a sink; resolves with the byte count, rejects if the client left. */
export type BodySource = (sink: ByteSink) => Promise<number>;

export interface UploadWriteDeps {
  readonly writer: FileWriter;
  readonly hashPool: HashPool;
  readonly slabs: SlabPool;
  /** Slabs this upload may have in flight (being hashed and written) besides the one filling. */
  readonly maxInflightSlabs: number;
  /** Upload size limit, 0 for none. */
  readonly maxBlobBytes: number;
  /** Key of the upload's running hash in the worker pool. */
  readonly hashKey: string;
  /** Thread holding the running hash, if known. */
  readonly pin: number | undefined;
  /** Rebuilds the running hash from stored bytes [0, offset); resolves with the new pin. */
  readonly rebuildHash: (offset: number) => Promise<number>;
}

/**
 * One request's bytes on their way into an upload. Each full slab is hashed (in the pinned
 * worker) and written (to storage) at the same time; an upload's slabs are hashed in order
 * and written in order, one at a time each, so the running hash always describes a prefix
 * of what storage holds.
 *
 * Memory: at most one filling slab plus `maxInflightSlabs`, all from the global SlabPool,
 * plus what arrived after the socket was told to pause (one read at most). Any of those
 * limits reached makes write() return false, and the front end pauses the socket.
 */
export class UploadWrite implements ByteSink {
  readonly #d: UploadWriteDeps;
  #pin: number | undefined;
  /** Offset after everything handed to storage; `writer.size` lags behind while writes run. */
  #offset: number;
  #slab: Slab | undefined;
  #fill = 0;
  readonly #overflow: Uint8Array[] = [];
  #overflowBytes = 0;
  #inflight = 0;
  #waitingForSlab = false;
  #hashChain: Promise<void> = Promise.resolve();
  #writeChain: Promise<void> = Promise.resolve();
  /** The running hash no longer matches storage; the next user must rebuild it. */
  #hashDirty = false;
  #error: unknown;
  #finished = false;
  #waiters: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];

  constructor(deps: UploadWriteDeps) {
    this.#d = deps;
    this.#pin = deps.pin;
    this.#offset = deps.writer.size;
  }

  /** Offset including bytes still on their way to storage. */
  get offset(): number {
    return this.#offset + this.#fill + this.#overflowBytes;
  }

  get pin(): number | undefined {
    return this.#pin;
  }

  get hashDirty(): boolean {
    return this.#hashDirty;
  }

  write(chunk: Uint8Array): boolean {
    if (this.#error !== undefined || this.#finished) return false;
    if (this.#d.maxBlobBytes > 0 && this.offset + chunk.length > this.#d.maxBlobBytes) {
      this.#fail(new RegistryError('SIZE_INVALID', { message: 'blob exceeds the size limit', detail: { limit: this.#d.maxBlobBytes } }));
      return false;
    }
    if (this.#overflowBytes > 0) {
      this.#stash(chunk, 0);
    } else {
      this.#copyIn(chunk);
    }
    return !this.#mustPause();
  }

  drained(): Promise<void> {
    if (this.#error !== undefined) return Promise.reject(this.#error);
    if (!this.#mustPause()) return Promise.resolve();
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /**
   * Hands every byte received to storage and waits until all is hashed and written. Used at
   * the end of a body, and when the client went away (what arrived is kept: the upload stays
   * consistent and resumable at the new offset). Rejects with the first storage error.
   */
  async flush(): Promise<void> {
    this.#finished = true;
    for (;;) {
      if (this.#error !== undefined) break;
      if (this.#fill > 0 && (this.#overflowBytes === 0 || this.#fill === this.#d.slabs.slabBytes)) this.#dispatch();
      if (this.#overflowBytes === 0 && this.#fill === 0) break;
      await this.#progress();
      this.#pump();
    }
    await this.#writeChain;
    await this.#hashChain;
    if (this.#slab) {
      this.#d.slabs.release(this.#slab);
      this.#slab = undefined;
    }
    if (this.#error !== undefined) {
      this.#hashDirty = true;
      throw this.#error;
    }
  }

  #mustPause(): boolean {
    return this.#overflowBytes > 0 || this.#inflight >= this.#d.maxInflightSlabs || this.#waitingForSlab;
  }

  /** Copies as much of chunk[from..] as slabs allow; the rest goes to overflow. */
  #copyIn(chunk: Uint8Array, from = 0): void {
    let pos = from;
    while (pos < chunk.length) {
      if (!this.#slab && !this.#takeSlab()) break;
      const slab = this.#slab!;
      const n = Math.min(slab.bytes.length - this.#fill, chunk.length - pos);
      slab.bytes.set(chunk.subarray(pos, pos + n), this.#fill);
      this.#fill += n;
      pos += n;
      if (this.#fill === slab.bytes.length) this.#dispatch();
    }
    if (pos < chunk.length) this.#stash(chunk, pos);
  }

  #stash(chunk: Uint8Array, from: number): void {
    // The chunk's memory is only ours during write(): keep a copy.
    const copy = Uint8Array.prototype.slice.call(chunk, from);
    this.#overflow.push(copy);
    this.#overflowBytes += copy.length;
  }

  /** Gets a slab within this upload's and the pool's bounds, or arranges to be woken. */
  #takeSlab(): boolean {
    if (this.#inflight >= this.#d.maxInflightSlabs || this.#waitingForSlab) return false;
    const slab = this.#d.slabs.tryAcquire();
    if (slab) {
      this.#slab = slab;
      return true;
    }
    this.#waitingForSlab = true;
    void this.#d.slabs.acquire().then((s) => {
      this.#waitingForSlab = false;
      if (this.#slab || (this.#finished && this.#overflowBytes === 0) || this.#error !== undefined) {
        this.#d.slabs.release(s);
      } else {
        this.#slab = s;
      }
      this.#pump();
    });
    return false;
  }

  /** Moves overflow into slabs when there is room again; wakes the socket when below the bounds. */
  #pump(): void {
    while (this.#overflowBytes > 0 && this.#error === undefined) {
      if (!this.#slab && !this.#takeSlab()) break;
      const head = this.#overflow[0]!;
      const slab = this.#slab!;
      const n = Math.min(slab.bytes.length - this.#fill, head.length);
      slab.bytes.set(head.subarray(0, n), this.#fill);
      this.#fill += n;
      this.#overflowBytes -= n;
      if (n === head.length) this.#overflow.shift();
      else this.#overflow[0] = head.subarray(n);
      if (this.#fill === slab.bytes.length) this.#dispatch();
    }
    this.#notify();
  }

  #notify(): void {
    if (this.#waiters.length === 0) return;
    if (this.#error !== undefined) {
      for (const w of this.#waiters.splice(0)) w.reject(this.#error);
    } else if (!this.#mustPause() || this.#finished) {
      for (const w of this.#waiters.splice(0)) w.resolve();
    }
  }

  #progress(): Promise<void> {
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  #fail(err: unknown): void {
    if (this.#error === undefined) this.#error = err;
    this.#notify();
  }

  /** Sends the filling slab to be hashed and written, both at once. */
  #dispatch(): void {
    const slab = this.#slab!;
    const length = this.#fill;
    this.#slab = undefined;
    this.#fill = 0;
    const offset = this.#offset;
    this.#offset += length;
    this.#inflight++;
    const view = slab.bytes.subarray(0, length);
    const writtenBefore = this.#writeChain;
    const written = (this.#writeChain = writtenBefore.then(async () => {
      // After a failed write nothing more may be written: the stored bytes must stay a prefix.
      if (this.#error !== undefined) return;
      try {
        await this.#d.writer.write(view);
      } catch (err) {
        this.#fail(err);
      }
    }));
    const hashed = (this.#hashChain = this.#hashChain.then(() => this.#hash(slab, length, offset, writtenBefore)));
    void Promise.all([written, hashed]).then(() => {
      this.#d.slabs.release(slab);
      this.#inflight--;
      this.#pump();
    });
  }

  async #hash(slab: Slab, length: number, offset: number, writtenBefore: Promise<void>): Promise<void> {
    if (this.#hashDirty || this.#error !== undefined) return;
    const bytes = { buffer: slab.buffer, byteOffset: 0, length };
    try {
      let r = await this.#d.hashPool.update(this.#d.hashKey, this.#pin, bytes, offset);
      if (!r.ok) {
        // The state is gone (worker restarted, or this instance never saw the upload's start):
        // once everything before this slab is in storage, rebuild it from there.
        await writtenBefore;
        if (this.#error !== undefined) return;
        this.#pin = await this.#d.rebuildHash(offset);
        r = await this.#d.hashPool.update(this.#d.hashKey, this.#pin, bytes, offset);
      }
      if (r.ok) this.#pin = r.threadId;
      else this.#hashDirty = true;
    } catch {
      // A hashing failure loses no data: the digest is rebuilt from storage at commit.
      this.#hashDirty = true;
    }
  }
}
