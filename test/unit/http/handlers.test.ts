import { createHash, randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HashPool } from '../../../src/engine/hash-pool.js';
import { ReadinessCheck } from '../../../src/health.js';
import { SlabPool } from '../../../src/engine/slab-pool.js';
import { createHandler } from '../../../src/http/handlers.js';
import { NodeFrontEnd } from '../../../src/http/node.js';
import { MEDIA_TYPES } from '../../../src/registry/manifest-schema.js';
import { Registry } from '../../../src/registry/registry.js';
import { MemoryDriver } from '../../../src/storage/memory.js';

/**
 * The protocol translation (src/http/handlers.ts), in process: createHandler over a registry
 * core on the memory driver, served by the node:http front end on loopback, asked with fetch.
 * Each route and verb answers with the status, headers and body the distribution spec gives
 * it (the exchanges written above each handler), errors come in the one envelope with the
 * status of their code, and every request leaves one `request` log line. test/http/ runs the
 * same protocol against the built server, with both front ends and with S3.
 */

const sha256 = (b: Uint8Array | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const API_VERSION = 'registry/2.0';
const MIN_CHUNK = 1234;

let pool: HashPool;
let front: NodeFrontEnd;
let base: string;
const records: Array<Record<string, unknown>> = [];
/** Storage for the readiness check that fails its listing while `broken` (EIO, as a dying disk). */
class FlakyStore extends MemoryDriver {
  broken = false;
  override async list(path: string): Promise<string[]> {
    if (this.broken) throw Object.assign(new Error('i/o error'), { code: 'EIO' });
    return super.list(path);
  }
}
const store = new FlakyStore();

beforeAll(async () => {
  pool = new HashPool({ threads: 1, maxQueue: 100 });
  const registry = new Registry({
    driver: new MemoryDriver(), hashPool: pool, slabs: new SlabPool(64 * 1024, 4 << 20),
    maxSessionBufferedBytes: 192 * 1024, maxBlobBytes: 0, maxManifestBytes: 1 << 20,
  });
  const log = pino({ level: 'info' }, new Writable({
    write(chunk: Buffer, _enc, done) {
      records.push(JSON.parse(chunk.toString('utf8')) as Record<string, unknown>);
      done();
    },
  }));
  const handler = createHandler({
    registry, log, maxManifestBytes: 1 << 20, minChunkBytes: MIN_CHUNK,
    readiness: new ReadinessCheck(store, { cacheMs: 0 }),
  });
  front = new NodeFrontEnd(handler);
  base = `http://127.0.0.1:${await front.listen('127.0.0.1', 0)}`;
});
afterAll(async () => {
  await front?.close(1000);
  await pool?.close();
});

async function call(method: string, path: string, init: { headers?: Record<string, string>; body?: Uint8Array | string } = {}) {
  const r = await fetch(base + path, { method, headers: init.headers, body: init.body as BodyInit | undefined, redirect: 'manual' });
  const body = Buffer.from(await r.arrayBuffer());
  return { status: r.status, h: (name: string) => r.headers.get(name), body, json: () => JSON.parse(body.toString('utf8')) as unknown };
}

/** The spec's error envelope, with the code's status (src/errors.ts). */
async function expectError(r: Awaited<ReturnType<typeof call>>, status: number, code: string) {
  expect(r.status, r.body.toString()).toBe(status);
  expect(r.h('content-type')).toBe('application/json');
  expect(r.h('docker-distribution-api-version')).toBe(API_VERSION);
  const env = r.json() as { errors: Array<{ code: string; message: string; detail?: unknown }> };
  expect(env.errors).toHaveLength(1);
  expect(env.errors[0]!.code).toBe(code);
  expect(typeof env.errors[0]!.message).toBe('string');
  return env.errors[0]!;
}

async function pushBlob(name: string, bytes: Buffer): Promise<string> {
  const digest = sha256(bytes);
  const r = await call('POST', `/v2/${name}/blobs/uploads/?digest=${digest}`, { headers: { 'content-type': 'application/octet-stream' }, body: bytes });
  expect(r.status).toBe(201);
  return digest;
}

async function pushImage(name: string, tag: string, subject?: { digest: string; size: number }) {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', n: randomBytes(4).toString('hex') }));
  const layer = randomBytes(100);
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: MEDIA_TYPES.ociManifest,
    config: { mediaType: MEDIA_TYPES.ociImageConfig, digest: await pushBlob(name, config), size: config.length },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: await pushBlob(name, layer), size: layer.length }],
    ...(subject ? { artifactType: 'application/vnd.example.sig', subject: { mediaType: MEDIA_TYPES.ociManifest, ...subject } } : {}),
  }));
  const r = await call('PUT', `/v2/${name}/manifests/${tag}`, { headers: { 'content-type': MEDIA_TYPES.ociManifest }, body: manifest });
  return { r, manifest, digest: sha256(manifest) };
}

describe('base, health and routing', () => {
  it('GET /v2/ → 200 {} with the API version header; HEAD the same without a body', async () => {
    const get = await call('GET', '/v2/');
    expect(get.status).toBe(200);
    expect(get.h('docker-distribution-api-version')).toBe(API_VERSION);
    expect(get.h('content-type')).toBe('application/json');
    expect(get.json()).toEqual({});
    const head = await call('HEAD', '/v2/');
    expect(head.status).toBe(200);
    expect(head.h('content-length')).toBe('2');
    expect(head.body.byteLength).toBe(0);
  });

  it('/healthz and /readyz answer uncached; not ready is 503 with the reason', async () => {
    const h = await call('GET', '/healthz');
    expect([h.status, h.json(), h.h('cache-control')]).toEqual([200, { status: 'ok' }, 'no-store']);
    expect((await call('GET', '/readyz')).json()).toEqual({ status: 'ready' });
    store.broken = true;
    try {
      const r = await call('GET', '/readyz');
      expect([r.status, r.json(), r.h('cache-control')]).toEqual([503, { status: 'not ready', reason: 'storage (memory) failed: EIO' }, 'no-store']);
    } finally {
      store.broken = false;
    }
  });

  it('no route → 404 NOT_FOUND; a verb the route lacks → 405 UNSUPPORTED with Allow; /token without an issuer → 404', async () => {
    await expectError(await call('GET', '/v2/a/nothing'), 404, 'NOT_FOUND');
    const e = await expectError(await call('POST', '/v2/a/manifests/v1'), 405, 'UNSUPPORTED');
    expect(e.detail).toEqual({ allow: ['GET', 'HEAD', 'PUT', 'DELETE'] });
    const r = await call('PATCH', '/v2/');
    expect(r.h('allow')).toBe('GET, HEAD');
    await expectError(await call('GET', '/token?service=hoist'), 404, 'NOT_FOUND');
  });

  it('errors of a HEAD carry the status and headers, no body', async () => {
    const r = await call('HEAD', `/v2/a/blobs/${sha256('none')}`);
    expect(r.status).toBe(404);
    expect(r.h('docker-distribution-api-version')).toBe(API_VERSION);
    expect(r.body.byteLength).toBe(0);
  });
});

describe('uploads', () => {
  it('POST → 202 with Location, Range 0-0, Docker-Upload-UUID and OCI-Chunk-Min-Length; GET status → 204', async () => {
    const r = await call('POST', '/v2/up/app/blobs/uploads/');
    expect(r.status).toBe(202);
    const id = r.h('docker-upload-uuid')!;
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    expect(r.h('location')).toBe(`/v2/up/app/blobs/uploads/${id}`);
    expect(r.h('range')).toBe('0-0');
    expect(r.h('content-length')).toBe('0');
    expect(r.h('oci-chunk-min-length')).toBe(String(MIN_CHUNK));
    const s = await call('GET', r.h('location')!);
    expect([s.status, s.h('range'), s.h('location'), s.h('docker-upload-uuid')]).toEqual([204, '0-0', r.h('location'), id]);
  });

  it('PATCH chunks by Content-Range (with or without "bytes "), then PUT ?digest → 201 with Location and digest', async () => {
    const data = randomBytes(3000);
    const loc = (await call('POST', '/v2/up/app/blobs/uploads/')).h('location')!;
    const p1 = await call('PATCH', loc, { headers: { 'content-range': '0-999', 'content-type': 'application/octet-stream' }, body: data.subarray(0, 1000) });
    expect([p1.status, p1.h('range'), p1.h('location')]).toEqual([202, '0-999', loc]);
    const p2 = await call('PATCH', loc, { headers: { 'content-range': 'bytes 1000-1999/*', 'content-type': 'application/octet-stream' }, body: data.subarray(1000, 2000) });
    expect(p2.h('range')).toBe('0-1999');
    // The chunk must start at the offset: 416 with the Range the upload has.
    const wrong = await call('PATCH', loc, { headers: { 'content-range': '0-999', 'content-type': 'application/octet-stream' }, body: data.subarray(0, 1000) });
    await expectError(wrong, 416, 'RANGE_INVALID');
    expect(wrong.h('range')).toBe('0-1999');
    const digest = sha256(data);
    const put = await call('PUT', `${loc}?digest=${digest}`, { headers: { 'content-range': '2000-2999', 'content-type': 'application/octet-stream' }, body: data.subarray(2000) });
    expect([put.status, put.h('location'), put.h('docker-content-digest'), put.h('content-length')]).toEqual([201, `/v2/up/app/blobs/${digest}`, digest, '0']);
  });

  // As distribution answers it: a client that gets 416 asks for the offset and sends the
  // same chunk again.
  it('a Content-Range whose length disagrees with Content-Length → 400 SIZE_INVALID, nothing written', async () => {
    const loc = (await call('POST', '/v2/up/app/blobs/uploads/')).h('location')!;
    const r = await call('PATCH', loc, { headers: { 'content-range': '0-99', 'content-type': 'application/octet-stream' }, body: randomBytes(10) });
    const e = await expectError(r, 400, 'SIZE_INVALID');
    expect(e.detail).toEqual({ contentRange: '0-99', contentLength: 10 });
    expect((await call('GET', loc)).h('range')).toBe('0-0');
  });

  it.each([
    ['an end before the start', '10-5'],
    ['no numbers', 'bytes=abc'],
  ])('a Content-Range with %s → 416 RANGE_INVALID, nothing written', async (_what, contentRange) => {
    const loc = (await call('POST', '/v2/up/app/blobs/uploads/')).h('location')!;
    const r = await call('PATCH', loc, { headers: { 'content-range': contentRange, 'content-type': 'application/octet-stream' }, body: randomBytes(10) });
    const e = await expectError(r, 416, 'RANGE_INVALID');
    expect(e.detail).toEqual({ contentRange });
    expect((await call('GET', loc)).h('range')).toBe('0-0');
  });

  it('PUT without ?digest → 400 DIGEST_INVALID; DELETE → 204, then the upload is unknown', async () => {
    const loc = (await call('POST', '/v2/up/app/blobs/uploads/')).h('location')!;
    await expectError(await call('PUT', loc), 400, 'DIGEST_INVALID');
    expect((await call('DELETE', loc)).status).toBe(204);
    await expectError(await call('GET', loc), 404, 'BLOB_UPLOAD_UNKNOWN');
  });

  it('a mount from a repository that has the blob → 201 at the blob; from one that does not → 202, a new upload', async () => {
    const digest = await pushBlob('up/source', randomBytes(50));
    const m = await call('POST', `/v2/up/target/blobs/uploads/?mount=${digest}&from=up/source`);
    expect([m.status, m.h('location'), m.h('docker-content-digest')]).toEqual([201, `/v2/up/target/blobs/${digest}`, digest]);
    const miss = await call('POST', `/v2/up/target/blobs/uploads/?mount=${sha256('absent')}&from=up/source`);
    expect(miss.status).toBe(202);
    expect(miss.h('location')).toMatch(/^\/v2\/up\/target\/blobs\/uploads\/[0-9a-f-]{36}$/);
  });
});

describe('blobs', () => {
  it('GET → 200 with digest, ETag, Accept-Ranges and the bytes; a Range → 206 with Content-Range; HEAD → size, no body', async () => {
    const data = randomBytes(500);
    const digest = await pushBlob('bl/app', data);
    const get = await call('GET', `/v2/bl/app/blobs/${digest}`);
    expect([get.status, get.h('docker-content-digest'), get.h('etag'), get.h('accept-ranges'), get.h('content-type')]).toEqual([200, digest, `"${digest}"`, 'bytes', 'application/octet-stream']);
    expect(get.body.equals(data)).toBe(true);
    const part = await call('GET', `/v2/bl/app/blobs/${digest}`, { headers: { range: 'bytes=100-199' } });
    expect([part.status, part.h('content-range'), part.h('content-length')]).toEqual([206, 'bytes 100-199/500', '100']);
    expect(part.body.equals(data.subarray(100, 200))).toBe(true);
    const head = await call('HEAD', `/v2/bl/app/blobs/${digest}`);
    expect([head.status, head.h('content-length'), head.h('docker-content-digest'), head.body.byteLength]).toEqual([200, '500', digest, 0]);
    // A range past the end: 416 with the size (RFC 9110 §15.5.17).
    const past = await call('GET', `/v2/bl/app/blobs/${digest}`, { headers: { range: 'bytes=500-' } });
    await expectError(past, 416, 'RANGE_INVALID');
    expect(past.h('content-range')).toBe('bytes */500');
  });

  it('DELETE → 202; a digest that is no digest → 400 DIGEST_INVALID', async () => {
    const digest = await pushBlob('bl/del', randomBytes(20));
    expect((await call('DELETE', `/v2/bl/del/blobs/${digest}`)).status).toBe(202);
    await expectError(await call('GET', `/v2/bl/del/blobs/${digest}`), 404, 'BLOB_UNKNOWN');
    await expectError(await call('GET', '/v2/bl/del/blobs/sha256:xyz'), 400, 'DIGEST_INVALID');
  });
});

describe('manifests, tags and referrers', () => {
  it('PUT → 201 with Location by digest and Docker-Content-Digest; GET and HEAD give the media type, digest and ETag as pushed', async () => {
    const { r, manifest, digest } = await pushImage('mf/app', 'v1');
    expect([r.status, r.h('location'), r.h('docker-content-digest'), r.h('oci-subject')]).toEqual([201, `/v2/mf/app/manifests/${digest}`, digest, null]);
    for (const ref of ['v1', digest]) {
      const get = await call('GET', `/v2/mf/app/manifests/${ref}`);
      expect([get.status, get.h('content-type'), get.h('docker-content-digest'), get.h('etag')]).toEqual([200, MEDIA_TYPES.ociManifest, digest, `"${digest}"`]);
      expect(get.body.equals(manifest)).toBe(true);
      const head = await call('HEAD', `/v2/mf/app/manifests/${ref}`);
      expect([head.status, head.h('content-length'), head.h('content-type'), head.body.byteLength]).toEqual([200, String(manifest.length), MEDIA_TYPES.ociManifest, 0]);
    }
  });

  it('a manifest with a subject → OCI-Subject; referrers list it, filtered with OCI-Filters-Applied; an unknown subject → an empty index', async () => {
    const img = await pushImage('mf/ref', 'v1');
    const sig = await pushImage('mf/ref', 'sig', { digest: img.digest, size: img.manifest.length });
    expect(sig.r.h('oci-subject')).toBe(img.digest);
    const all = await call('GET', `/v2/mf/ref/referrers/${img.digest}`);
    expect([all.status, all.h('content-type'), all.h('oci-filters-applied')]).toEqual([200, MEDIA_TYPES.ociIndex, null]);
    expect((all.json() as { manifests: Array<{ digest: string }> }).manifests.map((m) => m.digest)).toEqual([sig.digest]);
    const filtered = await call('GET', `/v2/mf/ref/referrers/${img.digest}?artifactType=application/vnd.example.other`);
    expect(filtered.h('oci-filters-applied')).toBe('artifactType');
    expect(filtered.json()).toEqual({ schemaVersion: 2, mediaType: MEDIA_TYPES.ociIndex, manifests: [] });
    const none = await call('GET', `/v2/mf/ref/referrers/${sha256('nothing')}`);
    expect([none.status, (none.json() as { manifests: unknown[] }).manifests]).toEqual([200, []]);
  });

  it('tags list pages with n and last, and a Link to the next page while more remain', async () => {
    for (const tag of ['a', 'b', 'c']) await pushImage('mf/tags', tag);
    const first = await call('GET', '/v2/mf/tags/tags/list?n=2');
    expect(first.json()).toEqual({ name: 'mf/tags', tags: ['a', 'b'] });
    expect(first.h('link')).toBe('</v2/mf/tags/tags/list?n=2&last=b>; rel="next"');
    const second = await call('GET', '/v2/mf/tags/tags/list?n=2&last=b');
    expect(second.json()).toEqual({ name: 'mf/tags', tags: ['c'] });
    expect(second.h('link')).toBeNull();
    expect((await call('GET', '/v2/mf/tags/tags/list')).h('link')).toBeNull();
    for (const n of ['-1', 'x', '1e3', '1234567890']) await expectError(await call('GET', `/v2/mf/tags/tags/list?n=${n}`), 400, 'PAGINATION_NUMBER_INVALID');
  });

  it('DELETE by digest → 202, then GET → 404 MANIFEST_UNKNOWN', async () => {
    const { digest } = await pushImage('mf/del', 'v1');
    expect((await call('DELETE', `/v2/mf/del/manifests/${digest}`)).status).toBe(202);
    await expectError(await call('GET', `/v2/mf/del/manifests/${digest}`), 404, 'MANIFEST_UNKNOWN');
    await expectError(await call('GET', '/v2/mf/del/manifests/v1'), 404, 'MANIFEST_UNKNOWN');
  });
});

describe('the request log', () => {
  it('one line per request: method, raw path, status, bytes in, upload id', async () => {
    const before = records.length;
    const r = await call('POST', '/v2/log/app/blobs/uploads/');
    await call('PATCH', r.h('location')!, { headers: { 'content-type': 'application/octet-stream' }, body: randomBytes(123) });
    await call('GET', '/v2/log/app/nothing');
    const lines = records.slice(before).filter((l) => l.msg === 'request');
    const id = r.h('docker-upload-uuid');
    expect(lines.map((l) => [l.method, l.path, l.status, l.bytesIn, l.uploadId])).toEqual([
      ['POST', '/v2/log/app/blobs/uploads/', 202, 0, id],
      ['PATCH', r.h('location'), 202, 123, id],
      ['GET', '/v2/log/app/nothing', 404, 0, undefined],
    ]);
  });
});
