import type { Logger } from 'pino';
import {
  ErrorCodes, MethodNotAllowedError, RangeNotSatisfiableError, RegistryError, TooManyRequestsError, UnauthorizedError, UploadRangeError, toRegistryError,
  type ErrorCode,
} from '../errors.js';
import type { HeaderMap, OutgoingResponse } from './adapter.js';
import { locations } from './routes.js';

export const API_VERSION_HEADER = { 'docker-distribution-api-version': 'registry/2.0' } as const;

/**
 * The one place that turns an error into an HTTP response: the status comes from the
 * error code's entry in the table (src/errors.ts; the error itself may carry the one
 * spec-given exception), the body is the spec's envelope
 * `{"errors":[{"code","message","detail"}]}` (distribution errcode/handler.go). Unknown
 * errors become UNKNOWN/500; their cause goes to the log, never to the client.
 */
export function sendError(res: OutgoingResponse, method: string, err: unknown, log: Logger): number {
  const e = toRegistryError(err);
  const status = e.status;
  if (e.code === 'UNKNOWN') log.error({ err: e.cause ?? err }, 'request failed');
  // UNAVAILABLE is storage, an upstream registry (a pull-through cache), or shutdown: the
  // message names which, so that an operator looks in the right place.
  else if (e.code === 'UNAVAILABLE') log.warn({ err: e.cause ?? err }, `request failed: ${e.message}`);
  if (res.aborted || res.started) return status;
  const headers: HeaderMap = { ...API_VERSION_HEADER, 'content-type': 'application/json' };
  if (e instanceof UploadRangeError) {
    // Tell the client where the upload stands so it can resume from there.
    headers['location'] = locations.upload(e.repository, e.uploadId);
    headers['range'] = rangeHeader(e.offset);
    headers['docker-upload-uuid'] = e.uploadId;
  }
  if (e instanceof MethodNotAllowedError) headers['allow'] = e.allow.join(', ');
  if (e instanceof RangeNotSatisfiableError) headers['content-range'] = `bytes */${e.size}`;
  if (e.code === 'UNAUTHORIZED') headers['www-authenticate'] = e instanceof UnauthorizedError ? e.challenge : 'Basic realm="hoist"';
  if (e instanceof TooManyRequestsError) headers['retry-after'] = String(e.retryAfterSeconds);
  const body = JSON.stringify({ errors: [envelopeEntry(e)] });
  if (method === 'HEAD') {
    res.send(status, { ...headers, 'content-length': String(Buffer.byteLength(body)) });
  } else {
    res.send(status, headers, body);
  }
  return status;
}

/**
 * The answer to a request a front end refuses before any handler sees it (its framing, its
 * target, its Host): the code's status from the table, and the spec's envelope.
 */
export function refusal(code: ErrorCode, message: string): { status: number; headers: HeaderMap; body: string } {
  return {
    status: ErrorCodes[code].status,
    headers: { ...API_VERSION_HEADER, 'content-type': 'application/json' },
    body: JSON.stringify({ errors: [{ code, message }] }),
  };
}

function envelopeEntry(e: RegistryError): { code: string; message: string; detail?: unknown } {
  return e.detail === undefined ? { code: e.code, message: e.message } : { code: e.code, message: e.message, detail: e.detail };
}

/** The upload `Range` header: inclusive end, and "0-0" for an empty upload (as distribution does). */
export function rangeHeader(offset: number): string {
  return `0-${Math.max(0, offset - 1)}`;
}
