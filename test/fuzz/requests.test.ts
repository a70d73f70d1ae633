import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ErrorCodes } from '../../src/errors.js';
import { WELL_KNOWN_BLOBS } from '../../src/registry/blobs.js';
import { expectStatus, listTree, request, socketExchange } from '../helpers/http.js';
import { pushImage, makeImage, sha256, type Image } from '../helpers/oci.js';
import { REPO_ROOT, startServer, tail, type TestServer } from '../helpers/server.js';

/**
 * Throws generated requests at a live, fs-backed registry: methods (real and made up) ×
 * paths built from the API's routes with hostile names, references, digests, upload ids and
 * query strings (encoded '..', encoded and raw non-UTF-8 bytes, control characters) ×
 * headers (Content-Length that lies or overflows, Content-Range past 2^63, odd Content-Types,
 * garbage Authorization) × small bodies, each written byte for byte on its own socket.
 *
 * After every request:
 * - a reply is due unless HTTP lets the server stay silent (whyNoReplyIsFine: an invalid
 *   request-line, an unrecognized method, and one known uWS deviation); a due reply that
 *   does not come, or a connection closed without one, fails the run. The wait for a due
 *   reply is long (it comes in milliseconds), so a loaded machine cannot fail it;
 * - a reply is well-formed HTTP/1.1; an error reply is the spec's envelope with a code from
 *   src/errors.ts and that code's status; nothing is a 5xx;
 * - a success is one the request can have (expectSuccess): the route, method and name are
 *   valid, the bytes served are the bytes pushed, a digest the server reports is the digest
 *   of what it stored, an upload's offset grew by exactly the body it accepted, tags and
 *   pagination are what the fuzzer pushed. The fuzzer keeps the state this needs (the tags
 *   of the pre-pushed repository, which repositories hold which blob, the live upload's bytes);
 * - requests the registry must answer with success do get it (mustSucceed): GET /v2/, and
 *   the pre-pushed image's manifest and layer (Range answered per RFC 9110 §14).
 * And after the run: the process is alive and exits 0 on SIGTERM, nothing exists outside the
 * storage root (nor anything named after the fuzzer's marker elsewhere), and every blob in
 * storage still hashes to its digest, the ones pushed beforehand included.
 *
 * Runs against the node:http front end for two thirds of the time and uWebSockets.js for the
 * rest. HOIST_FUZZ_RUNS and HOIST_FUZZ_SECONDS change the bound (default 20000 requests or
 * 45 s in all); HOIST_FUZZ_SEED replays a run (fast-check prints the seed of a failing one).
 */

const RUNS = Number(process.env.HOIST_FUZZ_RUNS ?? 20_000);
const SECONDS = Number(process.env.HOIST_FUZZ_SECONDS ?? 45);
const SEED = process.env.HOIST_FUZZ_SEED === undefined ? undefined : Number(process.env.HOIST_FUZZ_SEED);
/** limits.idleTimeout: its floor, so that a body that never comes costs as little as the server allows. */
const IDLE_MS = 1000;
/**
 * How long to wait for a reply that is due. Replies come in milliseconds (the slowest, the
 * idle-timeout answer to a body that never comes, after IDLE_MS); this only bounds a hang.
 */
const DUE_WAIT_MS = 30_000;
/** How long to wait for a reply the server may withhold; one that comes later is not judged. */
const OPTIONAL_WAIT_MS = 500;
/** In every generated name, so that a path escaping the storage root would be found by name. */
const MARK = 'fuzzmark';
const KEEP = 'keep/app';
/** The repository of the live upload the fuzzer's PATCHes and PUTs reach. */
const LIVE_REPO = `${MARK}/app`;

/** The target of the run under way (one per front end, one after the other). */
let work: string;
let storage: string;
let server: TestServer;
let image: Image;
let statuses: Map<number | string, number>;
let frontend: 'node' | 'uws';

interface RawReply {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

/** No reply: the server closed the connection, or sent nothing within the wait. */
type Silence = 'closed' | 'silent';

/**
 * Writes `bytes` on a fresh connection and reads one HTTP/1.1 response (framed by its
 * Content-Length; none for HEAD, 204 and 304).
 */
async function exchange(port: number, bytes: Buffer, method: string, waitMs: number): Promise<RawReply | Silence | Error> {
  const parse = (data: Buffer, closed: boolean): RawReply | Error | undefined => {
    const end = data.indexOf('\r\n\r\n');
    if (end < 0) return closed ? new Error(`no header end: ${JSON.stringify(data.toString('latin1').slice(0, 300))}`) : undefined;
    const lines = data.subarray(0, end).toString('latin1').split('\r\n');
    const m = /^HTTP\/1\.1 (\d{3}) /.exec(lines[0]!);
    if (!m) return new Error(`bad status line: ${JSON.stringify(lines[0])}`);
    const status = Number(m[1]);
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      if (colon <= 0) return new Error(`bad header line: ${JSON.stringify(line)}`);
      headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
    }
    const bodyless = method === 'HEAD' || status === 204 || status === 304;
    const length = bodyless ? 0 : Number(headers['content-length'] ?? (closed ? data.length - end - 4 : NaN));
    if (Number.isNaN(length)) return closed ? new Error('reply without Content-Length') : undefined;
    if (data.length - end - 4 < length) return closed ? new Error('reply body cut short') : undefined;
    return { status, headers, body: data.subarray(end + 4, end + 4 + length) };
  };
  // Done as soon as one whole response (or something that cannot be one) is in.
  const r = await socketExchange(port, bytes, { timeoutMs: waitMs, until: (data) => parse(data, false) !== undefined });
  const data = r.bytes;
  if (r.timedOut) return data.length === 0 ? 'silent' : new Error(`incomplete reply after ${waitMs} ms: ${JSON.stringify(data.toString('latin1').slice(0, 300))}`);
  if (!r.closed) return parse(data, false)!;
  if (data.length === 0) return 'closed';
  if (r.error) return new Error('connection error mid-reply');
  return parse(data, true) ?? new Error('closed mid-reply');
}

// ---- generators ------------------------------------------------------------------------

const hex = (n: number): fc.Arbitrary<string> => fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), minLength: n, maxLength: n });
const nameChar = fc.constantFrom(...'abcz09._-/'.split(''), '%2e', '%2E', '%2f', '%00', '%ff', '%c3%28', '..', '//', 'A', '~', '%');

const names = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(KEEP, `${MARK}/app`, `${MARK}/a/b`) },
  { weight: 3, arbitrary: fc.constantFrom(
    '..', '%2e%2e', '%2E%2e', `${MARK}/%2e%2e`, `${MARK}/..`, `${MARK}/%2e%2e/%2e%2e/%2e%2e/${MARK}`, `${MARK}%2f..%2f..%2f${MARK}`,
    `.${MARK}`, `${MARK}/.`, `${MARK}//x`, `${MARK}/`, `/${MARK}`, `${MARK}/_layers`, `${MARK}%ff`, `${MARK}%c3%28`, `${MARK}/%00`,
    `${MARK}${'a'.repeat(300)}`, `${MARK}/${'b'.repeat(250)}`,
  ) },
  { weight: 2, arbitrary: fc.array(nameChar, { minLength: 1, maxLength: 12 }).map((cs) => `${MARK}${cs.join('')}`) },
);

const digests = fc.oneof(
  fc.constant('KNOWN'), // replaced by a blob pushed beforehand
  fc.constant('LIVEDIGEST'), // replaced by the digest of what the live upload holds, so that PUTs can commit it
  hex(64).map((h) => `sha256:${h}`),
  hex(128).map((h) => `sha512:${h}`),
  fc.constantFrom(
    `md5:${'a'.repeat(32)}`, `sha1:${'b'.repeat(40)}`, `sha256:${'a'.repeat(63)}`, `sha256:${'a'.repeat(65)}`, `sha512:${'c'.repeat(64)}`,
    `sha256:${'A'.repeat(64)}`, 'sha256:', ':', '', '%2e%2e', '..%2f..%2fetc', `sha256%3a${'d'.repeat(64)}`, 'sha256:%ff', `sha256:${'e'.repeat(62)}%2f..`,
  ),
);

const references = fc.oneof(digests, fc.constantFrom('v1', 'latest', '-bad', '.dot', 't'.repeat(129), '%ff%fe', 'a%2f..', 'v1%00'), fc.stringMatching(/^[A-Za-z0-9_.-]{1,20}$/));
const uploadIds = fc.oneof(fc.uuid(), fc.constantFrom('LIVE', '..', '%2e%2e', 'x', '0'.repeat(200), '%ff'));

const queries = fc.oneof(
  fc.constant(''),
  digests.map((d) => `?digest=${d}`),
  fc.tuple(digests, names).map(([d, n]) => `?mount=${d}&from=${n}`),
  fc.tuple(fc.oneof(fc.constantFrom('', '0', '-1', '99999999999', 'x'), fc.nat(100).map(String)), names).map(([n, last]) => `?n=${n}&last=${last}`),
  fc.constantFrom('?artifactType=%ff', '?digest=', '?digest=sha256:%ff', `?${'q'.repeat(9000)}`, '?%%%', '?token=x&password=y'),
);

const paths = fc.oneof(
  fc.constantFrom('/v2/', '/v2', '/v2/_catalog', '/token', '/', '/v1/', '/v2//', '/%2e%2e/v2/', '/v2/_catalog/x'),
  fc.tuple(names, references).map(([n, r]) => `/v2/${n}/manifests/${r}`),
  fc.tuple(names, digests).map(([n, d]) => `/v2/${n}/blobs/${d}`),
  names.map((n) => `/v2/${n}/blobs/uploads/`),
  fc.tuple(names, uploadIds).map(([n, id]) => `/v2/${n}/blobs/uploads/${id}`),
  names.map((n) => `/v2/${n}/tags/list`),
  fc.tuple(names, digests).map(([n, d]) => `/v2/${n}/referrers/${d}`),
);

const methods = fc.oneof(
  { weight: 10, arbitrary: fc.constantFrom('GET', 'HEAD', 'PUT', 'POST', 'PATCH', 'DELETE') },
  { weight: 1, arbitrary: fc.constantFrom('OPTIONS', 'TRACE', 'CONNECT', 'get', 'FOO', 'PROPFIND') },
);

type LengthMode = 'true' | 'short' | 'long' | 'huge' | 'negative' | 'garbage' | 'none' | 'chunked' | 'twice';

/** Not `host[:port]` (RFC 9112 §3.2, RFC 3986 §3.2.2): a request with one of these MUST get 400. */
const INVALID_HOSTS = ['a"b', '\u00ff', 'a b', 'a/b', 'u@a', 'a:'];

function invalidHost(s: Sent): boolean {
  // uWS strips bytes 0x80-0xFF at the ends of a header value as if they were spaces, so
  // `Host: \xff` reaches Hoist as an empty Host, which is valid (README "Front ends").
  if (frontend === 'uws' && s.headers.host === '\u00ff') return false;
  return s.headers.host !== undefined && INVALID_HOSTS.includes(s.headers.host);
}

/** Mostly absent: each hostile header turns up in about one request in `oneIn`. */
function rarely<T>(arb: fc.Arbitrary<T>, oneIn = 6): fc.Arbitrary<T | undefined> {
  return fc.oneof({ weight: oneIn - 1, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: arb });
}

const lengths = fc.oneof(
  { weight: 12, arbitrary: fc.constant<LengthMode>('true') },
  { weight: 3, arbitrary: fc.constantFrom<LengthMode>('none', 'chunked') },
  // 'long' waits for the idle timeout: rarer, to keep the run quick.
  { weight: 1, arbitrary: fc.constantFrom<LengthMode>('short', 'huge', 'negative', 'garbage', 'twice') },
  { weight: 1, arbitrary: fc.constant<LengthMode>('long') },
);

const headerSets = fc.record({
  length: lengths,
  contentType: rarely(fc.constantFrom(
    'application/vnd.oci.image.manifest.v1+json', 'application/vnd.oci.image.index.v1+json', 'application/octet-stream',
    'application/vnd.docker.distribution.manifest.v1+prettyjws', 'text/plain; charset=\u00ff', '', 'a/b; c="d',
  ), 2),
  contentRange: rarely(fc.oneof(
    fc.constantFrom('0-9223372036854775808', '9223372036854775807-9223372036854775808', '0-18446744073709551616', '5-1', 'bytes=0-0', 'x-y', '-1-5', '0-'),
    fc.tuple(fc.nat(2000), fc.nat(2000)).map(([a, b]) => `${a}-${a + b}`),
  ), 4),
  range: rarely(fc.constantFrom('bytes=0-0', 'bytes=-5', 'bytes=5-', 'bytes=9999999-', 'bytes=0-99999999999999999999', 'bytes=a-b', 'items=0-1')),
  authorization: rarely(fc.constantFrom('Basic Og==', 'Basic !!', 'Bearer x.y.z', 'Bearer', 'Negotiate \u00ff')),
  host: rarely(fc.constantFrom('example.com', '[::1]:1', '', ...INVALID_HOSTS)),
  rawBytes: rarely(fc.constantFrom([0xff], [0x80, 0x81], [0xc3, 0x28], [0x01], [0x7f]), 10),
});

const bodies = fc.oneof(
  { weight: 3, arbitrary: fc.constant(Buffer.alloc(0)) },
  { weight: 3, arbitrary: fc.uint8Array({ maxLength: 600 }).map((a) => Buffer.from(a)) },
  { weight: 2, arbitrary: fc.constantFrom('{}', '{"schemaVersion":2}', '{"schemaVersion":1}', '[]', 'null', '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"digest":"sha256:x"}]}').map((s) => Buffer.from(s)) },
  { weight: 1, arbitrary: fc.constant('MANIFEST').map((s) => Buffer.from(s)) }, // replaced by a real manifest
);

const requests = fc.record({ method: methods, path: paths, query: queries, headers: headerSets, body: bodies });
type FuzzRequest = typeof requests extends fc.Arbitrary<infer T> ? T : never;

/** Generated requests each run sends before its time limit can end it. */
const MIN_RUNS = 300;

/**
 * Requests every run sends first: each success the oracle judges (commits, mounts, ranges,
 * tag lists, the live upload's PATCH, commit and cancel) and common errors, so those paths
 * are checked every time, not when the generators happen to hit them.
 */
const EXAMPLES: FuzzRequest[] = (() => {
  const headers: FuzzRequest['headers'] = {
    length: 'true', contentType: undefined, contentRange: undefined, range: undefined, authorization: undefined, host: undefined, rawBytes: undefined,
  };
  const none = Buffer.alloc(0);
  const req = (method: FuzzRequest['method'], path: string, query = '', more: Partial<FuzzRequest['headers']> = {}, body = none): FuzzRequest =>
    ({ method, path, query, headers: { ...headers, ...more }, body });
  const live = `/v2/${LIVE_REPO}/blobs/uploads/LIVE`;
  return [
    req('GET', '/v2/'),
    req('HEAD', `/v2/${KEEP}/manifests/v1`),
    req('PUT', `/v2/${KEEP}/manifests/v2`, '', { contentType: 'application/vnd.oci.image.manifest.v1+json' }, Buffer.from('MANIFEST')),
    req('PUT', `/v2/${KEEP}/manifests/v3`, '', { contentType: 'application/vnd.oci.image.manifest.v1+json' }, Buffer.from('{}')),
    req('GET', `/v2/${KEEP}/tags/list`, '?n=1&last=v1'),
    req('GET', `/v2/${KEEP}/blobs/KNOWN`, '', { range: 'bytes=-5' }),
    req('GET', `/v2/${KEEP}/blobs/KNOWN`, '', { range: 'bytes=9999999-' }),
    req('GET', `/v2/${KEEP}/referrers/KNOWN`, '?artifactType=application/x'),
    req('POST', `/v2/${LIVE_REPO}/blobs/uploads/`, '?mount=KNOWN&from=keep/app'),
    req('GET', `/v2/${LIVE_REPO}/blobs/KNOWN`),
    req('DELETE', `/v2/${LIVE_REPO}/blobs/KNOWN`),
    req('PATCH', live, '', {}, Buffer.from('some bytes')),
    req('PATCH', live, '', { length: 'chunked', contentRange: '10-14' }, Buffer.from('more!')),
    req('GET', live),
    req('PUT', live, '?digest=LIVEDIGEST', { length: 'none' }),
    req('PATCH', live, '', {}, Buffer.from('to be cancelled')),
    req('DELETE', live),
    req('GET', `/v2/${LIVE_REPO}/manifests/v1`),
    req('PATCH', '/v2/'),
  ];
})();

// ---- what the fuzzer knows --------------------------------------------------------------

/** What the registry holds, as far as the fuzzer's own requests changed it. */
interface Known {
  /** Tags of KEEP (the only repository that has every blob of `image`, so the only one a manifest PUT can succeed in). */
  keepTags: Set<string>;
  /** Digest → repositories that hold the blob. */
  holders: Map<string, Set<string>>;
  /** Digest → the blob's bytes. */
  blobs: Map<string, Buffer>;
  /** The upload in LIVE_REPO the generators name as LIVE, and the bytes it holds. */
  live: { id: string; content: Buffer };
}

let known: Known;

/** Whether `repo` serves blob `digest`: pushed or mounted there, or one of the well-known blobs. */
function holds(repo: string, digest: string): boolean {
  return WELL_KNOWN_BLOBS.has(digest) ? NAME.test(repo) : known.holders.get(digest)?.has(repo) === true;
}

function hold(digest: string, repo: string, bytes: Buffer): void {
  if (!known.holders.has(digest)) known.holders.set(digest, new Set());
  known.holders.get(digest)!.add(repo);
  known.blobs.set(digest, bytes);
}

/** Opens a fresh live upload (the fuzzer committed or cancelled the last one). */
async function openLiveUpload(): Promise<void> {
  const up = await request(server.url, `/v2/${LIVE_REPO}/blobs/uploads/`, { method: 'POST' });
  expectStatus(up, 202);
  known.live = { id: up.header('docker-upload-uuid')!, content: Buffer.alloc(0) };
}

/**
 * The live upload's stored size, or undefined when it is gone. Read from storage (fs): the
 * Range the API reports, checked here too, says "0-0" for both 0 and 1 byte.
 */
async function liveOffset(): Promise<number | undefined> {
  const r = await request(server.url, `/v2/${LIVE_REPO}/blobs/uploads/${known.live.id}`);
  if (r.status === 404) return undefined;
  expectStatus(r, 204, 'GET the live upload');
  // The upload's data object (src/registry/paths.ts blobData), absent until a byte is stored.
  const size = await stat(join(storage, 'blobs', 'data', known.live.id)).then((st) => st.size, () => 0);
  expect(r.header('range'), 'the Range of the live upload').toBe(`0-${Math.max(0, size - 1)}`);
  return size;
}

// ---- a request as sent, and as HTTP says the server must read it ------------------------

const HOIST_METHODS = new Set(['GET', 'HEAD', 'PUT', 'POST', 'PATCH', 'DELETE']);
/**
 * Methods both front ends parse (Hoist answers 405 with Allow). uWS drops the connection on
 * the others ('get', 'FOO', WebDAV's PROPFIND), which RFC 9110 §9.1 allows (SHOULD 501).
 */
const PARSED_METHODS = new Set([...HOIST_METHODS, 'OPTIONS', 'TRACE']);

interface Sent {
  readonly bytes: Buffer;
  readonly method: string;
  /** Path and query as written, when the request-line is valid (no raw bytes in it). */
  readonly target: string | undefined;
  readonly lengthMode: LengthMode;
  /**
   * The request body as HTTP frames it (RFC 9112 §6.3): undefined when the framing is
   * invalid (a Content-Length that is not one number: the server MUST answer 400) or the
   * body never completes ('long').
   */
  readonly body: Buffer | undefined;
  /** Body bytes written after the header: the most the server may take into an upload. */
  readonly sentBody: Buffer;
  readonly headers: FuzzRequest['headers'];
}

const INVALID_LENGTH: ReadonlySet<LengthMode> = new Set(['huge', 'negative', 'garbage', 'twice']);

/** The request as bytes on the wire. */
function encode(r: FuzzRequest): Sent {
  // A pre-pushed repository is read and written, never deleted from: its blobs must still be there.
  const method = r.path.startsWith(`/v2/${KEEP}/`) && r.method === 'DELETE' ? 'GET' : r.method;
  const liveDigest = sha256(known.live.content);
  const target = (r.path + r.query)
    .replaceAll('KNOWN', image.layers[0]!.descriptor.digest)
    .replaceAll('LIVEDIGEST', liveDigest)
    // An upload that exists (in LIVE_REPO), so that PATCH and PUT reach the upload engine.
    .replaceAll('LIVE', known.live.id);
  const body = r.body.toString() === 'MANIFEST' ? image.manifestBytes : r.body;
  const head: Buffer[] = [];
  let targetBytes = Buffer.from(target, 'latin1');
  if (r.headers.rawBytes) {
    const at = Math.min(targetBytes.length, 5 + (target.length % 7));
    targetBytes = Buffer.concat([targetBytes.subarray(0, at), Buffer.from(r.headers.rawBytes), targetBytes.subarray(at)]);
  }
  head.push(Buffer.from(`${method} `), targetBytes, Buffer.from(' HTTP/1.1\r\n'));
  const h = (name: string, value: string): void => void head.push(Buffer.from(`${name}: ${value}\r\n`, 'latin1'));
  h('Host', r.headers.host ?? `127.0.0.1:${server.port}`);
  if (r.headers.contentType !== undefined) h('Content-Type', r.headers.contentType);
  if (r.headers.contentRange !== undefined) h('Content-Range', r.headers.contentRange);
  if (r.headers.range !== undefined) h('Range', r.headers.range);
  if (r.headers.authorization !== undefined) h('Authorization', r.headers.authorization);
  let payload = body;
  let framed: Buffer | undefined = body;
  // uWS's idle timeout is a fixed 10 s: a body that never comes would only be waited out.
  const length = frontend === 'uws' && r.headers.length === 'long' ? 'short' : r.headers.length;
  switch (length) {
    case 'true': h('Content-Length', String(body.length)); break;
    case 'short': // the rest is the next "request"
      h('Content-Length', String(Math.max(0, body.length - 3)));
      framed = body.subarray(0, Math.max(0, body.length - 3));
      break;
    // Then silence, until the idle timeout answers.
    case 'long': h('Content-Length', String(body.length + 7)); framed = undefined; break;
    case 'huge': h('Content-Length', '99999999999999999999'); framed = undefined; break;
    case 'negative': h('Content-Length', '-5'); framed = undefined; break;
    case 'garbage': h('Content-Length', '12, 13'); framed = undefined; break;
    case 'twice': h('Content-Length', String(body.length)); h('Content-Length', String(body.length + 1)); framed = undefined; break;
    case 'chunked':
      h('Transfer-Encoding', 'chunked');
      payload = body.length === 0 ? Buffer.from('0\r\n\r\n') : Buffer.concat([Buffer.from(`${body.length.toString(16)}\r\n`), body, Buffer.from('\r\n0\r\n\r\n')]);
      break;
    case 'none': payload = Buffer.alloc(0); framed = Buffer.alloc(0); break;
  }
  // What the server may take as body: what the framing delimits, or all that came when the
  // body stalls; nothing when the framing is invalid.
  const sentBody = INVALID_LENGTH.has(length) ? Buffer.alloc(0) : (framed ?? body);
  return {
    bytes: Buffer.concat([...head, Buffer.from('\r\n'), payload]),
    method,
    target: r.headers.rawBytes ? undefined : target,
    lengthMode: length,
    body: framed,
    sentBody,
    headers: r.headers,
  };
}

/** Why the server may leave this request unanswered (close, or wait), or undefined: a reply is due. */
function whyNoReplyIsFine(s: Sent): string | undefined {
  if (s.target === undefined) return 'raw bytes in the request-target make the request-line invalid; RFC 9112 §3 says SHOULD answer 400, not MUST';
  if (s.method === 'CONNECT') return 'CONNECT takes an authority-form target (RFC 9112 §3.2.3); this request-line is invalid (SHOULD 400)';
  if (!PARSED_METHODS.has(s.method)) return 'an unrecognized method: RFC 9110 §9.1 says SHOULD answer 501';
  if (frontend === 'uws' && INVALID_LENGTH.has(s.lengthMode) && s.lengthMode !== 'twice') {
    // RFC 9112 §6.3 requires a 400 here; uWS's parser closes the connection instead, before
    // Hoist sees the request (README "Front ends").
    return 'uWS closes the connection on a Content-Length that is not a number it can read';
  }
  // Everything else is a complete request (or, on node:http, one whose body stalls, which
  // limits.idleTimeout answers with 400 SIZE_INVALID): it gets a reply.
  return undefined;
}

// ---- judging a reply ---------------------------------------------------------------------

const CODES = new Set(Object.keys(ErrorCodes));
const NAME = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/; // distribution-spec "Pulling manifests"
const TAG = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
const DIGEST = /^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/; // the registered algorithms (image-spec "Digests")

function digestOf(bytes: Buffer, algorithm: string): string {
  return `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`;
}

type Route = 'base' | 'catalog' | 'tags' | 'manifest' | 'uploads' | 'upload' | 'blob' | 'referrers' | 'none';

/** The distribution-spec endpoint a path names (its table "Endpoints"), independent of src/http/routes.ts. */
function routeOf(path: string): { route: Route; name: string; param: string } {
  const decode = (p: string): string => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  };
  if (path === '/v2/' || path === '/v2') return { route: 'base', name: '', param: '' };
  if (path === '/v2/_catalog') return { route: 'catalog', name: '', param: '' };
  const patterns: Array<[Route, RegExp]> = [
    ['tags', /^\/v2\/(.+)\/tags\/list$/],
    ['manifest', /^\/v2\/(.+)\/manifests\/([^/]+)$/],
    ['uploads', /^\/v2\/(.+)\/blobs\/uploads\/?$/],
    ['upload', /^\/v2\/(.+)\/blobs\/uploads\/([^/]+)$/],
    ['blob', /^\/v2\/(.+)\/blobs\/([^/]+)$/],
    ['referrers', /^\/v2\/(.+)\/referrers\/([^/]+)$/],
  ];
  for (const [route, re] of patterns) {
    const m = re.exec(path);
    if (m) return { route, name: m[1]!, param: decode(m[2] ?? '') };
  }
  return { route: 'none', name: '', param: '' };
}

/** The methods the spec gives each endpoint (HEAD wherever GET is). */
const METHODS: Record<Route, string[]> = {
  base: ['GET', 'HEAD'], catalog: ['GET', 'HEAD'], tags: ['GET', 'HEAD'], manifest: ['GET', 'HEAD', 'PUT', 'DELETE'],
  uploads: ['POST'], upload: ['GET', 'HEAD', 'PATCH', 'PUT', 'DELETE'], blob: ['GET', 'HEAD', 'DELETE'], referrers: ['GET', 'HEAD'], none: [],
};

/**
 * A single `bytes` range as RFC 9110 §14.1.2 reads it against `size`: 'ignore' (another unit,
 * which the server MUST ignore, §14.2), 'invalid' (MAY ignore or reject), 'unsatisfiable'
 * (SHOULD 416, §15.5.17), or the first and last byte to serve. Several ranges: 'invalid'
 * here, as the server may ignore them too.
 */
function rangeOf(header: string, size: number): 'ignore' | 'invalid' | 'unsatisfiable' | [number, number] {
  const unit = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+)=/.exec(header);
  if (!unit) return 'invalid';
  if (unit[1]!.toLowerCase() !== 'bytes') return 'ignore';
  const m = /^bytes=(\d*)-(\d*)$/i.exec(header);
  if (!m || (m[1] === '' && m[2] === '')) return 'invalid';
  if (m[1] === '') {
    const suffix = Number(m[2]);
    if (suffix === 0) return 'unsatisfiable';
    // A suffix longer than the representation selects all of it (§14.1.2).
    return size === 0 ? 'ignore' : [Math.max(0, size - suffix), size - 1];
  }
  const first = Number(m[1]);
  if (m[2] !== '' && Number(m[2]) < first) return 'invalid';
  if (first >= size) return 'unsatisfiable';
  return [first, m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1)];
}

/** Checks an error reply; returns a complaint, or undefined when it is fine. */
function judgeError(reply: RawReply, method: string): string | undefined {
  if (reply.status >= 500) return `server error ${reply.status}: ${reply.body.toString('utf8').slice(0, 300)}`;
  if (method === 'HEAD') return undefined;
  if (reply.body.length === 0) {
    // node:http's own answers to what it cannot parse at all.
    return [400, 408, 431].includes(reply.status) ? undefined : `${reply.status} without a body`;
  }
  if (!/^application\/json\b/.test(reply.headers['content-type'] ?? '')) return `error reply of type ${reply.headers['content-type']}`;
  let errors: Array<{ code: string; message: string }>;
  try {
    errors = (JSON.parse(reply.body.toString('utf8')) as { errors: Array<{ code: string; message: string }> }).errors;
  } catch {
    return `error body is not JSON: ${reply.body.toString('utf8').slice(0, 200)}`;
  }
  if (!Array.isArray(errors) || errors.length === 0) return 'error envelope without errors';
  for (const e of errors) {
    if (!CODES.has(e.code)) return `unknown error code ${e.code}`;
    const expected = ErrorCodes[e.code as keyof typeof ErrorCodes].status;
    // The one spec-given exception (src/errors.ts): an index naming a missing child is a bad request.
    const allowed = e.code === 'MANIFEST_UNKNOWN' ? [expected, 400] : [expected];
    if (!allowed.includes(reply.status)) return `${e.code} with status ${reply.status}, the table says ${expected}`;
    if (typeof e.message !== 'string' || e.message.length === 0) return `${e.code} without a message`;
  }
  return undefined;
}

interface Judged {
  complaint?: string;
  /** The live upload was committed or cancelled: open another. */
  liveGone?: boolean;
}

/**
 * Checks a reply under 400 against what the request can get (distribution-spec v1.1, RFC
 * 9110), and records what it changed in `known`. `liveBefore` is the live upload's size
 * before the request, when the request names it.
 */
function expectSuccess(s: Sent, reply: RawReply, liveBefore: number | undefined): Judged {
  const bad = (why: string): Judged => ({ complaint: `HTTP ${reply.status} is wrong: ${why}` });
  if (reply.status < 200 || reply.status >= 300) return bad('nothing here redirects or answers 1xx');
  if (s.target === undefined) return bad('the request-line is invalid');
  if (INVALID_LENGTH.has(s.lengthMode)) return bad('the Content-Length is invalid: RFC 9112 §6.3 requires 400');
  if (invalidHost(s)) return bad('the Host is invalid: RFC 9112 §3.2 requires 400');
  const q = s.target.indexOf('?');
  const path = q < 0 ? s.target : s.target.slice(0, q);
  const query = new URLSearchParams(q < 0 ? '' : s.target.slice(q + 1));
  const { route, name, param } = routeOf(path);
  if (!METHODS[route].includes(s.method)) return bad(`${s.method} is not a method of ${route === 'none' ? 'any endpoint' : `the ${route} endpoint`}`);
  if (!['base', 'catalog'].includes(route) && !NAME.test(name)) return bad(`${JSON.stringify(name)} is not a repository name`);
  const h = reply.headers;
  const get = s.method === 'GET';
  const json = <T>(): T | undefined => {
    try {
      return JSON.parse(reply.body.toString('utf8')) as T;
    } catch {
      return undefined;
    }
  };
  const expectStatusOf = (status: number): Judged | undefined => (reply.status === status ? undefined : bad(`expected ${status}`));
  const nParam = query.get('n');
  const n = nParam !== null && /^\d+$/.test(nParam) ? Number(nParam) : undefined;
  const last = query.get('last') ?? undefined;

  switch (route) {
    case 'base':
      return expectStatusOf(200) ?? {};
    case 'catalog': {
      if (reply.status !== 200) return bad('expected 200');
      if (!get) return {};
      const repos = json<{ repositories?: unknown }>()?.repositories;
      if (!Array.isArray(repos) || repos.some((x) => typeof x !== 'string' || !NAME.test(x))) return bad(`catalog ${reply.body.toString().slice(0, 200)}`);
      if ([...repos].sort().join('\n') !== repos.join('\n')) return bad('catalog not in lexical order');
      if (n !== undefined && repos.length > n) return bad(`${repos.length} repositories for n=${n}`);
      if (last !== undefined && repos.some((x: string) => x <= last)) return bad(`a repository not after last=${last}`);
      return {};
    }
    case 'tags': {
      if (reply.status !== 200) return bad('expected 200');
      if (!get) return {};
      const body = json<{ name?: unknown; tags?: unknown }>();
      const all = [...(name === KEEP ? known.keepTags : [])].sort();
      const expected = all.filter((t) => last === undefined || t > last).slice(0, n ?? Infinity);
      if (body?.name !== name || JSON.stringify(body.tags) !== JSON.stringify(expected)) {
        return bad(`tags/list ${reply.body.toString().slice(0, 300)}; expected ${JSON.stringify({ name, tags: expected })}`);
      }
      return {};
    }
    case 'manifest': {
      const byDigest = DIGEST.test(param);
      if (!byDigest && !TAG.test(param)) return bad(`${JSON.stringify(param)} is neither a tag nor a digest`);
      if (s.method === 'PUT') {
        if (reply.status !== 201) return bad('expected 201');
        if (!s.body?.equals(image.manifestBytes)) return bad('only the pre-pushed manifest is valid and complete');
        if (name !== KEEP) return bad(`${name} lacks the manifest's blobs`);
        if (byDigest && param !== image.manifestDigest) return bad('the digest reference does not match the manifest');
        // Parameters and case aside; application/octet-stream counts as none (src/registry/manifest-schema.ts).
        const type = s.headers.contentType?.split(';')[0]!.trim().toLowerCase();
        if (type && type !== 'application/octet-stream' && type !== image.mediaType) return bad(`Content-Type ${s.headers.contentType} is not the manifest's media type`);
        if (h['docker-content-digest'] !== image.manifestDigest) return bad(`Docker-Content-Digest ${h['docker-content-digest']}`);
        if (h['location'] !== `/v2/${name}/manifests/${image.manifestDigest}`) return bad(`Location ${h['location']}`);
        if (!byDigest) known.keepTags.add(param);
        return {};
      }
      const has = name === KEEP && (byDigest ? param === image.manifestDigest : known.keepTags.has(param));
      if (s.method === 'DELETE') return has ? expectStatusOf(202) ?? {} : bad('no such manifest to delete');
      if (reply.status !== 200) return bad('expected 200');
      if (!has) return bad(`${name} has no manifest ${param}`);
      if (h['docker-content-digest'] !== image.manifestDigest) return bad(`Docker-Content-Digest ${h['docker-content-digest']}`);
      if (h['content-type'] !== image.mediaType) return bad(`Content-Type ${h['content-type']}`);
      if (get ? !reply.body.equals(image.manifestBytes) : h['content-length'] !== String(image.manifestBytes.length)) return bad('not the manifest pushed');
      return {};
    }
    case 'uploads': {
      const mount = query.get('mount');
      const digest = query.get('digest');
      const created = (d: string): Judged | undefined => {
        if (h['docker-content-digest'] !== d) return bad(`Docker-Content-Digest ${h['docker-content-digest']}, expected ${d}`);
        if (h['location'] !== `/v2/${name}/blobs/${d}`) return bad(`Location ${h['location']}`);
        return undefined;
      };
      if (reply.status === 201 && mount !== null) {
        const from = query.get('from') ?? '';
        if (!holds(from, mount)) return bad(`${from} has no blob ${mount} to mount`);
        const wrong = created(mount);
        if (wrong) return wrong;
        hold(mount, name, known.blobs.get(mount)!);
        return {};
      }
      if (reply.status === 201 && digest !== null) {
        if (!DIGEST.test(digest)) return bad(`${JSON.stringify(digest)} is not a digest`);
        if (s.body === undefined) return bad('the body is incomplete');
        if (digestOf(s.body, digest.slice(0, digest.indexOf(':'))) !== digest) return bad('the digest is not the body\'s');
        const wrong = created(digest);
        if (wrong) return wrong;
        hold(digest, name, s.body);
        return {};
      }
      if (reply.status !== 202) return bad('expected 201 or 202');
      if (digest !== null && mount === null) return bad('a monolithic upload commits (201) or fails; it opens no session');
      if (!h['location']?.startsWith(`/v2/${name}/blobs/uploads/`)) return bad(`Location ${h['location']}`);
      if (h['range'] !== '0-0') return bad(`Range ${h['range']} for a new upload`);
      return {};
    }
    case 'upload': {
      if (name !== LIVE_REPO || param !== known.live.id || liveBefore === undefined) return bad('no such upload');
      const range = (offset: number): Judged | undefined => {
        if (h['range'] !== `0-${Math.max(0, offset - 1)}`) return bad(`Range ${h['range']}, expected the upload to hold ${offset} bytes`);
        if (h['location'] !== `/v2/${name}/blobs/uploads/${param}`) return bad(`Location ${h['location']}`);
        return undefined;
      };
      if (s.method === 'GET' || s.method === 'HEAD') return expectStatusOf(204) ?? range(liveBefore) ?? {};
      if (s.method === 'DELETE') return expectStatusOf(204) ?? { liveGone: true };
      if (s.body === undefined) return bad('the body is incomplete');
      if (s.headers.contentRange !== undefined) {
        const m = /^(\d+)-(\d+)$/.exec(s.headers.contentRange);
        if (!m || Number(m[1]) !== liveBefore || Number(m[2]) - Number(m[1]) + 1 !== s.body.length) {
          return bad(`Content-Range ${s.headers.contentRange} with ${s.body.length} bytes on an upload holding ${liveBefore}`);
        }
      }
      if (s.method === 'PATCH') return expectStatusOf(202) ?? range(liveBefore + s.body.length) ?? {};
      // PUT ?digest=: commits what the upload holds plus this body.
      if (reply.status !== 201) return bad('expected 201');
      const digest = query.get('digest') ?? '';
      if (!DIGEST.test(digest)) return bad(`${JSON.stringify(digest)} is not a digest`);
      const bytes = Buffer.concat([known.live.content, s.body]);
      if (digestOf(bytes, digest.slice(0, digest.indexOf(':'))) !== digest) return bad('the digest is not the upload\'s');
      if (h['docker-content-digest'] !== digest || h['location'] !== `/v2/${name}/blobs/${digest}`) return bad(`Docker-Content-Digest ${h['docker-content-digest']}, Location ${h['location']}`);
      hold(digest, name, bytes);
      return { liveGone: true };
    }
    case 'blob': {
      if (!holds(name, param)) return bad(`${name} has no blob ${param}`);
      const bytes = known.blobs.get(param)!;
      if (s.method === 'DELETE') {
        if (!known.holders.get(param)?.has(name)) return bad(`${name} never had ${param} pushed or mounted`);
        known.holders.get(param)!.delete(name);
        return expectStatusOf(202) ?? {};
      }
      if (h['docker-content-digest'] !== param) return bad(`Docker-Content-Digest ${h['docker-content-digest']}`);
      if (reply.status === 206 && get) {
        const asked = s.headers.range === undefined ? 'invalid' : rangeOf(s.headers.range, bytes.length);
        if (!Array.isArray(asked)) return bad(`206 to Range ${s.headers.range} (${asked})`);
        const [first, lastByte] = asked;
        if (h['content-range'] !== `bytes ${first}-${lastByte}/${bytes.length}`) return bad(`Content-Range ${h['content-range']} for Range ${s.headers.range}`);
        return reply.body.equals(bytes.subarray(first, lastByte + 1)) ? {} : bad('not the bytes asked for');
      }
      if (reply.status !== 200) return bad('expected 200 or 206');
      if (h['content-length'] !== String(bytes.length)) return bad(`Content-Length ${h['content-length']} of a ${bytes.length}-byte blob`);
      return !get || reply.body.equals(bytes) ? {} : bad('not the blob\'s bytes');
    }
    case 'referrers': {
      if (reply.status !== 200) return bad('expected 200');
      if (!DIGEST.test(param)) return bad(`${JSON.stringify(param)} is not a digest`);
      if (h['content-type'] !== 'application/vnd.oci.image.index.v1+json') return bad(`Content-Type ${h['content-type']}`);
      const filtered = (query.get('artifactType') ?? '') !== '';
      if ((h['oci-filters-applied'] === 'artifactType') !== filtered) return bad(`OCI-Filters-Applied ${h['oci-filters-applied']}`);
      if (!get) return {};
      const index = json<{ schemaVersion?: unknown; mediaType?: unknown; manifests?: unknown }>();
      // Nothing the fuzzer can push has a subject.
      if (index?.schemaVersion !== 2 || index.mediaType !== 'application/vnd.oci.image.index.v1+json' || JSON.stringify(index.manifests) !== '[]') {
        return bad(`referrers ${reply.body.toString().slice(0, 200)}`);
      }
      return {};
    }
    case 'none':
      return bad('no endpoint');
  }
}

/**
 * Requests that must succeed whatever else the fuzzer sent along: the API version check,
 * and reads of the pre-pushed image (sent with an invalid Host, they must get 400 instead).
 * Returns what the reply must be, or undefined.
 */
function mustSucceed(s: Sent): string | undefined {
  if (s.target === undefined || s.target.length > 1024 || s.body === undefined) return undefined;
  if (s.method !== 'GET' && s.method !== 'HEAD') return undefined;
  if (invalidHost(s)) return '400';
  const q = s.target.indexOf('?');
  const { route, name, param } = routeOf(q < 0 ? s.target : s.target.slice(0, q));
  if (route === 'base' && q < 0) return '200';
  if (name !== KEEP) return undefined;
  if (route === 'manifest' && (param === image.manifestDigest || known.keepTags.has(param))) return '200';
  if (route === 'blob' && holds(KEEP, param)) {
    if (s.method === 'HEAD' || s.headers.range === undefined) return '200';
    const asked = rangeOf(s.headers.range, known.blobs.get(param)!.length);
    // A server MAY ignore Range (RFC 9110 §14.2) but MUST ignore a unit it does not know.
    if (asked === 'ignore') return '200';
    if (asked === 'invalid') return '200 or 416';
    if (asked === 'unsatisfiable') return '200 or 416';
    return '200 or 206';
  }
  return undefined;
}

/** Checks one exchange; returns a complaint, or undefined when it is fine. */
function judge(s: Sent, reply: RawReply | Silence | Error, liveBefore: number | undefined): Judged {
  if (reply instanceof Error) return { complaint: reply.message };
  if (reply === 'closed' || reply === 'silent') {
    statuses.set('no reply', (statuses.get('no reply') ?? 0) + 1);
    if (whyNoReplyIsFine(s) !== undefined) return {};
    return { complaint: reply === 'closed' ? 'the connection closed without the reply this request is due' : `no reply within ${DUE_WAIT_MS} ms` };
  }
  statuses.set(reply.status, (statuses.get(reply.status) ?? 0) + 1);
  const must = mustSucceed(s);
  if (must !== undefined && !must.split(' or ').includes(String(reply.status))) {
    return { complaint: `HTTP ${reply.status}, expected ${must}: ${reply.body.toString('utf8').slice(0, 300)}` };
  }
  if (reply.status >= 400) {
    const wrong = judgeError(reply, s.method);
    if (wrong) return { complaint: wrong };
    if (reply.status === 416 && must !== undefined) {
      // A blob of the pre-pushed image (mustSucceed): the Range the blob cannot satisfy, and its size.
      const { param } = routeOf(s.target!.split('?')[0]!);
      const size = known.blobs.get(param)?.length;
      if (reply.headers['content-range'] !== `bytes */${size}`) return { complaint: `416 with Content-Range ${reply.headers['content-range']}, the blob has ${size} bytes` };
    }
    return {};
  }
  return expectSuccess(s, reply, liveBefore);
}

/** Every file under `dir` whose path contains the marker (depth-limited: the fuzzer only ever adds a few levels). */
async function marked(dir: string, depth = 3): Promise<string[]> {
  const out: string[] = [];
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return out;
  }
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.name.includes(MARK)) out.push(p);
    if (e.isDirectory() && depth > 1 && !['node_modules', '.git', 'dist'].includes(e.name)) out.push(...(await marked(p, depth - 1)));
  }
  return out;
}

/** sha256 of every committed blob's bytes, by the records under blobs/sha256 (the storage layout, src/registry/paths.ts). */
async function verifyStoredBlobs(): Promise<{ checked: number; bad: string[] }> {
  const bad: string[] = [];
  let checked = 0;
  const root = join(storage, 'blobs', 'sha256');
  for (const prefix of await readdir(root).catch(() => [] as string[])) {
    for (const file of await readdir(join(root, prefix))) {
      if (!/^[a-f0-9]{64}$/.test(file)) continue;
      const record = JSON.parse(await readFile(join(root, prefix, file), 'utf8')) as { data: string; size: number };
      const bytes = await readFile(join(storage, record.data));
      checked++;
      if (bytes.length !== record.size || createHash('sha256').update(bytes).digest('hex') !== file) bad.push(file);
    }
  }
  return { checked, bad };
}

const TARGETS = [
  { frontend: 'node' as const, share: 2 / 3 },
  { frontend: 'uws' as const, share: 1 / 3 },
];

for (const target of TARGETS) describe(`fuzzing the live server (${target.frontend} front end, fs storage)`, () => {
  beforeAll(async () => {
    frontend = target.frontend;
    work = await mkdtemp(join(tmpdir(), 'hoist-fuzz-'));
    storage = join(work, 'store');
    await mkdir(join(work, 'neighbour'));
    await writeFile(join(work, 'neighbour', 'keep.txt'), 'outside the storage root');
    server = await startServer({
      storage: `fs:${storage}`,
      frontend: target.frontend,
      // uWS takes bodies of up to 999999999 bytes only (README "Front ends").
      env: { HOIST_LIMITS_IDLE_TIMEOUT: `${IDLE_MS}ms`, ...(target.frontend === 'uws' ? { HOIST_UPLOADS_MAX_BLOB_BYTES: '100MiB' } : {}) },
    });
    image = makeImage({ layerSizesBytes: [1000, 70_000] });
    await pushImage(server.url, KEEP, 'v1', image);
    known = { keepTags: new Set(['v1']), holders: new Map(), blobs: new Map(), live: { id: '', content: Buffer.alloc(0) } };
    for (const b of [image.config, ...image.layers]) hold(b.descriptor.digest, KEEP, b.bytes);
    // Docker's empty layer and the OCI empty JSON `{}`: every repository has them, unpushed.
    for (const [digest, bytes] of WELL_KNOWN_BLOBS) known.blobs.set(digest, bytes);
    await openLiveUpload();
    statuses = new Map();
  });

  afterAll(async () => {
    await server?.kill();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('answers every request that is due a reply, with a correct success or a spec error, never a 5xx', async () => {
    let sent = 0;
    let successes = 0;
    let optional = 0;
    let liveHistory: string[] = [];
    const property = fc.asyncProperty(requests, async (r) => {
        // A request naming the live upload: learn what it holds first (and open a new one
        // if the last was committed), to judge what the request did to it.
        const namesLive = (r.path + r.query).includes('LIVE');
        let liveBefore: number | undefined;
        if (namesLive) {
          liveBefore = await liveOffset();
          if (liveBefore === undefined) {
            await openLiveUpload();
            liveBefore = 0;
          }
          expect(liveBefore, `the live upload holds what the accepted requests sent; the last requests that named it:\n${liveHistory.join('\n')}`).toBe(known.live.content.length);
        }
        const s = encode(r);
        sent++;
        const mayStaySilent = whyNoReplyIsFine(s) !== undefined;
        if (mayStaySilent) optional++;
        const reply = await exchange(server.port, s.bytes, s.method, mayStaySilent ? OPTIONAL_WAIT_MS : DUE_WAIT_MS);
        const at = s.target === undefined ? undefined : routeOf(s.target.split('?')[0]!);
        const targetsLive = at?.route === 'upload' && at.name === LIVE_REPO && at.param === known.live.id;
        let judged = judge(s, reply, targetsLive ? liveBefore : undefined);
        if (!judged.complaint && typeof reply === 'object' && !(reply instanceof Error) && reply.status < 400) successes++;
        if (!judged.complaint && namesLive) {
          // What the request did to the live upload: nothing, or appended a prefix of its body.
          const after = await liveOffset();
          if (after === undefined) {
            if (!judged.liveGone && targetsLive && ['PUT', 'DELETE'].includes(s.method)) judged = { liveGone: true };
            if (!judged.liveGone) judged = { complaint: 'the live upload disappeared' };
          } else if (judged.liveGone) {
            judged = { complaint: 'the live upload outlived its commit or cancel' };
          } else {
            const grown = after - liveBefore!;
            if (grown < 0 || grown > (targetsLive ? s.sentBody.length : 0)) {
              judged = { complaint: `the live upload went from ${liveBefore} to ${after} bytes; ${s.sentBody.length} body bytes were sent to ${targetsLive ? 'it' : 'elsewhere'}` };
            } else {
              known.live.content = Buffer.concat([known.live.content, s.sentBody.subarray(0, grown)]);
            }
          }
          if (judged.liveGone && !judged.complaint) await openLiveUpload();
          const outcome = typeof reply === 'string' ? reply : reply instanceof Error ? reply.message : reply.status;
          liveHistory = [...liveHistory.slice(-7), `${JSON.stringify(s.bytes.toString('latin1').slice(0, 200))} → ${outcome}; ${liveBefore} → ${after} bytes`];
        }
        if (judged.complaint) {
          throw new Error(`${judged.complaint}\nrequest: ${JSON.stringify(s.bytes.toString('latin1').slice(0, 600))}\n--- server ---\n${tail(server.logs(), 30)}`);
        }
    });
    // No shrinking: every request changes the server's state, so a shrunk request replayed
    // later proves nothing; the failure reported is the first, with the requests before it.
    const seed = { endOnFailure: true, ...(SEED === undefined ? {} : { seed: SEED }) };
    // First the examples and MIN_RUNS generated requests, however long a loaded machine
    // takes for them; then more, until the count or the time is up.
    // (fast-check counts the examples among numRuns.)
    await fc.assert(property, { numRuns: EXAMPLES.length + MIN_RUNS, examples: EXAMPLES.map((e) => [e] as [FuzzRequest]), ...seed });
    await fc.assert(property, {
      numRuns: Math.max(0, Math.ceil(RUNS * target.share) - MIN_RUNS),
      interruptAfterTimeLimit: SECONDS * target.share * 1000,
      markInterruptAsFailure: false,
      ...seed,
    });
    const summary = [...statuses].sort((a, b) => String(a[0]).localeCompare(String(b[0]))).map(([st, n]) => `${st}×${n}`).join(' ');
    console.log(`[fuzz ${target.frontend}] ${sent} requests (${optional} allowed to go unanswered), ${successes} successes checked; replies by status: ${summary}`);
    expect(sent).toBeGreaterThanOrEqual(MIN_RUNS + EXAMPLES.length);
    // The examples reach every success the oracle judges, and several kinds of errors.
    expect([...statuses.keys()].filter((st) => typeof st === 'number' && st >= 200 && st < 300).sort()).toEqual([200, 201, 202, 204, 206]);
    expect([...statuses.keys()].filter((st) => typeof st === 'number' && st >= 400).length).toBeGreaterThan(3);
  }, (SECONDS + 60) * 1000);

  it('the process is still alive and serving', async () => {
    let exited = false;
    void server.exited.then(() => { exited = true; });
    await new Promise((r) => setImmediate(r));
    expect(exited).toBe(false);
    expectStatus(await request(server.url, '/v2/'), 200);
    expect(server.logs().filter((l) => /uncaught|unhandled/i.test(l))).toEqual([]);
  });

  it('nothing was written outside the storage root', async () => {
    expect((await readdir(work)).sort()).toEqual(['neighbour', 'store']);
    expect(await listTree(join(work, 'neighbour'))).toEqual(['keep.txt']);
    expect(await readFile(join(work, 'neighbour', 'keep.txt'), 'utf8')).toBe('outside the storage root');
    const escaped = [...(await marked(tmpdir(), 2)), ...(await marked(REPO_ROOT, 3)), ...(await marked(work, 2))];
    expect(escaped).toEqual([]);
    // Inside it, only the registry's own layout: no '.' or '..' segments, no encoded characters.
    const inside = await listTree(storage);
    expect(inside.filter((p) => p.split('/').some((seg) => seg === '..' || seg === '.') || /%|[^\x21-\x7e]/.test(p))).toEqual([]);
    expect(inside.filter((p) => !/^(?:blobs|repositories|gc)(?:\/|$)/.test(p) && !p.startsWith('.'))).toEqual([]);
  });

  it('every blob in storage still hashes to its digest, and the pushed image still pulls', async () => {
    const { checked, bad } = await verifyStoredBlobs();
    expect(bad).toEqual([]);
    expect(checked).toBeGreaterThanOrEqual(3);
    for (const b of [image.config, ...image.layers]) {
      const r = await request(server.url, `/v2/${KEEP}/blobs/${b.descriptor.digest}`);
      expectStatus(r, 200, `GET ${b.descriptor.digest}`);
      expect(sha256(r.body)).toBe(b.descriptor.digest);
    }
    const m = await request(server.url, `/v2/${KEEP}/manifests/${image.manifestDigest}`);
    expectStatus(m, 200);
    expect(m.body.equals(image.manifestBytes)).toBe(true);
  });

  it('exits 0 on SIGTERM after it all', async () => {
    expect(await server.stop()).toBe(0);
  });
});
