/**
 * The memory bound of the S3 writers: every byte a writer holds (the part it is filling, the
 * parts in flight) sits in a buffer from this pool, shared by all writers of one driver.
 * Each buffer is exactly one part long and backed by a SharedArrayBuffer, so the hashing
 * worker reads a part for its Content-MD5 without a copy or a transfer while the main thread
 * still owns it.
 *
 * When the pool is empty a writer's write() waits, which is the backpressure the upload
 * engine turns into a paused socket. A wait has a time limit: the holders of the buffers may
 * be uploads whose sockets are paused for lack of the engine's own slabs, which the waiters
 * hold, and only a failed wait (the request ends with a 5xx, its upload stays resumable)
 * breaks that circle.
 */
export interface PartBuffer {
  readonly buffer: SharedArrayBuffer;
  readonly bytes: Uint8Array;
}

export class PartBufferWaitError extends Error {
  override readonly name = 'PartBufferWaitError';
  readonly code = 'S3_BUFFERS_EXHAUSTED';
}

interface Waiter {
  resolve: (buf: PartBuffer) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout | undefined;
}

export class PartBufferPool {
  readonly partSizeBytes: number;
  readonly maxBuffers: number;
  #allocated = 0;
  readonly #free: PartBuffer[] = [];
  readonly #waiters: Waiter[] = [];

  constructor(partSizeBytes: number, maxBytes: number) {
    this.partSizeBytes = partSizeBytes;
    this.maxBuffers = Math.max(1, Math.floor(maxBytes / partSizeBytes));
  }

  tryAcquire(): PartBuffer | undefined {
    const free = this.#free.pop();
    if (free) return free;
    if (this.#allocated >= this.maxBuffers) return undefined;
    this.#allocated++;
    const buffer = new SharedArrayBuffer(this.partSizeBytes);
    return { buffer, bytes: new Uint8Array(buffer) };
  }

  /** A buffer, first come first served; rejects with PartBufferWaitError after `timeoutMs`. */
  acquire(timeoutMs: number): Promise<PartBuffer> {
    const buf = this.#waiters.length === 0 ? this.tryAcquire() : undefined;
    if (buf) return Promise.resolve(buf);
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { resolve, reject, timer: undefined };
      waiter.timer = setTimeout(() => {
        const i = this.#waiters.indexOf(waiter);
        if (i >= 0) this.#waiters.splice(i, 1);
        reject(new PartBufferWaitError(`no S3 part buffer became free within ${timeoutMs} ms (${this.maxBuffers} buffers of ${this.partSizeBytes} bytes, all in use)`));
      }, timeoutMs);
      this.#waiters.push(waiter);
    });
  }

  release(buf: PartBuffer): void {
    const waiter = this.#waiters.shift();
    if (waiter) {
      clearTimeout(waiter.timer);
      waiter.resolve(buf);
    } else {
      this.#free.push(buf);
    }
  }

  get inUse(): number {
    return this.#allocated - this.#free.length;
  }

  get waiting(): number {
    return this.#waiters.length;
  }
}
