import { channels, type HttpRequestMessage, type LimitRefusalMessage } from '../diagnostics.js';
import { ErrorCodes, RegistryError, TooManyRequestsError, type ErrorCode } from '../errors.js';
import type { RefusedRequest } from './adapter.js';
import { refusal } from './errors.js';

/**
 * Per-client limits, keyed by credential (`user:<name>`) or, without one, by address
 * (`ip:<address>`): a token bucket of requests, and a count of uploads in flight. Both
 * answer 429 TOOMANYREQUESTS with a Retry-After, which clients (containers/image, docker)
 * honour by waiting and retrying.
 */

/** Keys kept at most; the least recently seen go first (a forgotten bucket is a full one). */
const MAX_KEYS = 50_000;

export class RateLimiter {
  readonly #ratePerMs: number;
  readonly #burst: number;
  readonly #buckets = new Map<string, { tokens: number; atMs: number }>();

  /** `requestsPerSecond` on average, `burst` at once. */
  constructor(requestsPerSecond: number, burst: number) {
    this.#ratePerMs = requestsPerSecond / 1000;
    this.#burst = Math.max(1, burst);
  }

  /** Takes one request from `key`'s bucket, or throws TOOMANYREQUESTS saying when one will be there. */
  take(key: string, nowMs = performance.now()): void {
    this.#refuseIfEmpty(key, nowMs).tokens -= 1;
  }

  /** Throws as take() would, but takes nothing: for work that is charged only if it fails. */
  ensure(key: string, nowMs = performance.now()): void {
    this.#refuseIfEmpty(key, nowMs);
  }

  #refuseIfEmpty(key: string, nowMs: number): { tokens: number } {
    let b = this.#buckets.get(key);
    if (b) {
      this.#buckets.delete(key);
      b.tokens = Math.min(this.#burst, b.tokens + (nowMs - b.atMs) * this.#ratePerMs);
      b.atMs = nowMs;
    } else {
      b = { tokens: this.#burst, atMs: nowMs };
      if (this.#buckets.size >= MAX_KEYS) this.#buckets.delete(this.#buckets.keys().next().value!);
    }
    this.#buckets.set(key, b); // most recently seen last
    if (b.tokens >= 1) return b;
    const waitMs = (1 - b.tokens) / this.#ratePerMs;
    refused('rate');
    throw new TooManyRequestsError(waitMs / 1000, { message: 'rate limit exceeded', detail: { retryAfterSeconds: Math.ceil(waitMs / 1000) } });
  }
}

/** Uploads in flight (requests that carry blob bytes) per key, at most `max` each. */
export class UploadSlots {
  readonly #max: number;
  readonly #inFlight = new Map<string, number>();

  constructor(max: number) {
    this.#max = max;
  }

  /** Takes a slot for `key`; call the returned function once the request finished. */
  acquire(key: string): () => void {
    const n = this.#inFlight.get(key) ?? 0;
    if (n >= this.#max) {
      refused('uploads');
      throw new TooManyRequestsError(1, { message: `more than ${this.#max} uploads at once`, detail: { limit: this.#max } });
    }
    this.#inFlight.set(key, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.#inFlight.get(key) ?? 1) - 1;
      if (left <= 0) this.#inFlight.delete(key);
      else this.#inFlight.set(key, left);
    };
  }
}

/** Reports a 429 (metrics: hoist_limit_refusals_total). */
function refused(limit: LimitRefusalMessage['limit']): void {
  if (channels.limitRefusal.hasSubscribers) channels.limitRefusal.publish({ limit } satisfies LimitRefusalMessage);
}

/**
 * A request target longer than `maxBytes`: refused before anything parses it. Only a
 * manifest PUT's `?tag=` list comes close (a name is at most 255 characters, a digest 135;
 * 100 tags of 128 characters are 13 KiB): README "Manifests" says how many fit.
 */
export function checkUrlLength(path: string, rawQuery: string, maxBytes: number): void {
  const length = path.length + (rawQuery ? rawQuery.length + 1 : 0);
  if (maxBytes > 0 && length > maxBytes) {
    throw new RegistryError('NAME_INVALID', { message: `request URL longer than ${maxBytes} bytes`, detail: { length, limit: maxBytes } });
  }
}

/**
 * Whether the registry takes `value` as a Content-Length: up to 15 digits, which a Number
 * holds exactly. node:http passes up to 19; handlers.ts answers longer ones 400 SIZE_INVALID,
 * and node.ts then closes the connection rather than drain what they declare.
 */
export function isTakenLength(value: string): boolean {
  return /^\d{1,15}$/.test(value.trim());
}

/**
 * A raw HTTP/1.1 reply, with the spec's error envelope, for a request node:http could not
 * even parse (`clientError`): there is no request object to answer through. Only for
 * errors the registry has a code for; others get node's bare 400 (or 431).
 *
 *   Content-Length: 99999999999999999999  → 400 SIZE_INVALID
 *   GET /v2/\xff/tags/list                 → 400 NAME_INVALID
 */
export function rawErrorResponse(parserCode: string | undefined): string | undefined {
  const mapped = (PARSER_ERRORS as Record<string, readonly [ErrorCode, string] | undefined>)[parserCode ?? ''];
  if (!mapped) return undefined;
  const { status, headers, body } = refusal(...mapped);
  const head = Object.entries({ ...headers, 'content-length': String(Buffer.byteLength(body)), connection: 'close' })
    .map(([k, v]) => `${k}: ${v}\r\n`).join('');
  return `HTTP/1.1 ${status} Bad Request\r\n${head}\r\n${body}`;
}

/** The status and code of an answer with the error table's `code`, for reportRefused. */
export function refusedWith(code: ErrorCode): Pick<RefusedRequest, 'status' | 'code'> {
  return { status: ErrorCodes[code].status, code };
}

/**
 * Reports a request a front end answered itself, before any handler saw it: counted in
 * hoist_http_requests_total as handlers.ts counts what it answers, under route `refused`
 * (it was never routed; its method is collapsed to OTHER unless the metrics know it, so a
 * client cannot mint label values), and told to `onRefused` for its one log line. Its
 * duration counts as 0: it was answered as soon as it was read (or, a 408, never was).
 */
export function reportRefused(r: RefusedRequest, onRefused: ((r: RefusedRequest) => void) | undefined): void {
  if (channels.httpRequest.hasSubscribers) {
    channels.httpRequest.publish({ route: 'refused', method: r.method, status: r.status, ms: 0, bytesIn: 0 } satisfies HttpRequestMessage);
  }
  onRefused?.(r);
}

/**
 * llhttp error codes (node's `err.code`) the registry can name. The uWS front end answers
 * what its own parser lets through with the same codes and messages (uws.ts framingError).
 */
export const PARSER_ERRORS = {
  HPE_INVALID_CONTENT_LENGTH: ['SIZE_INVALID', 'invalid Content-Length'],
  HPE_UNEXPECTED_CONTENT_LENGTH: ['SIZE_INVALID', 'Content-Length together with Transfer-Encoding, or twice'],
  HPE_INVALID_TRANSFER_ENCODING: ['SIZE_INVALID', 'invalid Transfer-Encoding'],
  HPE_INVALID_CHUNK_SIZE: ['SIZE_INVALID', 'invalid chunk size in a chunked body'],
  HPE_INVALID_URL: ['NAME_INVALID', 'invalid character in the request target (only ASCII is allowed; percent-encode the rest)'],
} as const satisfies Record<string, readonly [ErrorCode, string]>;
