import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { BlobTooLargeError, RegistryError, toRegistryError } from '../errors.js';
import type { CommittedData, UploadEngine } from '../engine/uploads.js';
import type { BlobStore } from '../registry/blobs.js';
import type { Digest } from '../registry/reference.js';
import type { StorageDriver } from '../storage/driver.js';
import { isPathNotFound } from '../storage/driver.js';
import type { GcGuard } from '../gc/guard.js';
import { ProgressWatch } from './progress-watch.js';
import { isUpstreamDown, reasonOf, UpstreamUnavailableError, type UpstreamBlob } from './upstream.js';

/**
 * One blob on its way from the upstream into the cache, and out to every client that asked
 * for it meanwhile (a "flight"; the cache starts at most one per digest, src/proxy/cache.ts).
 *
 *   upstream body ──► UploadEngine.oneShot: slabs → hashing worker + storage writer
 *        │            (the upload engine's path: off the main thread, memory bounded, the
 *        │             digest checked at the end, nothing stored unless it matches)
 *        └──────────► every live reader (a client's response body), as the bytes arrive
 *
 * The fetch runs at the pace of storage and the hashing pool, never at a client's: a client
 * that falls more than READER_MAX_BUFFERED behind stops getting live bytes and continues from
 * storage once the blob is stored, and so does one that would take the live bytes all
 * clients hold unread past LIVE_BUDGET_BYTES. A client arriving after the first REPLAY_BYTES went by
 * does the same from the start; until then the fetch keeps those bytes for latecomers (a
 * fleet asking for one layer at once arrives within that window), within a budget for the
 * whole process (REPLAY_BUDGET_BYTES). An upstream that sends less than MIN_PROGRESS_BYTES
 * in a PROGRESS_WINDOW_MS of waiting for it is given up on, whoever still reads. The fetch
 * belongs to no client: one that goes away detaches, and the fetch goes on for the others and
 * the cache.
 *
 * Wrong bytes never finish a response: a reader holds back the last byte of its response
 * until the whole blob matched its digest (for a Range request too). If it does not, or the
 * upstream dies half way, nothing is stored and every reader ends short, which the front end
 * turns into a cut connection (src/http/node.ts, uws.ts: a body shorter than its
 * Content-Length): a client sees a failed transfer, never a complete wrong one.
 *
 * A response starts only with its first bytes in hand (`started`): a client waiting for
 * storage (it joined late, or fell behind at once), or whose only byte is the held-back one,
 * has no status line yet when the fetch fails, and gets the fetch's error (503) instead of a
 * connection cut before any byte, which a client cannot tell from a network fault.
 */

/** Bytes kept from the start of a fetch for clients that join late. */
const REPLAY_BYTES = 1024 * 1024;
/**
 * Bytes all fetches of the process (every cache, namespaces included) keep for late joiners
 * at most. REPLAY_BYTES each bounds a fetch, and proxy.maxBlobFetches the fetches of one
 * cache, but not their product over several caches, or a large maxBlobFetches. A fetch that
 * finds the budget spent keeps nothing more (what it kept goes back to the budget): its later
 * joiners wait for the blob to be stored and read it from there, as those arriving after
 * REPLAY_BYTES do. That is the safe way to go over: it costs no memory, and no second
 * upstream fetch of the same blob (which would take another of maxBlobFetches, and another
 * writer of the same bytes); the joiner's first byte comes later, that is all.
 */
const REPLAY_BUDGET_BYTES = 64 * 1024 * 1024;
let replayBytesInUse = 0;
/** A reader's unread bytes past which it stops getting live bytes (it continues from storage). */
const READER_MAX_BUFFERED = 8 * 1024 * 1024;
/**
 * Live bytes (pushed by a fetch as they came, not read back from storage) that readers of
 * every fetch in the process hold unread: their clients have not taken them yet. Counted per
 * reader, so bytes that several readers share count once for each: what this says is at
 * least what they hold.
 */
let liveBytesInUse = 0;
/**
 * What liveBytesInUse may reach. READER_MAX_BUFFERED bounds one reader, but nothing bounded
 * the readers: 24 clients of one 24 MiB fetch that read nothing held 193 MiB, and a few
 * hundred slow connections would hold GiBs. A reader whose next live bytes would take the
 * total past this stops getting live bytes, as one 8 MiB behind does, and continues from
 * storage once the blob is stored: that costs no memory, no second upstream fetch and no
 * refusal, and keeps its bytes right; it only starts (or goes on) later. That goes for clients
 * keeping up too, while slow ones hold the budget (a reader's bytes are pushed before its
 * front end takes them, and would be held if it paused): slow clients can make others wait
 * for storage, never make them wrong. 128 MiB: sixteen clients a full READER_MAX_BUFFERED behind,
 * twice the bytes kept for late joiners (REPLAY_BUDGET_BYTES); honest clients of a fetch read
 * as fast as the upstream sends (a LAN client behind a WAN upstream) and hold next to nothing.
 */
const LIVE_BUDGET_BYTES = 128 * 1024 * 1024;

/** Live bytes of upstream blob fetches that their clients hold unread now, process-wide (metrics). */
export function liveClientBytes(): number {
  return liveBytesInUse;
}

/**
 * An upstream that sends less than MIN_PROGRESS_BYTES in this long is given up on
 * (progress-watch.ts). Its fetch holds one of proxy.maxBlobFetches, a storage writer and its
 * replay bytes; with its clients gone, nothing else would ever end it (an upstream that sent
 * headers and then stalled held its fetch, and pulls of the blob joined it, for as long as the
 * connection stayed up; one that sent a byte every 9 s got past the 10 s byte-idle timeout
 * that came first: the first found by probing, the second a known gap). Only time spent waiting for the upstream counts,
 * not time waiting for storage and the hashing pool to take what came (the pump never waits
 * for clients: a slow one falls behind and continues from storage). HOIST_TEST_PROXY_BLOB_WINDOW_MS
 * shortens it for the tests (config.ts testSettings).
 */
export const PROGRESS_WINDOW_MS = 10_000;
/**
 * 32 KiB in 10 s: 3.2 KiB/s, some 26 kbit/s. A link that slow is still served (64 fetches at
 * once need 1.6 Mbit/s of it), and a hostile upstream holds a fetch for at most the blob's
 * size at that rate (uploads.maxBlobBytes bounds the size).
 */
export const MIN_PROGRESS_BYTES = 32 * 1024;

export interface FlightDeps {
  readonly driver: StorageDriver;
  readonly blobs: BlobStore;
  readonly uploads: UploadEngine;
  readonly guard: GcGuard;
  readonly log: Logger;
  readonly remote: string;
  /** PROGRESS_WINDOW_MS, unless the tests shortened it. */
  readonly progressWindowMs?: number;
}

type State = 'fetching' | 'verified' | 'failed';

export class BlobFlight {
  readonly repo: string;
  readonly digest: Digest;
  /** From the upstream's Content-Length; undefined when it sent none (then nobody streams live). */
  readonly size: number | undefined;
  /** Settles once the blob is stored (or not: the fetch failed). Never rejects. */
  readonly settled: Promise<boolean>;
  readonly #d: FlightDeps;
  readonly #abort: AbortController;
  #state: State = 'fetching';
  #error: unknown;
  #data: CommittedData | undefined;
  #received = 0;
  #replay: Uint8Array[] | undefined = [];
  /** Bytes in #replay, counted in replayBytesInUse. */
  #replayBytes = 0;
  readonly #live = new Set<FlightReader>();
  /** Readers waiting for the blob to be verified, to read it (or the rest of it) from storage. */
  readonly #waiting = new Set<FlightReader>();

  constructor(deps: FlightDeps, repo: string, digest: Digest, upstream: UpstreamBlob, abort: AbortController) {
    this.#d = deps;
    this.repo = repo;
    this.digest = digest;
    this.size = upstream.size;
    this.#abort = abort;
    this.settled = this.#run(upstream.body);
  }

  get received(): number {
    return this.#received;
  }

  /** Why the fetch failed, or its blob could not be recorded (a RegistryError), once `settled` said so. */
  get error(): unknown {
    return this.#error;
  }

  /**
   * A response body for bytes [start, end] (inclusive) of the blob. Throws when the fetch
   * already failed. Before the blob is verified, the last byte is held back (see above).
   */
  reader(start: number, end: number): FlightReader {
    if (this.#state === 'failed') throw this.#error;
    const r = new FlightReader(this, start, end);
    if (this.#state === 'verified') {
      this.#waiting.add(r);
      void r.fromStorage(this.#d, this.#data!, this.repo, this.digest);
      return r;
    }
    let live = this.#replay !== undefined;
    if (live) {
      let at = 0;
      for (const chunk of this.#replay!) {
        // No more once refused: a reader's bytes must come in order, the rest from storage.
        if (!r.offer(chunk, at)) {
          live = false;
          break;
        }
        at += chunk.byteLength;
      }
    }
    (live ? this.#live : this.#waiting).add(r);
    this.#d.log.debug({ repository: this.repo, digest: this.digest.value, receivedBytes: this.#received, live }, 'client joined a blob fetch in progress');
    return r;
  }

  /** Called by a reader that went away (the client left, or it finished). */
  detach(r: FlightReader): void {
    this.#live.delete(r);
    this.#waiting.delete(r);
  }

  /** Stops the fetch (shutdown). Readers end short. */
  abort(reason: unknown): void {
    this.#abort.abort(reason);
  }

  async #run(body: ReadableStream<Uint8Array>): Promise<boolean> {
    const t0 = Date.now();
    let data: CommittedData;
    try {
      data = await this.#d.uploads.oneShot(this.repo, this.digest, this.size, (sink) => this.#pump(body, sink));
    } catch (err) {
      this.#fail(err);
      return false;
    }
    this.#data = data;
    this.#state = 'verified';
    this.#dropReplay();
    for (const r of this.#live) r.finish();
    this.#live.clear();
    for (const r of this.#waiting) void r.fromStorage(this.#d, data, this.repo, this.digest);
    try {
      // The blob record goes in as a registered operation that touched the digest first, as an
      // upload commit does (gc/collector.ts, A and C): a collection running now spares it.
      await this.#d.guard.op(async () => {
        await this.#d.guard.touch([this.digest]);
        await this.#d.blobs.adopt(this.repo, this.digest, data);
      });
    } catch (err) {
      // The bytes are good and its readers get them; unrecorded, they are orphan data to the
      // collector, and the next pull fetches the blob again.
      this.#d.log.error({ repository: this.repo, digest: this.digest.value, err }, 'a fetched blob could not be recorded');
      this.#error = toRegistryError(err);
      return false;
    }
    this.#d.log.info({ repository: this.repo, digest: this.digest.value, size: data.size, ms: Date.now() - t0 }, 'blob fetched from upstream and stored');
    return true;
  }

  /** Upstream body → the engine's sink (with its backpressure) and every live reader. */
  async #pump(body: ReadableStream<Uint8Array>, sink: { write(chunk: Uint8Array): boolean; drained(): Promise<void> }): Promise<number> {
    const reader = body.getReader();
    let complete = false;
    const progress = new ProgressWatch({
      windowMs: this.#d.progressWindowMs ?? PROGRESS_WINDOW_MS,
      minBytes: MIN_PROGRESS_BYTES,
      onStall: (reason) => this.#abort.abort(new Error(reason)),
    });
    try {
      for (;;) {
        let next: ReadableStreamReadResult<Uint8Array>;
        try {
          next = await reader.read();
        } catch (err) {
          throw new UpstreamUnavailableError(this.#d.remote, `blob transfer broke off after ${this.#received} bytes: ${reasonOf(this.#abort.signal.aborted ? this.#abort.signal.reason : err)}`, err);
        }
        if (next.done) break;
        const chunk = next.value;
        progress.add(chunk.byteLength);
        this.#broadcast(chunk);
        // The sink copies what it keeps; the chunk itself is shared by the readers.
        if (!sink.write(chunk)) {
          // Storage or hashing is the one late now, not the upstream.
          progress.pause();
          await sink.drained();
          progress.resume();
        }
      }
      complete = true;
    } finally {
      progress.stop();
      // Stopped early (the sink failed): close the upstream connection rather than drain it.
      if (!complete) this.#abort.abort(new Error('fetch abandoned'));
      reader.releaseLock();
    }
    return this.#received;
  }

  #broadcast(chunk: Uint8Array): void {
    const at = this.#received;
    this.#received += chunk.byteLength;
    if (this.#replay) {
      if (this.#received <= REPLAY_BYTES && replayBytesInUse + chunk.byteLength <= REPLAY_BUDGET_BYTES) {
        this.#replay.push(chunk);
        this.#replayBytes += chunk.byteLength;
        replayBytesInUse += chunk.byteLength;
      } else {
        if (this.#received <= REPLAY_BYTES) {
          this.#d.log.debug({ repository: this.repo, digest: this.digest.value, replayBytesInUse }, 'replay budget spent: later joiners of this fetch read from storage');
        }
        this.#dropReplay();
      }
    }
    for (const r of this.#live) {
      if (!r.offer(chunk, at)) {
        this.#live.delete(r);
        this.#waiting.add(r);
        this.#d.log.debug({ repository: this.repo, digest: this.digest.value, receivedBytes: this.#received, clientBufferedBytes: liveBytesInUse }, 'client fell behind a blob fetch: it continues from storage');
      }
    }
  }

  /** No more bytes kept for late joiners; what was kept goes back to the budget. */
  #dropReplay(): void {
    replayBytesInUse -= this.#replayBytes;
    this.#replayBytes = 0;
    this.#replay = undefined;
  }

  #fail(err: unknown): void {
    this.#state = 'failed';
    // Bytes that are not the digest's, or not as many as announced, are the upstream's
    // fault: 503, which clients retry, not the 400 a push of them would get.
    const keep = err instanceof BlobTooLargeError || (err instanceof RegistryError && (isUpstreamDown(err) || err.code === 'UNAVAILABLE'));
    this.#error = keep ? err : new UpstreamUnavailableError(this.#d.remote,
      err instanceof RegistryError ? `it sent a blob that is not ${this.digest.value} (${err.message})` : reasonOf(err), err);
    this.#dropReplay();
    const fields = { repository: this.repo, digest: this.digest.value, receivedBytes: this.#received, readers: this.#live.size + this.#waiting.size };
    if (err instanceof RegistryError && err.code === 'DIGEST_INVALID') {
      this.#d.log.warn({ ...fields, detail: err.detail }, 'upstream sent a blob that does not match its digest: not stored, clients cut off');
    } else {
      this.#d.log.warn({ ...fields, err }, 'blob fetch from upstream failed: nothing stored, clients cut off');
    }
    for (const r of [...this.#live, ...this.#waiting]) r.cut(this.#error);
    this.#live.clear();
    this.#waiting.clear();
  }
}

/**
 * One client's response body, fed live by the flight or, once the blob is stored, from
 * storage. `#pos` is the next blob offset it needs; `#final` the held-back last byte.
 */
export class FlightReader extends Readable {
  /**
   * Resolves once the response can start: its first bytes are in, or it has none left to
   * wait for. Rejects with the reason when it is cut before that (the fetch failed); the
   * cache then answers with that error, and destroys the reader.
   */
  readonly started: Promise<void>;
  #start: { resolve: () => void; reject: (err: unknown) => void } | undefined;
  readonly #flight: BlobFlight;
  #pos: number;
  readonly #end: number;
  #final: Uint8Array | undefined;
  #storage: Readable | undefined;
  #wantMore: (() => void) | undefined;
  #eof = false;
  /** Bytes pushed live (by the flight), and in all (storage's too): live ones all come first. */
  #pushedLive = 0;
  #pushedTotal = 0;
  /** Refused live bytes once (too far behind, or over the budget): the rest comes from storage. */
  #behind = false;
  /** This reader's share of liveBytesInUse. */
  #liveHeld = 0;

  constructor(flight: BlobFlight, start: number, end: number) {
    super({ highWaterMark: 1024 * 1024 });
    this.started = new Promise<void>((resolve, reject) => (this.#start = { resolve, reject }));
    // Awaited by the cache as soon as it has the reader; never an unhandled rejection meanwhile.
    this.started.catch(() => undefined);
    this.#flight = flight;
    this.#pos = start;
    this.#end = end;
  }

  /**
   * Takes the live bytes [at, at + chunk.length); false when this reader fell too far behind,
   * or its bytes would take the live bytes held unread past LIVE_BUDGET_BYTES. Then it takes
   * none of them, nor any later: it goes on from #pos, from storage.
   */
  offer(chunk: Uint8Array, at: number): boolean {
    if (this.#behind) return false;
    const last = Math.min(this.#end, at + chunk.byteLength - 1);
    if (last >= this.#pos) {
      // Never the response's last byte before the blob is verified: keep it aside.
      const upto = last === this.#end ? last - 1 : last;
      if (upto >= this.#pos) {
        const piece = chunk.subarray(this.#pos - at, upto - at + 1);
        if (liveBytesInUse + piece.byteLength > LIVE_BUDGET_BYTES) {
          this.#behind = true;
          return false;
        }
        this.#pushed(piece, true);
        this.#pos = upto + 1;
        this.#began();
      }
      if (last === this.#end && this.#final === undefined) this.#final = chunk.slice(last - at, last - at + 1);
    }
    if (this.readableLength > READER_MAX_BUFFERED) this.#behind = true;
    return !this.#behind;
  }

  /** The blob is verified: the held-back byte, then the end. */
  finish(): void {
    if (this.#final !== undefined && this.#pos === this.#end) {
      this.#pushed(this.#final, true);
      this.#pos = this.#end + 1;
    }
    if (this.#pos > this.#end) this.#endStream();
  }

  /** push(), counted: `live` bytes come from the flight, the others from storage. */
  #pushed(chunk: Uint8Array, live: boolean): boolean {
    this.#pushedTotal += chunk.byteLength;
    if (live) this.#pushedLive += chunk.byteLength;
    const more = this.push(chunk);
    this.#account();
    return more;
  }

  /**
   * Brings this reader's share of liveBytesInUse up to date: the live bytes pushed and not
   * yet read. Reads are first in, first out, so what was read is the first bytes pushed, the
   * live ones before any from storage.
   */
  #account(): void {
    const read = this.#pushedTotal - this.readableLength;
    const held = this.destroyed ? 0 : Math.max(0, this.#pushedLive - read);
    liveBytesInUse += held - this.#liveHeld;
    this.#liveHeld = held;
  }

  /**
   * Every way the front end takes bytes goes through read(): its 'data' listener in flowing
   * mode (stream flow() calls it), and after a resume(). A chunk handed to a 'data' listener
   * straight from push() was never held: #pushed counts it as read at once.
   */
  override read(size?: number): unknown {
    const chunk: unknown = super.read(size);
    this.#account();
    return chunk;
  }

  #endStream(): void {
    if (this.#eof) return;
    this.#eof = true;
    this.#began();
    this.push(null);
  }

  /** The response may start: its first bytes are in (or its end is). */
  #began(): void {
    this.#start?.resolve();
    this.#start = undefined;
  }

  /** The rest, [#pos, #end], from the stored data (verified). */
  async fromStorage(d: FlightDeps, data: CommittedData, repo: string, digest: Digest): Promise<void> {
    if (this.destroyed) return;
    if (this.#pos > this.#end || (this.#final !== undefined && this.#pos === this.#end)) {
      this.finish();
      return;
    }
    try {
      const length = this.#end - this.#pos + 1;
      try {
        this.#storage = await d.driver.reader(data.dataPath, this.#pos, length);
      } catch (err) {
        // Another instance stored the same blob first, and ours went as a duplicate: read theirs.
        if (!isPathNotFound(err)) throw err;
        const read = await d.blobs.open(repo, digest, { start: this.#pos, end: this.#end });
        if (read.redirect) throw err;
        this.#storage = read.stream;
      }
      for await (const chunk of this.#storage as AsyncIterable<Buffer>) {
        if (this.destroyed) return;
        this.#pos += chunk.byteLength;
        const more = this.#pushed(chunk, false);
        this.#began();
        if (!more) await new Promise<void>((resolve) => (this.#wantMore = resolve));
      }
      if (this.#pos !== this.#end + 1) throw new Error(`storage returned ${this.#pos} of ${this.#end + 1} bytes`);
      this.#endStream();
    } catch (err) {
      d.log.warn({ repository: repo, digest: digest.value, err }, 'reading a fetched blob back from storage failed; client cut off');
      this.cut(err);
    } finally {
      this.#flight.detach(this);
    }
  }

  /**
   * Ends the response short, so that the front end cuts the connection. Through 'error' when
   * the front end already listens; otherwise by ending early, which it treats the same way
   * once it reads (an 'error' nobody listens to yet would be lost, or crash the process).
   */
  cut(err: unknown): void {
    if (this.destroyed || this.#eof) return;
    if (this.#start) {
      // Not started: no response is under way, the cache answers with the error.
      this.#start.reject(err);
      this.#start = undefined;
      return;
    }
    if (this.listenerCount('error') > 0) this.destroy(err instanceof Error ? err : new Error(String(err)));
    else this.#endStream();
  }

  override _read(): void {
    const w = this.#wantMore;
    this.#wantMore = undefined;
    w?.();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#start?.reject(err ?? new Error('response body destroyed before it started'));
    this.#start = undefined;
    this.#flight.detach(this);
    // What it held unread goes with it (destroyed: #account counts none).
    this.#account();
    this.#storage?.destroy();
    const w = this.#wantMore;
    this.#wantMore = undefined;
    w?.();
    cb(err);
  }
}
