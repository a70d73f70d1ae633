import type { FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';

/**
 * A stream whose consumer may give each chunk back once it is done with it (the bytes went
 * to the socket): `recycle(chunk)`, after which the consumer never touches the chunk again.
 * The front ends do so for blob GETs (src/http/node.ts, uws.ts); a consumer that does not
 * simply leaves the chunk to the garbage collector.
 */
export interface RecyclingReadable extends Readable {
  recycle(chunk: Uint8Array): void;
}

/** The chunk-returning function of a stream that has one (see RecyclingReadable). */
export function recyclerOf(stream: Readable): ((chunk: Uint8Array) => void) | undefined {
  const r = (stream as Partial<RecyclingReadable>).recycle;
  return typeof r === 'function' ? r.bind(stream) : undefined;
}

/**
 * Free read buffers of one size, shared by a driver's readers, with a bound on those in use.
 *
 * Why recycle at all (bench/HISTORY.md, "Pulls, and memory"): fs.createReadStream allocates a
 * new buffer for every read. A gigabyte of pulls is a thousand fresh 1 MiB buffers that die
 * at once, and their external memory set off a full mark-compact every 64 MiB or so: a third
 * of the server's CPU on a pull went to V8's marking and sweeping, and the garbage waiting for
 * it was most of a pull's peak RSS. Recycled, the same few buffers carry every pull.
 *
 * Why a bound on those in use: a client that asks for a blob and stops reading holds the
 * chunk waiting at its socket and the one its reader read ahead, for as long as the idle
 * timeout lets it. Without a bound, 500 such clients held a gigabyte of 1 MiB buffers (found
 * by probing; docker-registry holds a 32 KiB copy buffer per connection). A buffer is in use
 * ("charged") from take() until it comes back through give() or its reader lets go of it
 * (ReadBufferShare): at most `maxInUseBytes` of them. A reader that finds none gets a small
 * private buffer instead (ReadBufferShare.take), so it never waits for readers whose clients
 * have stopped, and those clients cost the small buffers, not the big ones.
 */
export class ReadBuffers {
  readonly bufferBytes: number;
  readonly maxInUse: number;
  readonly #maxIdle: number;
  readonly #free: Buffer[] = [];
  /**
   * The memory of every buffer in use, and the share it is charged to: identity tells a
   * charged buffer given back from any other, and a share from one that took the same memory
   * again after it came back.
   */
  readonly #charged = new Map<ArrayBufferLike, object>();

  constructor(bufferBytes: number, maxIdle: number, maxInUseBytes = Infinity) {
    this.bufferBytes = bufferBytes;
    this.#maxIdle = maxIdle;
    this.maxInUse = Math.max(1, Math.floor(maxInUseBytes / bufferBytes));
  }

  /** A buffer charged to `owner` until given back or let go; undefined when `maxInUse` are in use. */
  take(owner: object): Buffer | undefined {
    if (this.#charged.size >= this.maxInUse) return undefined;
    const buf = this.#free.pop() ?? Buffer.allocUnsafeSlow(this.bufferBytes);
    this.#charged.set(buf.buffer, owner);
    return buf;
  }

  /** Takes back a buffer (or a view from its start) handed out by take(), to carry another read. */
  give(chunk: Uint8Array): void {
    const ab = chunk.buffer;
    this.#charged.delete(ab);
    // Only whole buffers of ours: a view that starts elsewhere, or memory of another size
    // (moved away, or never ours), is left alone.
    if (chunk.byteOffset !== 0 || !(ab instanceof ArrayBuffer) || ab.byteLength !== this.bufferBytes) return;
    if (this.#free.length < this.#maxIdle) this.#free.push(Buffer.from(ab, 0, this.bufferBytes));
  }

  /**
   * Stops counting a buffer as in use without taking it back: its holder will not give it
   * back (a consumer that does not recycle, a reader that closed). If it comes back after
   * all, give() takes it as a free buffer.
   */
  letGo(memory: ArrayBufferLike, owner: object): void {
    if (this.#charged.get(memory) === owner) this.#charged.delete(memory);
  }

  /** True while `memory` is in use and charged to `owner`. */
  chargedTo(memory: ArrayBufferLike, owner: object): boolean {
    return this.#charged.get(memory) === owner;
  }

  /** Bytes of the buffers in use. */
  get inUseBytes(): number {
    return this.#charged.size * this.bufferBytes;
  }

  /** Idle buffers (tests). */
  get idle(): number {
    return this.#free.length;
  }
}

/**
 * One reader's share of a ReadBuffers: the buffers charged to it, at most `maxHeld`. A
 * reader whose consumer gives its chunks back holds two in use at most (the one at the
 * client's socket and the one read ahead); one whose consumer keeps them (a digest check, a
 * pull-through cache) would otherwise be charged for every chunk it ever read, so past
 * `maxHeld` the oldest is let go: it is the consumer's memory now. close() lets go of all:
 * what is left is dropped with the reader, or waits at a socket as any response's bytes do.
 */
export class ReadBufferShare {
  readonly #buffers: ReadBuffers;
  readonly #maxHeld: number;
  readonly #fallbackBytes: number;
  readonly #held: ArrayBufferLike[] = [];

  constructor(buffers: ReadBuffers, maxHeld: number, fallbackBytes: number) {
    this.#buffers = buffers;
    this.#maxHeld = maxHeld;
    this.#fallbackBytes = fallbackBytes;
  }

  /**
   * A shared buffer, or, with all of them in use, a private one of `fallbackBytes` that is
   * garbage once read: progress never waits on other readers, whose clients may never read
   * again, and a reader that cannot share costs its small buffers only.
   */
  take(): Buffer {
    const buf = this.#buffers.take(this);
    if (!buf) return Buffer.allocUnsafeSlow(this.#fallbackBytes);
    // Buffers given back since (and perhaps taken by another share) are no longer ours.
    for (let i = this.#held.length - 1; i >= 0; i--) {
      if (!this.#buffers.chargedTo(this.#held[i]!, this)) this.#held.splice(i, 1);
    }
    this.#held.push(buf.buffer);
    while (this.#held.length > this.#maxHeld) this.#buffers.letGo(this.#held.shift()!, this);
    return buf;
  }

  /** Lets go of every buffer still charged to this share (its reader is done). */
  close(): void {
    for (const memory of this.#held.splice(0)) this.#buffers.letGo(memory, this);
  }
}

/**
 * A read's buffer while every shared one is in use: small, since the readers holding the
 * shared ones may be those of clients that stopped reading, and more such clients then cost
 * this much each (twice: at the socket and read ahead). 64 KiB is fs streams' default read.
 */
export const FALLBACK_READ_BYTES = 64 * 1024;

/**
 * Bytes [start, end) of an open file as a stream, read in `buffers`-sized reads into recycled
 * buffers, or, while all of those are in use, in reads of FALLBACK_READ_BYTES into private
 * ones. The stream owns the handle and closes it when it ends or is destroyed (close() waits
 * for a read still under way). A file that ends early ends the stream early; the consumer
 * sees the shortfall.
 */
export class FileReader extends Readable implements RecyclingReadable {
  readonly #fh: FileHandle;
  readonly #buffers: ReadBuffers;
  readonly #share: ReadBufferShare;
  #pos: number;
  readonly #end: number;

  constructor(fh: FileHandle, start: number, end: number, buffers: ReadBuffers) {
    // One read ahead of the consumer, whatever its size (a shared buffer or a fallback): a
    // second chunk while the first goes to the socket. The mark counts bytes, so at 1 byte
    // the stream asks for the next chunk only once the last one was taken.
    super({ highWaterMark: 1 });
    this.#fh = fh;
    this.#buffers = buffers;
    // The chunk at the socket and the one read ahead.
    this.#share = new ReadBufferShare(buffers, 2, FALLBACK_READ_BYTES);
    this.#pos = start;
    this.#end = end;
  }

  override _read(): void {
    if (this.#end - this.#pos <= 0) {
      this.push(null);
      return;
    }
    const buf = this.#share.take();
    const n = Math.min(buf.byteLength, this.#end - this.#pos);
    this.#fh.read(buf, 0, n, this.#pos).then(({ bytesRead }) => {
      if (this.destroyed) return this.#buffers.give(buf);
      if (bytesRead === 0) {
        this.#buffers.give(buf);
        this.push(null);
        return;
      }
      this.#pos += bytesRead;
      this.push(bytesRead === buf.byteLength ? buf : buf.subarray(0, bytesRead));
    }, (err: unknown) => {
      this.#buffers.give(buf);
      this.destroy(err as Error);
    });
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#share.close();
    this.#fh.close().then(() => cb(err), (closeErr: Error) => cb(err ?? closeErr));
  }

  recycle(chunk: Uint8Array): void {
    this.#buffers.give(chunk);
  }
}
