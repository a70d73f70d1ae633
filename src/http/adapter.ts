import type { Readable } from 'node:stream';
import type { ErrorCode } from '../errors.js';

/**
 * The small seam between an HTTP server implementation (uWebSockets.js, or node:http where
 * its binary does not load) and the protocol handlers in src/http/handlers.ts.
 * Both front ends must behave identically; one test suite runs against each.
 */

export interface IncomingRequest {
  /** Upper-case method: GET, HEAD, POST, PUT, PATCH, DELETE, ... */
  readonly method: string;
  /** The request target's path exactly as received (still percent-encoded), without the query. */
  readonly path: string;
  /** The raw query string without '?', or ''. */
  readonly rawQuery: string;
  /** Parsed query. */
  readonly query: URLSearchParams;
  /** A request header by lower-case name, or undefined. Repeated headers are joined with ', '. */
  header(name: string): string | undefined;
  /** All headers, lower-case names (for logging; redact before logging). */
  headers(): Record<string, string>;
  readonly remoteAddress: string;
  /**
   * Streams the request body into `sink`, with backpressure: when sink.write() returns false
   * the socket is paused until sink.drained() resolves. Resolves with the number of body bytes
   * once the body ended; rejects with ClientAbortError if the client went away first.
   * Call at most once. A request whose body is never read is drained and discarded by the
   * front end after the response is sent.
   */
  readBody(sink: BodySink): Promise<number>;
  /**
   * Whether the body, not yet read, has brought its first READY_BYTES (body-pump.ts) or all of
   * it, or the client went away: its client is sending, not trickling. The upload engine admits
   * such requests first (engine/admission.ts). Absent: not known, taken for not ready.
   */
  readonly bodyReady?: boolean;
  /**
   * The body will be read, but not yet (the request waits for an upload slot): a front end
   * that holds a client's body back until it is read (node:http's `100 Continue`) lets it
   * come now, so that it can become bodyReady. It reads no more of it early than of any
   * other body. Absent: the front end holds nothing back (uWS answers the 100 itself).
   */
  inviteBody?(): void;
}

export interface BodySink {
  /**
   * Takes one chunk. Unless `owned`, the chunk is valid only during this call (uWS neuters it
   * on return), so the sink must copy what it keeps. An `owned` chunk is the sink's for good:
   * nothing else reads or reuses it afterwards, so the sink may keep it, or move its
   * ArrayBuffer to another thread, without a copy (node:http gives every body chunk a Buffer
   * of its own). Returns false when the caller should stop sending until drained() resolves.
   * Must still accept chunks after returning false (a read may already be under way when the
   * socket is paused).
   */
  write(chunk: Uint8Array, owned?: boolean): boolean;
  /** Resolves when the sink can take more. Rejects if the sink failed (the read then stops). */
  drained(): Promise<void>;
  /**
   * Aborted when the sink wants no more of this body, whether or not bytes are arriving
   * (the upload engine stops a body that crawls while others wait for storage buffers): the
   * read then stops with the signal's reason, and the front end need not keep the connection.
   */
  readonly signal?: AbortSignal;
}

export type HeaderMap = Record<string, string>;

export interface OutgoingResponse {
  /** True once the client went away; nothing more can be sent. */
  readonly aborted: boolean;
  /** True once a response was started (send/stream called). */
  readonly started: boolean;
  /** Registers a callback for the client going away (before the response completed). */
  onAbort(cb: () => void): void;
  /**
   * Sends a complete response. With no body and an explicit `content-length` header (HEAD),
   * that length is reported and no body is sent. Otherwise Content-Length is the body's.
   */
  send(status: number, headers: HeaderMap, body?: string | Uint8Array): void;
  /**
   * Streams `body` (exactly `length` bytes) with backpressure. Resolves when all was written
   * or the client went away (then the stream is destroyed).
   */
  stream(status: number, headers: HeaderMap, body: Readable, length: number): Promise<void>;
}

export type RequestHandler = (req: IncomingRequest, res: OutgoingResponse) => Promise<void>;

export interface FrontEndOptions {
  /** Largest accepted request header section, bytes. */
  maxHeaderBytes?: number;
  /**
   * A client that sends nothing for this long while its body is read (or while headers are
   * due) is dropped; readBody() then rejects with BodyTimeoutError (0: never).
   */
  idleTimeoutMs?: number;
  /** Serve HTTPS with this certificate chain and key (PEM). */
  tls?: TlsFiles;
  /**
   * A request answered by the front end itself, never seen by the handler (a Host or framing
   * error, bytes that are no request target, a header section too large, a request the
   * parser cannot read, one whose headers did not come in time): told so it can be logged
   * like any other. Once per answer; what is closed unanswered is not told.
   */
  onRefused?: (r: RefusedRequest) => void;
}

export interface RefusedRequest {
  /** As received ('' when the bytes held none): only a method the metrics know becomes a label (else OTHER). */
  readonly method: string;
  /** As received, still percent-encoded ('' when the bytes held none). */
  readonly path: string;
  readonly status: number;
  /** The error code the answer carries; none for a bare answer (431, node's parser's 400, 408). */
  readonly code?: ErrorCode;
}

export interface TlsFiles {
  readonly cert: Buffer;
  readonly key: Buffer;
}

export interface FrontEnd {
  readonly kind: 'uws' | 'node';
  /** Starts listening; resolves with the bound port (useful with port 0). */
  listen(host: string, port: number): Promise<number>;
  /** Number of requests in flight. */
  readonly inFlight: number;
  /**
   * Requests whose socket is paused now because their body waits (backpressure from the
   * upload engine, or a handler that has not started reading yet). Counted when asked, for
   * metrics, by walking the requests in flight.
   */
  readonly pausedSockets: number;
  /** Serves new connections with another certificate and key (SIGHUP); only when started with `tls`. */
  reloadTls?(tls: TlsFiles): void;
  /**
   * Stops accepting new connections and waits up to `timeoutMs` for in-flight requests to
   * finish, then closes every remaining connection. Resolves when everything is closed.
   * `onDeadline` runs once the wait ended with requests still in flight, just before their
   * connections are closed, so that what they log says they were cut, not left.
   */
  close(timeoutMs: number, onDeadline?: () => void): Promise<void>;
}

export type FrontEndKind = FrontEnd['kind'];
