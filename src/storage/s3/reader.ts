import { Readable } from 'node:stream';
import { StorageUnavailableError } from '../driver.js';
import { isStoreUnavailable } from './deadlines.js';
import { httpStatus } from './errors.js';
import type { RangeFetch } from './range-fetch.js';

/**
 * Blob reads ahead of the client. One GET streams an object at the speed of one request's
 * path through the store (one OSD read after another, here); a pull goes faster when the
 * next ranges are already being fetched while the client takes the current one, which is
 * what distribution's s3 driver does not do.
 *
 * A read of [offset, offset + length) is cut into windows of `windowBytes`, each one ranged
 * GET. The first window streams to the client as it arrives; up to `windowsAhead` further
 * windows are fetched at the same time into memory and handed on in order. Every window's
 * body is read as fast as the store sends it, never paused for a slow client (whose
 * slowness would otherwise look like a dead store to the no-progress deadline), so what one
 * read holds is bounded by (1 + windowsAhead) x windowBytes, and what all reads hold ahead
 * by the driver-wide ReadAhead budget: without budget, a read fetches one window at a time.
 *
 * A window whose body breaks off (reset, no progress) is asked again for the bytes it still
 * owes, within the driver's deadlines (deadlines.ts); then the read fails with
 * StorageUnavailableError. The response already started, so the client sees a short body.
 */
export interface RangedReadOptions {
  /** Sends one ranged GET (range-fetch.ts). */
  fetch: RangeFetch;
  key: string;
  offset: number;
  length: number;
  windowBytes: number;
  windowsAhead: number;
  budget: ReadAhead;
  /** A broken window body is asked again this many times at most... */
  maxAttempts: number;
  /** ...and only this long after its first request. */
  retryForMs: number;
}

/** The bytes all reads may hold ahead of their clients (windows beyond each read's first). */
export class ReadAhead {
  readonly maxBytes: number;
  #used = 0;

  constructor(maxBytes: number) {
    this.maxBytes = maxBytes;
  }

  tryTake(bytes: number): boolean {
    if (this.#used + bytes > this.maxBytes) return false;
    this.#used += bytes;
    return true;
  }

  give(bytes: number): void {
    this.#used -= bytes;
  }

  get usedBytes(): number {
    return this.#used;
  }
}

interface Window {
  readonly start: number;
  end: number;
  /** From the answer's Content-Range. */
  objectSize?: number;
  readonly chunks: Buffer[];
  received: number;
  done: boolean;
  /** Bytes taken from the budget (0 for a window that streams). */
  charged: number;
  readonly abort: AbortController;
  body?: Readable;
}

export class RangedReader extends Readable {
  readonly #o: RangedReadOptions;
  readonly #windows: Window[] = [];
  /** Start of the next window not yet requested. */
  #next: number;
  #end: number;
  #wanting = false;

  private constructor(o: RangedReadOptions) {
    // Large enough that the consumer is not asked for every 64 KiB socket read.
    super({ highWaterMark: 1024 * 1024 });
    this.#o = o;
    this.#next = o.offset;
    this.#end = o.offset + o.length;
  }

  /**
   * Starts the read; resolves once the store has answered the first window, so that a
   * missing object or an unreachable store fails here, before the caller has answered.
   */
  static async open(o: RangedReadOptions): Promise<RangedReader> {
    const r = new RangedReader(o);
    const first = r.#startWindow(0);
    const answered = r.#request(first, first.start);
    const size = await answered.then(() => first.objectSize);
    if (size !== undefined && size < r.#end) {
      // Asked past the end: the object ends sooner (the store's Content-Range says where).
      r.#end = size;
      first.end = Math.min(first.end, size);
      r.#next = first.end;
    }
    void r.#fetch(first, answered);
    r.#fillAhead();
    return r;
  }

  override _read(): void {
    this.#wanting = true;
    this.#drain();
  }

  override _destroy(err: Error | null, callback: (error?: Error | null) => void): void {
    for (const w of this.#windows.splice(0)) {
      w.abort.abort();
      w.body?.destroy();
      if (w.charged > 0) this.#o.budget.give(w.charged);
    }
    callback(err);
  }

  #startWindow(charged: number): Window {
    const start = this.#next;
    const end = Math.min(this.#end, start + this.#o.windowBytes);
    this.#next = end;
    const w: Window = { start, end, chunks: [], received: 0, done: false, charged, abort: new AbortController() };
    this.#windows.push(w);
    return w;
  }

  /** Starts windows ahead while this read and the budget allow; the head window needs no budget. */
  #fillAhead(): void {
    while (this.#next < this.#end && !this.destroyed) {
      if (this.#windows.length === 0) {
        const w = this.#startWindow(0);
        void this.#fetch(w, this.#request(w, w.start));
        continue;
      }
      if (this.#windows.length > this.#o.windowsAhead) return;
      const bytes = Math.min(this.#end - this.#next, this.#o.windowBytes);
      if (!this.#o.budget.tryTake(bytes)) return;
      const w = this.#startWindow(bytes);
      void this.#fetch(w, this.#request(w, w.start));
    }
  }

  /** Reads a window's body, asking again for what a broken body still owes. */
  async #fetch(w: Window, answered: Promise<Readable>): Promise<void> {
    const startedAt = Date.now();
    let attempts = 1;
    let body = answered;
    for (;;) {
      try {
        await this.#take(w, await body);
        if (w.received !== w.end - w.start) throw new Error(`S3 GET of ${this.#o.key}: ${w.received} of ${w.end - w.start} bytes`);
        w.done = true;
        w.body = undefined;
        this.#drain();
        return;
      } catch (err) {
        if (this.destroyed || w.abort.signal.aborted) return;
        const unavailable = isStoreUnavailable(err);
        // 403: the presigned URL may have expired with its credentials; a new one is made.
        const again = unavailable || (httpStatus(err) === 403 && attempts === 1);
        if (!again || attempts >= this.#o.maxAttempts || Date.now() - startedAt > this.#o.retryForMs) {
          this.destroy(unavailable && !(err instanceof StorageUnavailableError)
            ? new StorageUnavailableError(`S3 GET of ${this.#o.key} failed: ${(err as Error).message}`, { cause: err })
            : err as Error);
          return;
        }
        attempts++;
        body = this.#request(w, w.start + w.received);
      }
    }
  }

  /**
   * Collects a body's chunks into its window as they come ('data' events: an async iterator
   * costs a promise per 64 KiB, which a pull of a GiB notices), handing on the head's at once.
   */
  #take(w: Window, body: Readable): Promise<void> {
    return new Promise((resolve, reject) => {
      body.on('data', (b: Buffer) => {
        w.received += b.length;
        if (w.received > w.end - w.start) {
          body.destroy(new Error(`S3 GET of ${this.#o.key}: more bytes than the range asked for`));
          return;
        }
        w.chunks.push(b);
        if (w === this.#windows[0] && this.#wanting) this.#drain();
      });
      body.once('end', resolve);
      body.once('error', reject);
      body.once('close', () => {
        if (!body.readableEnded) reject(new Error(`S3 GET of ${this.#o.key}: the body was cut off`));
      });
    });
  }

  /** A ranged GET of [from, w.end); resolves with its body once the store answered. */
  async #request(w: Window, from: number): Promise<Readable> {
    const answer = await this.#o.fetch(this.#o.key, from, w.end, w.abort.signal);
    w.objectSize = answer.objectSize;
    w.body = answer.body;
    return w.body;
  }

  /** Hands on what the head window has, in order, while the consumer wants more. */
  #drain(): void {
    while (this.#wanting && this.#windows.length > 0) {
      const head = this.#windows[0]!;
      while (head.chunks.length > 0 && this.#wanting) this.#wanting = this.push(head.chunks.shift()!);
      if (head.chunks.length > 0 || !head.done) return;
      this.#windows.shift();
      if (head.charged > 0) this.#o.budget.give(head.charged);
      if (this.#windows.length === 0 && this.#next >= this.#end) {
        this.push(null);
        return;
      }
      this.#fillAhead();
    }
  }
}
