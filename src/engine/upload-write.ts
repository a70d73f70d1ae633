import { BlobTooLargeError } from '../errors.js';
import type { FileWriter } from '../storage/driver.js';
import type { HashPool } from './hash-pool.js';
import type { Slab, SlabPool } from './slab-pool.js';

/**
 * Where request bytes go. The front end calls write() with each chunk and pauses the socket
 * while drained() is pending. A chunk is valid only during the call, unless `owned`: then
 * it is the sink's for good (node:http gives every body chunk a Buffer of its own).
 * Structurally the same as the HTTP adapter's BodySink; defined here because the core knows
 * no HTTP.
 */
export interface ByteSink {
  write(chunk: Uint8Array, owned?: boolean): boolean;
  drained(): Promise<void>;
  /** Aborted when the engine wants no more of this body (admission.ts): the read stops with its reason. */
  readonly signal?: AbortSignal;
}

/** Pumps a request body into a sink; resolves with the byte count, rejects if the client left. */
export interface BodySource {
  (sink: ByteSink): Promise<number>;
  /**
   * Whether the body, not yet pumped, is arriving or there: it brought its first bytes (the
   * front end's READY_BYTES) or all of them while it waited. A client trickling its body is
   * not ready. Asked while the request waits for admission (admission.ts), where ready ones
   * go first; absent, the body is taken for not ready.
   */
  readonly ready?: () => boolean;
  /**
   * Tells the source that the body will be read, though not yet: the request passed the
   * checks made before admission and now waits for a slot. A client that sends its body
   * only once asked (HTTP's `Expect: 100-continue`) is asked now, so that its body can
   * become ready (above) while it waits rather than only once its turn came, which a steady
   * stream of ready requests could put off for good. Only what the front end reads early
   * of a body arrives before the pump (a few KiB, as for any body); the rest waits.
   */
  readonly invite?: () => void;
}

export interface UploadWriteDeps {
  readonly writer: FileWriter;
  readonly hashPool: HashPool;
  readonly slabs: SlabPool;
  /** Slabs this upload may have in flight (being written and hashed) besides the one filling. */
  readonly maxInflightSlabs: number;
  /** Upload size limit, 0 for none. */
  readonly maxBlobBytes: number;
  /** Key of the upload's running hash in the worker pool. */
  readonly hashKey: string;
  /** Thread holding the running hash, if known. */
  readonly pin: number | undefined;
  /** Rebuilds the running hash from stored bytes [0, offset); resolves with the new pin. */
  readonly rebuildHash: (offset: number) => Promise<number>;
  /** Passed on to the front end (ByteSink.signal). */
  readonly signal?: AbortSignal;
}

/** Bytes [start, end) of a batch's slab, filled by copies of borrowed chunks. */
interface CopyRun {
  readonly start: number;
  end: number;
}

/**
 * Up to one slab's worth of an upload's bytes: what is written to storage in one call and
 * hashed in one task. It holds one slab of the pool, which is its place in the memory bound
 * whatever its bytes are in, and the memory for the bytes that had to be copied.
 */
interface Batch {
  readonly slab: Slab;
  /** The bytes in order: owned chunks as they came, and runs of copies in the slab. */
  readonly parts: Array<Uint8Array | CopyRun>;
  bytes: number;
  /** Bytes of the slab used by copies. */
  copied: number;
  /** The last part is a run of copies that the next copy extends. */
  run: CopyRun | undefined;
  /** Looks at the batch every IDLE_MS from its first byte, until it is sent on (#checkFill()). */
  timer: NodeJS.Timeout | undefined;
  /** When its first byte came (Date.now()). */
  startedAt: number;
  /** `bytes` at the timer's last look: unchanged at the next one, no byte came in between. */
  seenBytes: number;
}

/**
 * How long a batch may wait for more bytes before it is written and hashed as it is. Its
 * slab is part of the engine's memory bound, shared by all uploads: without this, a client
 * that sends a few bytes and then nothing (short of the idle timeout) would keep its slab,
 * and as many such clients as there are slabs would stall every other upload. A client this
 * slow gains nothing from full batches anyway.
 */
const MAX_FILL_MS = 500;

/**
 * While other uploads wait for a slab, a batch that received no byte for this long (its timer
 * looks every IDLE_MS, so it goes after IDLE_MS to twice that) is sent on at once, rather than
 * after MAX_FILL_MS: its slab is then the next waiter's. Requests that sent a little over the
 * stage (20 KB) at once and then nothing, ~36 a second, each held a slab for MAX_FILL_MS,
 * which kept the default pool's 8 slabs in use, and the line behind them grew until a 4 KiB
 * push waited ~5 s in it (found by probing, fs storage). A body that is still coming brings
 * its next chunk within microseconds to a few milliseconds, and keeps filling its batch; one
 * that pauses longer while the pool is contended pays with a part-filled batch (and stages
 * its next bytes, as after MAX_FILL_MS). No timer per chunk: the batch's one timer compares
 * byte counts; a batch filled in less than IDLE_MS (a fast push's) never sees it fire.
 */
const IDLE_MS = 25;

/**
 * Staging, up to this fraction of a slab (16 KiB of the default 4 MiB): a request's first
 * bytes wait in memory of their own rather than in a slab, until more come or the body ends.
 * A slab is a place in the one line every upload waits in: clients sending a byte now and then
 * (200 of them, a byte every few seconds) each took one for MAX_FILL_MS per byte, and a push
 * behind them waited ~12 s for every batch. They now cost that much each, like a socket's own
 * buffers, and take a slab once, at their end. Before the request's first batch, and again
 * once a batch went out part-filled for want of bytes (its MAX_FILL_MS passed, or IDLE_MS
 * while others waited for a slab: the client is slow) until one fills: a client that sent
 * 20 KB at once and then a byte every few seconds took a slab for every byte, and 200 of them
 * held a 16 MiB push for 52 s (found by probing).
 * A body that comes as fast as it is taken never stages after its first bytes.
 */
const STAGE_FRACTION = 256;

/**
 * Owned chunks under this fraction of a slab (1 KiB of 4 MiB) are copied into the slab like
 * borrowed ones. node:http gives each piece of a chunked body a Buffer of its own: a body of
 * one-byte chunks made millions of parts per batch (808 MiB of ArrayBuffers for an 11 MiB
 * body, and a quadratic writev); parts per batch now stay below this. Not higher: a copy gives
 * the slab memory, which then travels to the worker and back with every batch, and sixteen
 * pushes at once through node:http, whose reads are often under 16 KiB, cost a fifth more
 * CPU per GiB with the line at 16 KiB (quick bench, 2026-12-03).
 */
const MIN_OWNED_FRACTION = 4096;

/**
 * One request's bytes on their way into an upload, gathered into batches of one slab each.
 * A full batch is written to storage, and then hashed by the worker that holds the upload's
 * running SHA-256; an upload's batches are written in order and hashed in order, so the
 * running hash always describes a prefix of what storage holds.
 *
 * Where the CPU goes (README, Benchmarks): every byte is copied by the kernel out of the
 * socket, hashed once, and copied by the kernel into the page cache. Beyond that, an owned
 * chunk (node:http's) is not copied at all: it becomes part of a batch as it is, is written
 * with the batch's other chunks in one writev, and its ArrayBuffer is then moved, not copied,
 * to the hashing worker, which drops it. Freeing those buffers is then the worker's garbage
 * collector's business; on the main thread, a gigabyte of short-lived body Buffers kept the
 * old generation's limit in reach of their external memory and set off a full mark-compact
 * every 20-30 MiB. A borrowed chunk (uWS's, neutered when the call returns) is copied once,
 * into the batch's slab, whose memory travels to the worker with the batch and comes back
 * with the answer.
 *
 * Memory: at most one filling batch plus `maxInflightSlabs`, each holding a slab of the
 * global SlabPool, plus what arrived after the socket was told to pause (one read at most).
 * Any of those limits reached makes write() return false, and the front end pauses the socket.
 * A batch of owned chunks may exceed its slab by less than one chunk.
 */
export class UploadWrite implements ByteSink {
  readonly #d: UploadWriteDeps;
  readonly #slabBytes: number;
  /** A request's first bytes are staged without a slab up to this many (STAGE_FRACTION). */
  readonly #stageBytes: number;
  /** Owned chunks below this are copied (MIN_OWNED_FRACTION). */
  readonly #minOwnedBytes: number;
  #pin: number | undefined;
  /** Offset after every batch dispatched; `writer.size` lags behind while writes run. */
  #offset: number;
  #batch: Batch | undefined;
  /** Whole, owned chunks that arrived while no slab was free, in order. */
  readonly #overflow: Uint8Array[] = [];
  #overflowBytes = 0;
  #inflight = 0;
  #waitingForSlab = false;
  #hashChain: Promise<void> = Promise.resolve();
  #writeChain: Promise<void> = Promise.resolve();
  /** The running hash no longer matches storage; the next user must rebuild it. */
  #hashDirty = false;
  /** A batch went out part-filled for want of bytes, and none has filled since (STAGE_FRACTION). */
  #trickling = false;
  #error: unknown;
  #finished = false;
  #waiters: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];
  #bytes = 0;
  #copiedBytes = 0;
  #batches = 0;

  constructor(deps: UploadWriteDeps) {
    this.#d = deps;
    this.#slabBytes = deps.slabs.slabBytes;
    this.#stageBytes = Math.floor(this.#slabBytes / STAGE_FRACTION);
    this.#minOwnedBytes = Math.floor(this.#slabBytes / MIN_OWNED_FRACTION);
    this.#pin = deps.pin;
    this.#offset = deps.writer.size;
  }

  /** Offset including bytes still on their way to storage. */
  get offset(): number {
    return this.#offset + (this.#batch?.bytes ?? 0) + this.#overflowBytes;
  }

  get pin(): number | undefined {
    return this.#pin;
  }

  get hashDirty(): boolean {
    return this.#hashDirty;
  }

  /** Body bytes received (admission.ts watches them). */
  get received(): number {
    return this.#bytes;
  }

  get signal(): AbortSignal | undefined {
    return this.#d.signal;
  }

  /** Whether the front end has been asked to stop sending (storage or hashing is behind): no fault of the client's. */
  get holdingBack(): boolean {
    return this.#mustPause();
  }

  /** What this request's body cost the engine, for the hoist:upload:body channel. */
  get stats(): { bytes: number; copiedBytes: number; batches: number } {
    return { bytes: this.#bytes, copiedBytes: this.#copiedBytes, batches: this.#batches };
  }

  write(chunk: Uint8Array, owned = false): boolean {
    if (this.#error !== undefined || this.#finished) return false;
    const n = chunk.byteLength;
    if (this.#d.maxBlobBytes > 0 && this.offset + n > this.#d.maxBlobBytes) {
      this.#fail(new BlobTooLargeError(this.#d.maxBlobBytes));
      return false;
    }
    if (n === 0) return !this.#mustPause();
    this.#bytes += n;
    const keep = owned && n >= this.#minOwnedBytes && isWholeArrayBuffer(chunk);
    if (this.#overflowBytes > 0 || (this.#batch === undefined && n <= this.#stageLimit())) {
      this.#stash(chunk, keep);
      if (this.#overflowBytes > this.#stageLimit()) this.#pump();
    } else if (keep) this.#addOwned(chunk);
    else this.#addCopy(chunk);
    return !this.#mustPause();
  }

  drained(): Promise<void> {
    if (this.#error !== undefined) return Promise.reject(this.#error);
    if (!this.#mustPause()) return Promise.resolve();
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /**
   * Hands every byte received to storage and waits until all is written and hashed. Used at
   * the end of a body, and when the client went away (what arrived is kept: the upload stays
   * consistent and resumable at the new offset). Rejects with the first storage error.
   */
  async flush(): Promise<void> {
    this.#finished = true;
    for (;;) {
      if (this.#error !== undefined) break;
      this.#pump();
      if (this.#overflowBytes === 0 && this.#batch !== undefined && this.#batch.bytes > 0) this.#dispatch();
      if (this.#overflowBytes === 0) break;
      await this.#progress();
    }
    await this.#writeChain;
    await this.#hashChain;
    if (this.#batch) {
      if (this.#batch.timer !== undefined) clearTimeout(this.#batch.timer);
      this.#d.slabs.release(this.#batch.slab);
      this.#batch = undefined;
    }
    if (this.#error !== undefined) {
      this.#hashDirty = true;
      throw this.#error;
    }
  }

  /** Bytes the overflow may hold without pausing the socket: the stage, before the first batch and while trickling. */
  #stageLimit(): number {
    return this.#batches === 0 || this.#trickling ? this.#stageBytes : 0;
  }

  #mustPause(): boolean {
    return this.#overflowBytes > this.#stageLimit() || this.#inflight >= this.#d.maxInflightSlabs || this.#waitingForSlab;
  }

  /** Adds an owned chunk to the filling batch as it is; without a slab, to the overflow. */
  #addOwned(chunk: Uint8Array): void {
    if (this.#batch !== undefined && this.#batch.bytes > 0 && this.#batch.bytes + chunk.byteLength > this.#slabBytes) this.#dispatch();
    if (this.#batch === undefined && !this.#takeSlab()) {
      this.#stash(chunk, true);
      return;
    }
    const b = this.#batch!;
    if (b.bytes === 0) this.#armFillTimer(b);
    b.parts.push(chunk);
    b.bytes += chunk.byteLength;
    b.run = undefined;
    if (b.bytes >= this.#slabBytes) this.#dispatch();
  }

  /** Copies as much of a borrowed chunk as slabs allow into batches; the rest goes to the overflow. */
  #addCopy(chunk: Uint8Array): void {
    let pos = 0;
    while (pos < chunk.byteLength) {
      if (this.#batch === undefined && !this.#takeSlab()) break;
      const b = this.#batch!;
      if (b.bytes === 0) this.#armFillTimer(b);
      const n = Math.min(this.#slabBytes - b.bytes, chunk.byteLength - pos);
      this.#d.slabs.withMemory(b.slab).set(pos === 0 && n === chunk.byteLength ? chunk : chunk.subarray(pos, pos + n), b.copied);
      if (b.run === undefined) {
        b.run = { start: b.copied, end: b.copied };
        b.parts.push(b.run);
      }
      b.copied += n;
      this.#copiedBytes += n;
      b.run.end = b.copied;
      b.bytes += n;
      pos += n;
      if (b.bytes >= this.#slabBytes) this.#dispatch();
    }
    if (pos < chunk.byteLength) this.#stash(pos === 0 ? chunk : chunk.subarray(pos), false);
  }

  /** Keeps a chunk until a slab is free; a borrowed one as a copy, which is then owned. */
  #stash(chunk: Uint8Array, owned: boolean): void {
    const kept = owned ? chunk : Uint8Array.prototype.slice.call(chunk);
    if (!owned) this.#copiedBytes += kept.byteLength;
    this.#overflow.push(kept);
    this.#overflowBytes += kept.byteLength;
  }

  /** Starts a batch within this upload's and the pool's bounds, or arranges to be woken. */
  #takeSlab(): boolean {
    if (this.#inflight >= this.#d.maxInflightSlabs || this.#waitingForSlab) return false;
    const slab = this.#d.slabs.tryAcquire();
    if (slab) {
      this.#batch = newBatch(slab);
      return true;
    }
    this.#waitingForSlab = true;
    void this.#d.slabs.acquire().then((s) => {
      this.#waitingForSlab = false;
      if (this.#batch || (this.#finished && this.#overflowBytes === 0) || this.#error !== undefined) {
        this.#d.slabs.release(s);
      } else {
        this.#batch = newBatch(s);
      }
      this.#pump();
    });
    return false;
  }

  /** Moves the overflow into batches when there is room again; wakes the socket when below the bounds. */
  #pump(): void {
    while (this.#overflowBytes > 0 && this.#error === undefined) {
      if (this.#batch === undefined && !this.#takeSlab()) break;
      const b = this.#batch!;
      const head = this.#overflow[0]!;
      if (b.bytes > 0 && b.bytes + head.byteLength > this.#slabBytes) {
        this.#dispatch();
        continue;
      }
      this.#overflow.shift();
      this.#overflowBytes -= head.byteLength;
      // It fits the batch (checked above): a copy takes no second slab, so nothing of it
      // goes back to the overflow behind later chunks.
      if (head.byteLength >= this.#minOwnedBytes) this.#addOwned(head);
      else this.#addCopy(head);
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

  #armFillTimer(b: Batch): void {
    b.startedAt = Date.now();
    b.seenBytes = 0;
    b.timer = setTimeout(() => this.#checkFill(b), IDLE_MS);
    b.timer.unref();
  }

  /**
   * The filling batch's timer: sends it on when MAX_FILL_MS passed, or when it received nothing
   * since the last look while uploads wait for a slab (IDLE_MS).
   */
  #checkFill(b: Batch): void {
    if (this.#batch !== b || b.bytes === 0 || this.#error !== undefined) {
      b.timer = undefined;
      return;
    }
    if (Date.now() - b.startedAt >= MAX_FILL_MS) {
      this.#sendOnStalled(b);
    } else if (b.bytes === b.seenBytes && this.#othersWait()) {
      // Timers run before the event loop reads sockets: after a busy spell, bytes may be
      // waiting that it has not handed over yet. Look again once it has (setImmediate runs
      // after this turn's reads).
      setImmediate(() => {
        if (this.#batch !== b || this.#error !== undefined) return;
        if (b.bytes === b.seenBytes && this.#othersWait()) this.#sendOnStalled(b);
        else this.#lookAgain(b);
      });
    } else {
      this.#lookAgain(b);
    }
  }

  /**
   * Uploads wait for a slab, and this one has not paused its socket itself (storage or
   * hashing behind): if no bytes come, it is the client's doing.
   */
  #othersWait(): boolean {
    return this.#d.slabs.waiting > 0 && !this.#mustPause();
  }

  #lookAgain(b: Batch): void {
    b.seenBytes = b.bytes;
    b.timer!.refresh();
  }

  #sendOnStalled(b: Batch): void {
    b.timer = undefined;
    this.#dispatch(true);
    this.#pump();
  }

  /** Sends the filling batch on: written to storage, then hashed. `timedOut`: it stopped filling (#checkFill()). */
  #dispatch(timedOut = false): void {
    const b = this.#batch!;
    this.#batch = undefined;
    if (b.timer !== undefined) clearTimeout(b.timer);
    // Half a slab in time (a batch goes out a chunk short of full when the next does not fit).
    if (timedOut) this.#trickling = true;
    else if (2 * b.bytes >= this.#slabBytes) this.#trickling = false;
    const offset = this.#offset;
    this.#offset += b.bytes;
    this.#inflight++;
    this.#batches++;
    const parts = b.parts.map((p) => (p instanceof Uint8Array ? p : b.slab.bytes.subarray(p.start, p.end)));
    const written = (this.#writeChain = this.#writeChain.then(() => this.#store(parts)));
    const hashed = (this.#hashChain = Promise.all([this.#hashChain, written]).then(() => this.#hash(b, parts, offset)));
    void hashed.then(() => {
      this.#d.slabs.release(b.slab);
      this.#inflight--;
      this.#pump();
    });
  }

  async #store(parts: Uint8Array[]): Promise<void> {
    // After a failed write nothing more may be written: the stored bytes must stay a prefix.
    if (this.#error !== undefined) return;
    const w = this.#d.writer;
    try {
      if (parts.length > 1 && w.writev) await w.writev(parts);
      else for (const p of parts) await w.write(p);
    } catch (err) {
      this.#fail(err);
    }
  }

  /**
   * Feeds a stored batch to the running hash. Its memory moves to the worker (so nothing here
   * may touch `parts` afterwards) and the slab's comes back with the answer.
   */
  async #hash(b: Batch, parts: Uint8Array[], offset: number): Promise<void> {
    // An error means this batch (or one before it) is not in storage: the hash stays behind.
    if (this.#hashDirty || this.#error !== undefined) return;
    const slabs = this.#d.slabs;
    const giveBack = b.copied > 0 ? b.slab.buffer : undefined;
    try {
      const r = await this.#d.hashPool.update(this.#d.hashKey, this.#pin, parts, offset, true, giveBack);
      if (r.returned) slabs.replace(b.slab, r.returned);
      if (r.ok) {
        this.#pin = r.threadId;
        return;
      }
      // The state is gone (worker restarted, or this instance never saw the upload's start).
      // This batch is in storage already: rebuild the state from there, through its end.
      this.#pin = await this.#d.rebuildHash(offset + b.bytes);
    } catch {
      // A hashing failure loses no data: the digest is rebuilt from storage at commit. A slab
      // moved to a worker that never answered is left detached (no memory): the pool gives it
      // new memory when it is next copied into (withMemory()).
      this.#hashDirty = true;
    }
  }
}

function newBatch(slab: Slab): Batch {
  return { slab, parts: [], bytes: 0, copied: 0, run: undefined, timer: undefined, startedAt: 0, seenBytes: 0 };
}

/** A view of all of a private ArrayBuffer: one the sink can keep, and move to another thread. */
function isWholeArrayBuffer(chunk: Uint8Array): boolean {
  return chunk.byteOffset === 0 && chunk.buffer instanceof ArrayBuffer && chunk.byteLength === chunk.buffer.byteLength;
}
