import { BufferPool, type PooledBuffer } from '../storage/buffer-pool.js';

/**
 * The memory bound of the upload engine: request bytes are copied out of the socket's
 * buffer into fixed-size slabs from this pool, and nowhere else. A slab is a
 * SharedArrayBuffer, so the hashing worker reads it while the main thread writes the same
 * bytes to storage, with no copy or transfer in between; it returns to the pool when both
 * are done. When the pool is empty, uploads pause their sockets and wait in line. The pool
 * is the one the S3 writers use for their parts (src/storage/buffer-pool.ts).
 */
export type Slab = PooledBuffer<SharedArrayBuffer>;

export class SlabPool extends BufferPool<SharedArrayBuffer> {
  constructor(slabBytes: number, maxBytes: number) {
    super({ bufferBytes: slabBytes, maxBytes, allocate: (bytes) => new SharedArrayBuffer(bytes), what: 'upload slab' });
  }

  get slabBytes(): number {
    return this.bufferBytes;
  }

  get maxSlabs(): number {
    return this.maxBuffers;
  }

  /** Waits for a slab. Waiters are served in arrival order. */
  override acquire(): Promise<Slab> {
    return super.acquire();
  }
}
