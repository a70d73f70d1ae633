import type { FrontEnd, FrontEndOptions, RequestHandler } from './adapter.js';
import { NodeFrontEnd } from './node.js';

export interface CreateFrontEndOptions extends FrontEndOptions {
  /** With 'auto': called with the load error when uWS is unavailable and node:http runs instead. */
  onFallback?: (err: unknown) => void;
}

/**
 * Picks the HTTP front end. 'auto' prefers uWebSockets.js and falls back to node:http where
 * its native binary does not load (Node 22+, musl); 'uws' fails instead of falling back.
 * The uWS module is imported dynamically so that a failing binary load is an error we catch.
 */
export async function createFrontEnd(
  kind: 'auto' | 'uws' | 'node',
  handler: RequestHandler,
  opts: CreateFrontEndOptions = {},
): Promise<FrontEnd> {
  const { onFallback, ...frontEndOpts } = opts;
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
