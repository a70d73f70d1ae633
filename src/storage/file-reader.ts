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
 * Free read buffers of one size, shared by a driver's readers, at most `maxIdle` kept.
 *
 * Why (bench/HISTORY.md, "Pulls, and memory"): fs.createReadStream allocates a new buffer for
 * every read. A gigabyte of pulls is a thousand fresh 1 MiB buffers that die at once, and
 * their external memory set off a full mark-compact every 64 MiB or so: a third of the
 * server's CPU on a pull went to V8's marking and sweeping, and the garbage waiting for it
 * was most of a pull's peak RSS. Recycled, the same few buffers carry every pull.
 */
export class ReadBuffers {
  readonly bufferBytes: number;
  readonly #maxIdle: number;
  readonly #free: Buffer[] = [];

  constructor(bufferBytes: number, maxIdle: number) {
    this.bufferBytes = bufferBytes;
    this.#maxIdle = maxIdle;
  }

  take(): Buffer {
    return this.#free.pop() ?? Buffer.allocUnsafeSlow(this.bufferBytes);
  }

  /** Takes back a buffer (or a view from its start) handed out by take(). */
  give(chunk: Uint8Array): void {
    const ab = chunk.buffer;
    // Only whole buffers of ours: a view that starts elsewhere, or memory of another size
    // (moved away, or never ours), is left alone.
    if (chunk.byteOffset !== 0 || !(ab instanceof ArrayBuffer) || ab.byteLength !== this.bufferBytes) return;
    if (this.#free.length < this.#maxIdle) this.#free.push(Buffer.from(ab, 0, this.bufferBytes));
  }

  /** Idle buffers (tests). */
  get idle(): number {
    return this.#free.length;
  }
}

/**
 * Bytes [start, end) of an open file as a stream, read in `buffers`-sized reads into recycled
 * buffers. The stream owns the handle and closes it when it ends or is destroyed (close()
 * waits for a read still under way). A file that ends early ends the stream early; the
 * consumer sees the shortfall.
 */
export class FileReader extends Readable implements RecyclingReadable {
  readonly #fh: FileHandle;
  readonly #buffers: ReadBuffers;
  #pos: number;
  readonly #end: number;

  constructor(fh: FileHandle, start: number, end: number, buffers: ReadBuffers) {
    // One read ahead of the consumer: a second buffer while the first goes to the socket.
    super({ highWaterMark: buffers.bufferBytes });
    this.#fh = fh;
    this.#buffers = buffers;
    this.#pos = start;
    this.#end = end;
  }

  override _read(): void {
    const n = Math.min(this.#buffers.bufferBytes, this.#end - this.#pos);
    if (n <= 0) {
      this.push(null);
      return;
    }
    const buf = this.#buffers.take();
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
    this.#fh.close().then(() => cb(err), (closeErr: Error) => cb(err ?? closeErr));
  }

  recycle(chunk: Uint8Array): void {
    this.#buffers.give(chunk);
  }
}
