import { randomBytes, randomUUID } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectError, expectStatus, listTree, request, startUpload, tempDir, withQuery, type Reply } from '../helpers/http.js';
import { MEDIA_TYPES, makeImage, pushBlob, pushImage, randomBlob, sha256 } from '../helpers/oci.js';
import { keyMap, s3Env, s3EnvOrFail, s3ServerEnv, useTestBucket } from '../helpers/s3-http.js';
import { REPO_ROOT, startServer, type TestServer } from '../helpers/server.js';

/**
 * The API version check, and the error side of the protocol (distribution-spec v1.1 "Error
 * Codes"): every failure carries the `{"errors":[{"code","message",...}]}` envelope with the
 * status its code implies; invalid names and digests are refused before anything touches
 * storage; and no request, however crafted, makes the fs driver write outside its root, or
 * the S3 driver write outside its prefix. The envelope checks run on memory storage with both
 * front ends and on S3 (radosgw) with the node front end.
 */

const FRONTENDS = ['uws', 'node'] as const;
const GOOD_HEX = 'a'.repeat(64);

/** Names the reference grammar refuses (distribution-spec "Definitions"; 255 characters at most). */
const INVALID_NAMES: readonly (readonly [string, string])[] = [
  ['upper case', 'Library/Busybox'],
  ['a .. component', 'a/../b'],
  ['a leading ..', '../a'],
  ['an encoded .. (%2e%2e)', 'a/%2e%2e/b'],
  ['an encoded .. alone', '%2e%2e'],
  ['an encoded slash (%2f)', 'a%2fb'],
  ['an empty component (a//b)', 'a//b'],
  ['a leading slash', '/a'],
  ['a trailing separator', 'a-'],
  ['a leading separator', '_a'],
  ['a space (encoded)', 'a%20b'],
  ['256 characters', `${'a'.repeat(127)}/${'b'.repeat(128)}`],
  ['300 characters in one component', 'c'.repeat(300)],
];

/** Digests this registry must refuse: not `algorithm:hex` with a known algorithm and exact lower-case hex. */
const INVALID_DIGESTS: readonly (readonly [string, string])[] = [
  ['too short', 'sha256:abc'],
  ['an unsupported algorithm (md5)', 'md5:d41d8cd98f00b204e9800998ecf8427e'],
  ['upper-case hex', `sha256:${'A'.repeat(64)}`],
  ['63 hex digits', `sha256:${'a'.repeat(63)}`],
  ['65 hex digits', `sha256:${'a'.repeat(65)}`],
  ['non-hex digits', `sha256:${'g'.repeat(64)}`],
  ['an empty encoded part', 'sha256:'],
  ['no algorithm', `:${GOOD_HEX}`],
];

function manifestBody(): Buffer {
  return makeImage({ layerSizesBytes: [10] }).manifestBytes;
}

const combos: Array<{ frontend: (typeof FRONTENDS)[number]; storage: 'memory' | 's3' }> = [
  ...FRONTENDS.map((frontend) => ({ frontend, storage: 'memory' as const })),
  { frontend: 'node', storage: 's3' },
];

describe.each(combos)('errors ($frontend front end, $storage storage)', ({ frontend, storage }) => {
  let server: TestServer;
  let base: string;
  if (storage === 's3' && !s3EnvOrFail()) return;
  const bucket = storage === 's3' ? useTestBucket(s3Env!, 'errors') : undefined;

  beforeAll(async () => {
    server = bucket
      ? await startServer({ storage: bucket.url('errors'), frontend, env: s3ServerEnv() })
      : await startServer({ storage: 'memory:', frontend });
    base = server.url;
  });

  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
  });

  it('GET /v2/ → 200 with Docker-Distribution-API-Version: registry/2.0', async () => {
    const r = await request(base, '/v2/');
    expectStatus(r, 200);
    expect(r.header('docker-distribution-api-version')).toBe('registry/2.0');
    const h = await request(base, '/v2/', { method: 'HEAD' });
    expectStatus(h, 200);
    expect(h.header('docker-distribution-api-version')).toBe('registry/2.0');
    expect(h.body.byteLength).toBe(0);
    // Without the trailing slash too: some clients probe /v2.
    const noSlash = await request(base, '/v2');
    expectStatus(noSlash, 200);
    expect(noSlash.header('docker-distribution-api-version')).toBe('registry/2.0');
  });

  describe.each(INVALID_NAMES)('a name with %s → 400 NAME_INVALID', (_label, name) => {
    it('on every endpoint that takes a name', async () => {
      const up = randomUUID();
      const cases: [string, string, Buffer | undefined][] = [
        ['GET', `/v2/${name}/tags/list`, undefined],
        ['GET', `/v2/${name}/manifests/latest`, undefined],
        ['HEAD', `/v2/${name}/manifests/latest`, undefined],
        ['PUT', `/v2/${name}/manifests/latest`, manifestBody()],
        ['DELETE', `/v2/${name}/manifests/sha256:${GOOD_HEX}`, undefined],
        ['GET', `/v2/${name}/blobs/sha256:${GOOD_HEX}`, undefined],
        ['HEAD', `/v2/${name}/blobs/sha256:${GOOD_HEX}`, undefined],
        ['DELETE', `/v2/${name}/blobs/sha256:${GOOD_HEX}`, undefined],
        ['POST', `/v2/${name}/blobs/uploads/`, undefined],
        ['POST', `/v2/${name}/blobs/uploads/?digest=${sha256('x')}`, Buffer.from('x')],
        ['GET', `/v2/${name}/blobs/uploads/${up}`, undefined],
        ['PATCH', `/v2/${name}/blobs/uploads/${up}`, Buffer.from('hello')],
        ['PUT', `/v2/${name}/blobs/uploads/${up}?digest=${sha256('x')}`, undefined],
        ['DELETE', `/v2/${name}/blobs/uploads/${up}`, undefined],
      ];
      for (const [method, path, body] of cases) {
        const r = await request(base, path, { method, ...(body ? { body } : {}) });
        expect(r.status, `${method} ${path} → ${r.status} ${r.text().slice(0, 200)}`).toBe(400);
        expectError(r, 400, 'NAME_INVALID', method);
      }
    });
  });

  it('a name of exactly 255 characters is valid (404 NAME_UNKNOWN, not NAME_INVALID)', async () => {
    const name = `${'a'.repeat(127)}/${'b'.repeat(127)}`;
    expect(name.length).toBe(255);
    expectError(await request(base, `/v2/${name}/tags/list`), 404, 'NAME_UNKNOWN');
    const data = randomBlob(10);
    await pushBlob(base, name, data);
    expectStatus(await request(base, `/v2/${name}/blobs/${sha256(data)}`), 200);
  });

  describe.each(INVALID_DIGESTS)('a digest that is %s → 400 DIGEST_INVALID', (_label, digest) => {
    it('on blob GET, HEAD and DELETE, upload PUT, monolithic POST, and manifest PUT and DELETE; manifest GET and HEAD → 404 MANIFEST_UNKNOWN', async () => {
      const name = 'errors/digests';
      await pushBlob(base, name, randomBlob(4)); // the repository exists
      const up = await startUpload(base, name);
      const isManifestDigest = digest.includes(':'); // without ':' a manifest reference is a tag
      const cases: [string, string, Buffer | undefined][] = [
        ['GET', `/v2/${name}/blobs/${digest}`, undefined],
        ['HEAD', `/v2/${name}/blobs/${digest}`, undefined],
        ['DELETE', `/v2/${name}/blobs/${digest}`, undefined],
        ['PUT', withQuery(up.location, 'digest', digest), Buffer.from('abc')],
        ['POST', `/v2/${name}/blobs/uploads/?digest=${encodeURIComponent(digest)}`, Buffer.from('abc')],
      ];
      if (isManifestDigest) {
        // A read by a reference no manifest can have finds nothing (issue 12; distribution-spec
        // conformance): 404 MANIFEST_UNKNOWN. Writes still refuse it.
        for (const method of ['GET', 'HEAD']) {
          expectError(await request(base, `/v2/${name}/manifests/${digest}`, { method }), 404, 'MANIFEST_UNKNOWN', method);
        }
        cases.push(
          ['PUT', `/v2/${name}/manifests/${digest}`, manifestBody()],
          ['DELETE', `/v2/${name}/manifests/${digest}`, undefined],
        );
      }
      for (const [method, path, body] of cases) {
        const r = await request(base, path, {
          method,
          ...(body ? { body } : {}),
          ...(path.includes('/manifests/') ? { headers: { 'content-type': MEDIA_TYPES.imageManifest } } : {}),
        });
        expect(r.status, `${method} ${path} → ${r.status} ${r.text().slice(0, 200)}`).toBe(400);
        expectError(r, 400, 'DIGEST_INVALID', method);
      }
    });
  });

  it('PUT to finish an upload without ?digest= fails with 400 DIGEST_INVALID and keeps the upload', async () => {
    const name = 'errors/no-digest';
    const up = await startUpload(base, name);
    const data = randomBlob(100);
    expectStatus(await request(base, up.location, { method: 'PATCH', body: data }), 202);
    expectError(await request(base, up.location, { method: 'PUT' }), 400, 'DIGEST_INVALID', 'PUT');
    const s = await request(base, up.location);
    expectStatus(s, 204);
    expect(s.header('range')).toBe('0-99');
  });

  it('an unknown upload id → 404 BLOB_UPLOAD_UNKNOWN for GET, PATCH, PUT and DELETE', async () => {
    const name = 'errors/uploads';
    await pushBlob(base, name, randomBlob(4));
    for (const id of [randomUUID(), 'not-an-upload', '0', randomBytes(40).toString('hex')]) {
      const path = `/v2/${name}/blobs/uploads/${id}`;
      expectError(await request(base, path), 404, 'BLOB_UPLOAD_UNKNOWN');
      expectError(await request(base, path, { method: 'PATCH', body: Buffer.from('data') }), 404, 'BLOB_UPLOAD_UNKNOWN', 'PATCH');
      expectError(await request(base, `${path}?digest=${sha256('data')}`, { method: 'PUT', body: Buffer.from('data') }), 404, 'BLOB_UPLOAD_UNKNOWN', 'PUT');
      expectError(await request(base, path, { method: 'DELETE' }), 404, 'BLOB_UPLOAD_UNKNOWN', 'DELETE');
    }
  });

  it('an upload id is bound to its repository: from another repository it is 404 BLOB_UPLOAD_UNKNOWN', async () => {
    const up = await startUpload(base, 'errors/owner');
    const stolen = up.location.replace('/v2/errors/owner/', '/v2/errors/thief/');
    expect(stolen).not.toBe(up.location);
    expectError(await request(base, stolen), 404, 'BLOB_UPLOAD_UNKNOWN');
    expectError(await request(base, stolen, { method: 'PATCH', body: Buffer.from('x') }), 404, 'BLOB_UPLOAD_UNKNOWN', 'PATCH');
    expectError(await request(base, withQuery(stolen, 'digest', sha256('')), { method: 'PUT' }), 404, 'BLOB_UPLOAD_UNKNOWN', 'PUT');
    expectStatus(await request(base, up.location), 204);
  });

  const UNSUPPORTED: readonly (readonly [string, string])[] = [
    ['PATCH', '/v2/'],
    ['DELETE', '/v2/'],
    ['POST', '/v2/_catalog'],
    ['DELETE', '/v2/_catalog'],
    ['POST', '/v2/errors/m/tags/list'],
    ['POST', '/v2/errors/m/manifests/latest'],
    ['PATCH', '/v2/errors/m/manifests/latest'],
    ['PUT', `/v2/errors/m/blobs/sha256:${GOOD_HEX}`],
    ['POST', `/v2/errors/m/blobs/sha256:${GOOD_HEX}`],
    ['PATCH', `/v2/errors/m/blobs/sha256:${GOOD_HEX}`],
    ['GET', '/v2/errors/m/blobs/uploads/'],
    ['PUT', '/v2/errors/m/blobs/uploads/'],
    ['POST', `/v2/errors/m/blobs/uploads/${randomUUID()}`],
  ];

  it.each(UNSUPPORTED)('%s %s → 405 UNSUPPORTED', async (method, path) => {
    const r = await request(base, path, { method, ...(method === 'GET' ? {} : { body: Buffer.from('{}') }) });
    expectError(r, 405, 'UNSUPPORTED', method);
  });

  it('a 405 names the allowed methods in Allow (RFC 9110 §15.5.6)', async () => {
    const cases: [string, string, string[]][] = [
      ['DELETE', '/v2/_catalog', ['GET']],
      ['POST', '/v2/errors/m/manifests/latest', ['GET', 'HEAD', 'PUT', 'DELETE']],
      ['PUT', `/v2/errors/m/blobs/sha256:${GOOD_HEX}`, ['GET', 'HEAD', 'DELETE']],
    ];
    for (const [method, path, allowed] of cases) {
      const r = await request(base, path, { method });
      expect(r.status).toBe(405);
      const allow = (r.header('allow') ?? '').split(',').map((m) => m.trim()).filter(Boolean);
      expect(allow.sort(), `${method} ${path}: Allow ${JSON.stringify(r.header('allow'))}`).toEqual([...allowed].sort());
    }
  });

  it('unknown paths → 404 with the error envelope', async () => {
    for (const path of ['/v2/errors/m/nothing-here', '/v3/', '/', '/v2/errors/m/blobs', '/v2/_catalog/x']) {
      expectError(await request(base, path), 404, undefined);
    }
  });

  it('unknown blob, manifest and repository → 404 BLOB_UNKNOWN, MANIFEST_UNKNOWN, NAME_UNKNOWN', async () => {
    const name = 'errors/unknowns';
    await pushImage(base, name, 'v1', makeImage({ layerSizesBytes: [10] }));
    expectError(await request(base, `/v2/${name}/blobs/${sha256('never pushed')}`), 404, 'BLOB_UNKNOWN');
    expectError(await request(base, `/v2/${name}/manifests/never`), 404, 'MANIFEST_UNKNOWN');
    expectError(await request(base, `/v2/${name}/manifests/${sha256('never pushed')}`), 404, 'MANIFEST_UNKNOWN');
    expectError(await request(base, '/v2/errors/nobody/tags/list'), 404, 'NAME_UNKNOWN');
  });

  it('an invalid tag → 400 TAG_INVALID with the envelope', async () => {
    for (const tag of ['-leading-dash', '.dot', 't'.repeat(129)]) {
      const r = await request(base, `/v2/errors/tags/manifests/${tag}`, {
        method: 'PUT',
        headers: { 'content-type': MEDIA_TYPES.imageManifest },
        body: manifestBody(),
      });
      expectError(r, 400, 'TAG_INVALID', 'PUT');
    }
  });

  it('an invalid pagination number → 400 with the envelope', async () => {
    const name = 'errors/pages';
    await pushImage(base, name, 'v1', makeImage({ layerSizesBytes: [10] }));
    for (const n of ['-1', 'abc', '1.5']) {
      expectError(await request(base, `/v2/${name}/tags/list?n=${n}`), 400, undefined);
      expectError(await request(base, `/v2/_catalog?n=${n}`), 400, undefined);
    }
  });

  it('HEAD errors carry the status and no body', async () => {
    for (const path of [`/v2/errors/nobody/blobs/${sha256('x')}`, '/v2/Bad/manifests/latest', `/v2/errors/m/blobs/sha256:abc`]) {
      const r = await request(base, path, { method: 'HEAD' });
      expect(r.status).toBeGreaterThanOrEqual(400);
      expect(r.body.byteLength).toBe(0);
    }
  });
});

/**
 * Requests whose targets try to escape the storage root or the registry's layout: encoded and
 * plain `..`, encoded slashes, backslashes, NUL, hostile digests, tags, upload ids, mount
 * sources and pagination markers. Every one carries `marker`, so anything it created is easy to
 * find. `legit` is a repository with a blob, the image `image` tagged v1, and a live upload.
 */
function hostileRequests(legit: string, blobDigest: string, image: ReturnType<typeof makeImage>, liveLocation: string, marker: string): [string, string, Buffer | undefined][] {
  const m = marker;
  const body = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.imageManifest, config: image.config.descriptor, layers: [] }));
  return [
    ['POST', `/v2/../../${m}/blobs/uploads/`, undefined],
    ['POST', `/v2/../../../${m}/blobs/uploads/?digest=${sha256('x')}`, Buffer.from('x')],
    ['POST', `/v2/%2e%2e/%2e%2e/${m}/blobs/uploads/`, undefined],
    ['POST', `/v2/%2E%2E/%2E%2E/%2E%2E/${m}/blobs/uploads/`, undefined],
    ['POST', `/v2/..%2f..%2f${m}/blobs/uploads/`, undefined],
    ['POST', `/v2/a/b/../../../${m}/blobs/uploads/`, undefined],
    ['POST', `/v2/.%2e/${m}/blobs/uploads/`, undefined],
    ['POST', `/v2/%2F${m}/blobs/uploads/`, undefined],
    ['POST', `/v2/a\\..\\..\\${m}/blobs/uploads/`, undefined],
    ['POST', `/v2/a%00b/blobs/uploads/`, undefined],
    ['PUT', `/v2/../../${m}/manifests/v1`, body],
    ['PUT', `/v2/${legit}/manifests/..%2f..%2f..%2f${m}`, body],
    ['PUT', `/v2/${legit}/manifests/%2e%2e`, body],
    ['PUT', `/v2/${legit}/manifests/..`, body],
    ['PUT', `/v2/${legit}/manifests/sha256:..%2f..%2f..%2f${m}`, body],
    ['PUT', `/v2/${legit}/manifests/sha256:${'0'.repeat(60)}%2f..`, body],
    ['GET', `/v2/${legit}/manifests/..%2f..%2f_uploads`, undefined],
    ['GET', `/v2/${legit}/blobs/sha256:..%2f..%2f..%2f${m}`, undefined],
    ['DELETE', `/v2/${legit}/blobs/sha256:..%2f..%2f..%2f${m}`, undefined],
    ['DELETE', `/v2/${legit}/manifests/..%2f..%2f_layers`, undefined],
    ['PATCH', `/v2/${legit}/blobs/uploads/..%2f..%2f..%2f..%2f${m}`, Buffer.from('evil')],
    ['PATCH', `/v2/${legit}/blobs/uploads/%2e%2e%2f%2e%2e%2f${m}`, Buffer.from('evil')],
    ['PUT', `/v2/${legit}/blobs/uploads/..%2f..%2f${m}?digest=${sha256('evil')}`, Buffer.from('evil')],
    ['GET', `/v2/${legit}/blobs/uploads/..%2f..%2f..%2f${m}`, undefined],
    ['DELETE', `/v2/${legit}/blobs/uploads/..%2f..%2f_layers`, undefined],
    ['DELETE', `/v2/${legit}/blobs/uploads/..`, undefined],
    ['PUT', `${liveLocation.split('?')[0]}?digest=sha256:..%2f..%2f${m}`, Buffer.from('evil')],
    ['POST', `/v2/${legit}/blobs/uploads/?digest=sha256:..%2f..%2f${m}`, Buffer.from('evil')],
    ['POST', `/v2/${legit}/blobs/uploads/?mount=sha256:..%2f..%2f${m}&from=..%2f..%2f${m}`, undefined],
    ['POST', `/v2/${legit}/blobs/uploads/?mount=${blobDigest}&from=../../${m}`, undefined],
    ['GET', `/v2/${legit}/tags/list?last=../../../${m}&n=1`, undefined],
    ['GET', `/v2/_catalog?last=../../../${m}&n=1`, undefined],
  ];
}

/**
 * Hostile request targets against the fs driver: nothing may be created outside the storage
 * root, and nothing inside it but the registry's own layout. Each request carries a marker
 * name; afterwards no file or directory with that marker may exist anywhere the traversal
 * could have reached.
 */
describe.each(FRONTENDS)('path traversal (%s front end, fs storage)', (frontend) => {
  let server: TestServer;
  let base: string;
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let storage: string;
  const marker = `hoist-evil-${randomBytes(4).toString('hex')}`;

  beforeAll(async () => {
    dir = await tempDir();
    storage = `${dir.path}/storage`;
    server = await startServer({ storage: `fs:${storage}`, frontend });
    base = server.url;
  });

  afterAll(async () => {
    try {
      if (server) expect(await server.stop()).toBe(0);
    } finally {
      await dir.cleanup();
    }
  });

  it('creates nothing outside the storage root, and nothing inside it but the registry layout', async () => {
    // A legitimate repository, so hostile references have something real next to them.
    const legit = 'legit/repo';
    const blob = await pushBlob(base, legit, randomBlob(1000));
    const image = makeImage({ layerSizesBytes: [10] });
    await pushImage(base, legit, 'v1', image);
    const live = await startUpload(base, legit);
    const before = await listTree(storage);

    const hostile = hostileRequests(legit, blob.digest, image, live.location, marker);
    const replies: [string, Reply][] = [];
    for (const [method, path, reqBody] of hostile) {
      const r = await request(base, path, { method, ...(reqBody ? { body: reqBody } : {}) });
      replies.push([`${method} ${path}`, r]);
    }
    // None may fail with a server error (a 5xx hints at a path the driver refused too late).
    const serverErrors = replies.filter(([, r]) => r.status >= 500).map(([what, r]) => `${what} → ${r.status} ${r.text().slice(0, 200)}`);
    expect(serverErrors).toEqual([]);
    // Nothing hostile was accepted as a write.
    const writes = replies.filter(([what, r]) => r.status >= 200 && r.status < 300 && !what.startsWith('GET ') && !what.includes('?mount=')).map(([what, r]) => `${what} → ${r.status}`);
    expect(writes).toEqual([]);

    // Outside the root: the temp dir holds only the storage directory; the marker is nowhere.
    expect(await readdir(dir.path)).toEqual(['storage']);
    for (const place of [dir.path, tmpdir(), '/', REPO_ROOT, `${storage}/repositories`, `${storage}/blobs`]) {
      const names = await readdir(place).catch(() => [] as string[]);
      expect(names.filter((n) => n.includes(marker)), place).toEqual([]);
    }
    // Inside the root: nothing new except, at most, upload sessions a mount fallback started in legit/repo.
    const after = await listTree(storage);
    const added = after.filter((p) => !before.includes(p));
    const unexpected = added.filter((p) => !/^repositories\/legit\/repo\/_uploads\/[0-9a-f-]{36}$/.test(p));
    expect(unexpected).toEqual([]);
    expect(after.filter((p) => p.includes(marker) || p.split('/').includes('..'))).toEqual([]);
    // And the legitimate content is intact.
    expectStatus(await request(base, `/v2/${legit}/manifests/v1`), 200);
    expectStatus(await request(base, `/v2/${legit}/blobs/${blob.digest}`), 200);
    expectStatus(await request(base, live.location), 204);
  });
});

/**
 * The same hostile targets against the S3 driver, with a two-level prefix: S3 keys are plain
 * strings, so a `..` that reached a key would not "escape" anything on the server, but it would
 * name a key outside the prefix to every tool that treats keys as paths, and could collide with
 * the registry's own records. Afterwards every key in the bucket is under the prefix, none
 * has a `..` segment or the marker, and the only new keys are upload sessions a mount fallback
 * may have started.
 */
describe('path traversal (node front end, s3 storage)', () => {
  if (!s3EnvOrFail()) return;
  const bucket = useTestBucket(s3Env!, 'traversal');
  const PREFIX = 'inner/deep';
  let server: TestServer;
  let base: string;
  const marker = `hoist-evil-${randomBytes(4).toString('hex')}`;

  beforeAll(async () => {
    server = await startServer({ storage: bucket.url(PREFIX), frontend: 'node', env: s3ServerEnv() });
    base = server.url;
  });

  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
  });

  it('writes no key outside the prefix, and none inside it but the registry layout', async () => {
    const legit = 'legit/repo';
    const blob = await pushBlob(base, legit, randomBlob(1000));
    const image = makeImage({ layerSizesBytes: [10] });
    await pushImage(base, legit, 'v1', image);
    const live = await startUpload(base, legit);
    const everything = () => keyMap(bucket.client, bucket.name, '');
    const before = await everything();

    const replies: [string, Reply][] = [];
    for (const [method, path, reqBody] of hostileRequests(legit, blob.digest, image, live.location, marker)) {
      const r = await request(base, path, { method, ...(reqBody ? { body: reqBody } : {}) });
      replies.push([`${method} ${path}`, r]);
    }
    const serverErrors = replies.filter(([, r]) => r.status >= 500).map(([what, r]) => `${what} → ${r.status} ${r.text().slice(0, 200)}`);
    expect(serverErrors).toEqual([]);
    const writes = replies.filter(([what, r]) => r.status >= 200 && r.status < 300 && !what.startsWith('GET ') && !what.includes('?mount=')).map(([what, r]) => `${what} → ${r.status}`);
    expect(writes).toEqual([]);

    const after = Object.keys(await everything());
    expect(after.filter((k) => !k.startsWith(`${PREFIX}/`)), 'keys outside the prefix').toEqual([]);
    expect(after.filter((k) => k.includes(marker) || k.split('/').includes('..') || k.split('/').includes('.')), 'hostile keys').toEqual([]);
    const added = after.filter((k) => !(k in before));
    const unexpected = added.filter((k) => !new RegExp(`^${PREFIX}/repositories/legit/repo/_uploads/[0-9a-f-]{36}$`).test(k));
    expect(unexpected).toEqual([]);
    expectStatus(await request(base, `/v2/${legit}/manifests/v1`), 200);
    expectStatus(await request(base, `/v2/${legit}/blobs/${blob.digest}`), 200);
    expectStatus(await request(base, live.location), 204);
  });
});
