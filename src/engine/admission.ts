import pLimit, { type LimitFunction } from 'p-limit';
import { channels } from '../diagnostics.js';
import { RegistryError } from '../errors.js';

/** A body under watch: what the upload engine's sink (UploadWrite) tells of it. */
export interface WatchedBody {
  /** Bytes received so far. */
  readonly received: number;
  /** The sink asked the front end to stop sending (storage or hashing is behind): no fault of the client's. */
  readonly holdingBack: boolean;
}

export interface AdmissionOptions {
  /** How long a body may bring less than `minBytes` while others wait (default 10 s). */
  readonly windowMs?: number;
  /** default 1 MiB: about 100 KiB/s over the default window. */
  readonly minBytes?: number;
}

const DEFAULT_WINDOW_MS = 10_000;
const DEFAULT_MIN_BYTES = 1024 * 1024;

/**
 * Admission of writing requests, for drivers that gather whole parts in memory
 * (StorageDriver.maxConcurrentWriters): at most `slots` run at once; the others wait, their
 * sockets paused, holding nothing.
 *
 * An admitted request keeps its slot, and the part buffer behind it, for as long as its body
 * takes. The idle timeout sees only silence, so a client that sends a byte every few seconds
 * held a slot indefinitely, and `slots` such clients kept every other push out while costing
 * themselves nothing (found by probing: ten trickling PATCHes held a 4 MiB push on S3 for
 * over 75 s, and would have for good). So, while requests wait, an admitted one whose body
 * brought less than `minBytes` in the last `windowMs` (not counting time its sink held it
 * back) is stopped: its body's read ends with BodyTooSlowError (503; what arrived is kept, so
 * the upload resumes from its offset) and its slot goes to the next. With nobody waiting,
 * nobody is stopped: a slow client alone harms no one.
 */
export class Admission {
  readonly #limit: LimitFunction;
  readonly #windowMs: number;
  readonly #minBytes: number;
  readonly #admitted = new Set<Ticket>();
  #timer: NodeJS.Timeout | undefined;

  constructor(slots: number, opts: AdmissionOptions = {}) {
    this.#limit = pLimit(Math.max(1, slots));
    this.#windowMs = opts.windowMs ?? DEFAULT_WINDOW_MS;
    this.#minBytes = opts.minBytes ?? DEFAULT_MIN_BYTES;
  }

  /** Runs `fn` once a slot is free; `fn` shows its body to the ticket while it reads one. */
  run<T>(fn: (ticket: Ticket) => Promise<T>): Promise<T> {
    return this.#limit(async () => {
      const ticket = new Ticket();
      this.#admitted.add(ticket);
      this.#timer ??= setInterval(() => this.#check(), Math.max(10, Math.floor(this.#windowMs / 4))).unref();
      try {
        return await fn(ticket);
      } finally {
        this.#admitted.delete(ticket);
        if (this.#admitted.size === 0) {
          clearInterval(this.#timer);
          this.#timer = undefined;
        }
      }
    });
  }

  #check(): void {
    const now = Date.now();
    const contended = this.#limit.pendingCount > 0;
    for (const t of this.#admitted) {
      const body = t.body;
      if (!contended || body === undefined || body.holdingBack) {
        t.mark(now);
      } else if (now - t.markedAt >= this.#windowMs) {
        const brought = body.received - t.markedBytes;
        if (brought < this.#minBytes) {
          t.stop(new BodyTooSlowError(body.received, brought, now - t.markedAt));
          if (channels.uploadStopped.hasSubscribers) channels.uploadStopped.publish({ receivedBytes: body.received });
        } else {
          t.mark(now);
        }
      }
    }
  }
}

/** An admitted request. */
export class Ticket {
  readonly #controller = new AbortController();
  #body: WatchedBody | undefined;
  /** Since when, and from how many bytes received, the body's progress is counted. */
  markedAt = Date.now();
  markedBytes = 0;

  /** Aborted when the request is stopped: the sink passes it to the front end (ByteSink.signal). */
  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  get body(): WatchedBody | undefined {
    return this.#body;
  }

  /** The request reads `body` now (undefined: no longer). */
  watch(body: WatchedBody | undefined): void {
    this.#body = body;
    this.mark(Date.now());
  }

  mark(now: number): void {
    this.markedAt = now;
    this.markedBytes = this.#body?.received ?? 0;
  }

  stop(reason: BodyTooSlowError): void {
    this.#controller.abort(reason);
  }
}

/**
 * 503: the client may try again (resuming from the upload's offset), when storage buffers
 * are less contended or its link is faster.
 */
export class BodyTooSlowError extends RegistryError {
  constructor(receivedBytes: number, broughtBytes: number, overMs: number) {
    super('UNAVAILABLE', {
      message: `request body too slow: ${broughtBytes} bytes in ${Math.round(overMs / 1000)} s while other uploads waited for storage buffers; resume from the upload's offset`,
      detail: { receivedBytes },
    });
  }
}
