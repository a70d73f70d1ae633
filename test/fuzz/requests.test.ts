import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ErrorCodes } from '../../src/errors.js';
import { expectStatus, listTree, request } from '../helpers/http.js';
import { pushImage, makeImage, sha256, type Image } from '../helpers/oci.js';
import { REPO_ROOT, startServer, tail, type TestServer } from '../helpers/server.js';

/**
 * Throws generated requests at a live, fs-backed registry: methods (real and made up) ×
 * paths built from the API's routes with hostile names, references, digests, upload ids and
 * query strings (encoded '..', encoded and raw non-UTF-8 bytes, control characters) ×
 * headers (Content-Length that lies or overflows, Content-Range past 2^63, odd Content-Types,
 * garbage Authorization) × small bodies, each written byte for byte on its own socket.
 *
 * After every request: a reply, if any, is well-formed HTTP/1.1; an error reply is the spec's
 * envelope with a code from src/errors.ts and that code's status; nothing is a 5xx. And after
 * the run: the process is alive, nothing exists outside the storage root (nor anything named
 * after the fuzzer's marker elsewhere), and every blob in storage still hashes to its digest,
 * the ones pushed beforehand included.
 *
 * Runs against the node:http front end for two thirds of the time and uWebSockets.js for the
 * rest. HOIST_FUZZ_RUNS and HOIST_FUZZ_SECONDS change the bound (default 20000 requests or
 * 45 s in all); HOIST_FUZZ_SEED replays a run (fast-check prints the seed of a failing one).
 */

const RUNS = Number(process.env.HOIST_FUZZ_RUNS ?? 20_000);
const SECONDS = Number(process.env.HOIST_FUZZ_SECONDS ?? 45);
const SEED = process.env.HOIST_FUZZ_SEED === undefined ? undefined : Number(process.env.HOIST_FUZZ_SEED);
const IDLE_MS = 300;
/** In every generated name, so that a path escaping the storage root would be found by name. */
const MARK = 'fuzzmark';
const KEEP = 'keep/app';

/** The target of the run under way (one per front end, one after the other). */
let work: string;
let storage: string;
let server: TestServer;
let image: Image;
let statuses: Map<number, number>;
let frontend: 'node' | 'uws';

interface RawReply {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

/**
 * Writes `bytes` on a fresh connection and reads one HTTP/1.1 response (framed by its
 * Content-Length; none for HEAD, 204 and 304). Resolves undefined when the server closed the
 * connection without replying, or sent nothing within `waitMs` (a body it still waits for).
 */
function exchange(port: number, bytes: Buffer, method: string, waitMs = IDLE_MS * 4): Promise<RawReply | undefined | Error> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let data = Buffer.alloc(0);
    let done = false;
    const finish = (v: RawReply | undefined | Error): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(v);
    };
    const timer = setTimeout(() => finish(data.length === 0 ? undefined : new Error(`incomplete reply: ${JSON.stringify(data.toString('latin1').slice(0, 300))}`)), waitMs);
    socket.on('error', () => finish(data.length === 0 ? undefined : new Error('connection error mid-reply')));
    socket.on('close', () => finish(data.length === 0 ? undefined : parse(true)));
    socket.on('data', (chunk: Buffer) => {
      data = Buffer.concat([data, chunk]);
      const r = parse(false);
      if (r) finish(r);
    });
    const parse = (closed: boolean): RawReply | Error | undefined => {
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
    socket.write(bytes);
  });
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
  host: rarely(fc.constantFrom('example.com', 'a"b', '[::1]:1', '\u00ff', '')),
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

// ---- the run -----------------------------------------------------------------------------

let liveUploadId = '';

/** The request as bytes on the wire. */
function encode(r: FuzzRequest): { bytes: Buffer; method: string } {
  // A pre-pushed repository is read and written, never deleted from: its blobs must still be there.
  const method = r.path.startsWith(`/v2/${KEEP}/`) && r.method === 'DELETE' ? 'GET' : r.method;
  const known = image.layers[0]!.descriptor.digest;
  // An upload that exists (in fuzzmark/app), so that PATCH and PUT reach the upload engine.
  const target = (r.path + r.query).replaceAll('KNOWN', known).replaceAll('LIVE', liveUploadId);
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
  // uWS's idle timeout is a fixed 10 s: a body that never comes would only be waited out.
  const length = frontend === 'uws' && r.headers.length === 'long' ? 'short' : r.headers.length;
  switch (length) {
    case 'true': h('Content-Length', String(body.length)); break;
    case 'short': h('Content-Length', String(Math.max(0, body.length - 3))); break; // the rest is the next "request"
    // Then silence, until the idle timeout answers.
    case 'long': h('Content-Length', String(body.length + 7)); break;
    case 'huge': h('Content-Length', '99999999999999999999'); break;
    case 'negative': h('Content-Length', '-5'); break;
    case 'garbage': h('Content-Length', '12, 13'); break;
    case 'twice': h('Content-Length', String(body.length)); h('Content-Length', String(body.length + 1)); break;
    case 'chunked':
      h('Transfer-Encoding', 'chunked');
      payload = body.length === 0 ? Buffer.from('0\r\n\r\n') : Buffer.concat([Buffer.from(`${body.length.toString(16)}\r\n`), body, Buffer.from('\r\n0\r\n\r\n')]);
      break;
    case 'none': payload = Buffer.alloc(0); break;
  }
  return { bytes: Buffer.concat([...head, Buffer.from('\r\n'), payload]), method };
}

const CODES = new Set(Object.keys(ErrorCodes));

/** Checks one reply; returns a complaint, or undefined when it is fine. */
function judge(reply: RawReply | undefined | Error, method: string): string | undefined {
  if (reply instanceof Error) return reply.message;
  if (reply === undefined) {
    // The server waits for more body, or dropped a request it could not parse.
    statuses.set(0, (statuses.get(0) ?? 0) + 1);
    return undefined;
  }
  statuses.set(reply.status, (statuses.get(reply.status) ?? 0) + 1);
  if (reply.status >= 500) return `server error ${reply.status}: ${reply.body.toString('utf8').slice(0, 300)}`;
  if (reply.status < 400 || method === 'HEAD') return undefined;
  if (reply.body.length === 0) {
    // node:http's own answers to what it cannot parse at all, and a bodyless HEAD.
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
    const up = await request(server.url, `/v2/${MARK}/app/blobs/uploads/`, { method: 'POST' });
    expectStatus(up, 202);
    liveUploadId = up.header('docker-upload-uuid')!;
    statuses = new Map();
  });

  afterAll(async () => {
    await server?.kill();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('answers every request with a well-formed reply and a spec error code, never a 5xx', async () => {
    let sent = 0;
    await fc.assert(
      fc.asyncProperty(requests, async (r) => {
        const { bytes, method } = encode(r);
        sent++;
        // uWS leaves a request with control bytes in its target unanswered until its own idle
        // timeout (10 s) closes the connection; nothing the registry sees. Wait less for it.
        const complaint = judge(await exchange(server.port, bytes, method, frontend === 'uws' ? 500 : IDLE_MS * 4), method);
        if (complaint) throw new Error(`${complaint}\nrequest: ${JSON.stringify(bytes.toString('latin1').slice(0, 600))}\n--- server ---\n${tail(server.logs(), 30)}`);
      }),
      {
        numRuns: Math.ceil(RUNS * target.share),
        interruptAfterTimeLimit: SECONDS * target.share * 1000,
        markInterruptAsFailure: false,
        ...(SEED === undefined ? {} : { seed: SEED }),
      },
    );
    const summary = [...statuses].sort((a, b) => a[0] - b[0]).map(([s, n]) => `${s || 'no reply'}×${n}`).join(' ');
    console.log(`[fuzz ${target.frontend}] ${sent} requests; replies by status: ${summary}`);
    expect(sent).toBeGreaterThan(200);
    // The generators reach past the front door: successes and several kinds of errors.
    expect([...statuses.keys()].filter((s) => s >= 200 && s < 300).length).toBeGreaterThan(1);
    expect([...statuses.keys()].filter((s) => s >= 400).length).toBeGreaterThan(3);
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
    expect(inside.filter((p) => p.split('/').some((s) => s === '..' || s === '.') || /%|[^\x21-\x7e]/.test(p))).toEqual([]);
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
});
