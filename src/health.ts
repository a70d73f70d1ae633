import type { StorageDriver } from './storage/driver.js';

/**
 * Readiness (`GET /readyz`): can this instance serve, that is, does its storage answer?
 * The check lists the store's root: one readdir on fs, one or two ListObjectsV2 of a page on
 * S3 (the root holds a handful of prefixes). An unreadable directory, a bucket gone, bad
 * credentials or an endpoint that is down all fail it; a slow one fails after `timeoutMs`.
 *
 * The probe is unauthenticated and anyone can call it, so it must not turn requests into
 * storage load: checks are coalesced (one at a time) and a result is reused for `cacheMs`.
 * The reason given is the error's code (EACCES, NoSuchBucket, ECONNREFUSED), never its
 * message, which may name paths or endpoints; the log gets the whole error.
 */
export type Readiness = { ready: true } | { ready: false; reason: string };

export interface ReadinessOptions {
  /** Longest a check may take before the instance counts as not ready. */
  timeoutMs?: number;
  /** A result is reused this long. */
  cacheMs?: number;
  /** Called when readiness changes (not on every check), with the error that made it fail. */
  onChange?: (now: Readiness, err?: unknown) => void;
}

export class ReadinessCheck {
  readonly #driver: StorageDriver;
  readonly #timeoutMs: number;
  readonly #cacheMs: number;
  readonly #onChange: ((now: Readiness, err?: unknown) => void) | undefined;
  #running: Promise<Readiness> | undefined;
  #last: { at: number; result: Readiness } | undefined;
  #closing = false;
  #wasReady = true;

  constructor(driver: StorageDriver, opts: ReadinessOptions = {}) {
    this.#driver = driver;
    this.#timeoutMs = opts.timeoutMs ?? 5000;
    this.#cacheMs = opts.cacheMs ?? 1000;
    this.#onChange = opts.onChange;
  }

  /** From now on not ready: the server is shutting down, so load balancers stop sending. */
  shuttingDown(): void {
    this.#closing = true;
  }

  async check(): Promise<Readiness> {
    if (this.#closing) return { ready: false, reason: 'shutting down' };
    const last = this.#last;
    if (last && performance.now() - last.at < this.#cacheMs) return last.result;
    const running = (this.#running ??= this.#probe().finally(() => (this.#running = undefined)));
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<Readiness>((resolve) => {
      timer = setTimeout(() => resolve({ ready: false, reason: `storage did not answer within ${this.#timeoutMs} ms` }), this.#timeoutMs);
      timer.unref();
    });
    try {
      return await Promise.race([running, timedOut]);
    } finally {
      clearTimeout(timer);
    }
  }

  async #probe(): Promise<Readiness> {
    let result: Readiness;
    let error: unknown;
    try {
      await this.#driver.list('/');
      result = { ready: true };
    } catch (err) {
      // Every driver lists an empty store's root as empty; fs reports a root gone as ENOENT.
      error = err;
      result = { ready: false, reason: `storage (${this.#driver.name}) failed: ${errorCode(err)}` };
    }
    this.#last = { at: performance.now(), result };
    if (result.ready !== this.#wasReady) {
      this.#wasReady = result.ready;
      this.#onChange?.(result, error);
    }
    return result;
  }
}

/**
 * A short, bounded name for an error: a system or S3 error code, else the error's class name.
 * Drivers wrap what the store said in a domain error (StorageUnavailableError, whose cause is
 * S3's ECONNREFUSED or TimeoutError, or fs's EMFILE): the code is looked for down the cause
 * chain, outermost first, and failing that the innermost class name, which says what happened
 * where the outer ones only say that it did.
 */
function errorCode(err: unknown): string {
  const chain: Array<{ code?: unknown; name?: unknown; Code?: unknown; cause?: unknown }> = [];
  // Bounded: a cause chain can be long, or a cycle.
  for (let e = err; e !== null && typeof e === 'object' && chain.length < 8; e = (e as { cause?: unknown }).cause) chain.push(e);
  const usable = (v: unknown): v is string => typeof v === 'string' && /^[A-Za-z0-9_.-]{1,64}$/.test(v) && v !== 'Error';
  for (const e of chain) for (const v of [e.code, e.Code]) if (usable(v)) return v;
  for (const e of chain.reverse()) if (usable(e.name)) return e.name;
  return 'Error';
}
