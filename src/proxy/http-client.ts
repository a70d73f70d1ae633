import dns from 'node:dns';
import http from 'node:http';
import https from 'node:https';
import type { LookupFunction } from 'node:net';
import { Readable } from 'node:stream';
import { createBrotliDecompress, createGunzip, createInflate } from 'node:zlib';
import { isInternalAddress } from './destinations.js';

/**
 * HTTP requests to an upstream and where it sends the cache, answered as fetch() answers them
 * (a Response with a web stream body), over node:http / node:https with keep-alive agents of
 * our own, because of one thing fetch() cannot do: check the address a connection goes to.
 *
 * A redirect's host (or a token realm's) was resolved to check it, and resolved again by
 * fetch() to connect: a DNS server that answers a public address the first time and
 * 127.0.0.1 the second (rebinding, TTL 0) got the cache to connect to its own loopback.
 * Node's fetch() is undici inside, and takes its own lookup only through an undici
 * dispatcher, which Node does not export (only the undici package does). Here the agents'
 * `lookup` resolves a name once, for the connection itself, and refuses it when any of its
 * addresses is internal (destinations.ts) and `allowInternal()` says no: every connection,
 * every hop, checked at the address it connects to. IP literals are not looked up by
 * node:net; the caller checks those from the URL itself (UpstreamClient #redirectTarget).
 */
export class InternalAddressError extends Error {
  readonly code = 'EINTERNALADDRESS';
  constructor(readonly hostname: string, readonly address: string) {
    super(`${hostname} resolves to ${address}, a loopback or link-local address`);
    this.name = 'InternalAddressError';
  }
}

/** Whether `err`, or what it wraps, is an InternalAddressError; it, or undefined. */
export function internalAddressError(err: unknown): InternalAddressError | undefined {
  let e: unknown = err;
  for (let i = 0; i < 4 && e instanceof Error; i++, e = e.cause) if (e instanceof InternalAddressError) return e;
  return undefined;
}

/** A lookup for node:net that refuses a name with an internal address, unless `allowInternal()`. */
export function guardedLookup(allowInternal: () => Promise<boolean>): LookupFunction {
  return (hostname, options, callback) => {
    dns.lookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, '');
      const answer = (): void => {
        if (options.all) callback(null, addresses);
        else callback(null, addresses[0]!.address, addresses[0]!.family);
      };
      const internal = addresses.find((a) => isInternalAddress(a.address));
      if (!internal) return answer();
      allowInternal().then(
        (allowed) => (allowed ? answer() : callback(new InternalAddressError(hostname, internal.address), '')),
        (e: unknown) => callback(e as Error, ''),
      );
    });
  };
}

/** Statuses whose response has no body (Fetch standard, "null body status"). */
const NULL_BODY_STATUSES: ReadonlySet<number> = new Set([101, 103, 204, 205, 304]);
/** What a body stream holds ahead of its reader: the rest waits in the socket (backpressure). */
const BODY_HIGH_WATER_BYTES = 64 * 1024;

export class UpstreamHttp {
  readonly #http: http.Agent;
  readonly #https: https.Agent;

  constructor(allowInternal: () => Promise<boolean>) {
    const lookup = guardedLookup(allowInternal);
    // Idle connections are unref'd by the agents: they never hold the process open.
    this.#http = new http.Agent({ keepAlive: true, lookup });
    this.#https = new https.Agent({ keepAlive: true, lookup });
  }

  /**
   * One request, no redirect followed. Resolves once the headers are in; aborting `signal`
   * then cuts the body. Fails on a status a Response cannot have (not 200-599) too. Bodies
   * in a content coding (which fetch() decoded) are decoded: gzip, deflate, br.
   */
  request(url: URL, method: string, headers: Record<string, string>, signal: AbortSignal): Promise<Response> {
    const secure = url.protocol === 'https:';
    return new Promise((resolve, reject) => {
      const req = (secure ? https : http).request(url, { method, headers, signal, agent: secure ? this.#https : this.#http }, (res) => {
        try {
          resolve(toResponse(res, method));
        } catch (err) {
          res.destroy();
          reject(err);
        }
      });
      req.on('error', reject);
      req.end();
    });
  }
}

function toResponse(res: http.IncomingMessage, method: string): Response {
  const status = res.statusCode ?? 0;
  if (status < 200 || status > 599) throw new Error(`HTTP status ${status}`);
  const headers = new Headers();
  for (let i = 0; i + 1 < res.rawHeaders.length; i += 2) headers.append(res.rawHeaders[i]!, res.rawHeaders[i + 1]!);
  if (method === 'HEAD' || NULL_BODY_STATUSES.has(status)) {
    res.resume();
    return new Response(null, { status, headers });
  }
  return new Response(webBody(decoded(res, headers.get('content-encoding'))), { status, headers });
}

/** The body in its content coding's stead (fetch() decodes these too); anything else as it came. */
function decoded(res: http.IncomingMessage, encoding: string | null): Readable {
  const coding = encoding?.trim().toLowerCase();
  const decoder = coding === 'gzip' || coding === 'x-gzip' ? createGunzip() : coding === 'deflate' ? createInflate() : coding === 'br' ? createBrotliDecompress() : undefined;
  if (!decoder) return res;
  res.on('error', (err) => decoder.destroy(err));
  decoder.on('close', () => res.destroy());
  return res.pipe(decoder);
}

/**
 * A node stream as a web stream that reads only as fast as its reader: the node stream is
 * paused while the web one holds BODY_HIGH_WATER_BYTES (a blob fetch waiting for storage
 * must not pile the upstream's bytes up in memory). Cancelling it closes the connection.
 */
function webBody(source: Readable): ReadableStream<Uint8Array> {
  let done = false;
  return new ReadableStream<Uint8Array>({
    start(controller) {
      source.on('data', (chunk: Buffer) => {
        if (done) return;
        controller.enqueue(chunk);
        if ((controller.desiredSize ?? 0) <= 0) source.pause();
      });
      source.on('end', () => {
        if (done) return;
        done = true;
        controller.close();
      });
      const fail = (err: Error): void => {
        if (done) return;
        done = true;
        controller.error(err);
      };
      source.on('error', fail);
      // Closed before its end (the connection cut, the request aborted) without an 'error'.
      source.on('close', () => fail(new Error('the connection closed before the body ended')));
    },
    pull() {
      source.resume();
    },
    cancel() {
      done = true;
      source.destroy();
    },
  }, { highWaterMark: BODY_HIGH_WATER_BYTES, size: (chunk) => chunk.byteLength });
}
