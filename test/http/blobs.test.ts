import { gunzipSync } from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import { expectError, expectStatus, repoNamer, request } from '../helpers/http.js';
import { pushBlob, randomBlob, sha256 } from '../helpers/oci.js';
import { useRegistryServer } from '../helpers/s3-http.js';
import type { TestServer } from '../helpers/server.js';

/**
 * Pulling and deleting blobs (distribution-spec v1.1 "Pulling blobs", "Deleting blobs"),
 * byte ranges (RFC 9110 §14), repository scoping of blobs, and the two well-known blobs
 * clients reference without pushing: Docker's empty layer and the OCI empty JSON `{}`.
 * Runs on memory storage with both front ends, and on S3 (radosgw, 5 MiB parts) with the
 * node front end, where reads are ranged GETs of multipart objects.
 */

const MiB = 1024 * 1024;
const FRONTENDS = ['uws', 'node'] as const;

/** Docker's empty layer: a gzipped empty tar (distribution `gzippedEmptyTar`), 32 bytes. */
const EMPTY_LAYER_DIGEST = 'sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4';
/** image-spec "Guidance for an Empty Descriptor": the 2-byte JSON `{}`. */
const EMPTY_JSON_DIGEST = 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a';

const repo = repoNamer('blobs');

const combos: Array<{ frontend: (typeof FRONTENDS)[number]; storage: 'memory' | 's3' }> = [
  ...FRONTENDS.map((frontend) => ({ frontend, storage: 'memory' as const })),
  { frontend: 'node', storage: 's3' },
];

describe.each(combos)('blobs ($frontend front end, $storage storage)', ({ frontend, storage }) => {
  let server: TestServer;
  let base: string;
  const started = useRegistryServer(frontend, storage, 'blobs');
  if (!started) return;
  beforeAll(() => {
    server = started.server;
    base = server.url;
  });

  it('GET returns the bytes with Docker-Content-Digest and Content-Length; HEAD the same headers and no body', async () => {
    const name = repo('get');
    const data = randomBlob(123_457);
    const digest = sha256(data);
    await pushBlob(base, name, data);

    const g = await request(base, `/v2/${name}/blobs/${digest}`);
    expectStatus(g, 200);
    expect(g.header('docker-content-digest')).toBe(digest);
    expect(g.header('content-length')).toBe(String(data.byteLength));
    expect(Buffer.compare(g.body, data)).toBe(0);

    const h = await request(base, `/v2/${name}/blobs/${digest}`, { method: 'HEAD' });
    expectStatus(h, 200);
    expect(h.header('docker-content-digest')).toBe(digest);
    expect(h.header('content-length')).toBe(String(data.byteLength));
    expect(h.body.byteLength).toBe(0);
  });

  it('accepts the digest with its colon percent-encoded (%3A)', async () => {
    const name = repo('encoded');
    const data = randomBlob(100);
    const digest = sha256(data);
    await pushBlob(base, name, data);
    const g = await request(base, `/v2/${name}/blobs/${digest.replace(':', '%3A')}`);
    expectStatus(g, 200);
    expect(g.header('docker-content-digest')).toBe(digest);
    expect(Buffer.compare(g.body, data)).toBe(0);
  });

  describe('Range reads of a 100-byte blob', () => {
    const data = randomBlob(100);
    const digest = sha256(data);
    let name: string;

    beforeAll(async () => {
      name = repo('range');
      await pushBlob(base, name, data);
    });

    it.each([
      ['bytes=0-9', 0, 9],
      ['bytes=10-', 10, 99],
      ['bytes=-5', 95, 99],
      ['bytes=42-42', 42, 42],
      ['bytes=90-1000', 90, 99],
      ['bytes=0-99', 0, 99],
      // RFC 9110 §14.1: the range unit is case-insensitive.
      ['BYTES=0-9', 0, 9],
    ] as const)('%s → 206 with Content-Range and exactly those bytes', async (range, first, last) => {
      const r = await request(base, `/v2/${name}/blobs/${digest}`, { headers: { range } });
      expectStatus(r, 206, range);
      expect(r.header('content-range')).toBe(`bytes ${first}-${last}/100`);
      expect(r.header('content-length')).toBe(String(last - first + 1));
      expect(r.header('docker-content-digest')).toBe(digest);
      expect(r.body.toString('hex')).toBe(data.subarray(first, last + 1).toString('hex'));
    });

    // RFC 9110 §13.1.5: the range only if the validator names this blob, else the whole blob.
    // The only validator a blob has is its ETag, the digest (no Last-Modified is sent).
    it.each([
      ['its own ETag', (): string => `"${digest}"`, 206],
      ['another ETag', (): string => '"sha256:0000000000000000000000000000000000000000000000000000000000000000"', 200],
      ['a weak ETag (If-Range compares strongly)', (): string => `W/"${digest}"`, 200],
      ['a date', (): string => 'Thu, 03 Dec 2026 09:00:00 GMT', 200],
    ] as const)('Range with an If-Range of %s → %i', async (_label, validator, status) => {
      const r = await request(base, `/v2/${name}/blobs/${digest}`, { headers: { range: 'bytes=0-9', 'if-range': validator() } });
      expectStatus(r, status, 'If-Range');
      expect(r.body.equals(status === 206 ? data.subarray(0, 10) : data)).toBe(true);
    });

    // Unsatisfiable (RFC 9110 §14.1.2), or invalid (last before first), which §14.2 lets a server reject.
    it.each(['bytes=100-', 'bytes=200-300', 'bytes=-0', 'bytes=5-1'])('%s → 416 with Content-Range: bytes */100', async (range) => {
      const r = await request(base, `/v2/${name}/blobs/${digest}`, { headers: { range } });
      expectError(r, 416, undefined);
      expect(r.header('content-range')).toBe('bytes */100');
    });

    // RFC 9110 §14.2: a server MAY ignore Range, MUST ignore a range unit it does not know, and
    // MAY ignore a ranges-specifier it finds invalid. Hoist serves one range of bytes and
    // ignores everything else: several ranges (no multipart/byteranges), malformed specs,
    // positions of more than 15 digits, other units. Ignored means the whole blob, with 200.
    it.each([
      'bytes=0-9,20-29',
      'bytes=0-0,-1',
      'bytes=0-9, 20-29',
      'bytes=a-b',
      'bytes=5',
      'bytes=-',
      'bytes=--5',
      'bytes 0-9',
      'bytes=0-99999999999999999999',
      'items=0-9',
      '',
    ])('%j is ignored: 200 with the whole blob', async (range) => {
      const r = await request(base, `/v2/${name}/blobs/${digest}`, { headers: { range } });
      expectStatus(r, 200, `Range: ${range}`);
      expect(r.header('content-range')).toBeUndefined();
      expect(r.header('content-length')).toBe('100');
      expect(r.header('docker-content-digest')).toBe(digest);
      expect(r.body.equals(data)).toBe(true);
    });
  });

  describe('Range reads of a 0-byte blob', () => {
    const digest = sha256(Buffer.alloc(0));
    let name: string;

    beforeAll(async () => {
      name = repo('range-empty');
      await pushBlob(base, name, Buffer.alloc(0));
    });

    it('GET without a Range → 200, no bytes', async () => {
      const r = await request(base, `/v2/${name}/blobs/${digest}`);
      expectStatus(r, 200);
      expect(r.header('content-length')).toBe('0');
      expect(r.header('docker-content-digest')).toBe(digest);
      expect(r.body.byteLength).toBe(0);
    });

    // RFC 9110 §14.1.2: on a 0-byte representation the only satisfiable range is a suffix
    // (bytes=-N, N > 0), and it selects the whole representation, which no 206 can carry
    // (a Content-Range has no way to say "no bytes"): the whole, empty, blob with 200.
    it.each(['bytes=-1', 'bytes=-500'])('%s → 200 with the whole (empty) blob and no Content-Range', async (range) => {
      const r = await request(base, `/v2/${name}/blobs/${digest}`, { headers: { range } });
      expectStatus(r, 200, range);
      expect(r.header('content-range')).toBeUndefined();
      expect(r.header('content-length')).toBe('0');
      expect(r.body.byteLength).toBe(0);
    });

    // Any first-pos is at or past the end of nothing; a zero-length suffix selects nothing.
    it.each(['bytes=0-', 'bytes=0-0', 'bytes=0-99', 'bytes=-0'])('%s → 416 with Content-Range: bytes */0', async (range) => {
      const r = await request(base, `/v2/${name}/blobs/${digest}`, { headers: { range } });
      expectError(r, 416, 'RANGE_INVALID');
      expect(r.header('content-range')).toBe('bytes */0');
    });

    // RFC 9110 §14.2: Range is defined for GET only; on HEAD a server MUST ignore it.
    it('HEAD with a Range → 200, Content-Length 0', async () => {
      const r = await request(base, `/v2/${name}/blobs/${digest}`, { method: 'HEAD', headers: { range: 'bytes=0-0' } });
      expectStatus(r, 200);
      expect(r.header('content-length')).toBe('0');
      expect(r.header('docker-content-digest')).toBe(digest);
    });
  });

  it('a Range across the server\'s internal buffer boundary returns the exact bytes', async () => {
    const name = repo('range-large');
    const data = randomBlob(9 * MiB + 3);
    const digest = sha256(data);
    await pushBlob(base, name, data);
    const first = 4 * MiB - 1000;
    const last = 8 * MiB + 1000;
    const r = await request(base, `/v2/${name}/blobs/${digest}`, { headers: { range: `bytes=${first}-${last}` } });
    expectStatus(r, 206);
    expect(r.header('content-range')).toBe(`bytes ${first}-${last}/${data.byteLength}`);
    expect(r.body.byteLength).toBe(last - first + 1);
    expect(sha256(r.body)).toBe(sha256(data.subarray(first, last + 1)));
  });

  it('conditional GET and HEAD: If-None-Match naming the ETag → 304 without the bytes; If-Match naming another → 412 (found by probing: both answered 200)', async () => {
    const name = repo('conditional');
    const data = randomBlob(1000);
    const digest = sha256(data);
    await pushBlob(base, name, data);
    const other = sha256(randomBlob(8));
    for (const method of ['GET', 'HEAD'] as const) {
      for (const inm of [`"${digest}"`, `W/"${digest}"`, `"${other}", "${digest}"`, '*']) {
        const r = await request(base, `/v2/${name}/blobs/${digest}`, { method, headers: { 'if-none-match': inm } });
        expectStatus(r, 304, `${method} If-None-Match: ${inm}`);
        expect(r.header('etag')).toBe(`"${digest}"`);
        expect(r.body.byteLength).toBe(0);
      }
      const changed = await request(base, `/v2/${name}/blobs/${digest}`, { method, headers: { 'if-none-match': `"${other}"` } });
      expectStatus(changed, 200, `${method} If-None-Match of another`);
      if (method === 'GET') expect(Buffer.compare(changed.body, data)).toBe(0);
      for (const im of [`"${other}"`, `W/"${digest}"`]) {
        expectError(await request(base, `/v2/${name}/blobs/${digest}`, { method, headers: { 'if-match': im } }), 412, 'PRECONDITION_FAILED', method);
      }
      for (const im of [`"${digest}"`, '*']) {
        expectStatus(await request(base, `/v2/${name}/blobs/${digest}`, { method, headers: { 'if-match': im } }), 200, `${method} If-Match: ${im}`);
      }
    }
    // A condition does not hide that the blob is unknown.
    expectError(await request(base, `/v2/${name}/blobs/${other}`, { headers: { 'if-none-match': '*' } }), 404, 'BLOB_UNKNOWN');
  });

  it('an unknown blob is 404 BLOB_UNKNOWN for GET, HEAD and DELETE', async () => {
    const name = repo('unknown');
    await pushBlob(base, name, randomBlob(10));
    const digest = sha256(randomBlob(16));
    expectError(await request(base, `/v2/${name}/blobs/${digest}`), 404, 'BLOB_UNKNOWN');
    const h = await request(base, `/v2/${name}/blobs/${digest}`, { method: 'HEAD' });
    expectError(h, 404, undefined, 'HEAD');
    expect(h.body.byteLength).toBe(0);
    expectError(await request(base, `/v2/${name}/blobs/${digest}`, { method: 'DELETE' }), 404, 'BLOB_UNKNOWN');
  });

  it('DELETE → 202, then GET and HEAD → 404 BLOB_UNKNOWN; a second DELETE → 404', async () => {
    const name = repo('delete');
    const data = randomBlob(5000);
    const digest = sha256(data);
    await pushBlob(base, name, data);
    const d = await request(base, `/v2/${name}/blobs/${digest}`, { method: 'DELETE' });
    expectStatus(d, 202);
    expectError(await request(base, `/v2/${name}/blobs/${digest}`), 404, 'BLOB_UNKNOWN');
    expectError(await request(base, `/v2/${name}/blobs/${digest}`, { method: 'HEAD' }), 404, undefined, 'HEAD');
    expectError(await request(base, `/v2/${name}/blobs/${digest}`, { method: 'DELETE' }), 404, 'BLOB_UNKNOWN');
  });

  it('deleting a blob from one repository leaves it in another that has it', async () => {
    const a = repo('del-a');
    const b = repo('del-b');
    const data = randomBlob(3000);
    const digest = sha256(data);
    await pushBlob(base, a, data);
    await pushBlob(base, b, data);
    expectStatus(await request(base, `/v2/${a}/blobs/${digest}`, { method: 'DELETE' }), 202);
    expectError(await request(base, `/v2/${a}/blobs/${digest}`), 404, 'BLOB_UNKNOWN');
    const g = await request(base, `/v2/${b}/blobs/${digest}`);
    expectStatus(g, 200);
    expect(Buffer.compare(g.body, data)).toBe(0);
  });

  it('a blob pushed to repository a is not visible from repository b until mounted there', async () => {
    const a = repo('scope-a');
    const b = repo('scope-b');
    const data = randomBlob(4096);
    const digest = sha256(data);
    await pushBlob(base, a, data);
    await pushBlob(base, b, randomBlob(8)); // b exists, it just does not have this blob
    expectError(await request(base, `/v2/${b}/blobs/${digest}`), 404, 'BLOB_UNKNOWN');
    expectError(await request(base, `/v2/${b}/blobs/${digest}`, { method: 'HEAD' }), 404, undefined, 'HEAD');
    expectError(await request(base, `/v2/${b}/blobs/${digest}`, { headers: { range: 'bytes=0-9' } }), 404, 'BLOB_UNKNOWN');
    // Nor from a repository that does not exist at all.
    expectError(await request(base, `/v2/${repo('scope-none')}/blobs/${digest}`), 404, 'BLOB_UNKNOWN');

    const m = await request(base, `/v2/${b}/blobs/uploads/?mount=${digest}&from=${a}`, { method: 'POST' });
    expectStatus(m, 201);
    const g = await request(base, `/v2/${b}/blobs/${digest}`);
    expectStatus(g, 200);
    expect(Buffer.compare(g.body, data)).toBe(0);
  });

  it('the empty layer (32 bytes) resolves in any repository without a push', async () => {
    const name = repo('never-pushed-layer');
    const g = await request(base, `/v2/${name}/blobs/${EMPTY_LAYER_DIGEST}`);
    expectStatus(g, 200);
    expect(g.header('docker-content-digest')).toBe(EMPTY_LAYER_DIGEST);
    expect(g.header('content-length')).toBe('32');
    expect(g.body.byteLength).toBe(32);
    expect(sha256(g.body)).toBe(EMPTY_LAYER_DIGEST);
    // It really is an empty tar: two 512-byte zero blocks, gzipped.
    expect(gunzipSync(g.body).equals(Buffer.alloc(1024))).toBe(true);

    const h = await request(base, `/v2/${name}/blobs/${EMPTY_LAYER_DIGEST}`, { method: 'HEAD' });
    expectStatus(h, 200);
    expect(h.header('content-length')).toBe('32');
    expect(h.header('docker-content-digest')).toBe(EMPTY_LAYER_DIGEST);
  });

  it('the empty JSON blob {} resolves in any repository without a push', async () => {
    expect(sha256('{}')).toBe(EMPTY_JSON_DIGEST);
    const name = repo('never-pushed-json');
    const g = await request(base, `/v2/${name}/blobs/${EMPTY_JSON_DIGEST}`);
    expectStatus(g, 200);
    expect(g.header('docker-content-digest')).toBe(EMPTY_JSON_DIGEST);
    expect(g.header('content-length')).toBe('2');
    expect(g.text()).toBe('{}');

    const h = await request(base, `/v2/${name}/blobs/${EMPTY_JSON_DIGEST}`, { method: 'HEAD' });
    expectStatus(h, 200);
    expect(h.header('content-length')).toBe('2');
  });

  it('pushing a well-known blob explicitly also works and serves the same bytes', async () => {
    const name = repo('push-known');
    const pushed = await pushBlob(base, name, '{}');
    expect(pushed.digest).toBe(EMPTY_JSON_DIGEST);
    const g = await request(base, `/v2/${name}/blobs/${EMPTY_JSON_DIGEST}`);
    expectStatus(g, 200);
    expect(g.text()).toBe('{}');
  });

  // distribution-spec conformance: a 202 for a blob DELETE means the next HEAD is a 404. A
  // well-known blob exists in every repository whatever is deleted, so its DELETE is
  // refused as unsupported (the spec's 405), never answered 202 and then served.
  it('a DELETE of a well-known blob is 405 UNSUPPORTED, pushed or not, and it still resolves', async () => {
    const name = repo('delete-known');
    await pushBlob(base, name, '{}');
    for (const digest of [EMPTY_JSON_DIGEST, EMPTY_LAYER_DIGEST]) {
      expectError(await request(base, `/v2/${name}/blobs/${digest}`, { method: 'DELETE' }), 405, 'UNSUPPORTED');
      expectStatus(await request(base, `/v2/${name}/blobs/${digest}`, { method: 'HEAD' }), 200);
    }
    // An ordinary blob: 202, then gone.
    const other = await pushBlob(base, name, randomBlob(1000));
    expectStatus(await request(base, `/v2/${name}/blobs/${other.digest}`, { method: 'DELETE' }), 202);
    expectError(await request(base, `/v2/${name}/blobs/${other.digest}`, { method: 'HEAD' }), 404, undefined, 'HEAD');
  });
});
