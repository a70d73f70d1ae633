import net from 'node:net';
import { Readable } from 'node:stream';
import { ReadBufferShare, type ReadBuffers, type RecyclingReadable } from '../file-reader.js';

/**
 * GETs over plain HTTP/1.1 whose body bytes land in recycled buffers, for blob reads from an
 * http:// store (range-fetch.ts; https:// stays on node:https).
 *
 * Why (bench/HISTORY.md, "S3 (issue 14): before and after"): node's HTTP client reads its
 * socket into a fresh 64 KiB buffer per read. A GiB is 16384 of them; their memory is external
 * to V8's heap and set off a full mark-compact every 20 MiB or so, and malloc hands their
 * pages back and faults them in again. A plain GET of a 256 MiB object into a null sink cost node 2.1-2.5
 * CPU s/GiB on this machine, curl 0.25. Here each connection reads into one buffer of its
 * own (net's `onread`), and the body is copied from it into `ReadBuffers` chunks that the
 * consumer gives back (RecyclingReadable), so a pull allocates nothing per read.
 *
 * What it speaks is the small part of HTTP/1.1 a GetObject answer needs: a status line,
 * headers, and a body of Content-Length bytes (a 2xx answer without one is refused). An
 * answer that is not 2xx is read for its first 4 KiB of text (an S3 error document) and its
 * connection closed. Connections are kept alive between GETs to the same host, a few idle
 * ones at most; one that the store closed while idle is dropped, and a GET that fails on a
 * reused connection before any answer is sent once more on a new one.
 */
export interface PlainAnswer {
  status: number;
  /** Header names in lower case. */
  headers: Map<string, string>;
  /** The body of a 2xx answer; for others, undefined. */
  body?: PlainBody;
  /** The start of the body of an answer that is not 2xx. */
  text: string;
}

export interface PlainGetOptions {
  /** Inactivity on the socket while the store owes bytes: fails the GET or its body with onTimeout(). */
  timeoutMs: number;
  onTimeout: () => Error;
  signal: AbortSignal;
}

const MAX_HEAD_BYTES = 16 * 1024;
const MAX_ERROR_TEXT = 4096;
const SOCKET_READ_BYTES = 64 * 1024;
const MAX_IDLE_PER_HOST = 16;

type OnData = (n: number, buf: Buffer) => boolean;

interface Conn {
  socket: net.Socket;
  /** Where the socket's bytes go now; undefined while idle. */
  onData?: OnData;
}

export class PlainHttp {
  readonly #buffers: ReadBuffers;
  readonly #idle = new Map<string, Conn[]>();

  constructor(buffers: ReadBuffers) {
    this.#buffers = buffers;
  }

  async get(url: URL, headers: Record<string, string>, o: PlainGetOptions): Promise<PlainAnswer> {
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    const port = Number(url.port || 80);
    const hostKey = `${host}:${port}`;
    const reused = this.#idle.get(hostKey)?.pop();
    try {
      return await this.#exchange(reused ?? this.#connect(host, port), hostKey, url, headers, o, reused !== undefined);
    } catch (err) {
      if (!reused || !(err instanceof StaleConnection) || o.signal.aborted) throw unwrap(err);
      return await this.#exchange(this.#connect(host, port), hostKey, url, headers, o, false).catch((e: unknown) => { throw unwrap(e); });
    }
  }

  #connect(host: string, port: number): Conn {
    const conn: Conn = { socket: undefined as unknown as net.Socket };
    conn.socket = net.connect({
      host, port, noDelay: true,
      onread: {
        buffer: Buffer.allocUnsafeSlow(SOCKET_READ_BYTES),
        callback: (n: number, buf: Buffer): boolean => {
          if (conn.onData) return conn.onData(n, buf);
          // Bytes on an idle connection: nothing can be trusted on it any more.
          conn.socket.destroy();
          return false;
        },
      },
    });
    return conn;
  }

  #park(hostKey: string, conn: Conn): void {
    conn.onData = undefined;
    const s = conn.socket;
    s.setTimeout(0);
    s.removeAllListeners('timeout');
    s.removeAllListeners('error');
    s.removeAllListeners('end');
    s.removeAllListeners('close');
    const list = this.#idle.get(hostKey) ?? [];
    if (list.length >= MAX_IDLE_PER_HOST || s.destroyed) {
      s.destroy();
      return;
    }
    list.push(conn);
    this.#idle.set(hostKey, list);
    const drop = (): void => {
      const i = list.indexOf(conn);
      if (i >= 0) list.splice(i, 1);
      if (list.length === 0 && this.#idle.get(hostKey) === list) this.#idle.delete(hostKey);
      s.destroy();
    };
    s.once('end', drop);
    s.once('error', drop);
    s.once('close', drop);
  }

  #exchange(conn: Conn, hostKey: string, url: URL, headers: Record<string, string>, o: PlainGetOptions, reused: boolean): Promise<PlainAnswer> {
    const s = conn.socket;
    s.removeAllListeners('end');
    s.removeAllListeners('error');
    s.removeAllListeners('close');
    return new Promise<PlainAnswer>((resolve, reject) => {
      let head: Buffer = Buffer.alloc(0);
      let answered = false;
      let body: PlainBody | undefined;
      let err: PlainAnswer | undefined;
      let errBytes = 0;
      let errLength = -1;
      let errChunked = false;
      /** The body was read to its end or given up: the connection is parked or closed already. */
      let over = false;

      const fail = (e: Error): void => {
        if (over) return;
        conn.onData = undefined;
        s.destroy();
        o.signal.removeEventListener('abort', onAbort);
        if (body) body.destroy(e);
        else if (!answered) reject(reused && head.length === 0 ? new StaleConnection(e) : e);
        answered = true;
      };
      const onAbort = (): void => fail(Object.assign(new Error('The operation was aborted'), { name: 'AbortError', code: 'ABORT_ERR' }));
      if (o.signal.aborted) return onAbort();
      o.signal.addEventListener('abort', onAbort, { once: true });

      const finishError = (): void => {
        conn.onData = undefined;
        s.destroy();
        o.signal.removeEventListener('abort', onAbort);
        answered = true;
        resolve(err!);
      };

      conn.onData = (n, buf) => {
        if (body) return body.received(buf, n);
        if (err) {
          // An error document: its first few KiB of text, up to its end.
          const piece = buf.subarray(0, n);
          if (err.text.length < MAX_ERROR_TEXT) err.text += piece.toString('latin1');
          errBytes += n;
          if ((errLength >= 0 && errBytes >= errLength) || (errChunked && err.text.endsWith('0\r\n\r\n'))) finishError();
          return true;
        }
        head = Buffer.concat([head, buf.subarray(0, n)]);
        const at = head.indexOf('\r\n\r\n');
        if (at < 0) {
          if (head.length > MAX_HEAD_BYTES) fail(new Error(`S3 GET: answer head longer than ${MAX_HEAD_BYTES} bytes`));
          return true;
        }
        const lines = head.subarray(0, at).toString('latin1').split('\r\n');
        const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
        if (!m) {
          fail(new Error(`S3 GET: not an HTTP/1.1 answer: ${JSON.stringify((lines[0] ?? '').slice(0, 80))}`));
          return false;
        }
        const status = Number(m[1]);
        const hs = new Map<string, string>();
        for (const line of lines.slice(1)) {
          const c = line.indexOf(':');
          if (c > 0) hs.set(line.slice(0, c).trim().toLowerCase(), line.slice(c + 1).trim());
        }
        const rest = head.subarray(at + 4);
        head = Buffer.alloc(0);
        const cl = hs.get('content-length');
        const length = cl !== undefined && /^\d+$/.test(cl) ? Number(cl) : -1;
        if (status === 100) {
          // Continue: the real answer follows (not asked for, but allowed).
          head = Buffer.from(rest);
          return conn.onData!(0, buf);
        }
        if (status < 200 || status > 299) {
          err = { status, headers: hs, text: '' };
          errLength = length;
          errChunked = /chunked/i.test(hs.get('transfer-encoding') ?? '');
          if (errLength === 0) finishError();
          else if (rest.length > 0) {
            const copy = Buffer.from(rest);
            return conn.onData!(copy.length, copy);
          }
          return true;
        }
        if (length < 0 || hs.has('transfer-encoding')) {
          fail(new Error(`S3 GET: a ${status} answer without Content-Length`));
          return false;
        }
        const keepAlive = !/close/i.test(hs.get('connection') ?? '');
        answered = true;
        body = new PlainBody(this.#buffers, length, s, o, (ok) => {
          over = true;
          o.signal.removeEventListener('abort', onAbort);
          if (ok && keepAlive) this.#park(hostKey, conn);
          else {
            conn.onData = undefined;
            s.destroy();
          }
        });
        resolve({ status, headers: hs, body, text: '' });
        if (length === 0) {
          body.received(buf, 0);
          return true;
        }
        if (rest.length > 0) {
          // The head's read also held body bytes: copied on before the socket's buffer is reused.
          return body.received(rest, rest.length);
        }
        return true;
      };

      s.setTimeout(o.timeoutMs);
      s.on('timeout', () => {
        // A body whose consumer is not taking bytes stopped the reads itself: not the store's quiet.
        if (body?.heldBack) return;
        fail(o.onTimeout());
      });
      s.on('error', fail);
      // Codes as node:http gives them, which isStoreUnavailable() (deadlines.ts) knows.
      s.on('end', () => fail(Object.assign(new Error('S3 GET: the store closed the connection'), { code: 'ECONNRESET' })));
      s.on('close', () => fail(Object.assign(new Error('S3 GET: the connection closed'), { code: 'ECONNRESET' })));
      const path = url.pathname + url.search;
      let req = `GET ${path} HTTP/1.1\r\nHost: ${url.host}\r\n`;
      for (const [k, v] of Object.entries(headers)) req += `${k}: ${v}\r\n`;
      s.write(`${req}\r\n`, 'latin1');
    });
  }
}

/** A failure on a kept-alive connection before any answer: the store may have closed it meanwhile. */
class StaleConnection extends Error {
  constructor(readonly inner: Error) {
    super(inner.message);
  }
}

function unwrap(err: unknown): unknown {
  return err instanceof StaleConnection ? err.inner : err;
}

/**
 * A 2xx answer's body: Content-Length bytes, copied from the socket's buffer into recycled
 * chunks. At most one chunk waits in the stream and one is being filled; past that the
 * socket is paused until the consumer reads. With every shared chunk in use (ReadBuffers'
 * bound), it copies into private chunks of the socket's read size instead.
 */
export class PlainBody extends Readable implements RecyclingReadable {
  readonly #buffers: ReadBuffers;
  /**
   * The chunk being filled, the one waiting in this stream, the one waiting in a RangedReader
   * above it (reader.ts), and the one at the client's socket.
   */
  readonly #share: ReadBufferShare;
  readonly #socket: net.Socket;
  readonly #o: PlainGetOptions;
  readonly #done: (ok: boolean) => void;
  #left: number;
  #chunk: Buffer | undefined;
  #filled = 0;
  #paused = false;
  #settled = false;

  constructor(buffers: ReadBuffers, length: number, socket: net.Socket, o: PlainGetOptions, done: (ok: boolean) => void) {
    super({ highWaterMark: buffers.bufferBytes });
    this.#buffers = buffers;
    this.#share = new ReadBufferShare(buffers, 4, SOCKET_READ_BYTES);
    this.#left = length;
    this.#socket = socket;
    this.#o = o;
    this.#done = done;
  }

  /** Paused because its consumer is not reading (the socket's quiet is ours). */
  get heldBack(): boolean {
    return this.#paused;
  }

  /** Bytes from the socket; false pauses it. */
  received(buf: Buffer, n: number): boolean {
    if (this.destroyed) return false;
    if (n > this.#left) {
      this.destroy(new Error(`S3 GET: ${n - this.#left} bytes past the answer's Content-Length`));
      return false;
    }
    let at = 0;
    let more = true;
    while (at < n) {
      this.#chunk ??= this.#share.take();
      const k = Math.min(n - at, this.#chunk.length - this.#filled);
      buf.copy(this.#chunk, this.#filled, at, at + k);
      this.#filled += k;
      at += k;
      if (this.#filled === this.#chunk.length) more = this.#flush() && more;
    }
    this.#left -= n;
    if (this.#left === 0) {
      if (this.#filled > 0) this.#flush();
      this.#settle(true);
      this.push(null);
      return true;
    }
    if (!more) this.#paused = true;
    return more;
  }

  #flush(): boolean {
    const c = this.#chunk!;
    const out = this.#filled === c.length ? c : c.subarray(0, this.#filled);
    this.#chunk = undefined;
    this.#filled = 0;
    return this.push(out);
  }

  #settle(ok: boolean): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#done(ok);
  }

  override _read(): void {
    if (this.#paused) {
      this.#paused = false;
      this.#socket.setTimeout(this.#o.timeoutMs);
      this.#socket.resume();
    }
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (this.#chunk) this.#buffers.give(this.#chunk);
    this.#chunk = undefined;
    this.#share.close();
    this.#settle(this.#left === 0);
    cb(err);
  }

  recycle(chunk: Uint8Array): void {
    this.#buffers.give(chunk);
  }
}
