/**
 * The memory bound of the upload engine: request bytes are copied out of the socket's
 * buffer into fixed-size slabs from this pool, and nowhere else. A slab is a
 * SharedArrayBuffer, so the hashing worker reads it while the main thread writes the same
 * bytes to storage, with no copy or transfer in between; it returns to the pool when both
 * are done. When the pool is empty, uploads pause their sockets and wait in line.
 */
export interface Slab {
  readonly buffer: SharedArrayBuffer;
  readonly bytes: Uint8Array;
}

export class SlabPool {
  readonly slabBytes: number;
  readonly maxSlabs: number;
  #allocated = 0;
  readonly #free: Slab[] = [];
  /** FIFO of uploads waiting for a slab. At most one entry per request being read. */
  readonly #waiters: Array<(slab: Slab) => void> = [];

  constructor(slabBytes: number, maxBytes: number) {
    this.slabBytes = slabBytes;
    this.maxSlabs = Math.max(1, Math.floor(maxBytes / slabBytes));
  }

  /** A slab now, or undefined when the bound is reached. */
  tryAcquire(): Slab | undefined {
    const slab = this.#free.pop();
    if (slab) return slab;
    if (this.#allocated >= this.maxSlabs) return undefined;
    this.#allocated++;
    const buffer = new SharedArrayBuffer(this.slabBytes);
    return { buffer, bytes: new Uint8Array(buffer) };
  }

  /** Waits for a slab. Waiters are served in arrival order. */
  acquire(): Promise<Slab> {
    const slab = this.#waiters.length === 0 ? this.tryAcquire() : undefined;
    if (slab) return Promise.resolve(slab);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  release(slab: Slab): void {
    const waiter = this.#waiters.shift();
    if (waiter) waiter(slab);
    else this.#free.push(slab);
  }

  get inUse(): number {
    return this.#allocated - this.#free.length;
  }

  get waiting(): number {
    return this.#waiters.length;
  }
}
