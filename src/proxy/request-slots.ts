/**
 * At most `max` tasks at once, the next `maxQueued` waiting in line (first come, first
 * served), and nobody waiting longer than `maxWaitMs` for a place: a task past the line, or
 * out of time in it, is refused with what `refuse` makes of why.
 *
 * The pull-through cache's upstream metadata requests go through one of these
 * (UpstreamClient): requests for one reference share one upstream request, but requests for
 * a thousand different ones made a thousand upstream requests at once (each a socket, a
 * token lookup, up to a manifest's or a tag list's bytes in memory), on behalf of clients
 * that may only be asking for names that do not exist. The line is bounded too, in length
 * and in time: its waiters are client requests holding a connection each, and a line that
 * only grew while the upstream was slow would be the same pile-up, one step later.
 */
export class RequestSlots {
  readonly #max: number;
  readonly #maxQueued: number;
  readonly #maxWaitMs: number;
  readonly #refuse: (why: 'full' | 'waited') => Error;
  #active = 0;
  /** The line: each waiter's go-ahead (it takes the freed place as its own). */
  readonly #queue: Array<() => void> = [];

  constructor(o: { max: number; maxQueued: number; maxWaitMs: number; refuse: (why: 'full' | 'waited') => Error }) {
    this.#max = o.max;
    this.#maxQueued = o.maxQueued;
    this.#maxWaitMs = o.maxWaitMs;
    this.#refuse = o.refuse;
  }

  /** Tasks running now. */
  get active(): number {
    return this.#active;
  }

  /** Tasks waiting for a place now. */
  get queued(): number {
    return this.#queue.length;
  }

  /** Runs `task` once a place is free; throws `refuse(...)` when the line is full or the wait too long. */
  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.#active < this.#max) this.#active++;
    else await this.#wait();
    try {
      return await task();
    } finally {
      this.#release();
    }
  }

  #wait(): Promise<void> {
    if (this.#queue.length >= this.#maxQueued) return Promise.reject(this.#refuse('full'));
    return new Promise<void>((resolve, reject) => {
      const go = (): void => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        const at = this.#queue.indexOf(go);
        if (at >= 0) this.#queue.splice(at, 1);
        reject(this.#refuse('waited'));
      }, this.#maxWaitMs);
      this.#queue.push(go);
    });
  }

  /** A place is free: the first in line takes it (the count stays), else it is given back. */
  #release(): void {
    const next = this.#queue.shift();
    if (next) next();
    else this.#active--;
  }
}
