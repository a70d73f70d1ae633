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
  /** Requests that may wait for a slot (default 4,096); more are refused with 503. */
  readonly maxWaiting?: number;
}

const DEFAULT_WINDOW_MS = 10_000;
const DEFAULT_MIN_BYTES = 1024 * 1024;
const DEFAULT_MAX_WAITING = 4096;

/**
 * While a request whose body is ready waits, an admitted body is held to the same rate over
 * this fraction of the window (2.5 s of the default 10 s): the ready one's client is sending,
 * and a crawling one keeps it out at no cost of its own.
 */
const READY_WINDOW_FRACTION = 4;

/** A request waiting for a slot. */
interface Waiter {
  /** Whether its body is arriving or there (BodySource.ready): it goes before those that are not. */
  readonly ready: () => boolean;
  readonly admit: () => void;
}

/**
 * Admission of writing requests, for drivers that gather whole parts in memory
 * (StorageDriver.maxConcurrentWriters): at most `slots` run at once; the others wait, their
 * sockets paused, holding nothing (the front end's few early bytes aside: body-pump.ts).
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
 *
 * Which one is next: first come, first served let trickling requests that came first take
 * the slots in turn, each for a window, while a push whose body was all there waited behind
 * them (found by probing: 100 of them held a 16 MiB push for about 60 s; eight held a 4 MiB
 * one for 44 s on two slots). So a waiting request whose body is ready (it brought its first
 * bytes while it waited, or all of them: BodySource.ready) goes first, in order of arrival
 * among the ready, then the others in order of arrival; and while a ready one waits, an
 * admitted body is held to the same rate over a quarter of the window. A client can still
 * send its first bytes quickly and then crawl: it then costs itself those bytes and holds a
 * slot for that quarter window, not the whole.
 */
export class Admission {
  readonly #slots: number;
  readonly #windowMs: number;
  readonly #minBytes: number;
  readonly #maxWaiting: number;
  #running = 0;
  /** In order of arrival; bounded by `maxWaiting`. */
  readonly #waiting: Waiter[] = [];
  readonly #admitted = new Set<Ticket>();
  #timer: NodeJS.Timeout | undefined;

  constructor(slots: number, opts: AdmissionOptions = {}) {
    this.#slots = Math.max(1, slots);
    this.#windowMs = opts.windowMs ?? DEFAULT_WINDOW_MS;
    this.#minBytes = opts.minBytes ?? DEFAULT_MIN_BYTES;
    this.#maxWaiting = opts.maxWaiting ?? DEFAULT_MAX_WAITING;
  }

  /** Requests waiting for a slot. */
  get waiting(): number {
    return this.#waiting.length;
  }

  /**
   * Runs `fn` once a slot is free; `fn` shows its body to the ticket while it reads one.
   * `ready`: whether the request's body is arriving or there, asked while it waits.
   * `onWait`: called once if the request has to wait, as it starts to: a body whose client
   * holds it back until asked (BodySource.invite) can only become ready if it comes now.
   */
  async run<T>(fn: (ticket: Ticket) => Promise<T>, ready: () => boolean = () => false, onWait?: () => void): Promise<T> {
    if (this.#running < this.#slots) {
      this.#running++;
    } else {
      if (this.#waiting.length >= this.#maxWaiting) throw new AdmissionFullError(this.#waiting.length);
      onWait?.();
      // The slot is handed over by the one that leaves it (#next): #running stays counted.
      await new Promise<void>((admit) => this.#waiting.push({ ready, admit }));
    }
    const ticket = new Ticket();
    this.#admitted.add(ticket);
    this.#timer ??= setInterval(() => this.#check(), Math.max(10, Math.floor(this.#windowMs / (2 * READY_WINDOW_FRACTION)))).unref();
    try {
      return await fn(ticket);
    } finally {
      this.#admitted.delete(ticket);
      if (this.#admitted.size === 0) {
        clearInterval(this.#timer);
        this.#timer = undefined;
      }
      this.#next();
    }
  }

  /** Hands the slot just left to the first ready waiter, else to the first waiter. */
  #next(): void {
    if (this.#waiting.length === 0) {
      this.#running--;
      return;
    }
    const i = this.#waiting.findIndex(isReady);
    const [w] = this.#waiting.splice(Math.max(0, i), 1);
    w!.admit();
  }

  #check(): void {
    const now = Date.now();
    const contended = this.#waiting.length > 0;
    const windowMs = contended && this.#waiting.some(isReady) ? this.#windowMs / READY_WINDOW_FRACTION : this.#windowMs;
    const minBytes = this.#minBytes * (windowMs / this.#windowMs);
    for (const t of this.#admitted) {
      const body = t.body;
      if (!contended || body === undefined || body.holdingBack) {
        t.mark(now);
      } else if (now - t.markedAt >= windowMs) {
        const brought = body.received - t.markedBytes;
        if (brought < minBytes) {
          t.stop(new BodyTooSlowError(body.received, brought, now - t.markedAt));
          if (channels.uploadStopped.hasSubscribers) channels.uploadStopped.publish({ receivedBytes: body.received });
        } else {
          t.mark(now);
        }
      }
    }
  }
}

/** A waiter's readiness; a BodySource that throws counts as not ready. */
function isReady(w: Waiter): boolean {
  try {
    return w.ready();
  } catch {
    return false;
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

/** 503: more writing requests wait for storage buffers than the admission keeps waiting. */
export class AdmissionFullError extends RegistryError {
  constructor(waiting: number) {
    super('UNAVAILABLE', {
      message: `${waiting} uploads already wait for storage buffers; try again later`,
    });
  }
}
