import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * What the proxy does with one request: pass it on, or fail it the way a store can, or tamper
 * with the reply (ResponseFault).
 *
 *   slowdown      503 SlowDown (S3's throttling answer)
 *   unavailable   503 ServiceUnavailable
 *   internal      500 InternalError
 *   reset         the connection is reset before any answer
 *   stall         the request is read whole and never answered (the connection stays open)
 *   stall-midway  passed on; the store's answer is relayed up to its first 64 KiB of body,
 *                 then nothing more (a GET that stops making progress)
 *   lose-answer   passed on and carried out by the store, whose answer is then dropped and
 *                 the connection reset: the client cannot know that it happened
 *   internal-after  passed on and carried out by the store, whose answer is then replaced
 *                 by 500 InternalError (a gateway that failed on the way back)
 *   keys-failed   a DeleteObjects answered 200 with every key it names in an <Error> (what
 *                 radosgw does to a key now and then), deleting nothing
 *   ignore-range  passed on without its Range header: the store answers 200 with the whole
 *                 object (a store, or a cache in between, that does not do ranges)
 *   shift-range   passed on with its Range moved one byte on: the store answers 206 with
 *                 the bytes after the ones asked for
 *   pretend       not passed on, and answered 200 as if done: a PutObject with an ETag, a
 *                 CompleteMultipartUpload with its result document (a store that lost a
 *                 write it acknowledged)
 *   etag-foreign  passed on; the answer's ETag is replaced by one the store never gave
 *   error-200     not passed on; answered 200 with an <Error> document, as S3 answers a
 *                 CompleteMultipartUpload that failed after it started sending its answer
 *   error-after-200  passed on and carried out; the answer is then replaced by a 200 with an
 *                 <Error> document (the Complete happened, the answer says it failed)
 *   ignore-if-match  passed on without its If-Match header (a store, or a cache in between,
 *                 that does not honour it)
 *   repeat-page   passed on; a list answer (ListParts, ListObjectsV2) is rewritten to say it
 *                 is truncated and goes on from where this page started: a store whose
 *                 pagination never advances
 */
export type Fault =
  | 'slowdown' | 'unavailable' | 'internal' | 'reset' | 'stall' | 'stall-midway' | 'lose-answer' | 'internal-after' | 'keys-failed'
  | 'ignore-range' | 'shift-range' | 'pretend' | 'etag-foreign' | 'error-200' | 'error-after-200' | 'ignore-if-match' | 'repeat-page' | ResponseFault | DeferredFault | undefined;

/**
 * A request held in the proxy until `after` resolves, then passed on with `fault`: one that
 * reaches the store only once the test has changed it (an object replaced meanwhile).
 */
export interface DeferredFault {
  readonly after: Promise<unknown>;
  readonly fault: Exclude<Fault, DeferredFault>;
}

/** The continuation token a repeat-page answer hands out; the proxy takes it off the next request. */
const REPEAT_TOKEN = 'hoist-test-repeat-page';

/** More about a request, for `decide`. */
export interface RequestInfo {
  /** Its Content-Length (0 when absent). */
  bytes: number;
}

/** Bytes of a store's answer that stall-midway lets through. */
const MIDWAY_BYTES = 64 * 1024;

/**
 * Faults in the reply's body, for an upstream registry that lies or dies (test/proxy/).
 * Offsets count body bytes. Headers pass untouched, Content-Length included.
 */
export interface ResponseFault {
  /** Flips every bit of the body byte at this offset: same length, wrong digest. */
  corruptAt?: number;
  /** After this many body bytes, both connections are destroyed: a transfer broken off. */
  cutAfter?: number;
  /**
   * After this many body bytes, nothing more is sent until `release` resolves (`onHold` says
   * when it got there). When the upstream's connection dies meanwhile, the client's is cut.
   */
  holdAfter?: number;
  release?: Promise<void>;
  onHold?: () => void;
}

export interface FaultyProxy {
  readonly endpoint: string;
  /** Requests seen, by S3 operation guessed from method and query ('UploadPart', 'PutObject', ...). */
  readonly seen: Map<string, number>;
  /** Requests that were held (stall, stall-midway) and are still open. */
  readonly stalled: number;
  close(): Promise<void>;
}

/**
 * An HTTP proxy in front of the test S3 server that fails chosen requests (see Fault) and
 * passes the rest through untouched (SigV4 signs the Host header, which the proxy keeps, so
 * signatures stay valid).
 */
export async function startFaultyProxy(target: string, decide: (op: string, n: number, url: URL, req: RequestInfo) => Fault): Promise<FaultyProxy> {
  const to = new URL(target);
  const seen = new Map<string, number>();
  const held = new Set<IncomingMessage>();
  let repeatedPage: string | undefined;
  const hold = (req: IncomingMessage): void => {
    held.add(req);
    req.socket.once('close', () => held.delete(req));
  };
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://proxy');
    const op = s3Operation(req.method ?? 'GET', url.searchParams);
    const n = (seen.get(op) ?? 0) + 1;
    seen.set(op, n);
    const decided = decide(op, n, url, { bytes: Number(req.headers['content-length'] ?? 0) });
    const serve = (fault: Exclude<Fault, DeferredFault>): void => {
      if (typeof fault === 'object') {
        forwardWithFault(to, req, res, fault);
        return;
      }
      if (fault === 'reset') {
        req.socket.destroy();
        return;
      }
      if (fault === 'stall') {
        // Read the body, as a store does, and then say nothing.
        req.resume();
        hold(req);
        return;
      }
      if (fault === 'keys-failed') {
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () => {
          const keys = [...Buffer.concat(chunks).toString('utf8').matchAll(/<Key>([^<]*)<\/Key>/g)].map((m) => m[1]!);
          const errors = keys.map((k) => `<Error><Key>${k}</Key><Code>UnknownError</Code><Message>injected by the test proxy</Message></Error>`).join('');
          const body = `<?xml version="1.0" encoding="UTF-8"?><DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">${errors}</DeleteResult>`;
          res.writeHead(200, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
          res.end(body);
        });
        return;
      }
      const answerError = (status: number, code: string): void => {
        const body = `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>injected by the test proxy</Message></Error>`;
        res.writeHead(status, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
        res.end(body);
      };
      if (fault === 'error-200') {
        req.resume();
        req.on('end', () => answerError(200, 'InternalError'));
        return;
      }
      if (fault === 'pretend') {
        req.resume();
        req.on('end', () => {
          const etag = '"0123456789abcdef0123456789abcdef-1"';
          const body = op === 'CompleteMultipartUpload'
            ? `<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Location>${url.pathname}</Location><Key>${url.pathname}</Key><ETag>${etag}</ETag></CompleteMultipartUploadResult>`
            : '';
          res.writeHead(200, { etag, 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
          res.end(body);
        });
        return;
      }
      if (fault === 'slowdown' || fault === 'unavailable' || fault === 'internal') {
        // Read the body first, as a server does before it answers an upload.
        req.resume();
        req.on('end', () => {
          if (fault === 'slowdown') answerError(503, 'SlowDown');
          else if (fault === 'unavailable') answerError(503, 'ServiceUnavailable');
          else answerError(500, 'InternalError');
        });
        return;
      }
      const headers = { ...req.headers };
      const repeated = url.searchParams.get('continuation-token') === REPEAT_TOKEN ? repeatedPage : undefined;
      if (repeated !== undefined) {
        // A token the store never gave (and the query is signed): the page it stands for is
        // answered from here, the same page again.
        req.resume();
        res.writeHead(200, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(repeated) });
        res.end(repeated);
        return;
      }
      if (fault === 'ignore-range') delete headers.range;
      if (fault === 'ignore-if-match') delete headers['if-match'];
      if (fault === 'shift-range') headers.range = headers.range?.replace(/^bytes=(\d+)-(\d*)/, (_, a: string, b: string) => `bytes=${Number(a) + 1}-${b === '' ? '' : Number(b) + 1}`);
      const upstream = request(
        { host: to.hostname, port: to.port, method: req.method, path: req.url, headers },
        (up) => {
          if (fault === 'error-after-200') {
            up.resume();
            up.on('end', () => answerError(200, 'InternalError'));
            return;
          }
          if (fault === 'repeat-page') {
            const chunks: Buffer[] = [];
            up.on('data', (c: Buffer) => chunks.push(c));
            up.on('end', () => {
              let body = Buffer.concat(chunks).toString('utf8').replace(/<IsTruncated>false<\/IsTruncated>/, '<IsTruncated>true</IsTruncated>');
              if (op === 'ListParts') {
                const marker = url.searchParams.get('part-number-marker') ?? '0';
                body = body.replace(/<NextPartNumberMarker>\d*<\/NextPartNumberMarker>/, '');
                body = body.replace('<IsTruncated>', `<NextPartNumberMarker>${marker}</NextPartNumberMarker><IsTruncated>`);
              } else {
                body = body.replace(/<NextContinuationToken>[^<]*<\/NextContinuationToken>/, '');
                body = body.replace('<IsTruncated>', `<NextContinuationToken>${REPEAT_TOKEN}</NextContinuationToken><IsTruncated>`);
                repeatedPage = body;
              }
              const answer = { ...up.headers, 'content-length': String(Buffer.byteLength(body)) };
              delete answer['transfer-encoding'];
              res.writeHead(up.statusCode ?? 502, answer);
              res.end(body);
            });
            return;
          }
          if (fault === 'lose-answer') {
            up.resume();
            up.on('end', () => req.socket.destroy());
            return;
          }
          if (fault === 'internal-after') {
            up.resume();
            up.on('end', () => answerError(500, 'InternalError'));
            return;
          }
          const answer = { ...up.headers };
          if (fault === 'etag-foreign' && answer.etag) answer.etag = '"0123456789abcdef0123456789abcdef"';
          res.writeHead(up.statusCode ?? 502, answer);
          if (fault === 'stall-midway') {
            hold(req);
            let sent = 0;
            up.on('data', (chunk: Buffer) => {
              if (sent < MIDWAY_BYTES) res.write(chunk.subarray(0, MIDWAY_BYTES - sent));
              sent += chunk.length;
            });
            return;
          }
          up.pipe(res);
        },
      );
      upstream.on('error', () => req.socket.destroy());
      req.pipe(upstream);
    };
    if (typeof decided === 'object' && 'after' in decided) {
      req.pause();
      void decided.after.then(() => serve(decided.fault), () => req.socket.destroy());
    } else {
      serve(decided);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    seen,
    get stalled() {
      return held.size;
    },
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

/** Passes the request on and the reply back, doing to the reply's body what `fault` says. */
function forwardWithFault(to: URL, req: IncomingMessage, res: ServerResponse, fault: ResponseFault): void {
  const cut = (): void => {
    req.socket.destroy();
  };
  const upstream = request({ host: to.hostname, port: to.port, method: req.method, path: req.url, headers: req.headers }, (up) => {
    res.writeHead(up.statusCode ?? 502, up.headers);
    let offset = 0;
    let held = false;
    let ended = false;
    up.on('data', (chunk: Buffer) => {
      let piece = chunk;
      if (fault.corruptAt !== undefined && fault.corruptAt >= offset && fault.corruptAt < offset + piece.length) {
        piece = Buffer.from(piece);
        piece[fault.corruptAt - offset] = piece[fault.corruptAt - offset]! ^ 0xff;
      }
      const limit = fault.cutAfter ?? (held ? undefined : fault.holdAfter);
      if (limit !== undefined && offset + piece.length >= limit) {
        res.write(piece.subarray(0, limit - offset));
        const rest = piece.subarray(limit - offset);
        offset = limit;
        if (fault.cutAfter !== undefined) {
          up.destroy();
          cut();
          return;
        }
        held = true;
        up.pause();
        fault.onHold?.();
        void (fault.release ?? Promise.resolve()).then(() => {
          if (rest.length > 0) res.write(rest);
          offset += rest.length;
          up.resume();
          if (ended) res.end();
        });
        return;
      }
      offset += piece.length;
      res.write(piece);
    });
    up.on('end', () => {
      ended = true;
      if (!held || !up.isPaused()) res.end();
    });
    // The upstream died mid-body: so does the reply (no clean end with bytes missing).
    up.on('error', cut);
    up.on('close', () => {
      if (!up.complete) cut();
    });
  });
  upstream.on('error', cut);
  req.pipe(upstream);
}

/**
 * The S3 operation a request is, from its method and query (bodies and headers unread): the
 * names the SDK gives its commands, or the method for a plain object GET, HEAD or DELETE.
 * Also the bench's counting proxy's (bench/macro/count-proxy.ts).
 */
export function s3Operation(method: string, q: URLSearchParams): string {
  if (method === 'PUT' && q.has('partNumber')) return 'UploadPart';
  if (method === 'POST' && q.has('uploads')) return 'CreateMultipartUpload';
  if (method === 'POST' && q.has('uploadId')) return 'CompleteMultipartUpload';
  if (method === 'POST' && q.has('delete')) return 'DeleteObjects';
  if (method === 'DELETE' && q.has('uploadId')) return 'AbortMultipartUpload';
  if (method === 'PUT') return 'PutObject';
  if (method === 'GET' && q.has('list-type')) return 'ListObjectsV2';
  if (method === 'GET' && q.has('uploadId')) return 'ListParts';
  if (method === 'GET' && q.has('uploads')) return 'ListMultipartUploads';
  // ListObjects (version 1), as distribution's s3 driver lists.
  if (method === 'GET' && (q.has('prefix') || q.has('delimiter') || q.has('marker'))) return 'ListObjects';
  return method;
}
