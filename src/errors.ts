/**
 * The one table of OCI distribution error codes (distribution-spec v1.1 "Error Codes",
 * plus the extensions the reference registry uses that clients understand).
 *
 * Every error the registry core raises is a RegistryError carrying one of these codes.
 * The HTTP layer takes the status from this table; handlers never pick statuses
 * case by case (see src/http/errors.ts).
 */
import { StorageUnavailableError } from './storage/driver.js';

export const ErrorCodes = {
  BLOB_UNKNOWN: { status: 404, message: 'blob unknown to registry' },
  BLOB_UPLOAD_INVALID: { status: 400, message: 'blob upload invalid' },
  BLOB_UPLOAD_UNKNOWN: { status: 404, message: 'blob upload unknown to registry' },
  DIGEST_INVALID: { status: 400, message: 'provided digest did not match uploaded content' },
  MANIFEST_BLOB_UNKNOWN: { status: 400, message: 'manifest references a manifest or blob unknown to registry' },
  MANIFEST_INVALID: { status: 400, message: 'manifest invalid' },
  MANIFEST_UNKNOWN: { status: 404, message: 'manifest unknown to registry' },
  NAME_INVALID: { status: 400, message: 'invalid repository name' },
  NAME_UNKNOWN: { status: 404, message: 'repository name not known to registry' },
  SIZE_INVALID: { status: 400, message: 'provided length did not match content length' },
  UNAUTHORIZED: { status: 401, message: 'authentication required' },
  DENIED: { status: 403, message: 'requested access to the resource is denied' },
  UNSUPPORTED: { status: 405, message: 'the operation is unsupported' },
  TOOMANYREQUESTS: { status: 429, message: 'too many requests' },
  // Extensions used by distribution (registry/api/v2/errors.go) and understood by clients.
  RANGE_INVALID: { status: 416, message: 'invalid content range' },
  TAG_INVALID: { status: 400, message: 'manifest tag did not match URI' },
  PAGINATION_NUMBER_INVALID: { status: 400, message: 'invalid number of results requested' },
  NOT_FOUND: { status: 404, message: 'route not found' },
  PAYLOAD_TOO_LARGE: { status: 413, message: 'request body too large' },
  PRECONDITION_FAILED: { status: 412, message: 'precondition failed' },
  UNAVAILABLE: { status: 503, message: 'service unavailable' },
  NOT_IMPLEMENTED: { status: 501, message: 'not implemented' },
  UNKNOWN: { status: 500, message: 'unknown error' },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ErrorCodes;

export interface RegistryErrorOptions {
  /** Structured detail shown to the client (the spec's `detail` field). Never internals. */
  detail?: unknown;
  /** The underlying error, logged but never sent. */
  cause?: unknown;
  /** Overrides the table's message for this instance. */
  message?: string;
  /**
   * Overrides the table's status, only where the spec gives one code a second meaning: a
   * manifest PUT whose index names a child the repository lacks is a bad request (400), not a
   * missing resource, yet the code is MANIFEST_UNKNOWN; a manifest over the size limit is
   * invalid, yet the spec asks for 413 ("Pushing Manifests"). Nothing in src/http chooses statuses.
   */
  status?: number;
}

/** A domain error with a stable OCI code. The core throws only these (or lets a bug surface as UNKNOWN). */
export class RegistryError extends Error {
  override readonly name = 'RegistryError';
  readonly code: ErrorCode;
  readonly detail: unknown;
  readonly #status: number | undefined;

  constructor(code: ErrorCode, opts: RegistryErrorOptions = {}) {
    super(opts.message ?? ErrorCodes[code].message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.code = code;
    this.detail = opts.detail;
    this.#status = opts.status;
  }

  get status(): number {
    return this.#status ?? ErrorCodes[this.code].status;
  }
}

/**
 * Raised when a chunk does not start at the upload's current offset. The HTTP layer adds
 * the current `Range` so the client can resume (distribution-spec "Pushing a blob in chunks").
 */
export class UploadRangeError extends RegistryError {
  readonly offset: number;
  readonly uploadId: string;
  readonly repository: string;
  constructor(repository: string, uploadId: string, offset: number, message?: string) {
    super('RANGE_INVALID', { message: message ?? 'chunk does not start at the upload offset', detail: { offset } });
    this.offset = offset;
    this.uploadId = uploadId;
    this.repository = repository;
  }
}

/**
 * A blob larger than uploads.maxBlobBytes: refused (400 SIZE_INVALID) whether a client
 * pushes it (engine/upload-write.ts) or a pull-through cache's upstream announces it
 * (proxy/upstream.ts), which the cache tells apart from an upstream that lied.
 */
export class BlobTooLargeError extends RegistryError {
  constructor(limit: number, detail: Record<string, unknown> = {}) {
    super('SIZE_INVALID', { message: 'blob exceeds the size limit', detail: { ...detail, limit } });
  }
}

/** A route exists but not for this method; the HTTP layer lists the allowed ones in `Allow` (RFC 9110 §15.5.6). */
export class MethodNotAllowedError extends RegistryError {
  readonly allow: readonly string[];
  constructor(method: string, allow: readonly string[]) {
    super('UNSUPPORTED', { message: `${method} is not supported on this route`, detail: { allow } });
    this.allow = allow;
  }
}

/** The request body ended before its declared length (client went away or lied). */
export class ClientAbortError extends Error {
  override readonly name = 'ClientAbortError';
  constructor(message = 'client aborted the request') {
    super(message);
  }
}

/**
 * Turn anything thrown into a RegistryError: a store that did not answer in time becomes
 * UNAVAILABLE (503: the client tries again later; a driver's domain error, see
 * storage/driver.ts), other unknown errors UNKNOWN. The cause is kept for the log.
 */
export function toRegistryError(err: unknown): RegistryError {
  if (err instanceof RegistryError) return err;
  if (err instanceof StorageUnavailableError) return new RegistryError('UNAVAILABLE', { message: 'storage unavailable, try again later', cause: err });
  return new RegistryError('UNKNOWN', { cause: err });
}

/** A blob Range the blob cannot satisfy (RFC 9110 §15.5.17); the HTTP layer adds `Content-Range: bytes *\/size`. */
export class RangeNotSatisfiableError extends RegistryError {
  readonly size: number;
  constructor(size: number) {
    super('RANGE_INVALID', { message: 'requested range not satisfiable', detail: { size } });
    this.size = size;
  }
}

/**
 * 401 with the challenge the client must answer (RFC 9110 §11.6.1): `Basic realm="..."`, or
 * `Bearer realm="...",service="...",scope="..."` per the Docker token authentication spec.
 */
export class UnauthorizedError extends RegistryError {
  readonly challenge: string;
  constructor(challenge: string, opts: RegistryErrorOptions = {}) {
    super('UNAUTHORIZED', opts);
    this.challenge = challenge;
  }
}

/** 429 with `Retry-After: <seconds>` (RFC 6585 §4): a rate limit or a limit on concurrent uploads. */
export class TooManyRequestsError extends RegistryError {
  readonly retryAfterSeconds: number;
  constructor(retryAfterSeconds: number, opts: RegistryErrorOptions = {}) {
    super('TOOMANYREQUESTS', opts);
    this.retryAfterSeconds = Math.max(1, Math.ceil(retryAfterSeconds));
  }
}

/**
 * The client sent no body bytes for the idle timeout (limits.idleTimeoutMs), or fewer than
 * its Content-Length said and then went quiet. Like a client abort, the core keeps what
 * arrived, so the upload resumes from there; the client, if still listening, learns why.
 */
export class BodyTimeoutError extends RegistryError {
  constructor(receivedBytes: number, idleMs: number) {
    super('SIZE_INVALID', {
      message: `request body stalled: no data for ${Math.round(idleMs / 1000)} s after ${receivedBytes} bytes`,
      detail: { receivedBytes },
    });
  }
}
