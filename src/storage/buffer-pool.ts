/**
 * A bounded pool of fixed-size buffers: the memory bound of the upload engine (request bytes
 * on their way to storage) and of the S3 writers (parts being filled and sent). Each user
 * makes its own pool; the pool only counts, allocates and queues.
 *
 * At most `maxBuffers` buffers exist at once. tryAcquire() hands out a free one or allocates
 * a new one while under the bound; acquire() waits in line (first come, first served) when
 * all are in use, and, given a time limit, rejects with BufferWaitError when none came free
 * in time. A holder may replace a buffer's memory (replace()), e.g. after moving it to a
 * worker and getting it back, and gives it back with release().
 *
 * Lives in storage, not the engine, because both the engine and the S3 driver use it and
 * storage imports nothing above itself.
 */
export interface PooledBuffer<B extends ArrayBufferLike = ArrayBufferLike> {
  /** The memory; `bytes` views all of it. Both change only through BufferPool.replace(). */
  readonly buffer: B;
  readonly bytes: Buffer;
}

/**
 * Copies `source` into `target` (a pool buffer's memory) at `offset`. Why not `set()`: into
 * shared memory (the S3 part buffers), V8 copies with `relaxed_memmove`, byte by byte whenever
 * source and target differ in alignment mod 8, as request chunks of any length make them:
 * 0.31-0.39 CPU s per GiB here, against 0.03-0.13 into private memory. Node's `Buffer.fill()`
 * with a buffer as the value is one `memcpy` into the range, shared or not: 0.07 s per GiB.
 */
export function copyInto(target: Buffer, source: Uint8Array, offset: number): void {
  if (source.byteLength === 0) return; // fill() refuses an empty value
  target.fill(source, offset, offset + source.byteLength);
}

export class BufferWaitError extends Error {
  override readonly name: string = 'BufferWaitError';
}

export interface BufferPoolOptions<B extends ArrayBufferLike> {
  bufferBytes: number;
  /** Upper bound on the bytes of all buffers together; at least one buffer is allowed. */
  maxBytes: number;
  /** Makes the memory of a new buffer. */
  allocate: (bytes: number) => B;
  /** What the buffers are, for error messages ("S3 part buffer"). */
  what?: string;
  /** Makes the error a timed-out acquire() rejects with. */
  waitError?: (message: string) => Error;
  /**
   * Free buffers kept once none is in use (default: all). The memory of a burst (16 uploads
   * at once) would otherwise stay resident for good; the rest is handed to `free`.
   */
  keepIdle?: number;
  /** Lets go of a buffer's memory now, rather than at the next garbage collection. */
  free?: (buffer: B) => void;
  /**
   * Hand out buffers without memory (`buffer.byteLength` 0) and allocate it only when a
   * holder asks (withMemory()): the upload engine's slabs are its memory bound whatever the
   * bytes are in, and node:http's chunks never need the slab's own memory. Allocating it
   * anyway cost a 4 MiB memset per slab (new memory is zeroed), and kept it resident.
   */
  lazy?: boolean;
}

interface Waiter<B extends ArrayBufferLike> {
  resolve: (buf: PooledBuffer<B>) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout | undefined;
}

interface Slot<B extends ArrayBufferLike> {
  buffer: B;
  bytes: Buffer;
}

export class BufferPool<B extends ArrayBufferLike = ArrayBufferLike> {
  readonly bufferBytes: number;
  readonly maxBuffers: number;
  readonly #allocate: (bytes: number) => B;
  readonly #what: string;
  readonly #waitError: (message: string) => Error;
  readonly #keepIdle: number;
  readonly #freeMemory: ((buffer: B) => void) | undefined;
  readonly #lazy: boolean;
  #allocated = 0;
  /** Last released first: its memory is the most likely to still be in a cache. */
  readonly #free: Slot<B>[] = [];
  readonly #waiters: Waiter<B>[] = [];

  constructor(opts: BufferPoolOptions<B>) {
    this.bufferBytes = opts.bufferBytes;
    this.maxBuffers = Math.max(1, Math.floor(opts.maxBytes / opts.bufferBytes));
    this.#allocate = opts.allocate;
    this.#what = opts.what ?? 'buffer';
    this.#waitError = opts.waitError ?? ((message) => new BufferWaitError(message));
    this.#keepIdle = opts.keepIdle ?? Infinity;
    this.#freeMemory = opts.free;
    this.#lazy = opts.lazy ?? false;
  }

  /** A buffer now, or undefined when all `maxBuffers` are in use. */
  tryAcquire(): PooledBuffer<B> | undefined {
    const free = this.#free.pop();
    if (free) return free;
    if (this.#allocated >= this.maxBuffers) return undefined;
    this.#allocated++;
    const buffer = this.#allocate(this.#lazy ? 0 : this.bufferBytes);
    return { buffer, bytes: Buffer.from(buffer) };
  }

  /** The buffer's bytes, allocating its memory first if it has none yet (a `lazy` pool's). */
  withMemory(buffer: PooledBuffer<B>): Buffer {
    if (buffer.buffer.byteLength === 0) this.renew(buffer);
    return buffer.bytes;
  }

  /**
   * A buffer, in arrival order. Without `timeoutMs` it waits as long as it takes; with it, it
   * rejects after that long with the pool's wait error.
   */
  acquire(timeoutMs?: number): Promise<PooledBuffer<B>> {
    const buf = this.#waiters.length === 0 ? this.tryAcquire() : undefined;
    if (buf) return Promise.resolve(buf);
    return new Promise((resolve, reject) => {
      const waiter: Waiter<B> = { resolve, reject, timer: undefined };
      if (timeoutMs !== undefined) {
        waiter.timer = setTimeout(() => {
          const i = this.#waiters.indexOf(waiter);
          if (i >= 0) this.#waiters.splice(i, 1);
          reject(this.#waitError(`no ${this.#what} became free within ${timeoutMs} ms (${this.maxBuffers} buffers of ${this.bufferBytes} bytes, all in use)`));
        }, timeoutMs);
      }
      this.#waiters.push(waiter);
    });
  }

  /**
   * Gives `buffer` new memory of the same size: the old memory went elsewhere (moved to a
   * worker thread, which sent it back as a new ArrayBuffer, or kept it).
   */
  replace(buffer: PooledBuffer<B>, memory: B): void {
    if (memory.byteLength !== this.bufferBytes) throw new RangeError(`a ${this.#what} holds ${this.bufferBytes} bytes, not ${memory.byteLength}`);
    const slot = buffer as Slot<B>;
    slot.buffer = memory;
    slot.bytes = Buffer.from(memory);
  }

  /** Memory for a buffer whose own went away for good. */
  renew(buffer: PooledBuffer<B>): void {
    this.replace(buffer, this.#allocate(this.bufferBytes));
  }

  release(buf: PooledBuffer<B>): void {
    const waiter = this.#waiters.shift();
    if (waiter) {
      clearTimeout(waiter.timer);
      waiter.resolve(buf);
    } else {
      this.#free.push(buf as Slot<B>);
      if (this.#allocated === this.#free.length) this.#trim();
    }
  }

  /** All buffers are back: keeps the `keepIdle` most recently used, lets go of the others. */
  #trim(): void {
    // The least recently released sit at the bottom of the stack.
    const excess = this.#free.length - this.#keepIdle;
    if (excess <= 0) return;
    for (const slot of this.#free.splice(0, excess)) if (slot.buffer.byteLength > 0) this.#freeMemory?.(slot.buffer);
    this.#allocated -= excess;
  }

  get inUse(): number {
    return this.#allocated - this.#free.length;
  }

  /** Buffers made and not let go of: in use, or free and kept for the next acquire(). */
  get held(): number {
    return this.#allocated;
  }

  get waiting(): number {
    return this.#waiters.length;
  }
}
