import { mkdtemp, readdir, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { expect } from 'vitest';
import { sha256 } from './oci.js';
import type { LogRecord, TestServer } from './server.js';

/**
 * Raw HTTP for conformance tests (test/http/). fetch() cannot be used for these: the WHATWG
 * URL parser rewrites `%2e%2e` and `a//b` before they leave the client, it always sets its
 * own framing, and it cannot send half a body and hang up. node:http sends the request
 * target byte for byte, with exactly the framing a test asks for:
 *
 *   body: Buffer      → Content-Length: <size> (unless the test sets its own)
 *   body: Buffer[]    → Transfer-Encoding: chunked, one chunk per element
 *   no body           → nothing (no Content-Length, no Transfer-Encoding)
 *
 * Each request uses its own connection (agent: false), so an error reply that leaves the
 * body unread cannot spill into the next test's request.
 */

export interface Reply {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Buffer;
  /** A response header (lower-case name); repeated headers joined with ', '. */
  header(name: string): string | undefined;
  text(): string;
  json<T = unknown>(): T;
}

export interface RequestOptions {
  method?: string;
  headers?: Record<string, string | number>;
  body?: Uint8Array | string | Uint8Array[];
  timeoutMs?: number;
}

/** The path and query of a registry URL or Location header, resolved against `base`. */
export function pathOf(base: string, location: string): string {
  const u = new URL(location, base);
  return `${u.pathname}${u.search}`;
}

/** Adds (or replaces) one query parameter of a path-and-query. */
export function withQuery(path: string, name: string, value: string): string {
  const u = new URL(path, 'http://x');
  u.searchParams.set(name, value);
  return `${u.pathname}${u.search}`;
}

function makeReply(res: http.IncomingMessage, body: Buffer): Reply {
  return {
    status: res.statusCode ?? 0,
    headers: res.headers,
    body,
    header(name) {
      const v = res.headers[name.toLowerCase()];
      return Array.isArray(v) ? v.join(', ') : v;
    },
    text: () => body.toString('utf8'),
    json<T>() {
      try {
        return JSON.parse(body.toString('utf8')) as T;
      } catch {
        throw new Error(`HTTP ${res.statusCode}: body is not JSON: ${JSON.stringify(body.toString('utf8').slice(0, 500))}`);
      }
    },
  };
}

export interface OpenRequest {
  readonly req: http.ClientRequest;
  /** The reply once it arrived (rejects if the connection failed first). */
  readonly reply: Promise<Reply>;
  /**
   * Writes a chunk and resolves once node:http handed it to the socket; rejects if the request
   * closed first.
   */
  write(chunk: Uint8Array): Promise<void>;
}

/**
 * Starts a request without ending it, for tests that send a body piece by piece or hang up
 * half way (`req.destroy()`). `reply` rejects when the socket dies before a reply.
 */
export function openRequest(base: string, path: string, opts: Omit<RequestOptions, 'body'> = {}): OpenRequest {
  const u = new URL(base);
  const req = http.request({
    host: u.hostname,
    port: Number(u.port),
    path,
    method: opts.method ?? 'GET',
    headers: opts.headers,
    agent: false,
  });
  const reply = new Promise<Reply>((resolve, reject) => {
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => resolve(makeReply(res, Buffer.concat(chunks))));
    });
    req.on('error', reject);
  });
  // A test that destroys the request handles the outcome itself; never leave it unhandled.
  reply.catch(() => undefined);
  if (opts.timeoutMs) req.setTimeout(opts.timeoutMs, () => req.destroy(new Error(`${opts.method ?? 'GET'} ${path}: no reply within ${opts.timeoutMs} ms`)));
  return {
    req,
    reply,
    // node:http's client drops the callback of a write on a socket it has closed, as it closes
    // its socket once a `Connection: close` reply ended (the server answered early and shut
    // the connection while the body was still being sent): the close settles such a write.
    write: (chunk) =>
      new Promise<void>((resolve, reject) => {
        const closed = (): void => reject(new Error('the request closed before the chunk was written'));
        if (req.destroyed) return closed();
        req.once('close', closed);
        req.write(chunk, (err) => {
          req.off('close', closed);
          if (err) reject(err);
          else resolve();
        });
      }),
  };
}

/** One request with a complete body; resolves with the whole reply. */
export async function request(base: string, path: string, opts: RequestOptions = {}): Promise<Reply> {
  const headers: Record<string, string | number> = { ...(opts.headers ?? {}) };
  const lower = new Set(Object.keys(headers).map((k) => k.toLowerCase()));
  const body = opts.body;
  if (body !== undefined && !Array.isArray(body) && !lower.has('content-length') && !lower.has('transfer-encoding')) {
    headers['content-length'] = typeof body === 'string' ? Buffer.byteLength(body) : (body as Uint8Array).byteLength;
  }
  if (Array.isArray(body) && !lower.has('transfer-encoding')) headers['transfer-encoding'] = 'chunked';
  const o = openRequest(base, path, { ...opts, headers, timeoutMs: opts.timeoutMs ?? 60_000 });
  if (Array.isArray(body)) {
    for (const chunk of body) o.req.write(chunk);
    o.req.end();
  } else {
    o.req.end(body);
  }
  try {
    return await o.reply;
  } catch (err) {
    // node:http says only "aborted" or "socket hang up": name the request that failed.
    throw new Error(`${opts.method ?? 'GET'} ${path}: ${(err as Error).message}`, { cause: err });
  }
}

/** A reply read to its end, or to where the connection was cut. */
export interface RawReply {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Buffer;
  /** The body arrived whole (as long as its Content-Length), and the response ended cleanly. */
  readonly complete: boolean;
}

/**
 * GET on its own connection with only the headers given (no registry credentials: a presigned
 * S3 URL or a mirror); never rejects for a connection cut mid-body (that is `complete: false`).
 * `onResponse` sees the response as soon as its headers are in (to pause or destroy it).
 */
export function rawGet(base: string, path: string, headers: Record<string, string> = {}, onResponse?: (res: http.IncomingMessage, req: http.ClientRequest) => void): Promise<RawReply> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: Number(u.port), path, method: 'GET', headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      let done = false;
      const finish = (): void => {
        if (done) return;
        done = true;
        const body = Buffer.concat(chunks);
        const declared = res.headers['content-length'];
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body,
          complete: res.complete && (declared === undefined || Number(declared) === body.length),
        });
      };
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', finish);
      res.on('error', finish);
      res.on('close', finish);
      onResponse?.(res, req);
    });
    req.on('error', reject);
    req.end();
  });
}

/** What came back on a raw socket (see socketExchange). */
export interface SocketReply {
  /** Every byte the server sent, and the same as latin1 text (byte for byte). */
  readonly bytes: Buffer;
  readonly text: string;
  /** The server closed the connection (or it failed: see `error`). */
  readonly closed: boolean;
  /** Nothing ended the exchange within `timeoutMs`: the helper hung up. */
  readonly timedOut: boolean;
  /** A socket error (refused, reset), if one ended it. */
  readonly error?: Error;
}

export interface SocketOptions {
  /** A hang guard: resolve with what arrived so far after this long (30 s by default). */
  timeoutMs?: number;
  /** Called on every arrival; returning true ends the exchange (the helper hangs up) with `closed: false`. */
  until?: (received: Buffer) => boolean;
}

/**
 * Raw HTTP/1.x on a fresh TCP connection (a string is sent as UTF-8), for what node:http will
 * not send or parse: duplicate
 * Content-Lengths, bytes outside ASCII in the request-line, pipelined requests, a request cut
 * short. Writes `bytes` and resolves (never rejects) once the server closes, `until` says the
 * reply is in, or `timeoutMs` passes.
 */
export function socketExchange(port: number, bytes: Buffer | string, opts: SocketOptions = {}): Promise<SocketReply> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let done = false;
    const finish = (closed: boolean, timedOut: boolean, error?: Error): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      const all = Buffer.concat(chunks);
      resolve({ bytes: all, text: all.toString('latin1'), closed, timedOut, ...(error ? { error } : {}) });
    };
    const timer = setTimeout(() => finish(false, true), opts.timeoutMs ?? 30_000);
    socket.on('data', (d: Buffer) => {
      chunks.push(d);
      if (opts.until?.(Buffer.concat(chunks))) finish(false, false);
    });
    socket.on('error', (err) => finish(true, false, err));
    socket.on('close', () => finish(true, false));
    socket.write(bytes);
  });
}

/** `until` for socketExchange: a response's header section is in. */
export const headerSectionIn = (received: Buffer): boolean => received.includes('\r\n\r\n');

/** The status, OCI error codes (when the body is the error envelope) and header section of a raw HTTP/1.1 reply. */
export function parseRawReply(text: string): { status: number; codes: string[]; headers: string } {
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
  const split = text.indexOf('\r\n\r\n');
  let codes: string[] = [];
  try {
    codes = (JSON.parse(split < 0 ? '' : text.slice(split + 4)) as { errors: Array<{ code: string }> }).errors.map((e) => e.code);
  } catch {
    // no envelope
  }
  return { status, codes, headers: split < 0 ? text : text.slice(0, split) };
}

/**
 * A name generator for a test file: `repoNamer('uploads')('mount')` → `uploads/mount-1`, a
 * fresh repository per test, so tests sharing a server never see each other's blobs or tags.
 */
export function repoNamer(prefix: string): (label: string) => string {
  let seq = 0;
  return (label) => `${prefix}/${label}-${(++seq).toString(36)}`;
}

/** GET of a blob → 200 with exactly `data` (its digest, Content-Length and bytes). */
export async function expectBlob(base: string, name: string, data: Uint8Array): Promise<void> {
  const digest = sha256(data);
  const r = await request(base, `/v2/${name}/blobs/${digest}`);
  expectStatus(r, 200, `GET ${base}/v2/${name}/blobs/${digest}`);
  expect(r.header('docker-content-digest')).toBe(digest);
  expect(r.header('content-length')).toBe(String(data.byteLength));
  expect(r.body.byteLength).toBe(data.byteLength);
  // Compare digests, not buffers: a mismatch in 64 MiB should not print 64 MiB.
  expect(sha256(r.body)).toBe(digest);
}

/**
 * PUT <location>?digest=<digest> with no body (the blob's digest, or its bytes to take it
 * from); expects 201 and the blob's Location, and returns the reply.
 */
export async function commitUpload(base: string, location: string, blob: string | Uint8Array, name: string): Promise<Reply> {
  const digest = typeof blob === 'string' ? blob : sha256(blob);
  const r = await request(base, withQuery(location, 'digest', digest), { method: 'PUT' });
  expectStatus(r, 201, `PUT ${location}?digest=${digest}`);
  expect(r.header('docker-content-digest')).toBe(digest);
  expect(pathOf(base, r.header('location') ?? '')).toBe(`/v2/${name}/blobs/${digest}`);
  return r;
}

/** GET <location> → 204 with the upload's Range; returns the stored byte count. */
export async function uploadStatus(base: string, location: string): Promise<number> {
  const r = await request(base, location);
  expectStatus(r, 204, `GET ${base}${location}`);
  return storedBytes(r.header('range'));
}

export interface ErrorEntry {
  code: string;
  message: string;
  detail?: unknown;
}

/**
 * Checks the spec's error envelope (distribution-spec v1.1 "Error Codes"):
 * `{"errors":[{"code": "...", "message": "...", "detail": ...}]}` with `status`, and that
 * `code` is among the entries. For HEAD (no body) only the status is checked.
 */
export function expectError(reply: Reply, status: number, code: string | undefined, method = 'GET'): ErrorEntry[] {
  const what = `${method} → HTTP ${reply.status} ${reply.text().slice(0, 300)}`;
  expect(reply.status, what).toBe(status);
  if (method === 'HEAD') return [];
  expect(reply.header('content-type') ?? '', what).toMatch(/^application\/json\b/);
  const body = reply.json<{ errors?: unknown }>();
  expect(Array.isArray(body.errors), what).toBe(true);
  const errors = body.errors as ErrorEntry[];
  expect(errors.length, what).toBeGreaterThan(0);
  for (const e of errors) {
    expect(typeof e.code, what).toBe('string');
    expect(e.code, what).toMatch(/^[A-Z_]+$/);
    expect(typeof e.message, what).toBe('string');
  }
  if (code !== undefined) expect(errors.map((e) => e.code), what).toContain(code);
  return errors;
}

/** Expects a status, with the reply in the failure message. */
export function expectStatus(reply: Reply, status: number, context = ''): void {
  expect(reply.status, `${context} HTTP ${reply.status}\n${JSON.stringify(reply.headers)}\n${reply.text().slice(0, 500)}`).toBe(status);
}

/** The upload `Range` header value for `offset` stored bytes ("0-0" when empty, as distribution sends it). */
export function uploadRange(offset: number): string {
  return `0-${Math.max(0, offset - 1)}`;
}

/**
 * The stored byte count an upload `Range: 0-<last>` reports: last + 1, except "0-0", which
 * registries send for an empty upload (the header cannot say "nothing"), read here as 0.
 */
export function storedBytes(header: string | undefined): number {
  const m = /^(?:bytes=)?0-(\d+)$/.exec(header ?? '');
  if (!m) throw new Error(`not an upload Range header: ${JSON.stringify(header)}`);
  const last = Number(m[1]);
  return last === 0 ? 0 : last + 1;
}

export interface StartedUpload {
  /** The Location path (and query) to use for the next request. */
  location: string;
  id: string;
}

/** POST /v2/<repo>/blobs/uploads/ → 202; returns where to continue. */
export async function startUpload(base: string, repo: string): Promise<StartedUpload> {
  const r = await request(base, `/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  expectStatus(r, 202, `POST /v2/${repo}/blobs/uploads/`);
  const location = r.header('location');
  expect(location, 'Location header').toBeTruthy();
  return { location: pathOf(base, location!), id: r.header('docker-upload-uuid') ?? '' };
}

/** PATCH with `Content-Range: start-end` and Content-Length; returns the reply (the caller checks it). */
export function patchChunk(base: string, location: string, chunk: Uint8Array, start: number): Promise<Reply> {
  return request(base, location, {
    method: 'PATCH',
    headers: {
      'content-type': 'application/octet-stream',
      'content-range': `${start}-${start + chunk.byteLength - 1}`,
    },
    body: chunk,
  });
}

/** Opens a PATCH declaring `declared` bytes, sends `sent` of them, and keeps the connection open. */
export function stallingPatch(port: number, path: string, declared: number, sent: Buffer): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => {
      socket.write(`PATCH ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/octet-stream\r\ncontent-length: ${declared}\r\n\r\n`);
      socket.write(sent, () => resolve(socket));
    });
    socket.on('error', reject);
  });
}

/** Splits `data` into pieces of `pieceBytes` (the last may be shorter). */
export function pieces(data: Uint8Array, pieceBytes: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < data.byteLength; i += pieceBytes) out.push(data.subarray(i, Math.min(i + pieceBytes, data.byteLength)));
  return out;
}

/** A fresh directory under the OS temp dir; `cleanup()` removes it. */
export async function tempDir(prefix = 'hoist-http-'): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, cleanup: () => rm(path, { recursive: true, force: true }) };
}

/** Every file and directory under `dir`, as sorted paths relative to it ('/'-separated). */
export async function listTree(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .map((e) => relative(dir, join(e.parentPath, e.name)).split('\\').join('/') + (e.isDirectory() ? '/' : ''))
    .sort();
}

/** Polls `fn` until it returns a value other than undefined, or throws after `timeoutMs`. */
export async function waitFor<T>(what: string, fn: () => T | undefined | Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(25);
  }
}

/** Waits for the server's log line matching `pred` (e.g. the `request` line of an aborted PATCH). */
export function waitForLog(server: TestServer, what: string, pred: (r: LogRecord) => boolean, timeoutMs = 10_000): Promise<LogRecord> {
  return waitFor(what, () => server.records().find(pred), timeoutMs);
}
