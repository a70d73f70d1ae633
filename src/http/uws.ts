import { STATUS_CODES } from 'node:http';
import { createRequire } from 'node:module';
import { SocketAddress } from 'node:net';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import type { HttpRequest, HttpResponse, TemplatedApp, us_listen_socket } from '@trufflesuite/uws-js-unofficial';
import { ClientAbortError, type ErrorCode } from '../errors.js';
import { recyclerOf } from '../storage/file-reader.js';
import { BodyPump, DRAIN_MAX_BYTES, drainable, LINGER_MS } from './body-pump.js';
import { hasBody, transferCodings } from './body.js';
import { refusal } from './errors.js';
import { hostError } from './host.js';
import { PARSER_ERRORS, refusedWith, reportRefused } from './limits.js';
import { callHandler, overrun, responseHasNoBody, underrun } from './node.js';
import type {
  BodySink,
  FrontEnd,
  FrontEndOptions,
  HeaderMap,
  IncomingRequest,
  OutgoingResponse,
  RequestHandler,
} from './adapter.js';

type UwsModule = typeof import('@trufflesuite/uws-js-unofficial');

/**
 * Loads the native uWebSockets.js binary directly. The package's own entry point, when the
 * binary does not load (other Node ABI, musl), prints a warning and returns a slow pure-JS
 * imitation without pause()/resume(); we would rather fail here, at import time, so that
 * createFrontEnd('auto') falls back to our node:http front end.
 */
function loadNative(): UwsModule {
  const require = createRequire(import.meta.url);
  const pkgDir = dirname(require.resolve('@trufflesuite/uws-js-unofficial/package.json'));
  const file = `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`;
  return require(join(pkgDir, 'binaries', file)) as UwsModule;
}

const uws = loadNative();

/** `app.close()` exists in v20.30 (closes the listen sockets and every connection) but is not in its typings. */
type ClosableApp = TemplatedApp & { close(): void };

/**
 * The uWebSockets.js front end.
 *
 * uWS facts this relies on (v20.30):
 * - HttpRequest is stack-allocated: method, URL, query and headers are copied in the route
 *   callback. HttpResponse is valid until end()/tryEnd() completes or onAborted runs; touching
 *   it afterwards throws, so every use is guarded by `#done`.
 * - onData chunks are neutered when the callback returns, so they go to the sink (which copies)
 *   synchronously, or are copied into a short pending list while the handler awaits something
 *   before calling readBody() (body-pump.ts, shared with the node:http front end: up to its
 *   READY_BYTES, read on unpaused, so uWS's idle timer and slowloris guard run meanwhile).
 * - After end(), uWS keeps delivering the rest of an unread body to onData and then reuses the
 *   connection; we just drop those chunks.
 * - pause() also disarms uWS's 10 s idle timeout, so a slow sink cannot get the upload cut.
 * - uWS answers `Expect: 100-continue` by itself.
 * - A header section that arrives in one TCP read is taken whatever its size (measured on
 *   loopback: 5,000, 20,000, 60,000 and 100,000 bytes were, 130,000 reset the connection);
 *   one that spans several reads is cut past 4 KiB, without an answer (compiled in; no
 *   option or UWS_HTTP_MAX_HEADERS_SIZE changes it here). So `maxHeaderBytes` is enforced
 *   by us, with node:http's 431, on what uWS lets through (UwsExchange's constructor).
 * - A Content-Length of 10 digits or more (a body of 1e9 bytes or more) gets the connection
 *   reset with no response; nothing we can answer gets through. Chunked bodies of any size
 *   work. Clients that send a layer of ~954 MiB or more with its length (a monolithic PUT)
 *   need the node:http front end.
 * - Header values lose any bytes 0x80-0xFF at either end, as if they were spaces
 *   (`Host: \xffa.example` arrives as `a.example`), so host.ts cannot refuse those as
 *   node.ts does. An HTTP/1.1 request without Host is closed unanswered, before JavaScript.
 */
export class UwsFrontEnd implements FrontEnd {
  readonly kind = 'uws';
  readonly #app: ClosableApp;
  #listenSocket: us_listen_socket | undefined;
  readonly #exchanges = new Set<UwsExchange>();
  #idleWaiters: (() => void)[] = [];
  /**
   * Remote addresses one of whose requests was refused, with a close, in this turn of the
   * event loop. uWS goes on dispatching whatever the same read holds after such a request:
   * with two Content-Lengths, `0` then `N`, the body it had framed as empty was served as a
   * request of its own, and when another client's request came in the same read (a proxy
   * that shares connections), it completed that request's header block, credentials and all
   * (found by probing: a DELETE ran as the other client). uWS.js names no connection, so
   * every request from that address in the same turn is cut off unanswered; a client that
   * shares the address and was read in that turn retries.
   */
  readonly #closing = new Set<string>();

  constructor(handler: RequestHandler, opts: FrontEndOptions = {}) {
    this.#app = uws.App() as ClosableApp;
    this.#app.any('/*', (res, req) => {
      const exchange = new UwsExchange(res, req, opts.maxHeaderBytes);
      if (this.#closing.has(exchange.remoteAddress)) {
        exchange.forceClose();
        return;
      }
      if (exchange.started) {
        // Answered already: 431.
        this.#closeTurn(exchange.remoteAddress);
        reportRefused({ method: exchange.method, path: exchange.path, status: 431 }, opts.onRefused);
        return;
      }
      // What node:http's parser refuses before Hoist sees it (node.ts onClientError), refused
      // here too, so that both front ends answer alike. uWS hands JavaScript HTTP/1.1 only
      // (README, Front ends), and closes one without Host itself, unanswered; what it lets
      // through is checked as node.ts checks it.
      const refusal: readonly [ErrorCode, string] | undefined =
        framingError(exchange.header('content-length'), exchange.header('transfer-encoding')) ??
        (NOT_TARGET_BYTES.test(exchange.path) || NOT_TARGET_BYTES.test(exchange.rawQuery)
          ? ['NAME_INVALID', 'invalid character in the request target (only ASCII is allowed; percent-encode the rest)']
          : hostError(exchange.hosts, '1.1'));
      if (refusal !== undefined) {
        exchange.reject(...refusal);
        this.#closeTurn(exchange.remoteAddress);
        reportRefused({ method: exchange.method, path: exchange.path, ...refusedWith(refusal[0]) }, opts.onRefused);
        return;
      }
      this.#exchanges.add(exchange);
      // The main handler catches everything itself; this is the last resort.
      callHandler(handler, exchange)
        .catch(() => undefined)
        .then(() => exchange.respondIfForgotten())
        .finally(() => {
          this.#exchanges.delete(exchange);
          if (this.#exchanges.size === 0) for (const wake of this.#idleWaiters.splice(0)) wake();
        });
    });
  }

  /** See #closing. */
  #closeTurn(address: string): void {
    if (this.#closing.has(address)) return;
    this.#closing.add(address);
    setImmediate(() => this.#closing.delete(address));
  }

  get inFlight(): number {
    return this.#exchanges.size;
  }

  get pausedSockets(): number {
    let n = 0;
    for (const e of this.#exchanges) if (e.bodyPaused) n++;
    return n;
  }

  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      // uWS listens with SO_REUSEPORT unless told otherwise: a second server started on a port
      // another uWS process holds (a unit started twice) got half the connections, with its own
      // storage, where node:http fails with EADDRINUSE. (The host form with options is in uWS,
      // not in its typings.)
      const listen = this.#app.listen as unknown as (h: string, p: number, options: number, cb: (socket: us_listen_socket | false) => void) => void;
      listen.call(this.#app, host, port, LIBUS_LISTEN_EXCLUSIVE_PORT, (socket) => {
        if (socket === false) return reject(new Error(`uWS could not listen on ${host}:${port}`));
        this.#listenSocket = socket;
        resolve(uws.us_socket_local_port(socket as never));
      });
    });
  }

  async close(timeoutMs: number, onDeadline?: () => void): Promise<void> {
    if (this.#listenSocket !== undefined) uws.us_listen_socket_close(this.#listenSocket);
    this.#listenSocket = undefined;
    if (this.#exchanges.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.#idleWaiters.push(resolve);
        timer = setTimeout(resolve, timeoutMs);
      });
      clearTimeout(timer);
    }
    if (this.#exchanges.size > 0) onDeadline?.();
    for (const exchange of this.#exchanges) exchange.forceClose();
    // Also drops idle keep-alive connections, which would otherwise hold the process for
    // uWS's idle timeout.
    this.#app.close();
  }
}

/** One request and its response; a single object plays both roles since they share state. */
class UwsExchange implements IncomingRequest, OutgoingResponse {
  readonly method: string;
  readonly path: string;
  readonly rawQuery: string;
  readonly remoteAddress: string;
  readonly #headers: Record<string, string> = Object.create(null) as Record<string, string>;
  /** Every Host field line's value, in order (#headers joins repeats, as for any header). */
  readonly hosts: string[] = [];
  #query: URLSearchParams | undefined;

  readonly #res: HttpResponse;
  #aborted = false;
  #started = false;
  /** The HttpResponse may no longer be touched: the response ended or the client went away. */
  #done = false;
  #abortCallbacks: (() => void)[] = [];
  #onStreamAbort: (() => void) | undefined;

  /** The request body: chunks arrive from the constructor on, whether or not readBody() runs. */
  readonly #body: BodyPump;
  #paused = false;
  /** The body's last chunk arrived, or it has none. */
  #bodyArrived: boolean;
  /** An answer held back until the body arrived (#lingerThen). */
  #answerHeld: (() => void) | undefined;
  /** The body's byte count past which the socket is no longer read while an answer is held (#lingerThen). */
  #holdMaxBytes = 0;
  /** The body's byte count past which a streamed answer's connection is cut (stream()). */
  #streamMaxBytes = Infinity;

  constructor(res: HttpResponse, req: HttpRequest, maxHeaderBytes?: number) {
    this.#res = res;
    this.method = req.getCaseSensitiveMethod().toUpperCase();
    this.path = req.getUrl();
    // getQuery() returns undefined, not '', when there is no query.
    this.rawQuery = (req.getQuery() as string | undefined) ?? '';
    // The header section as it came: request line, `name: value` lines, the empty line.
    let headerBytes = this.method.length + this.path.length + (this.rawQuery ? this.rawQuery.length + 1 : 0) + 13;
    req.forEach((name, value) => {
      if (name === 'host') this.hosts.push(value);
      const seen = this.#headers[name];
      this.#headers[name] = seen === undefined ? value : `${seen}, ${value}`;
      headerBytes += name.length + value.length + 4;
    });
    this.remoteAddress = formatAddress(Buffer.from(res.getRemoteAddressAsText()).toString());
    this.#bodyArrived = !hasBody(this);
    this.#body = new BodyPump({
      pause: () => this.#pause(),
      resume: () => this.#resume(),
      // uWS keeps delivering the rest of the body, which the pump drops; it only must not be
      // left paused, or the next request on this keep-alive connection would never be read.
      stop: () => this.#resume(),
    }, { chunksOwned: false });
    if (maxHeaderBytes !== undefined && headerBytes + 2 > maxHeaderBytes) {
      // What node:http answers (RFC 6585 §5), and as it does, on a connection that then closes.
      this.#started = true;
      this.#done = true;
      res.cork(() => res.writeStatus('431 Request Header Fields Too Large').writeHeader('Connection', 'close').end('', true));
      return;
    }
    res.onAborted(() => this.#abort());
    res.onData((chunk, isLast) => {
      this.#body.push(new Uint8Array(chunk));
      if (!isLast) {
        if (this.#answerHeld !== undefined && this.#body.bytes > this.#holdMaxBytes) this.#pause();
        else if (this.#body.bytes > this.#streamMaxBytes) this.forceClose();
        return;
      }
      this.#bodyArrived = true;
      this.#body.end();
      this.#answerHeld?.();
    });
  }

  get query(): URLSearchParams {
    return (this.#query ??= new URLSearchParams(this.rawQuery));
  }

  get bodyReady(): boolean {
    return this.#body.ready;
  }

  /** The socket is paused (#pause) and the response has not ended. */
  get bodyPaused(): boolean {
    return this.#paused && !this.#done;
  }

  header(name: string): string | undefined {
    return this.#headers[name];
  }

  headers(): Record<string, string> {
    return { ...this.#headers };
  }

  get aborted(): boolean {
    return this.#aborted;
  }

  get started(): boolean {
    return this.#started;
  }

  onAbort(cb: () => void): void {
    if (this.#aborted) queueMicrotask(cb);
    else this.#abortCallbacks.push(cb);
  }

  // ---- request body ----

  readBody(sink: BodySink): Promise<number> {
    if (this.#body.started) return Promise.reject(new Error('readBody() called twice'));
    // Aborted: the pump still hands over what came before (BodyPump.start) and then fails.
    if (this.#aborted) return this.#body.start(sink);
    if (this.#started) return Promise.reject(new Error('readBody() called after the response was sent'));
    return this.#body.start(sink);
  }

  #pause(): void {
    if (this.#paused || this.#done) return;
    this.#paused = true;
    this.#res.pause();
  }

  #resume(): void {
    if (!this.#paused || this.#done) return;
    this.#paused = false;
    this.#res.resume();
  }

  /**
   * Called just before the response ends. uWS drains and drops the rest of an unread body
   * itself, provided the socket is not left paused (the pump resumes it).
   */
  #discardUnreadBody(): void {
    this.#body.fail(new Error('the response was sent before the request body was read'));
  }

  // ---- response ----

  /** Claims the response; false if the client is already gone. */
  #start(): boolean {
    if (this.#started) throw new Error('response already started');
    this.#started = true;
    return !this.#aborted;
  }

  #writeHead(status: number, headers: HeaderMap): void {
    this.#res.writeStatus(`${status} ${STATUS_CODES[status] ?? 'Unknown'}`);
    // uWS writes Content-Length itself; a second one would corrupt the message.
    for (const name in headers) if (name.toLowerCase() !== 'content-length') this.#res.writeHeader(name, headers[name]!);
  }

  send(status: number, headers: HeaderMap, body?: string | Uint8Array): void {
    if (!this.#start()) return;
    this.#answer(status, headers, body);
  }

  /** Whether the connection may serve another request after this one's answer (#answer). */
  #keeps(): boolean {
    return this.#bodyArrived || (!CLOSE_TOKEN.test(this.#headers['connection'] ?? '') &&
      drainable(this.#headers['content-length'], this.#headers['transfer-encoding'], this.#body.bytes));
  }

  /**
   * Ends a claimed response, keeping the connection only when what is left of the request's
   * body is worth reading (DRAIN_MAX_BYTES) and the client did not ask to close. An answer
   * with a body then waits for the lingering close (#lingerThen); one without goes at once
   * (#end explains why it may).
   */
  #answer(status: number, headers: HeaderMap, body: string | Uint8Array | undefined): void {
    const keeps = this.#keeps();
    if (keeps || responseHasNoBody(this.method, status, headers, body) !== false) this.#end(status, headers, body, !keeps);
    else this.#lingerThen(() => this.#end(status, headers, body, true));
  }

  /**
   * The lingering close (body-pump.ts, LINGER_MS) for a request answered before its body
   * arrived, on a connection that closes after it: the client asked for that, or more of the
   * body may be left than is worth reading (DRAIN_MAX_BYTES). uWS closes such a connection as
   * soon as the answer is written, bytes unread or not, and it cannot be closed once it has
   * answered. So the answer waits, the rest of the body dropped as it comes, until the last
   * chunk or LINGER_MS; past DRAIN_MAX_BYTES more the socket is no longer read (paused), so
   * that a client still sending has its writes wait, and reads its answer before the reset
   * that follows (sent at once instead, Node's client got EPIPE first).
   */
  #lingerThen(answer: () => void): void {
    this.#discardUnreadBody();
    this.#holdMaxBytes = this.#body.bytes + DRAIN_MAX_BYTES;
    const timer = setTimeout(() => this.#answerHeld?.(), LINGER_MS).unref();
    this.#answerHeld = () => {
      clearTimeout(timer);
      this.#answerHeld = undefined;
      if (!this.#done) answer();
    };
  }

  /** Ends the response; `close`: and the connection (uWS then writes `Connection: close`). */
  #end(status: number, headers: HeaderMap, body: string | Uint8Array | undefined, close = false): void {
    const bodyless = responseHasNoBody(this.method, status, headers, body);
    this.#res.cork(() => {
      this.#discardUnreadBody();
      this.#writeHead(status, headers);
      if (bodyless === false) {
        this.#res.end(body ?? '', close);
        return;
      }
      // endWithoutBody(n) with n > 0 leaves uWS expecting n more bytes: it closes the
      // connection and fires onAborted. Writing the header ourselves keeps keep-alive working.
      // Given any argument, uWS writes a Content-Length of its own as well (two then), so an
      // answer without a body cannot close the connection, and uWS would read and drop an
      // unread rest after it for as long as the client sent (a HEAD's 401 with a chunked
      // body: without end). To close, the socket is left paused instead: the answer still
      // goes out, nothing more is read, and uWS's idle timer (UWS_IDLE_TIMEOUT_MS) closes the
      // connection. So such an answer need not wait for the lingering close.
      if (bodyless.contentLength !== undefined) this.#res.writeHeader('Content-Length', bodyless.contentLength);
      if (close) {
        this.#res.writeHeader('Connection', 'close');
        this.#pause();
      }
      this.#res.endWithoutBody();
    });
    this.#done = true;
  }

  stream(status: number, headers: HeaderMap, body: Readable, length: number): Promise<void> {
    if (!this.#start() || this.method === 'HEAD' || length === 0) {
      body.destroy();
      if (!this.#aborted) this.#answer(status, { ...headers, 'content-length': String(length) }, undefined);
      return Promise.resolve();
    }
    const res = this.#res;
    // What is left of a body this connection will not keep for (#keeps) is not read: uWS
    // would read and drop it for as long as the client sent. The socket is left paused,
    // which stops reads but not writes, and uWS's idle timer closes the connection once the
    // response has ended. Reads come back while a write waits for the client, though (and
    // pausing then would stop the writes too, measured), so the connection of a client that
    // sends more than the answer's length and DRAIN_MAX_BYTES meanwhile is cut (the
    // constructor): what it costs is then bounded by what it asked for.
    const keeps = this.#keeps();
    if (!keeps) this.#streamMaxBytes = this.#body.bytes + DRAIN_MAX_BYTES + length;
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      let nudger: NodeJS.Timeout | undefined;
      const settle = (err?: unknown): void => {
        if (settled) return;
        settled = true;
        this.#onStreamAbort = undefined;
        clearInterval(nudger);
        body.destroy();
        if (err === undefined) resolve();
        else reject(err);
      };
      /** The source failed or ended short: cut the connection so the client sees a truncated response. */
      const fail = (err: unknown): void => {
        if (settled) return;
        settle(err);
        if (this.#done) return;
        this.#done = true;
        res.close();
      };
      this.#onStreamAbort = () => settle();

      // tryEnd() writes what the socket takes and buffers nothing, so on backpressure we keep
      // the piece and where it started, and onWritable retries from the offset uWS reports
      // (the uWebSockets.js VideoStreamer example).
      //
      // Except for a write of at most 16 KiB inside cork(): uWS copies that into its cork
      // buffer and calls it written, and what the socket then refuses it keeps in memory.
      // Mid-response that is harmless (the next write sends it first), but as the last write
      // it ends the response, and uWS's idle timer can close the connection before a writable
      // event sends those bytes: they are lost (a slow client got all but the last 5,504).
      // So the response's last TAIL_BYTES are gathered and offered as one piece, which uWS
      // writes straight to the socket or reports as not written.
      let takenBytes = 0;
      let overran = false;
      const tailStart = Math.max(0, length - TAIL_BYTES);
      const tail = new Uint8Array(length - tailStart);
      let headSent = false;
      /** The piece being written, and where in the response it starts. */
      let pending: Uint8Array | undefined;
      let pendingStart = 0;
      /** The source's chunk behind `pending`, given back once `pending` is written. */
      let pendingWhole: Uint8Array | undefined;
      const tryEnd = (chunk: Uint8Array): boolean => {
        // The status line and headers go with the first byte, as node:http sends them: uWS
        // sends what it was given at once, so a source that fails before its first byte (a
        // pull-through cache's fetch whose digest failed) would leave half a header section,
        // which curl takes for a complete, empty response. Cut before it, the client sees no
        // answer at all.
        if (!headSent) {
          headSent = true;
          this.#writeHead(status, keeps ? headers : { ...headers, connection: 'close' });
        }
        // A write the socket does not take all of has uSockets read it again (measured);
        // paused before each, the socket is paused when the last one ends the response.
        if (!keeps) res.pause();
        const [ok, done] = res.tryEnd(chunk, length);
        if (done) {
          this.#done = true;
          settle(overran ? overrun(length) : undefined);
        }
        return ok || done;
      };
      // uWS copies what it keeps of a write before tryEnd() returns: a chunk the source lets
      // us give back goes back as soon as it is written whole, to carry the next read.
      const recycle = recyclerOf(body);
      /** The source has given every byte: `tail` goes once `pending` is written. */
      let tailDue = false;
      /** A write failed and no writable event came since: the socket is full. */
      let blocked = false;
      /**
       * Writes `pending` from `offset` on, then the tail if due; true once all is written (or
       * the response ended). While the socket is full, the last bytes wait for a writable
       * event if they are few enough for uWS's cork buffer (see TAIL_BYTES).
       */
      const retryFrom = (offset: number, writable: boolean): boolean => {
        if (writable) blocked = false;
        while (pending !== undefined && !this.#done) {
          if (blocked && length - offset <= CORK_BUFFER_BYTES) return false;
          if (!tryEnd(pending.subarray(offset - pendingStart))) {
            blocked = true;
            return false;
          }
          if (pendingWhole !== undefined) recycle?.(pendingWhole);
          pending = pendingWhole = undefined;
          if (tailDue && !this.#done) {
            tailDue = false;
            offset = queue(tail, undefined);
          }
        }
        if (!this.#done) body.resume();
        return true;
      };
      /** Makes `piece` (from `whole`, if the source may have that back) the one to write; returns where it starts. */
      const queue = (piece: Uint8Array, whole: Uint8Array | undefined): number => {
        pending = piece;
        pendingWhole = whole;
        pendingStart = res.getWriteOffset();
        return pendingStart;
      };
      res.onWritable((offset) => retryFrom(offset, true));

      // A failed tryEnd() arms uWS's 10 s idle timer, and only the next writable event stops
      // it. Linux reports a full socket writable once a third of its send buffer (grown to
      // 4 MiB on a fast link) has drained: more than 10 s for a client reading below about
      // 140 KB/s, so uWS cut slow but steady pulls. The socket takes bytes again as soon as
      // some have drained, though, so while a write waits we retry it every second: what the
      // client read is refilled, and each failed retry arms the timer anew. Since that would
      // also keep a client that stopped reading, we drop one that took nothing for uWS's
      // 10 s ourselves, as uWS would have. The last few bytes, which only a writable event
      // may send, show no progress while they wait: pause() and resume() arm the timer anew
      // instead (measured: writable events still come), for at most LAST_BYTES_WAIT_MS.
      let movedOffset = -1;
      let movedAtMs = 0;
      const nudge = (): void => {
        if (pending === undefined || this.#done) return;
        res.cork(() => retryFrom(res.getWriteOffset(), false));
        if (this.#done) return;
        const offset = res.getWriteOffset();
        const now = Date.now();
        if (offset !== movedOffset) {
          movedOffset = offset;
          movedAtMs = now;
        } else if (length - offset <= CORK_BUFFER_BYTES && now - movedAtMs < LAST_BYTES_WAIT_MS) {
          res.pause();
          res.resume();
          // A socket left paused (see below) is paused again before the loop can read it.
          if (!keeps) res.pause();
        } else if (now - movedAtMs >= UWS_IDLE_TIMEOUT_MS) {
          this.forceClose();
        }
      };

      res.cork(() => {
        this.#discardUnreadBody();
        if (!keeps) this.#pause();
      });
      body.on('data', (data: Buffer | string) => {
        if (this.#done) return;
        const chunk = typeof data === 'string' ? Buffer.from(data) : data;
        // uWS would write past `length` without reporting done, so clip.
        const piece = chunk.subarray(0, length - takenBytes);
        overran = piece.byteLength < chunk.byteLength;
        const whole = piece.byteLength === chunk.byteLength ? chunk : undefined;
        const head = piece.subarray(0, Math.max(0, tailStart - takenBytes));
        if (head.byteLength < piece.byteLength) tail.set(piece.subarray(head.byteLength), takenBytes + head.byteLength - tailStart);
        takenBytes += piece.byteLength;
        if (piece.byteLength > 0 && takenBytes === length) tailDue = true;
        res.cork(() => {
          if (head.byteLength > 0) queue(head, whole);
          else if (whole !== undefined) recycle?.(whole);
          if (pending === undefined && tailDue) {
            tailDue = false;
            queue(tail, undefined);
          }
          if (pending !== undefined && !retryFrom(res.getWriteOffset(), false)) {
            body.pause();
            nudger ??= setInterval(nudge, NUDGE_INTERVAL_MS).unref();
          }
        });
      });
      // 'end' may come while the last piece still waits in `pending`: only a short source fails.
      body.on('end', () => {
        if (takenBytes < length) fail(underrun(takenBytes, length));
      });
      body.on('error', fail);
    });
  }

  /**
   * Answers a request the handler must not see with the spec's error envelope, and closes the
   * connection. For a Content-Length that is not one number, RFC 9112 §6.3 requires exactly
   * that (the message has no framing): uWS lets two different lengths through (joined here
   * as "a, b") and would read the body by one of them.
   */
  reject(code: ErrorCode, message: string): void {
    if (!this.#start()) return;
    const { status, headers, body } = refusal(code, message);
    this.#res.cork(() => {
      this.#discardUnreadBody();
      this.#writeHead(status, headers);
      this.#res.end(body, true);
    });
    this.#done = true;
  }

  /** After the handler settled: a handler that never answered gets a bare 500. */
  respondIfForgotten(): void {
    if (!this.#started && !this.#aborted) this.send(500, {});
  }

  /** close(timeoutMs) expired with this exchange still running. */
  forceClose(): void {
    if (this.#done) return;
    this.#res.close(); // runs onAborted synchronously
  }

  #abort(): void {
    if (this.#aborted) return;
    this.#aborted = true;
    this.#done = true;
    this.#body.fail(new ClientAbortError());
    this.#onStreamAbort?.();
    for (const cb of this.#abortCallbacks.splice(0)) cb();
  }
}

/** `Connection: close` (RFC 9110 §7.6.1: a list of case-insensitive tokens). */
const CLOSE_TOKEN = /(?:^|,)[ \t]*close[ \t]*(?:,|$)/i;

/** uWS's HTTP idle timeout (HTTP_TIMEOUT_S, compiled in): a response that moved no byte for this long is dropped. */
const UWS_IDLE_TIMEOUT_MS = 10_000;

/** How often a response write that waits for the client is retried (stream()). */
const NUDGE_INTERVAL_MS = 1_000;

/**
 * uWS's cork buffer (LoopData::CORK_BUFFER_SIZE): a write this small inside cork() is copied
 * there and reported written whatever the socket then takes; uWS keeps the rest in memory.
 */
const CORK_BUFFER_BYTES = 16 * 1024;

/**
 * A response's last bytes, offered to uWS as one piece (stream()), larger than its cork
 * buffer, so that they go to the socket or are reported not written.
 */
const TAIL_BYTES = 2 * CORK_BUFFER_BYTES;

/**
 * How long the last bytes of a response may wait for the socket to report room (stream()):
 * a third of a 4 MiB send buffer drains in about 90 s at 16 KB/s.
 */
const LAST_BYTES_WAIT_MS = 120_000;

/** uWS's ListenOptions: no SO_REUSEPORT. */
const LIBUS_LISTEN_EXCLUSIVE_PORT = 1;

/** A request-target is visible ASCII (RFC 9112 §3.2, RFC 3986); uWS passes other bytes through. */
const NOT_TARGET_BYTES = /[^\x21-\x7e]/;

/**
 * What node:http's parser refuses in a message's framing and uWS's lets through, named as
 * node.ts names it (limits.ts PARSER_ERRORS):
 * - a Content-Length that is not one decimal number: repeated values are refused, as
 *   RFC 9110 §8.6 allows (uWS joins repeats as "a, b" and would read the body by one of them);
 * - a Transfer-Encoding whose last coding is not chunked: the body then has no framing
 *   (RFC 9112 §6.1 asks for 400 and a close), but uWS reads any Transfer-Encoding as chunked,
 *   so `gzip` stored a chunked body and an unframed one left the request waiting forever;
 * - Content-Length and Transfer-Encoding together (RFC 9112 §6.3: a smuggling vector).
 */
function framingError(length: string | undefined, coding: string | undefined): readonly [ErrorCode, string] | undefined {
  if (length !== undefined && !/^\d+$/.test(length)) return PARSER_ERRORS.HPE_INVALID_CONTENT_LENGTH;
  if (coding === undefined) return undefined;
  // Chunked must come last, and only once (RFC 9112 §6.1; uWS would read `chunked, chunked`,
  // repeats of the field joined, as one chunked body, where node:http refuses it).
  const codings = transferCodings(coding);
  if (codings.pop() !== 'chunked' || codings.includes('chunked')) return PARSER_ERRORS.HPE_INVALID_TRANSFER_ENCODING;
  if (length !== undefined) return PARSER_ERRORS.HPE_UNEXPECTED_CONTENT_LENGTH;
  return undefined;
}

/** uWS spells IPv6 out in full (0000:...:0001); node:http, and our logs, use the short form (::1). */
function formatAddress(text: string): string {
  return text.includes(':') ? new SocketAddress({ address: text, family: 'ipv6' }).address : text;
}
