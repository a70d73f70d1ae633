/** A bounded line of waiting runs (Slots). */
export interface SlotsLine {
  /** Runs waiting at most; one more is refused at once. */
  readonly maxWaiting: number;
  /** The longest a run waits for a slot; then it is refused and leaves the line. */
  readonly maxWaitMs: number;
  /** What a refused run rejects with: the line was full, or it waited too long. */
  readonly refuse: (why: 'full' | 'waited') => Error;
}

/**
 * At most `limit` runs at once; the others wait in arrival order. A finishing run hands its
 * slot straight to the next in line, so none can jump the queue. Without a `line`, the
 * waiting are bounded by their callers (each holds a slab, a part buffer, or is one
 * request), not here; with one, here: a run past `line.maxWaiting`, or one that waited
 * `line.maxWaitMs`, is refused (the pull-through cache's upstream requests, whose waiters
 * are client requests that only pile up while the upstream is slow).
 */
export class Slots {
  readonly limit: number;
  #free: number;
  readonly #waiting: Array<() => void> = [];
  readonly #line: SlotsLine | undefined;

  constructor(limit: number, line?: SlotsLine) {
    this.limit = Math.max(1, limit);
    this.#free = this.limit;
    this.#line = line;
  }

  async run<T>(work: () => Promise<T>): Promise<T> {
    if (this.#free > 0) this.#free--;
    else await this.#wait();
    try {
      return await work();
    } finally {
      const next = this.#waiting.shift();
      if (next) next();
      else this.#free++;
    }
  }

  get inflight(): number {
    return this.limit - this.#free;
  }

  get waiting(): number {
    return this.#waiting.length;
  }

  /** Resolves when a finishing run hands over its slot (it stays counted). */
  #wait(): Promise<void> {
    const line = this.#line;
    if (!line) return new Promise<void>((resolve) => this.#waiting.push(resolve));
    if (this.#waiting.length >= line.maxWaiting) return Promise.reject(line.refuse('full'));
    return new Promise<void>((resolve, reject) => {
      const go = (): void => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        const at = this.#waiting.indexOf(go);
        if (at >= 0) this.#waiting.splice(at, 1);
        reject(line.refuse('waited'));
      }, line.maxWaitMs);
      this.#waiting.push(go);
    });
  }
}
