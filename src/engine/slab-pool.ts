import { MessageChannel } from 'node:worker_threads';
import { BufferPool, type PooledBuffer } from '../storage/buffer-pool.js';

/**
 * The memory bound of the upload engine: every request byte the engine holds belongs to a
 * batch that holds a slab from this pool (upload-write.ts). A slab is a private ArrayBuffer:
 * copies of borrowed chunks (uWS) are made into it, and it travels to the hashing worker
 * with its batch and back, moved rather than copied. When the pool is empty, uploads pause
 * their sockets and wait in line. The pool is the one the S3 writers use for their parts
 * (src/storage/buffer-pool.ts).
 *
 * A slab's memory is allocated when bytes are first copied into it (withMemory()): uploads
 * through node:http keep their own chunks, and their slabs never get any. Once no upload
 * holds a slab, the pool keeps a few and frees the others at once: a burst of uWS uploads
 * gave them all memory, which would otherwise stay resident for good (and count in every
 * later pull's RSS).
 */
export type Slab = PooledBuffer<ArrayBuffer>;

export class SlabPool extends BufferPool<ArrayBuffer> {
  constructor(slabBytes: number, maxBytes: number) {
    super({
      bufferBytes: slabBytes, maxBytes, allocate: (bytes) => new ArrayBuffer(bytes), what: 'upload slab',
      keepIdle: KEEP_IDLE_SLABS, free: freeNow, lazy: true,
    });
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

/** One upload's share at the default sizes (16 MiB of 4 MiB slabs). */
const KEEP_IDLE_SLABS = 4;

/**
 * Moving an ArrayBuffer to a port whose other end is closed detaches it, and the dropped
 * message frees its memory at once (as workers/hash.ts frees the chunks it hashed); left to
 * the garbage collector, it would wait for the next full collection.
 */
let discard: MessageChannel | undefined;
function freeNow(buffer: ArrayBuffer): void {
  if (!discard) {
    discard = new MessageChannel();
    discard.port2.close();
    discard.port1.unref();
  }
  discard.port1.postMessage(null, [buffer]);
}
