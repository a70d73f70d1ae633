import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { channels, type HttpRequestMessage } from '../diagnostics.js';
import { ClientAbortError, MethodNotAllowedError, RegistryError } from '../errors.js';
import type { ReadinessCheck } from '../health.js';
import { clientField } from '../logger.js';
import type { ByteRange } from '../registry/blobs.js';
import { MEDIA_TYPES } from '../registry/manifest-schema.js';
import type { Page } from '../registry/manifests.js';
import type { Registry } from '../registry/registry.js';
import type { BodySource, ByteSink } from '../engine/upload-write.js';
import type { ChunkRange } from '../engine/uploads.js';
import type { BodySink, HeaderMap, IncomingRequest, OutgoingResponse, RequestHandler } from './adapter.js';
import type { Admission, RequestGate } from './auth.js';
import { hasBody, readSmallBody, transferCodings } from './body.js';
import { API_VERSION_HEADER, rangeHeader, sendError } from './errors.js';
import { isTakenLength } from './limits.js';
import { NamespaceRouter, withPath, withPathPrefix, type Namespace } from './namespaces.js';
import { locations, matchRoute, UNGATED_ROUTES, type RouteMatch } from './routes.js';

export interface HandlerOptions {
  /** The default registry: requests that match no namespace. */
  registry: Registry;
  /** Further registries, chosen by Host header or path prefix (src/http/namespaces.ts). */
  namespaces?: readonly Namespace[];
  log: Logger;
  maxManifestBytes: number;
  /** Advertised as OCI-Chunk-Min-Length (0: not advertised). */
  minChunkBytes: number;
  /** Limits and access control, checked before dispatch (src/http/auth.ts); none: all allowed. */
  gate?: RequestGate;
  /** What GET /readyz asks (src/health.ts); none: ready whenever the process answers. */
  readiness?: ReadinessCheck;
}

interface Ctx {
  readonly req: IncomingRequest;
  readonly res: OutgoingResponse;
  readonly m: RouteMatch;
  readonly registry: Registry;
  readonly o: HandlerOptions;
  /** Who is asking, as the gate admitted them. */
  admission?: Admission;
  readonly namespace?: string;
  /** Filled in for the request log line. */
  uploadId?: string;
  bytesIn?: number;
}

type Handler = (c: Ctx) => Promise<void>;

/**
 * Protocol translation only: parse the path and headers, call one core method, reply.
 * One dispatcher per route and one function per verb (distribution registry/handlers/).
 */
const HANDLERS: Record<RouteMatch['route']['name'], Partial<Record<string, Handler>>> = {
  base: { GET: base, HEAD: base },
  catalog: { GET: catalog },
  tags: { GET: tags },
  manifest: { GET: getManifest, HEAD: getManifest, PUT: putManifest, DELETE: deleteManifest },
  uploads: { POST: startUpload },
  upload: { GET: uploadStatus, HEAD: uploadStatus, PATCH: patchUpload, PUT: putUpload, DELETE: cancelUpload },
  blob: { GET: getBlob, HEAD: getBlob, DELETE: deleteBlob },
  referrers: { GET: referrers },
  token: { GET: token },
  healthz: { GET: healthz, HEAD: healthz },
  readyz: { GET: readyz, HEAD: readyz },
};

export interface RegistryHandler extends RequestHandler {
  /** Waits for running handlers (their uploads flush to storage) up to `timeoutMs`. */
  drain(timeoutMs: number): Promise<void>;
  /**
   * The shutdown grace period ended: the front end is about to close the connections of the
   * requests still running. Their lines say `cut: 'shutdown'` beside the 499, which alone
   * reads as "the client went away".
   */
  cutting(): void;
}

/**
 * Both front ends frame a body whose last transfer coding is chunked and hand over what the
 * chunks hold: a coding before chunked (`gzip, chunked`) would be stored still coded. RFC 9112
 * §6.1: 501 for a coding the server does not decode. (A body whose last coding is not chunked
 * has no framing: the front ends answer it 400 and close the connection.)
 */
function assertChunkedOnly(req: IncomingRequest): void {
  const coding = req.header('transfer-encoding');
  if (coding === undefined) return;
  const codings = transferCodings(coding);
  if (codings.length === 1 || codings[codings.length - 1] !== 'chunked') return;
  throw new RegistryError('NOT_IMPLEMENTED', { message: 'transfer coding not implemented: only chunked is', detail: { transferEncoding: coding.slice(0, 100) } });
}

/**
 * What a request's log line keeps of the fields its client chose (logger.ts clientField): a
 * valid name is at most 255 characters, an upload id a UUID (36), a valid path well under a
 * kilobyte; an 8 KiB target logs a line under 4 KiB.
 */
const LOG_NAME_CHARS = 256;
const LOG_UPLOAD_ID_CHARS = 128;
const LOG_PATH_CHARS = 1024;

export function createHandler(o: HandlerOptions): RegistryHandler {
  const running = new Set<Promise<void>>();
  const namespaces = new NamespaceRouter(o.registry, o.namespaces ?? []);
  let seq = 0;
  let cut = false;
  const handle = async (rawReq: IncomingRequest, rawRes: OutgoingResponse): Promise<void> => {
    const started = performance.now();
    const reqId = (++seq).toString(36);
    const ns = namespaces.resolve(rawReq.header('host'), rawReq.path);
    const req = ns.prefix ? withPath(rawReq, ns.path) : rawReq;
    const res = ns.prefix ? withPathPrefix(rawRes, ns.prefix) : rawRes;
    const matched = matchRoute(req.path);
    const m = matched?.route.name === 'token' && !o.gate?.issuesTokens ? undefined : matched;
    const log = o.log.child({ reqId, ...(ns.name ? { namespace: ns.name } : {}), ...(m?.name ? { repository: clientField(m.name, LOG_NAME_CHARS) } : {}) });
    const c: Ctx | undefined = m ? { req, res, m, registry: ns.registry, o, namespace: ns.name } : undefined;
    let status = 0;
    try {
      assertChunkedOnly(req);
      if (!m) throw new RegistryError('NOT_FOUND', { detail: { path: req.path.slice(0, 200) } });
      const h = HANDLERS[m.route.name][req.method];
      if (!h) throw new MethodNotAllowedError(req.method, Object.keys(HANDLERS[m.route.name]));
      if (o.gate && !UNGATED_ROUTES.has(m.route.name)) c!.admission = await o.gate.admit(req, m, ns.name);
      try {
        await h(c!);
      } finally {
        c!.admission?.release();
      }
      status = res.aborted ? 499 : 0;
    } catch (err) {
      if (err instanceof ClientAbortError || res.aborted) status = 499;
      else status = sendError(res, req.method, err, log);
    }
    const finalStatus = status || lastStatus.get(res) || 200;
    const ms = performance.now() - started;
    if (channels.httpRequest.hasSubscribers) {
      channels.httpRequest.publish({ route: m?.route.name ?? 'unmatched', method: req.method, status: finalStatus, ms, bytesIn: c?.bytesIn ?? 0 } satisfies HttpRequestMessage);
    }
    // One line per request, fields first (pino docs/api.md); 499: the client went away.
    log.info(
      {
        method: req.method,
        path: clientField(rawReq.path, LOG_PATH_CHARS),
        status: finalStatus,
        bytesIn: c?.bytesIn ?? 0,
        ms: Math.round(ms * 10) / 10,
        ...(c?.uploadId ? { uploadId: clientField(c.uploadId, LOG_UPLOAD_ID_CHARS) } : {}),
        ...(c?.admission?.user !== undefined ? { user: c.admission.user } : {}),
        ...(finalStatus === 499 && cut ? { cut: 'shutdown' } : {}),
      },
      'request',
    );
  };
  const handler = ((req, res) => {
    const p = handle(req, res);
    running.add(p);
    void p.finally(() => running.delete(p));
    return p;
  }) as RegistryHandler;
  handler.cutting = () => {
    cut = true;
  };
  handler.drain = async (timeoutMs) => {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled([...running]),
      new Promise((r) => {
        timer = setTimeout(r, timeoutMs);
      }),
    ]);
    clearTimeout(timer);
  };
  return handler;
}

/** Status of the last reply, for the log line (the adapter does not expose it). */
const lastStatus = new WeakMap<OutgoingResponse, number>();

function reply(c: Ctx, status: number, headers: HeaderMap, body?: string | Uint8Array): void {
  lastStatus.set(c.res, status);
  c.res.send(status, { ...API_VERSION_HEADER, ...headers }, body);
}

function json(c: Ctx, status: number, value: unknown, headers: HeaderMap = {}): void {
  const body = JSON.stringify(value);
  if (c.req.method === 'HEAD') reply(c, status, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)), ...headers });
  else reply(c, status, { 'content-type': 'application/json', ...headers }, body);
}

// GET /v2/  →  200 {}   (API version check; clients probe it before anything else)
async function base(c: Ctx): Promise<void> {
  json(c, 200, {});
}

// GET /healthz  →  200 {"status":"ok"}   (the process answers; no credentials needed)
async function healthz(c: Ctx): Promise<void> {
  json(c, 200, { status: 'ok' }, { 'cache-control': 'no-store' });
}

// GET /readyz  →  200 {"status":"ready"}, or 503 {"status":"not ready","reason":"storage (fs) failed: EACCES"}
//   (storage answers a cheap check, src/health.ts; load balancers send traffic only on 200)
async function readyz(c: Ctx): Promise<void> {
  const r = c.o.readiness ? await c.o.readiness.check() : { ready: true as const };
  json(c, r.ready ? 200 : 503, r.ready ? { status: 'ready' } : { status: 'not ready', reason: r.reason }, { 'cache-control': 'no-store' });
}

// GET /token?service=hoist&scope=repository:team-a/app:pull,push, Authorization: Basic ... (or none)
//   → 200 {"token":"<JWT>","access_token":"<JWT>","expires_in":300,"issued_at":"..."} (src/http/auth.ts)
async function token(c: Ctx): Promise<void> {
  json(c, 200, await c.o.gate!.issueToken(c.req, c.admission!, c.namespace), { 'cache-control': 'no-store' });
}

// GET /v2/_catalog?n=100&last=library/a  →  200 {"repositories":[...]}, Link: <...>; rel="next"
async function catalog(c: Ctx): Promise<void> {
  const { n, last } = pagination(c.req);
  const page = await c.registry.catalog(n, last);
  json(c, 200, { repositories: page.items }, nextLink(c.req.path, page, n));
}

// GET /v2/<name>/tags/list?n=10&last=v1  →  200 {"name":..,"tags":[..]}, Link when more remain
async function tags(c: Ctx): Promise<void> {
  const { n, last } = pagination(c.req);
  const page = await c.registry.listTags(c.m.name, n, last);
  json(c, 200, { name: c.m.name, tags: page.items }, nextLink(c.req.path, page, n));
}

// GET|HEAD /v2/<name>/manifests/<reference>
//   → 200, Content-Type: <pushed media type>, Docker-Content-Digest, the bytes as pushed
async function getManifest(c: Ctx): Promise<void> {
  // The tag is resolved once, and the preconditions judged on what is then sent: resolved
  // twice, a tag moved in between made a 200 to `If-Match: "<A>"` carry manifest B (found by
  // probing: 445 in 2,805).
  if (c.req.method === 'HEAD') {
    const r = await c.registry.statManifest(c.m.name, c.m.param);
    if (conditional(c) && preconditionsAnswered(c, r.digest)) return;
    reply(c, 200, { 'content-type': r.mediaType, 'docker-content-digest': r.digest, etag: `"${r.digest}"`, 'content-length': String(r.size) });
    return;
  }
  const man = await c.registry.getManifest(c.m.name, c.m.param);
  if (conditional(c) && preconditionsAnswered(c, man.digest)) return;
  reply(c, 200, { 'content-type': man.mediaType, 'docker-content-digest': man.digest, etag: `"${man.digest}"` }, man.bytes);
}

// PUT /v2/<name>/manifests/<reference>, Content-Type: application/vnd.oci.image.manifest.v1+json
//   → 201, Location: /v2/<name>/manifests/<digest>, Docker-Content-Digest
//     (+ OCI-Subject: <digest> when the manifest has a subject)
// PUT /v2/<name>/manifests/<digest>?tag=v1&tag=latest  (distribution-spec 1.1+dev)
//   → the same, and the tags point at it: OCI-Tag: v1, latest
//   400 TAG_INVALID (an invalid tag, more than 100)
//   400 DIGEST_INVALID (bytes ≠ digest reference), MANIFEST_INVALID (not JSON, schema 1,
//   schema violation, media type ≠ Content-Type), MANIFEST_BLOB_UNKNOWN (a config or layer
//   not in the repository), MANIFEST_UNKNOWN (an index child not in the repository)
async function putManifest(c: Ctx): Promise<void> {
  const bytes = await readSmallBody(c.req, c.o.maxManifestBytes);
  c.bytesIn = bytes.length;
  const tags = c.req.query.getAll('tag');
  const r = await c.registry.putManifest(c.m.name, c.m.param, c.req.header('content-type'), bytes, tags);
  const headers: HeaderMap = { location: locations.manifest(c.m.name, r.digest), 'docker-content-digest': r.digest, 'content-length': '0' };
  // Tells the client the tags were set; a registry without the feature ignores `tag`, and
  // the client, finding no OCI-Tag, pushes each tag by itself.
  if (tags.length > 0) headers['oci-tag'] = r.tags.join(', ');
  // distribution-spec v1.1 "Pushing Manifests with Subject": tells the client this registry
  // indexed the subject, so it must not fall back to the `<alg>-<hex>` referrers tag.
  if (r.subject) headers['oci-subject'] = r.subject;
  reply(c, 201, headers);
}

// DELETE /v2/<name>/manifests/<digest|tag>  →  202 (by digest: its tags and referrer entry go too)
async function deleteManifest(c: Ctx): Promise<void> {
  await c.registry.deleteManifest(c.m.name, c.m.param);
  reply(c, 202, { 'content-length': '0' });
}

// GET /v2/<name>/referrers/<digest>?artifactType=application/vnd.example.sbom
//   → 200, Content-Type: application/vnd.oci.image.index.v1+json
//     {"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
//      "manifests":[{"mediaType":..,"digest":..,"size":..,"artifactType":..,"annotations":{..}}]}
//     OCI-Filters-Applied: artifactType   (only when the filter was applied)
//     Link: </v2/<name>/referrers/<digest>?last=sha256-..>; rel="next"   (when more remain:
//     a page holds about 1 MiB of descriptors; distribution-spec v1.1 "Listing Referrers")
//   Never 404 (clients take that for "no referrers API"): nothing found is an empty index.
async function referrers(c: Ctx): Promise<void> {
  const artifactType = c.req.query.get('artifactType') || undefined;
  const page = await c.registry.listReferrers(c.m.name, c.m.param, artifactType, c.req.query.get('last') ?? undefined);
  const body = JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.ociIndex, manifests: page.items });
  const headers: HeaderMap = { 'content-type': MEDIA_TYPES.ociIndex, ...(artifactType ? { 'oci-filters-applied': 'artifactType' } : {}) };
  if (page.next !== undefined) {
    const q = new URLSearchParams({ ...(artifactType ? { artifactType } : {}), last: page.next });
    headers.link = `<${c.req.path}?${q.toString()}>; rel="next"`;
  }
  reply(c, 200, headers, body);
}

// POST /v2/<name>/blobs/uploads/                          → 202, Location, Range: 0-0
// POST /v2/<name>/blobs/uploads/?digest=<d>  (whole body) → 201, Location: /v2/<name>/blobs/<d>
// POST /v2/<name>/blobs/uploads/?mount=<d>&from=<other>   → 201 when <other> has it, else 202
async function startUpload(c: Ctx): Promise<void> {
  const q = c.req.query;
  const mount = q.get('mount');
  if (mount !== null && !c.admission?.mountRefused) {
    const from = q.get('from');
    const desc = from ? await c.registry.mountBlob(c.m.name, mount, from) : undefined;
    if (desc) {
      blobCreated(c, desc.digest);
      return;
    }
  }
  const digest = q.get('digest');
  if (digest !== null && mount === null) {
    const length = contentLength(c.req);
    const desc = await c.registry.putBlob(c.m.name, digest, length, bodyOf(c));
    blobCreated(c, desc.digest);
    return;
  }
  const state = await c.registry.startUpload(c.m.name);
  c.uploadId = state.id;
  uploadAccepted(c, 202, state.id, 0);
}

// GET|HEAD /v2/<name>/blobs/uploads/<id>  →  204, Range: 0-<offset-1>, Location (HEAD as distribution answers it)
async function uploadStatus(c: Ctx): Promise<void> {
  c.uploadId = c.m.param;
  const state = await c.registry.uploadStatus(c.m.name, c.m.param);
  uploadAccepted(c, 204, state.id, state.offset);
}

// PATCH /v2/<name>/blobs/uploads/<id>                      streamed: the whole blob, no Content-Range
// PATCH /v2/<name>/blobs/uploads/<id>, Content-Range: 0-8388607, Content-Length: 8388608   chunked
//   → 202, Location, Range: 0-<offset-1>; a chunk not starting at the offset → 416 with Range
async function patchUpload(c: Ctx): Promise<void> {
  c.uploadId = c.m.param;
  const range = chunkRange(c.req);
  const state = await c.registry.appendUpload(c.m.name, c.m.param, range, bodyOf(c));
  uploadAccepted(c, 202, state.id, state.offset);
}

// PUT /v2/<name>/blobs/uploads/<id>?digest=<d>   (with or without a last chunk)
//   → 201, Location: /v2/<name>/blobs/<d>, Docker-Content-Digest; wrong digest → 400 DIGEST_INVALID
async function putUpload(c: Ctx): Promise<void> {
  c.uploadId = c.m.param;
  const digest = c.req.query.get('digest');
  if (!digest) throw new RegistryError('DIGEST_INVALID', { message: 'digest query parameter required' });
  const body: BodySource | undefined = hasBody(c.req) ? bodyOf(c) : undefined;
  const desc = await c.registry.completeUpload(c.m.name, c.m.param, digest, body ? chunkRange(c.req) : {}, body);
  blobCreated(c, desc.digest);
}

// DELETE /v2/<name>/blobs/uploads/<id>  →  204
async function cancelUpload(c: Ctx): Promise<void> {
  c.uploadId = c.m.param;
  await c.registry.cancelUpload(c.m.name, c.m.param);
  reply(c, 204, {});
}

// GET|HEAD /v2/<name>/blobs/<digest>, optional Range: bytes=0-1023
//   → 200 (or 206 with Content-Range), Docker-Content-Digest, Content-Length
async function getBlob(c: Ctx): Promise<void> {
  const headers: HeaderMap = { 'content-type': 'application/octet-stream', 'accept-ranges': 'bytes' };
  if (conditional(c)) {
    const d = await c.registry.statBlob(c.m.name, c.m.param);
    if (preconditionsAnswered(c, d.digest)) return;
  }
  if (c.req.method === 'HEAD') {
    const d = await c.registry.statBlob(c.m.name, c.m.param);
    reply(c, 200, { ...headers, 'docker-content-digest': d.digest, etag: `"${d.digest}"`, 'content-length': String(d.size) });
    return;
  }
  const read = await c.registry.readBlob(c.m.name, c.m.param, rangeOf(c));
  const d = read.descriptor;
  if (read.redirect) {
    // GET /v2/<name>/blobs/<digest> → 307, Location: <presigned S3 URL> (distribution's
    // storage redirect middleware); clients follow it and send their Range there.
    reply(c, 307, { location: read.redirect, 'docker-content-digest': d.digest, 'content-length': '0' });
    return;
  }
  headers['docker-content-digest'] = d.digest;
  headers['etag'] = `"${d.digest}"`;
  if (read.partial) headers['content-range'] = `bytes ${read.start}-${read.end}/${d.size}`;
  const status = read.partial ? 206 : 200;
  lastStatus.set(c.res, status);
  await c.res.stream(status, { ...API_VERSION_HEADER, ...headers }, read.stream, read.end - read.start + 1);
}

// DELETE /v2/<name>/blobs/<digest>  →  202
async function deleteBlob(c: Ctx): Promise<void> {
  await c.registry.deleteBlob(c.m.name, c.m.param);
  reply(c, 202, { 'content-length': '0' });
}

/**
 * The request body as the upload engine reads it, counted into `c.bytesIn` as it arrives: the
 * request log line and the upload byte metrics then include what an aborted request sent.
 */
function bodyOf(c: Ctx): BodySource {
  const pump = (sink: ByteSink): Promise<number> => {
    c.bytesIn = 0;
    const counting: BodySink = {
      // `owned` passes on: the engine keeps node:http's chunks instead of copying them.
      write: (chunk, owned) => {
        c.bytesIn! += chunk.byteLength;
        return sink.write(chunk, owned);
      },
      drained: () => sink.drained(),
      ...(sink.signal ? { signal: sink.signal } : {}),
    };
    return c.req.readBody(counting);
  };
  return Object.assign(pump, { ready: () => c.req.bodyReady ?? false, invite: () => c.req.inviteBody?.() });
}

function blobCreated(c: Ctx, digest: string): void {
  reply(c, 201, { location: locations.blob(c.m.name, digest), 'docker-content-digest': digest, 'content-length': '0' });
}

function uploadAccepted(c: Ctx, status: 202 | 204, id: string, offset: number): void {
  const headers: HeaderMap = {
    location: locations.upload(c.m.name, id),
    range: rangeHeader(offset),
    'docker-upload-uuid': id,
  };
  if (status === 202) headers['content-length'] = '0';
  if (c.o.minChunkBytes > 0) headers['oci-chunk-min-length'] = String(c.o.minChunkBytes);
  reply(c, status, headers);
}

function contentLength(req: IncomingRequest): number | undefined {
  const v = req.header('content-length');
  if (v === undefined) return undefined;
  if (!isTakenLength(v)) throw new RegistryError('SIZE_INVALID', { message: 'invalid Content-Length' });
  return Number(v);
}

/** `Content-Range: <start>-<end>` (inclusive), as the spec writes it; `bytes ` prefixes tolerated. */
function chunkRange(req: IncomingRequest): ChunkRange {
  const length = contentLength(req);
  const header = req.header('content-range');
  if (header === undefined) return length === undefined ? {} : { length };
  const m = /^(?:bytes[ =])?(\d{1,15})-(\d{1,15})(?:\/(?:\d{1,15}|\*))?$/.exec(header.trim());
  const start = m ? Number(m[1]) : NaN;
  const end = m ? Number(m[2]) : NaN;
  if (!m || end < start) {
    throw new RegistryError('RANGE_INVALID', { message: 'invalid Content-Range', detail: { contentRange: header.slice(0, 100) } });
  }
  // A body of another length than its range is not a chunk out of order, which a client
  // answers by asking for the offset and sending again (416), but one it cannot send: 400, as
  // distribution answers it.
  if (length !== undefined && length !== end - start + 1) {
    throw new RegistryError('SIZE_INVALID', { message: 'Content-Length disagrees with Content-Range', detail: { contentRange: header.slice(0, 100), contentLength: length } });
  }
  return { start, length: end - start + 1 };
}

/** Whether a GET or HEAD carries a precondition that preconditionsAnswered() evaluates. */
function conditional(c: Ctx): boolean {
  return c.req.header('if-match') !== undefined || c.req.header('if-none-match') !== undefined;
}

/**
 * RFC 9110 §13.2.2 for a blob or manifest, whose one validator is its ETag, the digest
 * (quoted): an If-Match that names none of its ETags → 412 (strong comparison); else an
 * If-None-Match that names it → 304 (weak comparison), so that a cache revalidates without
 * the bytes. True when it answered. (No Last-Modified is sent, so no date conditions.)
 */
function preconditionsAnswered(c: Ctx, digest: string): boolean {
  const ifMatch = c.req.header('if-match');
  if (ifMatch !== undefined && !namesEtag(ifMatch, digest, true)) {
    throw new RegistryError('PRECONDITION_FAILED', { message: 'If-Match names another representation' });
  }
  const ifNoneMatch = c.req.header('if-none-match');
  if (ifNoneMatch === undefined || !namesEtag(ifNoneMatch, digest, false)) return false;
  reply(c, 304, { 'docker-content-digest': digest, etag: `"${digest}"` });
  return true;
}

/** Whether a list of entity tags (or `*`) names `"digest"`; a weak one only if `strong` is false. */
function namesEtag(header: string, digest: string, strong: boolean): boolean {
  if (header.trim() === '*') return true;
  return header.split(',').some((item) => {
    const tag = item.trim();
    return tag === `"${digest}"` || (!strong && tag === `W/"${digest}"`);
  });
}

/**
 * The blob GET's Range, unless an If-Range names another representation (RFC 9110 §13.1.5):
 * a client resuming a download asks for the rest only if the entity is the one it began, and
 * otherwise wants the whole. This blob's only validator is its ETag, the digest: a date (we
 * send no Last-Modified) or another tag gets the whole blob.
 */
function rangeOf(c: Ctx): ByteRange | undefined {
  const ifRange = c.req.header('if-range');
  if (ifRange !== undefined && ifRange.trim() !== `"${c.m.param}"`) return undefined;
  return parseRange(c.req.header('range'));
}

/** A single `Range: bytes=a-b` request (the unit in any case); anything else is ignored (RFC 9110 §14.2 allows it). */
function parseRange(header: string | undefined): ByteRange | undefined {
  if (!header) return undefined;
  const m = /^bytes=(\d{0,15})-(\d{0,15})$/i.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return undefined;
  if (m[1] === '') return { suffix: Number(m[2]) };
  return m[2] === '' ? { start: Number(m[1]) } : { start: Number(m[1]), end: Number(m[2]) };
}

function pagination(req: IncomingRequest): { n: number | undefined; last: string | undefined } {
  const nText = req.query.get('n');
  let n: number | undefined;
  if (nText !== null && nText !== '') {
    if (!/^\d{1,9}$/.test(nText)) throw new RegistryError('PAGINATION_NUMBER_INVALID', { detail: { n: nText.slice(0, 20) } });
    n = Number(nText);
  }
  return { n, last: req.query.get('last') ?? undefined };
}

/** RFC 5988 Link to the next page, as distribution-spec "Listing Tags" shows it. */
function nextLink(path: string, page: Page<string>, n: number | undefined): HeaderMap {
  // A page asked for without n has a next only when its source pages anyway (a cache's
  // upstream may): the link then asks without n too.
  if (page.next === undefined) return {};
  const q = new URLSearchParams({ ...(n !== undefined ? { n: String(n) } : {}), last: page.next });
  return { link: `<${path}?${q.toString()}>; rel="next"` };
}
