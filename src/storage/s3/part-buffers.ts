import { BufferPool, BufferWaitError, type PooledBuffer } from '../buffer-pool.js';

/**
 * The memory bound of the S3 writers: every byte a writer holds (the part it is filling, the
 * parts in flight) sits in a buffer from this pool, shared by all writers of one driver.
 * Each buffer is exactly one part long and backed by a SharedArrayBuffer, so the hashing
 * worker reads a part for the SHA-256 it is signed with, without a copy or a transfer,
 * while the main thread still owns it. The pool itself is the one the upload engine uses (../buffer-pool.ts).
 *
 * When the pool is empty a writer's write() waits, which is the backpressure the upload
 * engine turns into a paused socket. A wait has a time limit: the holders of the buffers may
 * be uploads whose sockets are paused for lack of the engine's own buffers, which the waiters
 * hold, and only a failed wait (the request ends with a 5xx, its upload stays resumable)
 * breaks that circle.
 *
 * Once no writer holds a buffer, the pool keeps `keepIdle` and lets go of the others: a
 * burst of 16 uploads filled all 256 MiB of the default bound, which otherwise stayed
 * resident for good. A SharedArrayBuffer cannot be freed at once (the hashing worker may
 * still hold a reference to it); dropped, it goes at the next garbage collection.
 */
export type PartBuffer = PooledBuffer<SharedArrayBuffer>;

export class PartBufferWaitError extends BufferWaitError {
  override readonly name = 'PartBufferWaitError';
  readonly code = 'S3_BUFFERS_EXHAUSTED';
}

export class PartBufferPool extends BufferPool<SharedArrayBuffer> {
  constructor(partSizeBytes: number, maxBytes: number, keepIdle: number) {
    super({
      bufferBytes: partSizeBytes,
      maxBytes,
      allocate: (bytes) => new SharedArrayBuffer(bytes),
      what: 'S3 part buffer',
      waitError: (message) => new PartBufferWaitError(message),
      keepIdle,
    });
  }

  get partSizeBytes(): number {
    return this.bufferBytes;
  }

  /** A buffer, first come first served; rejects with PartBufferWaitError after `timeoutMs`. */
  override acquire(timeoutMs: number): Promise<PartBuffer> {
    return super.acquire(timeoutMs);
  }

  /** For metrics: the bytes of the buffers in use, and of all the pool holds (in use or kept free). */
  get inUseBytes(): number {
    return this.inUse * this.bufferBytes;
  }

  get heldBytes(): number {
    return this.held * this.bufferBytes;
  }
}
