import { RegistryError } from '../errors.js';
import type { BodySink, IncomingRequest } from './adapter.js';

/** Reads a small body (a manifest) into memory, refusing more than `maxBytes`. */
export async function readSmallBody(req: IncomingRequest, maxBytes: number): Promise<Buffer> {
  // A body announced larger than the limit is refused before a byte of it is read (with
  // node:http, before `100 Continue`): the client learns at once, not after sending maxBytes.
  const declared = req.header('content-length');
  if (declared !== undefined && Number(declared) > maxBytes) throw tooLargeError(maxBytes);
  const parts: Buffer[] = [];
  let total = 0;
  let tooLarge = false;
  const sink: BodySink = {
    write(chunk) {
      total += chunk.length;
      if (total > maxBytes) {
        tooLarge = true;
        return false;
      }
      parts.push(Buffer.from(chunk));
      return true;
    },
    drained: () => (tooLarge ? Promise.reject(tooLargeError(maxBytes)) : Promise.resolve()),
  };
  await req.readBody(sink);
  if (tooLarge) throw tooLargeError(maxBytes);
  return Buffer.concat(parts, total);
}

function tooLargeError(maxBytes: number): RegistryError {
  return new RegistryError('MANIFEST_INVALID', { message: 'manifest too large', detail: { limit: maxBytes }, status: 413 });
}

/** A Transfer-Encoding field's codings, in order, lower-cased (RFC 9112 §6.1). */
export function transferCodings(field: string): string[] {
  return field.split(',').map((c) => c.trim().toLowerCase());
}

/** True when the request announces a body (RFC 9112 §6.3): a non-zero length, or chunked. */
export function hasBody(req: IncomingRequest): boolean {
  const length = req.header('content-length');
  if (length !== undefined) return length.trim() !== '0';
  return req.header('transfer-encoding') !== undefined;
}
