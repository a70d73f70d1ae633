import type { BodySink } from './adapter.js';
import { isTakenLength } from './limits.js';

/**
 * How long a connection that closes after its answer goes on reading, and dropping, what the
 * client still sends. Closed at once with bytes unread, a socket is reset by the kernel, and a
 * client still writing its body gets EPIPE or ECONNRESET instead of the answer waiting in its
 * receive buffer (Node's client did, for 1 to 2 in 6 chunked PATCHes answered 404 or 416 on
 * either front end; Go's copes). Apache calls it a lingering close; Go's server waits 500 ms
 * after its FIN.
 */
export const LINGER_MS = 2000;

/**
 * The most of a body answered early (a 401, 404 or 416 sent before it was read) that is read
 * and dropped to keep its connection. A longer rest, or a chunked one, whose length nobody
 * knows, closes the connection after the answer instead, with the lingering close above, which
 * also reads no more than this. Read to its end, a body kept coming for as long as its client
 * liked: an unauthenticated one sent 9.6 GiB in 5 s after its 401, on one connection (found by
 * probing). Go's server, so distribution's, reads 256 KiB and then closes.
 */
export const DRAIN_MAX_BYTES = 1024 * 1024;

/**
 * Whether what is left of a body answered early, `receivedBytes` of it in, is short enough to
 * read and drop to keep the connection (DRAIN_MAX_BYTES). A length the registry does not take
 * (limits.ts isTakenLength) is not: node:http would drain up to 10^19 bytes of it.
 */
export function drainable(contentLength: string | undefined, transferEncoding: string | undefined, receivedBytes: number): boolean {
  if (transferEncoding !== undefined) return false;
  if (contentLength === undefined) return true;
  return isTakenLength(contentLength) && Number(contentLength) - receivedBytes <= DRAIN_MAX_BYTES;
}

/**
 * A body that brought this much before anyone read it (or ended) is ready (BodyPump.ready):
 * its client is sending, and the upload engine admits it before those whose bodies trickle
 * (engine/admission.ts). A client sending a byte every few seconds takes hours to get here;
 * one pushing a layer, its first read. Node's own stream buffers 16 KiB (Node 20) or more
 * before it stops reading a request nobody reads yet, so both front ends can tell.
 */
export const READY_BYTES = 16 * 1024;

/**
 * The most bytes all bodies not yet started may hold for being read on past their first
 * chunk, towards READY_BYTES (8 MiB: 512 requests). Past it, a body's socket is paused after
 * its first chunk, as before readiness was asked: it is then ready only if that chunk made it
 * so. Bounded, as every early byte is memory nobody reads yet.
 */
export const EARLY_BUDGET_BYTES = 8 * 1024 * 1024;

/** Bytes held before start() by every pump in the process (EARLY_BUDGET_BYTES). */
let earlyHeld = 0;

/** Bytes held before start() by every pump in the process (for tests). */
export function earlyBytesHeld(): number {
  return earlyHeld;
}

/**
 * What a front end lets the pump do with its connection while a body is read.
 */
export interface BodyFlow {
  /** Stop reading from the socket (uWS res.pause(), node req.pause()). */
  pause(): void;
  /** Read again. */
  resume(): void;
  /**
   * The read is over: the body ended and went into the sink (`ended`), or it failed or was
   * given up. Whatever still arrives is the front end's to drop, and the socket must not be
   * left paused, or a keep-alive connection would never be read again.
   */
  stop(ended: boolean): void;
}

export interface BodyPumpOptions {
  /**
   * The front end hands over each chunk for good: nothing else reads or reuses its memory
   * once push() returns (node:http's parser copies every body chunk into a Buffer of its own).
   * The sink may then keep the chunk, or move its memory to another thread, instead of
   * copying it. Otherwise (uWS) a chunk is valid only during push().
   */
  chunksOwned: boolean;
}

/**
 * One request body on its way into a BodySink, the same for both front ends: the front end
 * calls push() for each chunk, end() when the body is complete and fail() when the client
 * went away; the pump writes into the sink and pauses the connection while the sink is full.
 *
 * Chunks that arrive before start() (the handler usually awaits storage, or admission, before
 * it reads the body) are kept, copied unless owned. The connection is read on until they make
 * READY_BYTES, within the process's EARLY_BUDGET_BYTES, and then paused; at most one more read
 * may land after the pause, and it is kept too.
 *
 * A sink that wants no more (write() returned false) gets no further chunks until its
 * drained() resolved, except those a read already under way delivers: they are written
 * (a sink must accept them) and the pump waits again. A sink that throws, whose drained()
 * rejects, or whose signal aborts, ends the read with that error.
 */
export class BodyPump {
  readonly #flow: BodyFlow;
  readonly #owned: boolean;
  #sink: BodySink | undefined;
  #settle: { resolve: (bytes: number) => void; reject: (err: unknown) => void } | undefined;
  #pending: Uint8Array[] = [];
  /** Bytes of #pending, counted in `earlyHeld`. */
  #pendingBytes = 0;
  #claimed = false;
  /** Why the read stopped before it was started, for a start() that comes after. */
  #stopError: unknown;
  #bytes = 0;
  #ended = false;
  /** Settled or given up: chunks that still arrive are dropped. */
  #stopped = false;
  #sinkFull = false;
  #draining = false;
  #signal: AbortSignal | undefined;
  readonly #onAbort = (): void => this.#stop(this.#signal!.reason);

  constructor(flow: BodyFlow, opts: BodyPumpOptions) {
    this.#flow = flow;
    this.#owned = opts.chunksOwned;
  }

  /** Body bytes received so far, including any dropped after the read stopped. */
  get bytes(): number {
    return this.#bytes;
  }

  get started(): boolean {
    return this.#claimed;
  }

  get stopped(): boolean {
    return this.#stopped;
  }

  /**
   * Whether the body, before start(), brought READY_BYTES or ended, or the read is over (the
   * client went away: reading it costs nothing). Nothing else than a hint for who goes first.
   */
  get ready(): boolean {
    return this.#ended || this.#stopped || this.#bytes >= READY_BYTES;
  }

  /**
   * Reads the rest of the body into `sink`; resolves with the body's byte count once it
   * ended, rejects with what stopped it. Call once.
   */
  start(sink: BodySink): Promise<number> {
    if (this.#claimed) return Promise.reject(new Error('BodyPump.start() called twice'));
    this.#claimed = true;
    if (this.#stopped) {
      // The read stopped before it was started (the client went away after sending some of
      // its body): what it sent is still written, so the upload resumes from there.
      const pending = this.#pending;
      this.#pending = [];
      try {
        // Owned by now: copied on arrival unless the front end's were.
        for (const chunk of pending) sink.write(chunk, true);
      } catch {
        // The sink refused them: the read's own error is what the caller is told.
      }
      return Promise.reject(this.#stopError);
    }
    if (sink.signal?.aborted) {
      this.#stop(sink.signal.reason);
      return Promise.reject(this.#stopError);
    }
    return new Promise<number>((resolve, reject) => {
      this.#settle = { resolve, reject };
      this.#sink = sink;
      this.#signal = sink.signal;
      this.#signal?.addEventListener('abort', this.#onAbort, { once: true });
      const pending = this.#pending;
      this.#pending = [];
      this.#releaseEarly();
      for (const chunk of pending) {
        if (this.#stopped) return;
        this.#write(chunk, true);
      }
      if (this.#stopped || this.#draining) return; // #drain() resumes or finishes
      if (this.#ended) this.#finish();
      else this.#flow.resume();
    });
  }

  /** A chunk from the socket; see BodyPumpOptions.chunksOwned for how long it is valid. */
  push(chunk: Uint8Array): void {
    const n = chunk.byteLength;
    this.#bytes += n;
    if (this.#stopped || n === 0) return;
    if (this.#sink === undefined) {
      this.#pending.push(this.#owned ? chunk : chunk.slice());
      this.#pendingBytes += n;
      earlyHeld += n;
      // Read on only towards readiness, and only within the budget the first chunks leave.
      if (this.#bytes >= READY_BYTES || earlyHeld > EARLY_BUDGET_BYTES) this.#flow.pause();
      return;
    }
    this.#write(chunk, this.#owned);
  }

  /** The body is complete. */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    // Nothing more to read: paused as a body that reached READY_BYTES is (uWS's idle timer
    // then leaves the connection alone while the request waits).
    if (this.#sink === undefined && !this.#stopped) this.#flow.pause();
    if (this.#sink !== undefined && !this.#draining && !this.#stopped) this.#finish();
  }

  /**
   * Ends the read with `err` (the client went away, the body stalled, or the response went
   * out before the body was read) and drops the rest. Nothing happens once it settled.
   */
  fail(err: unknown): void {
    this.#stop(err);
  }

  #write(chunk: Uint8Array, owned: boolean): void {
    let more: boolean;
    try {
      more = this.#sink!.write(chunk, owned);
    } catch (err) {
      // Thrown inside a socket callback it would be an uncaught exception.
      this.#stop(err);
      return;
    }
    if (more) return;
    this.#sinkFull = true;
    if (!this.#draining) void this.#drain();
  }

  /** Holds the connection paused until the sink drained, including for chunks written meanwhile. */
  async #drain(): Promise<void> {
    this.#draining = true;
    this.#flow.pause();
    try {
      while (this.#sinkFull && !this.#stopped) {
        this.#sinkFull = false;
        await this.#sink!.drained();
      }
    } catch (err) {
      this.#draining = false;
      this.#stop(err); // the sink failed: nobody will read the rest
      return;
    }
    this.#draining = false;
    if (this.#stopped) return;
    if (this.#ended) this.#finish();
    else this.#flow.resume();
  }

  #releaseEarly(): void {
    earlyHeld -= this.#pendingBytes;
    this.#pendingBytes = 0;
  }

  #finish(): void {
    const settle = this.#settle;
    this.#stopped = true;
    this.#signal?.removeEventListener('abort', this.#onAbort);
    this.#settle = undefined;
    this.#sink = undefined;
    this.#flow.stop(true);
    settle?.resolve(this.#bytes);
  }

  #stop(err: unknown): void {
    if (this.#stopped) return;
    const settle = this.#settle;
    this.#stopped = true;
    this.#signal?.removeEventListener('abort', this.#onAbort);
    this.#stopError = err;
    this.#settle = undefined;
    this.#sink = undefined;
    // Chunks kept before start() stay for a start() that may still come (it writes them, then
    // fails): with uWS reading on towards READY_BYTES, a client's FIN after its first bytes is
    // seen before the handler reads the body, and those bytes are the client's all the same.
    // They no longer count against the early budget: at most READY_BYTES and one read, gone
    // with the request.
    if (this.#claimed) this.#pending = [];
    this.#releaseEarly();
    this.#flow.stop(this.#ended);
    settle?.reject(err);
  }
}
