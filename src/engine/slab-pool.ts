import { BufferPool, type PooledBuffer } from '../storage/buffer-pool.js';

/**
 * The memory bound of the upload engine: every request byte the engine holds belongs to a
 * batch that holds a slab from this pool (upload-write.ts). A slab is a private ArrayBuffer:
 * copies of borrowed chunks (uWS) are made into it, and it travels to the hashing worker
 * with its batch and back, moved rather than copied. When the pool is empty, uploads pause
 * their sockets and wait in line. The pool is the one the S3 writers use for their parts
 * (src/storage/buffer-pool.ts).
 *
 * A slab's memory is allocated when the pool first hands it out, and only touched when
 * bytes are copied into it: uploads through node:http keep their own chunks and leave it
 * untouched (not resident).
 */
export type Slab = PooledBuffer<ArrayBuffer>;

export class SlabPool extends BufferPool<ArrayBuffer> {
  constructor(slabBytes: number, maxBytes: number) {
    super({ bufferBytes: slabBytes, maxBytes, allocate: (bytes) => new ArrayBuffer(bytes), what: 'upload slab' });
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
