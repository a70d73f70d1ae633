/**
 * At most `limit` runs at once; the others wait in arrival order. A finishing run hands its
 * slot straight to the next in line, so none can jump the queue. The waiting are bounded by
 * their callers (each holds a slab, a part buffer, or is one request), not here.
 */
export class Slots {
  readonly limit: number;
  #free: number;
  readonly #waiting: Array<() => void> = [];

  constructor(limit: number) {
    this.limit = Math.max(1, limit);
    this.#free = this.limit;
  }

  async run<T>(work: () => Promise<T>): Promise<T> {
    if (this.#free > 0) this.#free--;
    else await new Promise<void>((resolve) => this.#waiting.push(resolve));
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
}
