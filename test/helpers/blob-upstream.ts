import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

/** A blob GET or HEAD the upstream has the blob for: through which repository, and the bytes. */
export interface BlobAsk {
  readonly req: http.IncomingMessage;
  readonly res: http.ServerResponse;
  readonly repo: string;
  readonly digest: string;
  readonly bytes: Buffer;
}

/** The blobs an upstream has, by digest (made before the upstream starts: tests make theirs as they are collected). */
export class UpstreamBlobs {
  readonly #blobs = new Map<string, Buffer>();

  /** Random bytes the upstream then has, under their digest. */
  newBlob(size: number): { bytes: Buffer; digest: string } {
    const bytes = randomBytes(size);
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    this.#blobs.set(digest, bytes);
    return { bytes, digest };
  }

  get(digest: string): Buffer | undefined {
    return this.#blobs.get(digest);
  }
}

/**
 * Starts a 200 answer to `ask` with the blob's length; a HEAD is then complete. Whether the
 * body is still to be sent (a GET).
 */
export function startBlobAnswer({ req, res, bytes }: BlobAsk): boolean {
  res.writeHead(200, { 'content-length': String(bytes.byteLength), 'content-type': 'application/octet-stream' });
  if (req.method !== 'HEAD') return true;
  res.end();
  return false;
}

export interface BlobUpstream {
  /** `http://127.0.0.1:<port>`: what a cache's HOIST_PROXY_REMOTE_URL names. */
  readonly url: string;
  close(): void;
}

/**
 * A pull-through cache's upstream of a test's own, for what a real registry cannot be made to
 * do on cue (stall, answer slowly, send wrong bytes): `serve` answers every blob request for
 * a blob it has, by repository; anything else is 404 BLOB_UNKNOWN.
 */
export async function startBlobUpstream(blobs: UpstreamBlobs, serve: (ask: BlobAsk) => void): Promise<BlobUpstream> {
  const server = http.createServer((req, res) => {
    const m = /^\/v2\/(.+)\/blobs\/(sha256:[0-9a-f]{64})$/.exec(req.url ?? '');
    const bytes = m ? blobs.get(m[2]!) : undefined;
    if (!m || !bytes) {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"BLOB_UNKNOWN"}]}');
      return;
    }
    serve({ req, res, repo: m[1]!, digest: m[2]!, bytes });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close() {
      server.closeAllConnections();
      server.close();
    },
  };
}
