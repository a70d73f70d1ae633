import { createServer, STATUS_CODES, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { BodyTimeoutError, ClientAbortError, type ErrorCode } from '../errors.js';
import { recyclerOf } from '../storage/file-reader.js';
import type {
  BodySink,
  FrontEnd,
  FrontEndOptions,
  HeaderMap,
  IncomingRequest,
  OutgoingResponse,
  RefusedRequest,
  RequestHandler,
  TlsFiles,
} from './adapter.js';
import { BodyPump, DRAIN_MAX_BYTES, drainable, LINGER_MS, READY_BYTES } from './body-pump.js';
import { refusal } from './errors.js';
import { hostError } from './host.js';
import { PARSER_ERRORS, rawErrorResponse, refusedWith, reportRefused } from './limits.js';

/** Requests one connection may have waiting for their answers; past it, it is cut off. */
const MAX_PIPELINED = 256;

/** Connections that close after an answer sent before their request's body was all read. */
const lingering = new WeakSet<Socket>();

/**
 * The lingering close (body-pump.ts, LINGER_MS) for an answer that closes the connection while
 * its request's body still arrives: node:http would destroy the socket as soon as the answer
 * is written, and the kernel then resets a client still sending, which loses the answer. Here
 * the answer goes first, then the FIN, as node:http sends them; the rest of the body is read
 * and dropped until it ends or the client's side ends, and only then, or after LINGER_MS, is
 * the socket destroyed. Past DRAIN_MAX_BYTES the socket is no longer read: the client's
 * writes then wait, and it reads its answer before the reset (destroyed at once, a client
 * that sent fast got EPIPE first). The answer never waits for the body: a client that reads
 * its answer before it ends its body would wait for good. Nothing else on the connection is
 * served (RFC 9112 §9.6). Called as the answer's headers are written.
 */
function lingerAfterAnswer(req: IncomingMessage): void {
  const socket = req.socket;
  if (lingering.has(socket)) return;
  lingering.add(socket);
  let answered = false;
  let over = false;
  /** Destroys the socket once the answer has left, or marks the linger over until it has. */
  const close = (): void => {
    over = true;
    if (!answered) return;
    if (socket.writableFinished) socket.destroy();
    else socket.once('finish', () => socket.destroy());
  };
  // The body is read here rather than dumped by node:http: a request it dumps emits 'end' at
  // once, and its bytes go by without an event. bytesRead counts what node:http's parser
  // reads off the socket; a paused request stops it reading.
  const maxBytesRead = socket.bytesRead + DRAIN_MAX_BYTES;
  req.on('data', () => {
    if (socket.bytesRead > maxBytesRead) req.pause();
  }).once('end', close);
  // node:http calls destroySoon() once the last response on the connection has been written.
  socket.destroySoon = function lingeringDestroySoon(this: Socket): void {
    answered = true;
    if (this.writable) this.end();
    const timer = setTimeout(() => this.destroy(), LINGER_MS).unref();
    this.once('close', () => clearTimeout(timer)).once('end', close);
    if (over) close();
  };
}

/**
 * A request in plain HTTP on the TLS port gets a 400 that says so, as Go's servers (so
 * distribution's) answer it, where node's TLS layer would reset the connection and leave the
 * client to guess. A connection's first byte decides: a TLS record starts with 22 (a
 * handshake). The TLS server's own connection listener then takes the socket, with the bytes
 * read so far (node hands a socket's buffered bytes to its TLS session). A connection that
 * sends nothing is dropped after the idle timeout, as its handshake would be.
 */
function answerPlainHttp(server: HttpsServer, idleMs: number, onRefused: FrontEndOptions['onRefused']): void {
  const tlsListeners = server.listeners('connection') as ((socket: Socket) => void)[];
  server.removeAllListeners('connection');
  const ignore = (): void => undefined;
  server.on('connection', (socket: Socket) => {
    socket.on('error', ignore);
    if (idleMs > 0) socket.setTimeout(Math.min(idleMs, 120_000), () => socket.destroy());
    socket.once('data', (first: Buffer) => {
      socket.pause();
      socket.unshift(first);
      socket.setTimeout(0);
      if (first[0] === 22) {
        socket.off('error', ignore);
        for (const listener of tlsListeners) listener.call(server, socket);
        return;
      }
      socket.end('HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n');
      // What it sends meanwhile is read and dropped, for a moment: a client that keeps its
      // side open (or trickles) held a descriptor for good (found by probing).
      socket.resume();
      const linger = setTimeout(() => socket.destroy(), LINGER_MS).unref();
      socket.once('close', () => clearTimeout(linger));
      reportRefused({ ...requestLine(first), status: 400 }, onRefused);
    });
  });
}

/**
 * The node:http front end, for runtimes where the uWebSockets.js binary does not load
 * (Node 22+, musl). It behaves like the uWS one; test/http/frontend.test.ts runs against both.
 */
export class NodeFrontEnd implements FrontEnd {
  readonly kind = 'node';
  readonly #server: Server | HttpsServer;
  readonly #exchanges = new Set<NodeExchange>();
  /** Per connection, its last request, and whether that has been answered (`done`). */
  readonly #last = new WeakMap<Socket, { req: IncomingMessage; answered: Promise<void>; done: boolean }>();
  /** Per connection, its requests not yet answered (MAX_PIPELINED). */
  readonly #pending = new WeakMap<Socket, number>();
  #idleWaiters: (() => void)[] = [];

  constructor(handler: RequestHandler, opts: FrontEndOptions = {}) {
    const idleMs = opts.idleTimeoutMs ?? 0;
    const options = {
      keepAlive: true,
      // A multi-GiB upload may take minutes: the idle timeout (readBody) drops only clients
      // that stop sending, and headersTimeout guards against slowloris.
      requestTimeout: 0,
      // node checks headersTimeout every connectionsCheckingInterval (30 s by default).
      ...(idleMs > 0 ? { headersTimeout: idleMs, connectionsCheckingInterval: Math.min(30_000, Math.max(250, idleMs / 2)) } : {}),
      maxHeaderSize: opts.maxHeaderBytes,
      // node:http would answer an HTTP/1.1 request without Host with a bare 400; host.ts
      // answers it, with the error envelope, along with the other Host checks.
      requireHostHeader: false,
    };
    const onRequest = (req: IncomingMessage, res: ServerResponse, expectsContinue = false): void => {
      // Pipelined after a request the connection closes with (lingerAfterAnswer).
      if (lingering.has(req.socket)) {
        req.socket.destroy();
        return;
      }
      const exchange = new NodeExchange(req, res, idleMs, expectsContinue);
      this.#exchanges.add(exchange);
      // A request pipelined behind one still being answered waits for that answer: node:http
      // hands it over as soon as it is parsed, and a PUT run beside the PATCH before it found
      // the upload busy (RFC 9112 §9.3.2: only safe methods may run in parallel). Its body,
      // unread meanwhile, holds the socket back.
      const previous = this.#last.get(req.socket);
      const before = previous?.done === false ? previous.answered : undefined;
      // node:http parses on while answers wait (it stops only for unsent answers, and these
      // are not written yet): a client that pipelined GETs and read nothing had 340,000
      // requests held in 10 s, 1.9 GiB, and with a smaller heap the process died (found by
      // probing). No client pipelines that deep; one that does is cut off.
      const pending = (this.#pending.get(req.socket) ?? 0) + 1;
      this.#pending.set(req.socket, pending);
      if (pending > MAX_PIPELINED) req.socket.destroy();
      const serve = (): Promise<void> => {
        if (exchange.refusal === undefined) return callHandler(handler, exchange);
        exchange.reject(...exchange.refusal);
        reportRefused({ method: exchange.method, path: exchange.path, ...refusedWith(exchange.refusal[0]) }, opts.onRefused);
        return Promise.resolve();
      };
      // The main handler catches everything itself; this is the last resort.
      const handled = (before === undefined ? serve() : before.then(serve))
        .catch(() => undefined)
        .then(() => exchange.respondIfForgotten());
      // In flight until the response has left too, so close() never cuts unsent bytes.
      const last = { req, answered: Promise.resolve(), done: false };
      last.answered = Promise.all([handled, exchange.closed]).then(() => {
        this.#exchanges.delete(exchange);
        if (this.#exchanges.size === 0) for (const wake of this.#idleWaiters.splice(0)) wake();
        last.done = true;
        this.#pending.set(req.socket, (this.#pending.get(req.socket) ?? 1) - 1);
      });
      this.#last.set(req.socket, last);
    };
    this.#server = opts.tls
      // A TLS handshake gets the idle timeout too (node's own is 120 s): a client that
      // connects and says nothing is dropped as soon as on plain HTTP.
      ? createHttpsServer({ ...options, cert: opts.tls.cert, key: opts.tls.key, ...(idleMs > 0 ? { handshakeTimeout: Math.min(idleMs, 120_000) } : {}) }, onRequest)
      : createServer(options, onRequest);
    // An idle keep-alive connection stays for the idle timeout too (0: for good), not node's
    // 5 s: load balancers keep connections to a backend for their own idle timeout (AWS ALB
    // 60 s) and sent their next request on one node had just closed (a 502 to the client);
    // and a client reading a large blob's last MiBs out of the kernel's buffers raced the
    // timer, which node starts once the answer is handed to the kernel (found by probing:
    // "other side closed" on the request after a 40 MiB pull, under load).
    this.#server.keepAliveTimeout = idleMs;
    // A client that half-closes after its request (shutdown(SHUT_WR), as `nc -N` does) gets
    // its answer, as from Go's servers: node:http would abort the request at the FIN, and a
    // PATCH whose bytes were all stored went unanswered (found by probing). The switch is
    // node:http's own (_http_server.js), not in its typings.
    (this.#server as { httpAllowHalfOpen?: boolean }).httpAllowHalfOpen = true;
    if (opts.tls) answerPlainHttp(this.#server as HttpsServer, idleMs, opts.onRefused);
    // `Expect: 100-continue`: the 100 goes out when the handler starts reading the body, or
    // when the request starts waiting for an upload slot (inviteBody), so a request refused
    // first (401, 404, 416...) gets its answer before the client sends the body at all;
    // node:http then closes the connection, whose framing is unknown.
    this.#server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => onRequest(req, res, true));
    // Any other expectation: node:http would answer a bare 417 (no error envelope) where uWS
    // serves the request; RFC 9110 §10.1.1 makes the 417 a MAY, so serve it here too.
    this.#server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => onRequest(req, res));
    this.#server.on('clientError', (err: NodeJS.ErrnoException & { rawPacket?: Buffer }, socket: Socket) => {
      // RFC 9112 §9.3: responses go out in the order of the requests. What a connection sent
      // after a complete request still being answered (garbage, or a request node cannot
      // parse) is dealt with once that answer is out; answered at once, its 400 would go
      // first. An error in the request itself (its body, the connection) is handled at once.
      // A 400 may go out when no answer is on its way on this connection: none began, or the
      // one before was sent whole (a keep-alive connection's next request that does not parse).
      const last = this.#last.get(socket);
      const answering = last?.done === false ? last : undefined;
      const answer = (idle: boolean): void => {
        const answered = onClientError(err, socket, idle || socket.bytesWritten === 0);
        if (answered) reportRefused({ ...requestLine(err.rawPacket), ...answered }, opts.onRefused);
      };
      if (answering?.req.complete && err.code?.startsWith('HPE_')) void answering.answered.then(() => answer(true));
      // The client ended its side in the middle of the body of the request being answered: it
      // went away, and that request says so (499). A 400 here, counted and logged as a refused
      // request, counted the one client twice (found by probing).
      else if (answering !== undefined && !answering.req.complete && err.code === 'HPE_INVALID_EOF_STATE') onClientError(err, socket, false);
      // The error is in the body of a request answered before its body ended (a 404 to a
      // chunked PATCH, its rest being dropped): that request had its answer, and a 400 now
      // would be taken for the next one's (found by probing).
      else if (last?.done === true && !last.req.complete) answer(false);
      else answer(answering === undefined);
    });
  }

  reloadTls(tls: TlsFiles): void {
    if (!('setSecureContext' in this.#server)) throw new Error('the server was started without TLS');
    this.#server.setSecureContext({ cert: tls.cert, key: tls.key });
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
      this.#server.once('error', reject);
      this.#server.listen(port, host, () => {
        this.#server.off('error', reject);
        resolve((this.#server.address() as AddressInfo).port);
      });
    });
  }

  async close(timeoutMs: number, onDeadline?: () => void): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#server.closeIdleConnections();
    if (this.#exchanges.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.#idleWaiters.push(resolve);
        timer = setTimeout(resolve, timeoutMs);
      });
      clearTimeout(timer);
    }
    if (this.#exchanges.size > 0) onDeadline?.();
    // Idle keep-alive connections and whatever is still running.
    this.#server.closeAllConnections();
    await closed;
  }
}

/** One request and its response; a single object plays both roles since they share state. */
class NodeExchange implements IncomingRequest, OutgoingResponse {
  readonly method: string;
  readonly path: string;
  readonly rawQuery: string;
  readonly remoteAddress: string;
  /** Resolves when the response closed: sent completely, or the connection went away. */
  readonly closed: Promise<void>;
  #headers: Record<string, string> | undefined;
  #query: URLSearchParams | undefined;

  readonly #req: IncomingMessage;
  readonly #res: ServerResponse;
  #aborted = false;
  #started = false;
  #abortCallbacks: (() => void)[] = [];
  #bodyClaimed = false;
  /** The body being read, once readBody() was called. */
  #body: BodyPump | undefined;
  #onStreamAbort: (() => void) | undefined;
  readonly #idleMs: number;
  /** The body stalled: answer, then close the connection (its framing is lost). */
  #closeAfterResponse = false;
  /** The client waits for `100 Continue` before it sends the body. */
  readonly #expectsContinue: boolean;
  /** `100 Continue` went out (inviteBody() or readBody()). */
  #continued = false;
  /** The request-target's authority, when it came in absolute-form. */
  readonly #authority: string | undefined;
  /** Why the request is refused before any handler sees it (host.ts), if it is. */
  readonly refusal: readonly [ErrorCode, string] | undefined;

  constructor(req: IncomingMessage, res: ServerResponse, idleMs = 0, expectsContinue = false) {
    this.#req = req;
    this.#res = res;
    this.#idleMs = idleMs;
    this.#expectsContinue = expectsContinue;
    this.method = req.method ?? 'GET';
    let url = req.url ?? '/';
    // The absolute-form (`GET http://host/v2/`), which RFC 9112 §3.2.2 has servers accept:
    // its authority stands in for Host. (uWS never answers it: README, Front ends.)
    const absolute = /^https?:\/\/([^/?#]*)/i.exec(url);
    if (absolute) {
      url = url.slice(absolute[0].length);
      if (!url.startsWith('/')) url = `/${url}`;
      this.#authority = absolute[1]!;
    }
    // One check of Host, and of the authority that replaces it, for routing and auth alike.
    this.refusal = hostError(req.headersDistinct.host ?? [], req.httpVersion, this.#authority);
    const q = url.indexOf('?');
    this.path = q < 0 ? url : url.slice(0, q);
    this.rawQuery = q < 0 ? '' : url.slice(q + 1);
    this.remoteAddress = req.socket.remoteAddress ?? '';
    this.closed = new Promise((resolve) => {
      const closed = (): void => {
        // Closed before we ended the response: the client went away (or close() cut it).
        if (!res.writableEnded) this.#abort();
        resolve();
      };
      res.once('close', closed);
      // A request pipelined behind another whose connection went: node never closes a
      // response it had not yet started, only the request (found by probing: each such
      // request stayed in flight for good, 179,400 of them after 600 connections).
      req.once('close', () => {
        if (req.socket.destroyed) closed();
      });
    });
  }

  get query(): URLSearchParams {
    return (this.#query ??= new URLSearchParams(this.rawQuery));
  }

  /**
   * Part of the body has yet to arrive, and nobody reads it now: readBody() paused the request
   * (the sink is full), or the handler has not started reading (it waits for storage or for
   * admission). As the uWS front end counts its paused sockets.
   */
  get bodyPaused(): boolean {
    return !this.#req.complete && (this.#req.isPaused() || !this.#bodyClaimed);
  }

  /**
   * Before readBody(), nobody reads the request: node's stream keeps what arrives, up to its
   * highWaterMark (16 KiB on Node 20, 64 KiB on 22), and then stops reading the socket. That
   * buffer is the early bytes the uWS front end keeps in its BodyPump, so readiness is told
   * from it, with the same READY_BYTES.
   */
  get bodyReady(): boolean {
    if (this.#body !== undefined) return this.#body.ready;
    const req = this.#req;
    return this.#aborted || req.complete || req.readableLength >= Math.min(READY_BYTES, req.readableHighWaterMark);
  }

  /**
   * A client waiting for `100 Continue` gets it now: its body then arrives into node's stream
   * buffer (bodyReady), and node stops reading the socket once that holds its highWaterMark,
   * as for a body sent without Expect. Called when the request starts waiting for an upload
   * slot (engine/admission.ts), after the refusals made before it (401, 404, 416 for a busy
   * upload), which go out instead of the 100; without it, a request waiting for the 100 sent
   * nothing, so was never ready, and ready pushes that kept coming went first for as long as
   * they came (measured: 25 s, while 12 clients pushed without Expect, until they stopped).
   */
  inviteBody(): void {
    this.#writeContinue();
  }

  #writeContinue(): void {
    if (!this.#expectsContinue || this.#continued || this.#started || this.#aborted) return;
    this.#continued = true;
    this.#res.writeContinue();
  }

  header(name: string): string | undefined {
    return this.#headerMap()[name];
  }

  headers(): Record<string, string> {
    return { ...this.#headerMap() };
  }

  /**
   * node:http keeps only the first of some repeated headers (authorization, content-type...);
   * headersDistinct has them all, so we join every repeat with ', ' as uWS does.
   */
  #headerMap(): Record<string, string> {
    if (this.#headers !== undefined) return this.#headers;
    const map = Object.create(null) as Record<string, string>;
    for (const [name, values] of Object.entries(this.#req.headersDistinct)) {
      if (values !== undefined) map[name] = values.join(', ');
    }
    if (this.#authority !== undefined) map.host = this.#authority;
    return (this.#headers = map);
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
    if (this.#bodyClaimed) return Promise.reject(new Error('readBody() called twice'));
    this.#bodyClaimed = true;
    if (this.#aborted) return this.#readLeftover(sink);
    if (this.#started) return Promise.reject(new Error('readBody() called after the response was sent'));
    const req = this.#req;
    const idleMs = this.#idleMs;
    // Only the client's silence counts: while we hold the socket paused, the timer is off.
    const idle = (on: boolean): void => {
      if (idleMs > 0) req.socket.setTimeout(on ? idleMs : 0);
    };
    const onData = (chunk: Buffer): void => body.push(chunk);
    const onEnd = (): void => body.end();
    // node:http emits 'error' (ECONNRESET, "aborted") when the client went away mid-body.
    const onError = (): void => body.fail(new ClientAbortError());
    // node:http emits 'timeout' on a request whose body is not complete, and then leaves
    // the socket open because someone listened.
    const onIdle = (): void => {
      this.#closeAfterResponse = true;
      body.fail(new BodyTimeoutError(body.bytes, idleMs));
      // Whatever the answer, a client that still sends nothing is dropped after another wait.
      idle(true);
    };
    const body = new BodyPump({
      pause: () => {
        req.pause();
        idle(false);
      },
      resume: () => {
        idle(true);
        req.resume();
      },
      stop: (ended) => {
        req.off('data', onData).off('end', onEnd).off('error', onError).off('timeout', onIdle);
        idle(false);
        // The engine gave up on a body that crawled: waiting for the rest to drain would
        // keep the connection as long as its sender likes.
        if (!ended && sink.signal?.aborted) this.#closeAfterResponse = true;
        // Nobody will read the rest: let it flow, with no listener, so node drops it.
        if (!ended) req.resume();
      },
    }, { chunksOwned: true });
    this.#body = body;
    this.#writeContinue();
    req.on('data', onData).once('end', onEnd).once('error', onError);
    if (idleMs > 0 && !req.complete) req.on('timeout', onIdle);
    return body.start(sink);
  }

  /**
   * The client went away before the handler read the body, say with its headers, part of the
   * body and its FIN in one read: node:http destroyed the request with that part still
   * buffered. It is what the client sent, and is kept as a body cut short later is (README:
   * what arrived is kept): written into the sink, then the read fails as the client left.
   */
  #readLeftover(sink: BodySink): Promise<number> {
    const left: Buffer[] = [];
    for (let chunk: Buffer | null; (chunk = this.#req.read() as Buffer | null) !== null;) left.push(chunk);
    if (left.length === 0) return Promise.reject(new ClientAbortError());
    const body = new BodyPump({ pause: () => {}, resume: () => {}, stop: () => {} }, { chunksOwned: true });
    const read = body.start(sink);
    for (const chunk of left) body.push(chunk);
    body.fail(new ClientAbortError());
    return read;
  }

  /**
   * Called just before the response starts. A body never read is dumped by node:http itself
   * once the response finished; a read under way is stopped and the rest dropped.
   */
  #discardUnreadBody(): void {
    this.#body?.fail(new Error('the response was sent before the request body was read'));
  }

  // ---- response ----

  /** Claims the response; false if the client is already gone. */
  #start(): boolean {
    if (this.#started) throw new Error('response already started');
    this.#started = true;
    return !this.#aborted;
  }

  send(status: number, headers: HeaderMap, body?: string | Uint8Array): void {
    if (this.#start()) this.#end(status, headers, body);
  }

  /**
   * Whether the connection goes with this response: when asked to, or when more is left of
   * the request's body than is worth reading to keep it (body-pump.ts, drainable()), which
   * includes a chunked body and a Content-Length the registry refuses as a length (more than
   * 15 digits, handlers.ts: 400 SIZE_INVALID).
   */
  #closesConnection(): boolean {
    if (this.#closeAfterResponse) return true;
    const { 'content-length': length, 'transfer-encoding': coding } = this.#req.headers;
    return !this.#req.complete && !drainable(length, coding, this.#body?.bytes ?? 0);
  }

  /**
   * Writes the status line and headers, with `Connection: close` when #closesConnection()
   * says so; a response that closes the connection while the body still arrives gets the
   * lingering close (lingerAfterAnswer). node:http decides whether a response keeps the
   * connection (shouldKeepAlive) only as it writes the headers.
   */
  #writeHead(status: number, headers: HeaderMap): ServerResponse {
    const closes = this.#closesConnection();
    this.#res.writeHead(status, STATUS_CODES[status] ?? 'Unknown', closes ? { ...headers, connection: 'close' } : headers);
    if (!this.#req.complete && (closes || !this.#res.shouldKeepAlive)) lingerAfterAnswer(this.#req);
    return this.#res;
  }

  #end(status: number, headers: HeaderMap, body: string | Uint8Array | undefined): void {
    this.#discardUnreadBody();
    const out = withoutContentLength(headers);
    const bodyless = responseHasNoBody(this.method, status, headers, body);
    if (bodyless === false) {
      const payload = body ?? '';
      out['content-length'] = String(byteLength(payload));
      this.#writeHead(status, out).end(payload);
      return;
    }
    if (bodyless.contentLength !== undefined) out['content-length'] = bodyless.contentLength;
    this.#writeHead(status, out).end();
  }

  stream(status: number, headers: HeaderMap, body: Readable, length: number): Promise<void> {
    if (!this.#start() || this.method === 'HEAD' || length === 0) {
      body.destroy();
      if (!this.#aborted) this.#end(status, { ...headers, 'content-length': String(length) }, undefined);
      return Promise.resolve();
    }
    this.#discardUnreadBody();
    const res = this.#res;
    this.#writeHead(status, { ...withoutContentLength(headers), 'content-length': String(length) });
    // A hand-written pump rather than pipeline(): it must send exactly `length` bytes, and
    // res.strictContentLength would throw out of pipe() as an uncaught exception.
    return new Promise<void>((resolve, reject) => {
      let sentBytes = 0;
      let settled = false;
      const settle = (err?: unknown): void => {
        if (settled) return;
        settled = true;
        this.#onStreamAbort = undefined;
        res.off('drain', onDrain);
        body.destroy();
        if (err === undefined) resolve();
        else reject(err);
      };
      /** The source failed or ended short: cut the connection so the client sees a truncated response. */
      const fail = (err: unknown): void => {
        if (settled) return;
        settle(err);
        if (!this.#aborted) res.destroy();
      };
      // A client that stops reading holds a blob open: while writes wait for it, the idle
      // timer runs (node then destroys the socket, which aborts this exchange).
      const socket: Socket = this.#req.socket;
      const onDrain = (): void => {
        if (this.#idleMs > 0) socket.setTimeout(0);
        body.resume();
      };
      this.#onStreamAbort = () => settle();
      res.on('drain', onDrain);
      // A chunk the source lets us give back goes back once the socket wrote it (the write's
      // callback), so that its memory carries the next read instead of becoming garbage.
      const recycle = recyclerOf(body);
      body.on('data', (data: Buffer | string) => {
        const chunk = typeof data === 'string' ? Buffer.from(data) : data;
        const piece = chunk.subarray(0, length - sentBytes);
        sentBytes += piece.byteLength;
        const ok = recycle !== undefined && piece.byteLength === chunk.byteLength
          ? res.write(chunk, (err) => { if (!err) recycle(chunk); })
          : res.write(piece);
        if (sentBytes === length) {
          res.end();
          settle(piece.byteLength < chunk.byteLength ? overrun(length) : undefined);
        } else if (!ok) {
          body.pause();
          if (this.#idleMs > 0) socket.setTimeout(this.#idleMs);
        }
      });
      body.on('end', () => {
        if (sentBytes < length) fail(underrun(sentBytes, length));
      });
      body.on('error', fail);
    });
  }

  /**
   * Answers a request the handler must not see (`refusal`) with the spec's error envelope,
   * and closes the connection, as uws.ts does.
   */
  reject(code: ErrorCode, message: string): void {
    const { status, headers, body } = refusal(code, message);
    this.#closeAfterResponse = true;
    this.send(status, headers, body);
  }

  /** After the handler settled: a handler that never answered gets a bare 500. */
  respondIfForgotten(): void {
    if (!this.#started && !this.#aborted) this.send(500, {});
  }

  #abort(): void {
    if (this.#aborted) return;
    this.#aborted = true;
    this.#body?.fail(new ClientAbortError());
    this.#onStreamAbort?.();
    for (const cb of this.#abortCallbacks.splice(0)) cb();
  }
}

/** Runs a handler, turning a synchronous throw into a rejection. */
export function callHandler(handler: RequestHandler, exchange: IncomingRequest & OutgoingResponse): Promise<void> {
  try {
    return handler(exchange, exchange);
  } catch (err) {
    return Promise.reject(err);
  }
}

/**
 * Decides whether a response carries a body and, if not, which Content-Length to report.
 * Shared with the uWS front end so both answer alike. 204 and 304 never carry a body or a
 * length (RFC 9110 §8.6); HEAD reports what a GET would send; no body with an explicit
 * `content-length` reports that length (e.g. 201 with `content-length: 0`).
 */
export function responseHasNoBody(
  method: string,
  status: number,
  headers: HeaderMap,
  body: string | Uint8Array | undefined,
): false | { contentLength: string | undefined } {
  if (status === 204 || status === 304) return { contentLength: undefined };
  const explicit = headerValue(headers, 'content-length');
  if (method === 'HEAD') {
    return { contentLength: explicit ?? (body === undefined ? undefined : String(byteLength(body))) };
  }
  if (body === undefined && explicit !== undefined) return { contentLength: explicit };
  return false;
}

function headerValue(headers: HeaderMap, lowerName: string): string | undefined {
  for (const name in headers) if (name.toLowerCase() === lowerName) return headers[name];
  return undefined;
}

export function overrun(length: number): Error {
  return new Error(`stream yielded more than the ${length} bytes announced; sent only those`);
}

export function underrun(sentBytes: number, length: number): Error {
  return new Error(`stream ended after ${sentBytes} of the ${length} bytes announced`);
}

function withoutContentLength(headers: HeaderMap): HeaderMap {
  const out: HeaderMap = {};
  for (const name in headers) if (name.toLowerCase() !== 'content-length') out[name] = headers[name]!;
  return out;
}

function byteLength(body: string | Uint8Array): number {
  return typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength;
}

/**
 * A request node:http could not parse. Where the registry has an error code for it (a bad
 * Content-Length, non-ASCII in the path), the client gets the spec's envelope; otherwise
 * what node would send by itself. Like node, only on a connection that has sent nothing yet.
 */
/**
 * Answers what node:http's parser refused, or a request that timed out, and closes the
 * connection. Returns the status it answered with, and the error code if the error table
 * has one; nothing if it closed the connection unanswered.
 */
function onClientError(err: NodeJS.ErrnoException & { rawPacket?: Buffer }, socket: Socket, mayAnswer: boolean): Pick<RefusedRequest, 'status' | 'code'> | undefined {
  // Only an HTTP-level error gets an HTTP answer. A TLS handshake that failed or timed out
  // (ERR_TLS_HANDSHAKE_TIMEOUT, an OpenSSL error) has no channel to answer on: the end()
  // below would never flush, its callback never destroy the socket, and a client that
  // connects and stays silent would hold a descriptor for good.
  const http = err.code !== undefined && (err.code.startsWith('HPE_') || err.code.startsWith('ERR_HTTP_'));
  if (http && socket.writable && mayAnswer) {
    const raw = rawErrorResponse(err.code);
    socket.end(raw ?? bareReply(err.code), () => socket.destroy());
    return raw === undefined ? { status: bareStatus(err.code) } : refusedWith(PARSER_ERRORS[err.code as keyof typeof PARSER_ERRORS][0]);
  }
  socket.destroy();
  return undefined;
}

/** Method and target of a request the parser refused, from the bytes it saw, for the log. */
function requestLine(raw: Buffer | undefined): { method: string; path: string } {
  const line = raw ? raw.subarray(0, Math.min(raw.length, 8192)).toString('latin1').split('\r\n', 1)[0]! : '';
  const [method = '', path = ''] = line.split(' ');
  return { method: /^[A-Za-z]{1,20}$/.test(method) ? method : '', path };
}

function bareStatus(code: string | undefined): number {
  return code === 'HPE_HEADER_OVERFLOW' ? 431 : code === 'HPE_CHUNK_EXTENSIONS_OVERFLOW' ? 413 : code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
}

function bareReply(code: string | undefined): string {
  const status = bareStatus(code);
  return `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nConnection: close\r\n\r\n`;
}
