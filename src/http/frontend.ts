import type { FrontEnd, FrontEndOptions, RequestHandler } from './adapter.js';
import { NodeFrontEnd } from './node.js';

export interface CreateFrontEndOptions extends FrontEndOptions {
  /** With 'auto': called with the reason when uWS is unavailable or unfit and node:http runs instead. */
  onFallback?: (err: unknown) => void;
  /** The largest request body the registry accepts (uploads.maxBlobBytes); 0 for no limit. */
  maxBodyBytes?: number;
}

/**
 * uWebSockets.js 20.30 (the build that loads on Node 20 here) parses Content-Length into 9
 * digits at most: a request declaring 1,000,000,000 bytes or more has its connection reset
 * before any JavaScript sees it. skopeo/podman (PATCH) and containerd (PUT) declare a
 * layer's length, so a multi-GiB layer would fail. 'auto' therefore picks uWS only when the
 * registry's own blob limit keeps every body below this.
 */
export const UWS_MAX_CONTENT_LENGTH = 999_999_999;

export class FrontEndUnfitError extends Error {
  override readonly name = 'FrontEndUnfitError';
}

/**
 * Picks the HTTP front end. 'auto' prefers uWebSockets.js and falls back to node:http where
 * its native binary does not load (Node 22+, musl) or where it cannot take every blob the
 * registry accepts (see UWS_MAX_CONTENT_LENGTH); 'uws' fails instead of falling back.
 * The uWS module is imported dynamically so that a failing binary load is an error we catch.
 */
export async function createFrontEnd(
  kind: 'auto' | 'uws' | 'node',
  handler: RequestHandler,
  opts: CreateFrontEndOptions = {},
): Promise<FrontEnd> {
  const { onFallback, maxBodyBytes = 0, ...frontEndOpts } = opts;
  // uWS's SSLApp takes its certificate once, with no way to swap it on SIGHUP: HTTPS is
  // served by node:http only.
  if (frontEndOpts.tls) {
    if (kind === 'uws') throw new FrontEndUnfitError('tls: the uWebSockets.js front end serves plain HTTP only; use --frontend node (or auto)');
    if (kind === 'auto') onFallback?.(new FrontEndUnfitError('tls is configured, and only the node:http front end serves HTTPS'));
    return new NodeFrontEnd(handler, frontEndOpts);
  }
  if (kind === 'auto' && (maxBodyBytes === 0 || maxBodyBytes > UWS_MAX_CONTENT_LENGTH)) {
    onFallback?.(
      new FrontEndUnfitError(
        `uWebSockets.js resets requests with a Content-Length over ${UWS_MAX_CONTENT_LENGTH} bytes; ` +
          `set uploads.maxBlobBytes to at most that (or --frontend uws) to run on it`,
      ),
    );
    return new NodeFrontEnd(handler, frontEndOpts);
  }
  if (kind !== 'node') {
    try {
      const { UwsFrontEnd } = await import('./uws.js');
      return new UwsFrontEnd(handler, frontEndOpts);
    } catch (err) {
      if (kind === 'uws') throw err;
      onFallback?.(err);
    }
  }
  return new NodeFrontEnd(handler, frontEndOpts);
}
