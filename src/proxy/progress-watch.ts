import { performance } from 'node:perf_hooks';

/**
 * Whether an upstream blob body still makes progress: at least `minBytes` in every
 * `windowMs` of time spent waiting for the upstream (a sliding window, looked at every tenth
 * of it). A body whose rest is less than that ends before it is looked at again, when it is
 * whole, and is short of the minimum anyway when it is not. Time during which the caller waits for
 * something else (`pause()` to `resume()`: storage, the hashing pool) is not the upstream's
 * and does not count.
 *
 * A byte-idle timer is not enough: an upstream that sends one byte every 9 s never trips a
 * 10 s idle timeout, and holds the fetch (its clients, a storage writer, one of
 * proxy.maxBlobFetches) for as long as it likes. A minimum over a window
 * bounds that by the blob's size: a fetch lasts at most size ÷ (minBytes / windowMs) of
 * upstream time, and an upstream that stops, or trickles, is given up on within one window
 * (and one step).
 *
 * Costs per chunk: an addition. A wall-clock interval ticks every step; pause() and resume()
 * read the clock and allocate nothing (a sink wait may come at every chunk).
 */
export class ProgressWatch {
  /** Steps a window is looked at in: the check's resolution is windowMs / STEPS. */
  static readonly STEPS = 10;
  readonly #windowMs: number;
  readonly #stepMs: number;
  readonly #minBytes: number;
  readonly #onStall: (reason: string) => void;
  /** Bytes counted at the last STEPS step boundaries, by step number modulo STEPS (0 at the start). */
  readonly #marks = new Float64Array(ProgressWatch.STEPS);
  #steps = 0;
  #bytes = 0;
  /** Upstream time since the last step boundary. */
  #runMs = 0;
  #lastTickMs: number;
  /** Paused time since the last tick, and when the pause in progress began (or undefined). */
  #pausedMs = 0;
  #pausedAt: number | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(o: { windowMs: number; minBytes: number; onStall: (reason: string) => void }) {
    this.#windowMs = o.windowMs;
    this.#stepMs = Math.max(1, o.windowMs / ProgressWatch.STEPS);
    this.#minBytes = o.minBytes;
    this.#onStall = o.onStall;
    this.#lastTickMs = performance.now();
    this.#timer = setInterval(() => this.#tick(), this.#stepMs);
  }

  /** `n` more bytes came from the upstream. */
  add(n: number): void {
    this.#bytes += n;
  }

  /** The caller waits for something other than the upstream, from now until resume(). */
  pause(): void {
    this.#pausedAt ??= performance.now();
  }

  resume(): void {
    if (this.#pausedAt === undefined) return;
    this.#pausedMs += performance.now() - this.#pausedAt;
    this.#pausedAt = undefined;
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #tick(): void {
    const now = performance.now();
    if (this.#pausedAt !== undefined) {
      this.#pausedMs += now - this.#pausedAt;
      this.#pausedAt = now;
    }
    this.#runMs += now - this.#lastTickMs - this.#pausedMs;
    this.#lastTickMs = now;
    this.#pausedMs = 0;
    while (this.#timer && this.#runMs >= this.#stepMs) {
      this.#runMs -= this.#stepMs;
      this.#step();
    }
  }

  /** A step boundary of upstream time: the window that ends here must have had its bytes. */
  #step(): void {
    const slot = ++this.#steps % ProgressWatch.STEPS;
    const before = this.#marks[slot]!;
    if (this.#steps >= ProgressWatch.STEPS) {
      const got = this.#bytes - before;
      if (got < this.#minBytes) {
        this.stop();
        this.#onStall(`upstream sent ${got} bytes in ${this.#windowMs / 1000} s (at least ${this.#minBytes} wanted)`);
        return;
      }
    }
    this.#marks[slot] = this.#bytes;
  }
}
