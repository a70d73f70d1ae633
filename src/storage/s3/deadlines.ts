import type { S3Client } from '@aws-sdk/client-s3';
import { setTimeout as sleep } from 'node:timers/promises';
import { StorageUnavailableError } from '../driver.js';
import { httpStatus } from './errors.js';

/**
 * Deadlines for every request the driver sends the store, so that a store which stops
 * answering never holds a client for long:
 *
 *   connect        a connection not established within min(timeout, 5 s) fails
 *   no progress    a request on which no byte moves either way for `timeout` fails
 *                  (node-http-handler's socketTimeout: inactivity, so a slow but moving
 *                  16 MiB part is fine; its `requestTimeout` would only log a warning)
 *   retries        failures that may pass (timeouts, resets, 5xx, SlowDown) are tried again
 *                  with jittered exponential backoff, but only while 2 x `timeout` has not
 *                  passed since the first try: every S3 request Hoist sends is safe to repeat
 *                  (parts and objects are replaced whole, deletes and aborts are idempotent,
 *                  and commit() checks a CompleteMultipartUpload that answered NoSuchUpload)
 *   then           StorageUnavailableError, which the registry answers with 503
 *
 * A store that accepts a request and never answers fails an operation within about
 * 3 x `timeout` (45 s with the default 15 s), and the upload stays where its last
 * successful write left it. The driver never waits on a store response with a paused
 * socket (reads are drained as they come, see reader.ts), so inactivity is the store's.
 */
export interface DeadlineOptions {
  /** No progress on a request for this long fails it. */
  timeoutMs: number;
  /** Attempts per operation, the first included. */
  maxAttempts: number;
}

const MAX_CONNECT_MS = 5_000;
/** Backoff bases (the SDK's standard mode uses the same): throttling waits longer. */
const BASE_DELAY_MS = 100;
const THROTTLING_BASE_DELAY_MS = 500;
const MAX_DELAY_MS = 20_000;

/** The SDK client settings that carry the deadlines. */
export function deadlineSettings(o: DeadlineOptions): { connectionTimeout: number; socketTimeout: number; retryStrategy: BoundedRetryStrategy } {
  return {
    connectionTimeout: Math.min(o.timeoutMs, MAX_CONNECT_MS),
    socketTimeout: o.timeoutMs,
    retryStrategy: new BoundedRetryStrategy(o.maxAttempts, 2 * o.timeoutMs),
  };
}

interface Token {
  getRetryCount(): number;
  getRetryDelay(): number;
  readonly startedAt: number;
}

interface RetryErrorInfo {
  errorType: 'TRANSIENT' | 'THROTTLING' | 'SERVER_ERROR' | 'CLIENT_ERROR';
  retryAfterHint?: Date;
}

/**
 * The SDK's retry strategy interface (RetryStrategyV2, @smithy/types), with a time budget on
 * top of the attempt count: no retry starts after `budgetMs` from the first attempt. The
 * standard strategy's retry quota is left out on purpose: the budget already ends retries
 * during an outage, per operation, and a quota shared by all uploads would let one outage
 * fail the next healthy requests without a try.
 */
export class BoundedRetryStrategy {
  readonly mode = 'standard';
  readonly #maxAttempts: number;
  readonly #budgetMs: number;

  constructor(maxAttempts: number, budgetMs: number) {
    this.#maxAttempts = maxAttempts;
    this.#budgetMs = budgetMs;
  }

  async acquireInitialRetryToken(): Promise<Token> {
    return token(0, 0, Date.now());
  }

  async refreshRetryTokenForRetry(prev: Token, info: RetryErrorInfo): Promise<Token> {
    const attempts = prev.getRetryCount() + 1;
    if (info.errorType === 'CLIENT_ERROR' || attempts >= this.#maxAttempts) throw new Error('no retry');
    const base = info.errorType === 'THROTTLING' ? THROTTLING_BASE_DELAY_MS : BASE_DELAY_MS;
    let delay = Math.min(MAX_DELAY_MS, Math.random() * base * 2 ** attempts);
    if (info.retryAfterHint) delay = Math.min(MAX_DELAY_MS, Math.max(delay, info.retryAfterHint.getTime() - Date.now()));
    if (Date.now() + delay - prev.startedAt > this.#budgetMs) throw new Error('no retry: out of time');
    return token(attempts, delay, prev.startedAt);
  }

  recordSuccess(): void {}
}

/**
 * One operation the driver runs outside the SDK's own retry loop (small-requests.ts, a blob
 * read's first GET): `attempt(n)`, n from 1, tried again after the strategy's delay while it
 * allows; then the last error, as asUnavailable() words it, with the attempts made in its
 * `$metadata.attempts` as the SDK's own errors carry them. `atOnce(err, n)` lets the caller
 * mend a cause it knows (a skewed clock, an expired presigned URL) and try again without
 * asking the strategy.
 */
export async function withRetries<T>(
  strategy: BoundedRetryStrategy,
  what: string,
  attempt: (n: number) => Promise<T>,
  atOnce?: (err: unknown, n: number) => boolean,
): Promise<T> {
  let token = await strategy.acquireInitialRetryToken();
  for (let n = 1; ; n++) {
    try {
      return await attempt(n);
    } catch (err) {
      if (atOnce?.(err, n)) continue;
      try {
        token = await strategy.refreshRetryTokenForRetry(token, { errorType: retryErrorType(err) });
      } catch {
        const e = err as { $metadata?: { attempts?: number } };
        if (e.$metadata) e.$metadata.attempts = n;
        throw asUnavailable(err, what);
      }
      await sleep(token.getRetryDelay());
    }
  }
}

function token(count: number, delay: number, startedAt: number): Token {
  return { getRetryCount: () => count, getRetryDelay: () => delay, startedAt };
}

/** Node's codes for a connection that failed or broke (no response from the store). */
const NETWORK_ERROR_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNABORTED', 'EAI_AGAIN']);

/** A request timed out for want of progress (node-http-handler's TimeoutError, or range-fetch.ts's). */
export function isTimeout(err: unknown): boolean {
  const e = err as { name?: string; cause?: { name?: string } } | undefined;
  return e?.name === 'TimeoutError' || e?.cause?.name === 'TimeoutError';
}

/** The store did not answer, or answered with a server error (after the retries). */
export function isStoreUnavailable(err: unknown): boolean {
  if (err instanceof StorageUnavailableError) return true;
  const status = httpStatus(err);
  if (status !== undefined) return status >= 500;
  const e = err as { name?: string; code?: string } | undefined;
  return e?.name === 'TimeoutError' || NETWORK_ERROR_CODES.has(e?.code ?? '');
}

const THROTTLING_CODES = new Set(['SlowDown', 'Throttling', 'ThrottlingException', 'RequestThrottled', 'TooManyRequestsException', 'RequestLimitExceeded']);

/** What a failed request was, for BoundedRetryStrategy (throttling backs off longer; client errors are not tried again). */
export function retryErrorType(err: unknown): RetryErrorInfo['errorType'] {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  const status = e.$metadata?.httpStatusCode;
  if (status === undefined) return isStoreUnavailable(err) ? 'TRANSIENT' : 'CLIENT_ERROR';
  if (status === 429 || THROTTLING_CODES.has(e.name ?? '')) return 'THROTTLING';
  if (status >= 500) return 'SERVER_ERROR';
  return 'CLIENT_ERROR';
}

/**
 * What isStoreUnavailable() recognises, as StorageUnavailableError (the driver interface's
 * word for it); any other error as it is. `what` names the request ("PutObject").
 */
export function asUnavailable(err: unknown, what: string): unknown {
  if (err instanceof StorageUnavailableError || !isStoreUnavailable(err)) return err;
  return new StorageUnavailableError(`S3 ${what} failed: ${(err as Error).message || (err as Error).name}`, { cause: err });
}

/**
 * Applies asUnavailable() at the outside of the SDK's middleware stack (after its retries).
 */
export function reportUnavailable(client: S3Client): void {
  client.middlewareStack.add(
    (next, context) => async (args) => {
      try {
        return await next(args);
      } catch (err) {
        throw asUnavailable(err, context.commandName?.replace(/Command$/, '') ?? 'request');
      }
    },
    { step: 'initialize', priority: 'high', name: 'hoistStoreUnavailable' },
  );
}
