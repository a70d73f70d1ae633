import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { beforeEach, describe, expect, it, vi } from 'vitest';
import { RegistryError } from '../../../src/errors.js';
import { BlobStore } from '../../../src/registry/blobs.js';
import { MEDIA_TYPES } from '../../../src/registry/manifest-schema.js';
import { ExpiryPolicy } from '../../../src/registry/expiry.js';
import { decodeRevision, lexical, ManifestStore, paginate } from '../../../src/registry/manifests.js';
import { paths } from '../../../src/registry/paths.js';
import { parseDigest, parseReference } from '../../../src/registry/reference.js';
import type { StorageDriver } from '../../../src/storage/driver.js';
import { createDriver } from '../../../src/storage/index.js';
import { MemoryDriver } from '../../../src/storage/memory.js';
import { CountingDriver } from '../../helpers/counting-driver.js';
import { tempDir } from '../../helpers/http.js';

const OCI_MANIFEST = MEDIA_TYPES.ociManifest;
const OCI_INDEX = MEDIA_TYPES.ociIndex;
const EMPTY_JSON = 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a';
const EMPTY_LAYER = 'sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4';
/** The empty config artifacts use (image-spec "Guidance for an Empty Descriptor"); never pushed. */
const EMPTY_CONFIG = { mediaType: MEDIA_TYPES.ociEmpty, digest: EMPTY_JSON, size: 2 };

const sha = (b: Uint8Array | string, algorithm = 'sha256') => `${algorithm}:${createHash(algorithm).update(b).digest('hex')}`;
const desc = (mediaType: string, bytes: Buffer) => ({ mediaType, digest: sha(bytes), size: bytes.length });

/** A valid OCI manifest that references nothing that needs pushing. */
function manifest(extra: Record<string, unknown> = {}): Buffer {
  return Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: EMPTY_CONFIG, layers: [], ...extra }));
}

function index(children: Buffer[], extra: Record<string, unknown> = {}): Buffer {
  return Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: children.map((c) => desc(OCI_MANIFEST, c)), ...extra }));
}

async function errorOf(p: Promise<unknown>): Promise<RegistryError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(RegistryError);
  return err as RegistryError;
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  return (await errorOf(p)).code;
}

describe('paginate', () => {
  const all = ['a', 'b', 'c', 'd', 'e'];

  it.each<[number | undefined, string | undefined, string[], string | undefined]>([
    [undefined, undefined, all, undefined],
    [2, undefined, ['a', 'b'], 'b'],
    [2, 'b', ['c', 'd'], 'd'],
    [2, 'd', ['e'], undefined],
    [5, undefined, all, undefined],
    [10, undefined, all, undefined],
    [undefined, 'c', ['d', 'e'], undefined],
    [2, 'bb', ['c', 'd'], 'd'],
    [2, 'e', [], undefined],
    [2, 'z', [], undefined],
    [0, undefined, [], undefined],
  ])('n=%s last=%s → %j next=%s', (n, last, items, next) => {
    const page = paginate(all, n, last);
    expect(page.items).toEqual(items);
    expect(page.next).toBe(next);
  });

  it('orders byte-wise, not by locale', () => {
    expect(['b', 'B', 'a', '_', '1'].sort(lexical)).toEqual(['1', 'B', '_', 'a', 'b']);
  });
});

describe('ManifestStore', () => {
  let driver: MemoryDriver;
  let blobs: BlobStore;
  let manifests: ManifestStore;

  beforeEach(() => {
    driver = new MemoryDriver();
    blobs = new BlobStore(driver);
    manifests = new ManifestStore({ driver, blobs, maxBytes: 8192 });
  });

  /** Puts a blob into `repo` the way a finished upload does. */
  async function pushBlob(repo: string, bytes: Buffer): Promise<void> {
    const dataPath = paths.blobData(randomUUID());
    await driver.putContent(dataPath, bytes);
    await blobs.adopt(repo, parseDigest(sha(bytes)), { dataPath, size: bytes.length });
  }

  /** An image config blob with these labels, pushed into `repo`; returns its descriptor. */
  async function pushConfig(repo: string, labels?: Record<string, unknown>): Promise<{ mediaType: string; digest: string; size: number }> {
    const bytes = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: labels ? { Labels: labels } : {}, rootfs: { type: 'layers', diff_ids: [] }, n: randomUUID() }));
    await pushBlob(repo, bytes);
    return desc(MEDIA_TYPES.ociImageConfig, bytes);
  }

  describe('storing and reading', () => {
    it('stores a manifest by tag, exactly as pushed, and finds it by tag and digest', async () => {
      const bytes = manifest();
      const record = await manifests.put('repo', parseReference('v1'), OCI_MANIFEST, bytes);
      expect(record).toMatchObject({ digest: sha(bytes), mediaType: OCI_MANIFEST, size: bytes.length });
      for (const ref of ['v1', sha(bytes)]) {
        const got = await manifests.get('repo', parseReference(ref));
        expect(got.bytes).toEqual(bytes);
        expect(got.digest).toBe(sha(bytes));
      }
      expect(await codeOf(manifests.get('other', parseReference('v1')))).toBe('MANIFEST_UNKNOWN');
      expect(await codeOf(manifests.get('other', parseReference(sha(bytes))))).toBe('MANIFEST_UNKNOWN');
    });

    it('keeps whitespace and key order: the digest is of the pushed bytes', async () => {
      const text = `{\n   "layers": [],\n   "config": ${JSON.stringify(EMPTY_CONFIG)},\n   "schemaVersion": 2\n}\n`;
      const record = await manifests.put('repo', parseReference('pretty'), OCI_MANIFEST, Buffer.from(text));
      expect(record.digest).toBe(sha(text));
      expect((await manifests.get('repo', parseReference('pretty'))).bytes.toString()).toBe(text);
    });

    it('checks a pushed digest against the bytes, in its own algorithm', async () => {
      const bytes = manifest();
      expect((await manifests.put('repo', parseReference(sha(bytes, 'sha512')), OCI_MANIFEST, bytes)).digest).toBe(sha(bytes, 'sha512'));
      const e = await errorOf(manifests.put('repo', parseReference(sha(manifest({ x: 1 }))), OCI_MANIFEST, bytes));
      expect(e.code).toBe('DIGEST_INVALID');
      expect(e.detail).toEqual({ expected: sha(manifest({ x: 1 })), actual: sha(bytes) });
    });

    it('takes the media type from Content-Type, else from the document', async () => {
      const idx = index([]);
      expect((await manifests.put('repo', parseReference('a'), `${OCI_INDEX}; charset=utf-8`, idx)).mediaType).toBe(OCI_INDEX);
      expect((await manifests.put('repo', parseReference('b'), undefined, manifest())).mediaType).toBe(OCI_MANIFEST);
      expect((await manifests.put('repo', parseReference('c'), 'application/octet-stream', manifest())).mediaType).toBe(OCI_MANIFEST);
      const bare = Buffer.from('{"schemaVersion":2}');
      expect(await codeOf(manifests.put('repo', parseReference('d'), undefined, bare))).toBe('MANIFEST_INVALID');
    });

    it.each([
      ['not JSON', Buffer.from('{nope'), OCI_MANIFEST],
      ['a JSON array', Buffer.from('[]'), OCI_MANIFEST],
      ['schema 1', Buffer.from('{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+json"}'), undefined],
      ['too large', manifest({ pad: 'x'.repeat(9000) }), OCI_MANIFEST],
      ['missing its config', Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, layers: [] })), OCI_MANIFEST],
      ['of another media type than Content-Type', manifest(), OCI_INDEX],
    ])('rejects a manifest that is %s with MANIFEST_INVALID, storing nothing', async (_label, bytes, contentType) => {
      expect(await codeOf(manifests.put('repo', parseReference('t'), contentType, bytes))).toBe('MANIFEST_INVALID');
      expect(await codeOf(manifests.stat('repo', parseReference('t')))).toBe('MANIFEST_UNKNOWN');
      expect(await codeOf(manifests.stat('repo', parseReference(sha(bytes))))).toBe('MANIFEST_UNKNOWN');
    });
  });

  describe('references', () => {
    it('accepts an image whose config and layers are in the repository', async () => {
      const layer = randomBytes(100);
      await pushBlob('repo', layer);
      const config = await pushConfig('repo');
      const bytes = manifest({ config, layers: [desc('application/vnd.oci.image.layer.v1.tar', layer)] });
      await manifests.put('repo', parseReference('v1'), OCI_MANIFEST, bytes);
      expect((await manifests.stat('repo', parseReference('v1'))).digest).toBe(sha(bytes));
    });

    it('refuses a missing layer or config with MANIFEST_BLOB_UNKNOWN naming the digest', async () => {
      const config = await pushConfig('repo');
      const layer = randomBytes(100);
      const bytes = manifest({ config, layers: [desc('application/vnd.oci.image.layer.v1.tar', layer)] });
      const e = await errorOf(manifests.put('repo', parseReference('v1'), OCI_MANIFEST, bytes));
      expect(e.code).toBe('MANIFEST_BLOB_UNKNOWN');
      expect(e.detail).toEqual({ digest: sha(layer) });
      expect(await codeOf(manifests.stat('repo', parseReference('v1')))).toBe('MANIFEST_UNKNOWN');

      const missingConfig = { mediaType: MEDIA_TYPES.ociImageConfig, digest: sha('{"nope":1}'), size: 10 };
      const e2 = await errorOf(manifests.put('repo', parseReference('v2'), OCI_MANIFEST, manifest({ config: missingConfig })));
      expect(e2.code).toBe('MANIFEST_BLOB_UNKNOWN');
      expect(e2.detail).toEqual({ digest: missingConfig.digest });
    });

    it('refuses a blob that only another repository holds, and accepts it once mounted', async () => {
      const layer = randomBytes(64);
      await pushBlob('elsewhere', layer);
      const bytes = manifest({ layers: [desc('application/vnd.oci.image.layer.v1.tar', layer)] });
      expect(await codeOf(manifests.put('repo', parseReference('v1'), OCI_MANIFEST, bytes))).toBe('MANIFEST_BLOB_UNKNOWN');
      await blobs.mount('repo', parseDigest(sha(layer)), 'elsewhere');
      await manifests.put('repo', parseReference('v1'), OCI_MANIFEST, bytes);
    });

    it('always has the empty layer and the empty JSON config, without a push', async () => {
      const bytes = Buffer.from(JSON.stringify({
        schemaVersion: 2,
        mediaType: MEDIA_TYPES.dockerManifest,
        config: { mediaType: MEDIA_TYPES.dockerImageConfig, digest: EMPTY_JSON, size: 2 },
        layers: [{ mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip', digest: EMPTY_LAYER, size: 32 }],
      }));
      expect((await manifests.put('fresh', parseReference('empty'), MEDIA_TYPES.dockerManifest, bytes)).mediaType).toBe(MEDIA_TYPES.dockerManifest);
    });

    it('does not look for non-distributable layers, whose bytes live at their urls', async () => {
      const foreign = {
        mediaType: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
        digest: sha('windows base layer'),
        size: 123,
        urls: ['https://example.com/layer'],
      };
      await manifests.put('repo', parseReference('win'), OCI_MANIFEST, manifest({ layers: [foreign] }));
      const { urls: _urls, ...withoutUrls } = foreign;
      expect(await codeOf(manifests.put('repo', parseReference('win2'), OCI_MANIFEST, manifest({ layers: [withoutUrls] })))).toBe('MANIFEST_BLOB_UNKNOWN');
    });

    it('accepts an index whose children are manifests of the repository', async () => {
      const a = manifest({ n: 'a' });
      const b = manifest({ n: 'b' });
      await manifests.put('repo', parseReference(sha(a)), OCI_MANIFEST, a);
      await manifests.put('repo', parseReference(sha(b)), OCI_MANIFEST, b);
      const idx = index([a, b]);
      expect((await manifests.put('repo', parseReference('multi'), OCI_INDEX, idx)).mediaType).toBe(OCI_INDEX);
      // An index of indexes.
      await manifests.put('repo', parseReference('nested'), OCI_INDEX, Buffer.from(JSON.stringify({
        schemaVersion: 2, mediaType: OCI_INDEX, manifests: [desc(OCI_INDEX, idx)],
      })));
    });

    it('refuses an index with a child missing from the repository with MANIFEST_UNKNOWN naming it', async () => {
      const a = manifest({ n: 'a' });
      const b = manifest({ n: 'b' });
      await manifests.put('repo', parseReference('a'), OCI_MANIFEST, a);
      await manifests.put('other', parseReference('b'), OCI_MANIFEST, b);
      const e = await errorOf(manifests.put('repo', parseReference('multi'), OCI_INDEX, index([a, b])));
      expect(e.code).toBe('MANIFEST_UNKNOWN');
      expect(e.detail).toEqual({ digest: sha(b) });
      // A blob with the child's digest is not a manifest.
      await pushBlob('repo', b);
      expect(await codeOf(manifests.put('repo', parseReference('multi'), OCI_INDEX, index([a, b])))).toBe('MANIFEST_UNKNOWN');
    });

    it('does not require the subject to exist', async () => {
      const subject = { mediaType: OCI_MANIFEST, digest: sha('not pushed'), size: 10 };
      const r = await manifests.put('repo', parseReference('sig'), OCI_MANIFEST, manifest({ subject, artifactType: 'application/vnd.example.sig' }));
      expect(r.subject).toBe(subject.digest);
    });
  });

  describe('labels', () => {
    it('records the labels of an image config with the manifest', async () => {
      const config = await pushConfig('repo', { 'org.opencontainers.image.title': 'demo', team: 'a', n: 1 });
      const r = await manifests.put('repo', parseReference('v1'), OCI_MANIFEST, manifest({ config }));
      expect(r.labels).toEqual({ 'org.opencontainers.image.title': 'demo', team: 'a' });
      expect((await manifests.stat('repo', parseReference('v1'))).labels).toEqual(r.labels);
      expect(r.expiresAt).toBeUndefined();
      expect((await manifests.tagRecord('repo', 'v1'))?.expiresAt).toBeUndefined();
    });

    it('reads Docker configs too, and no labels from artifacts', async () => {
      const bytes = Buffer.from(JSON.stringify({ config: { Labels: { kind: 'docker' } } }));
      await pushBlob('repo', bytes);
      const docker = Buffer.from(JSON.stringify({
        schemaVersion: 2, mediaType: MEDIA_TYPES.dockerManifest, config: desc(MEDIA_TYPES.dockerImageConfig, bytes), layers: [],
      }));
      expect((await manifests.put('repo', parseReference('d'), undefined, docker)).labels).toEqual({ kind: 'docker' });
      const artifact = manifest({ config: desc('application/vnd.example.config+json', bytes), n: 2 });
      expect((await manifests.put('repo', parseReference('art'), undefined, artifact)).labels).toBeUndefined();
    });

    it('sets the tag expiry from quay.expires-after', async () => {
      const config = await pushConfig('repo', { 'quay.expires-after': '2h' });
      const before = Date.now();
      const r = await manifests.put('repo', parseReference('temp'), OCI_MANIFEST, manifest({ config }));
      const after = Date.now();
      const tag = await manifests.tagRecord('repo', 'temp');
      for (const at of [r.expiresAt, tag?.expiresAt]) {
        const t = Date.parse(at ?? '');
        expect(t).toBeGreaterThanOrEqual(before + 2 * 3_600_000);
        expect(t).toBeLessThanOrEqual(after + 2 * 3_600_000);
      }
    });

    // Found by probing: a push of the manifest a tag names already rewrote nothing, so a
    // configured expiration (gc.expiration: "this long after their last push", as
    // zuul-registry, which rewrites the tag on every push) ran from the first push: with 3 s,
    // a tag pushed again at 2 s was gone at 3.5 s, and the collector deleted it.
    it('a push restarts a configured expiration; a label expiry counts from the push that set the tag', async () => {
      const minute = 60_000;
      const store = new ManifestStore({ driver, blobs, maxBytes: 8192, expiry: new ExpiryPolicy({ repositories: { repo: 60 * minute } }) });
      const plain = manifest({ n: 'plain' });
      const labelled = manifest({ config: await pushConfig('repo', { 'quay.expires-after': '2h' }) });
      const t0 = Date.now();
      vi.useFakeTimers({ toFake: ['Date'], now: t0 });
      try {
        for (const t of ['again', 'once']) await store.put('repo', parseReference(t), OCI_MANIFEST, plain);
        await store.put('repo', parseReference('label'), OCI_MANIFEST, labelled);
        const labelExpiry = (await store.tagRecord('repo', 'label'))!.expiresAt;
        vi.setSystemTime(t0 + 40 * minute);
        await store.put('repo', parseReference('again'), OCI_MANIFEST, plain);
        await store.put('repo', parseReference('label'), OCI_MANIFEST, labelled);
        vi.setSystemTime(t0 + 80 * minute);
        expect((await store.tags('repo', undefined, undefined)).items).toEqual(['again', 'label']);
        expect((await store.get('repo', parseReference('again'))).digest).toBe(sha(plain));
        expect((await store.get('repo', parseReference('label'))).digest).toBe(sha(labelled));
        expect(await codeOf(store.get('repo', parseReference('once')))).toBe('MANIFEST_UNKNOWN');
        expect(await store.tagRecord('repo', 'label')).toEqual({ digest: sha(labelled), updatedAt: new Date(t0 + 40 * minute).toISOString(), expiresAt: labelExpiry });
        // Pushed again, its configured expiration runs to 140 min, but its label's 2 h ran from 0.
        await store.put('repo', parseReference('label'), OCI_MANIFEST, labelled);
        vi.setSystemTime(t0 + 121 * minute);
        expect(await codeOf(store.get('repo', parseReference('label')))).toBe('MANIFEST_UNKNOWN');
        expect((await store.tags('repo', undefined, undefined)).items).toEqual([]);
      } finally {
        vi.useRealTimers();
      }
    });

    it.each(['soon', '2 hours', '-1d', ''])('ignores an invalid quay.expires-after %j', async (value) => {
      const config = await pushConfig('repo', { 'quay.expires-after': value });
      const r = await manifests.put('repo', parseReference('t'), OCI_MANIFEST, manifest({ config }));
      expect(r.labels).toEqual({ 'quay.expires-after': value });
      expect(r.expiresAt).toBeUndefined();
      expect((await manifests.tagRecord('repo', 't'))?.expiresAt).toBeUndefined();
    });
  });

  describe('idempotence and concurrency', () => {
    it('pushing the same manifest again changes nothing', async () => {
      const config = await pushConfig('repo', { 'quay.expires-after': '1h' });
      const bytes = manifest({ config });
      const first = await manifests.put('repo', parseReference('v1'), OCI_MANIFEST, bytes);
      const tag = await manifests.tagRecord('repo', 'v1');
      const snapshot = async () => Promise.all([
        driver.getContent(paths.manifestRevision('repo', parseDigest(first.digest))),
        driver.getContent(paths.tag('repo', 'v1')),
      ]);
      const before = await snapshot();
      await new Promise((r) => setTimeout(r, 5));
      // The record as this push would have made it: the same but for its times.
      const { createdAt: _, expiresAt: __, ...same } = first;
      expect(await manifests.put('repo', parseReference('v1'), OCI_MANIFEST, bytes)).toMatchObject(same);
      expect(await manifests.put('repo', parseReference(first.digest), OCI_MANIFEST, bytes)).toMatchObject(same);
      expect(await snapshot()).toEqual(before);
      expect((await manifests.stat('repo', parseReference('v1'))).createdAt).toBe(first.createdAt);
      expect(await manifests.tagRecord('repo', 'v1')).toEqual(tag);
    });

    it('two pushes of the same tag at once leave one of the two, whole', async () => {
      // Every storage call yields for a random while, so the pushes' steps interleave.
      const slow = shuffled(driver);
      const store = new ManifestStore({ driver: slow, blobs: new BlobStore(slow), maxBytes: 8192 });
      for (let round = 0; round < 20; round++) {
        const pushed = Array.from({ length: 4 }, (_, i) => manifest({ round, i }));
        const results = await Promise.all(pushed.map((b) => store.put('repo', parseReference('race'), OCI_MANIFEST, b)));
        const tag = await store.tagRecord('repo', 'race');
        expect(results.map((r) => r.digest)).toContain(tag?.digest);
        const got = await store.get('repo', parseReference('race'));
        expect(got.digest).toBe(tag?.digest);
        expect(sha(got.bytes)).toBe(got.digest);
        // Every manifest pushed is stored, whichever won the tag.
        for (const b of pushed) expect((await store.stat('repo', parseReference(sha(b)))).digest).toBe(sha(b));
      }
    });

    it('concurrent pushes of the same manifest agree on one record', async () => {
      const slow = shuffled(driver);
      const store = new ManifestStore({ driver: slow, blobs: new BlobStore(slow), maxBytes: 8192 });
      const bytes = manifest({ same: true });
      const results = await Promise.all(Array.from({ length: 6 }, (_, i) => store.put('repo', parseReference(`t${i}`), OCI_MANIFEST, bytes)));
      const stored = await store.stat('repo', parseReference(sha(bytes)));
      for (const r of results) expect(r.digest).toBe(stored.digest);
      expect((await store.tags('repo', undefined, undefined)).items).toEqual(['t0', 't1', 't2', 't3', 't4', 't5']);
    });
  });

  describe('tags', () => {
    it('moves a tag to a new manifest', async () => {
      const one = manifest({ n: 1 });
      const two = manifest({ n: 2 });
      await manifests.put('repo', parseReference('latest'), OCI_MANIFEST, one);
      await manifests.put('repo', parseReference('latest'), OCI_MANIFEST, two);
      expect((await manifests.stat('repo', parseReference('latest'))).digest).toBe(sha(two));
      // The old manifest stays reachable by digest.
      expect((await manifests.stat('repo', parseReference(sha(one)))).digest).toBe(sha(one));
    });

    it('deletes a tag alone, or a manifest with every tag pointing at it', async () => {
      const one = manifest({ n: 1 });
      const two = manifest({ n: 2 });
      await manifests.put('repo', parseReference('a'), OCI_MANIFEST, one);
      await manifests.put('repo', parseReference('b'), OCI_MANIFEST, one);
      await manifests.put('repo', parseReference('c'), OCI_MANIFEST, two);
      await manifests.delete('repo', parseReference('a'));
      expect((await manifests.tags('repo', undefined, undefined)).items).toEqual(['b', 'c']);
      expect((await manifests.stat('repo', parseReference(sha(one)))).digest).toBe(sha(one));
      await manifests.delete('repo', parseReference(sha(one)));
      expect((await manifests.tags('repo', undefined, undefined)).items).toEqual(['c']);
      expect(await codeOf(manifests.stat('repo', parseReference(sha(one))))).toBe('MANIFEST_UNKNOWN');
      expect(await codeOf(manifests.delete('repo', parseReference(sha(one))))).toBe('MANIFEST_UNKNOWN');
      expect(await codeOf(manifests.delete('repo', parseReference('a')))).toBe('MANIFEST_UNKNOWN');
    });

    // Found by probing with kill -9: a server killed between the manifest and its tags left
    // tags that listed but answered 404, and the client's retry of the DELETE found no
    // manifest (404) and could not remove them.
    it('a manifest delete cut short after its first storage delete leaves what a retry finishes', async () => {
      const one = manifest({ n: 1 });
      await manifests.put('repo', parseReference('a'), OCI_MANIFEST, one);
      await manifests.put('repo', parseReference('b'), OCI_MANIFEST, one);
      await manifests.put('repo', parseReference('c'), OCI_MANIFEST, manifest({ n: 2 }));
      let deletes = 0;
      const dying = intercepted(driver, {
        delete: (call, args) => (deletes++ === 0 ? call(...args) : Promise.reject(new Error('the process was killed'))),
        putContent: () => Promise.reject(new Error('the process was killed')),
      });
      const killed = new ManifestStore({ driver: dying, blobs: new BlobStore(dying), maxBytes: 8192 });
      await expect(killed.delete('repo', parseReference(sha(one)))).rejects.toThrow(/killed/);
      // The retry removes what is left of the manifest and its tags; another retry finds nothing.
      await manifests.delete('repo', parseReference(sha(one)));
      expect((await manifests.tags('repo', undefined, undefined)).items).toEqual(['c']);
      expect(await codeOf(manifests.stat('repo', parseReference(sha(one))))).toBe('MANIFEST_UNKNOWN');
      expect(await codeOf(manifests.delete('repo', parseReference(sha(one))))).toBe('MANIFEST_UNKNOWN');
    });

    // Found by probing the first mend of the case above, which deleted the tags first: a push
    // of the same manifest under a new tag, while the delete read the tags, found the manifest
    // still there and wrote its tag; the manifest then went under it (a 201 tag that answers 404).
    it('a push of the same manifest while a delete by digest reads the tags leaves no tag naming a missing manifest', async () => {
      const one = manifest({ n: 1 });
      await manifests.put('repo', parseReference('a'), OCI_MANIFEST, one);
      let pushed: Promise<unknown> | undefined;
      const racing = intercepted(driver, {
        listPage: async (call, args) => {
          const page = await call(...args);
          if (String(args[0]) === paths.tags('repo') && !pushed) {
            pushed = manifests.put('repo', parseReference('b'), OCI_MANIFEST, one);
            await pushed;
          }
          return page;
        },
      });
      await new ManifestStore({ driver: racing, blobs: new BlobStore(racing), maxBytes: 8192 }).delete('repo', parseReference(sha(one)));
      expect(pushed).toBeDefined();
      for (const tag of (await manifests.tags('repo', undefined, undefined)).items) {
        await expect(manifests.stat('repo', parseReference(tag)), tag).resolves.toBeDefined();
      }
    });

    // Found by probing: a push of a manifest with a subject that found the manifest stored,
    // racing a delete of it, wrote its referrer entry after the delete removed it: a referrer
    // listed whose manifest was gone (one race in six; 55 in 90 on fs, where the push's touch
    // of a known manifest widens the gap). The push now comes after the delete: its manifest
    // stays, listed, under its tag.
    it.each(['while the delete reads the tags', 'after the delete'])('a push of the same referrer whose entry is written %s leaves it listed and there', async (when) => {
      const subject = { mediaType: OCI_MANIFEST, digest: sha('the subject'), size: 11 };
      const sig = manifest({ artifactType: 'application/vnd.example.sig', subject });
      await manifests.put('repo', parseReference('a'), OCI_MANIFEST, sig);
      // The push stops before its entry write (having found the manifest stored), until released.
      const { held, at: atEntry, go: entryGo } = heldPut(driver, (path) => path.includes('/_manifests/referrers/'));
      const pushed = new ManifestStore({ driver: held, blobs: new BlobStore(held), maxBytes: 8192 }).put('repo', parseReference('b'), OCI_MANIFEST, sig);
      await atEntry.opened;
      const racing = intercepted(driver, {
        listPage: async (call, args) => {
          const page = await call(...args);
          if (when === 'while the delete reads the tags' && String(args[0]) === paths.tags('repo')) {
            entryGo.open();
            await pushed;
          }
          return page;
        },
      });
      await new ManifestStore({ driver: racing, blobs: new BlobStore(racing), maxBytes: 8192 }).delete('repo', parseReference(sha(sig)));
      entryGo.open();
      await pushed;
      expect((await manifests.stat('repo', parseReference(sha(sig)))).digest).toBe(sha(sig));
      expect((await manifests.referrers('repo', parseDigest(subject.digest))).items.map((d) => d.digest)).toEqual([sha(sig)]);
      expect((await manifests.stat('repo', parseReference('b'))).digest).toBe(sha(sig));
      // A delete after it all takes both.
      await manifests.delete('repo', parseReference(sha(sig)));
      expect((await manifests.referrers('repo', parseDigest(subject.digest))).items).toEqual([]);
    });

    // Found by probing the mend above: the push wrote its entry, the delete's last look found
    // no manifest and removed the entry, and only then did the push find the manifest gone
    // and put it back: stored, and never listed (and a collection then took it).
    it('a push that puts its manifest back after the delete\'s last look writes its entry again', async () => {
      const subject = { mediaType: OCI_MANIFEST, digest: sha('the subject'), size: 11 };
      const sig = manifest({ artifactType: 'application/vnd.example.sig', subject });
      const revision = paths.manifestRevision('repo', parseDigest(sha(sig)));
      await manifests.put('repo', parseReference('a'), OCI_MANIFEST, sig);
      const atEntry = gate();
      const entryGo = gate();
      const atLook = gate();
      const lookGo = gate();
      // The push: stops before its (first) entry write, and again before its look for the manifest.
      let entryHeld = false;
      const held = intercepted(driver, {
        putContent: async (call, args) => {
          if (String(args[0]).includes('/_manifests/referrers/') && !entryHeld) {
            entryHeld = true;
            atEntry.open();
            await entryGo.opened;
          }
          return call(...args);
        },
        reader: async (call, args) => {
          if (args[0] === revision && args[2] === 0) {
            atLook.open();
            await lookGo.opened;
          }
          return call(...args);
        },
      });
      const pushed = new ManifestStore({ driver: held, blobs: new BlobStore(held), maxBytes: 8192 }).put('repo', parseReference('b'), OCI_MANIFEST, sig);
      await atEntry.opened;
      // The delete: at its last look for the manifest, the push writes its entry first.
      let looks = 0;
      const racing = intercepted(driver, {
        reader: async (call, args) => {
          if (args[0] === revision && args[2] === 0 && looks++ === 0) {
            entryGo.open();
            await atLook.opened;
          }
          return call(...args);
        },
      });
      await new ManifestStore({ driver: racing, blobs: new BlobStore(racing), maxBytes: 8192 }).delete('repo', parseReference(sha(sig)));
      lookGo.open();
      await pushed;
      expect((await manifests.stat('repo', parseReference(sha(sig)))).digest).toBe(sha(sig));
      expect((await manifests.referrers('repo', parseDigest(subject.digest))).items.map((d) => d.digest)).toEqual([sha(sig)]);
    });

    // Found by probing: a push by tag of a referrer that looked for its manifest before
    // writing its tag, racing a delete by digest that untagged in between, left its tag naming
    // the deleted manifest (20 races in 500 on fs). The look now follows the tags.
    it('a push by tag of a referrer whose tag is written after a delete took its manifest puts the manifest back', async () => {
      const subject = { mediaType: OCI_MANIFEST, digest: sha('the subject'), size: 11 };
      const sig = manifest({ artifactType: 'application/vnd.example.sig', subject });
      await manifests.put('repo', parseReference('a'), OCI_MANIFEST, sig);
      const { held, at: atTag, go: tagGo } = heldPut(driver, (path) => path === paths.tag('repo', 'b'));
      const pushed = new ManifestStore({ driver: held, blobs: new BlobStore(held), maxBytes: 8192 }).put('repo', parseReference('b'), OCI_MANIFEST, sig);
      await atTag.opened;
      await manifests.delete('repo', parseReference(sha(sig)));
      tagGo.open();
      await pushed;
      expect((await manifests.stat('repo', parseReference('b'))).digest).toBe(sha(sig));
      expect((await manifests.referrers('repo', parseDigest(subject.digest))).items.map((d) => d.digest)).toEqual([sha(sig)]);
    });

    it('lists tags in lexical (byte-wise) order with pagination', async () => {
      for (const tag of ['v2', 'V1', 'latest', '1.0', '_x']) await manifests.put('repo', parseReference(tag), OCI_MANIFEST, manifest());
      expect((await manifests.tags('repo', undefined, undefined)).items).toEqual(['1.0', 'V1', '_x', 'latest', 'v2']);
      expect(await manifests.tags('repo', 2, 'V1')).toEqual({ items: ['_x', 'latest'], next: 'latest' });
      expect(await manifests.tags('empty', undefined, undefined)).toEqual({ items: [] });
    });
  });

  describe('storage layout', () => {
    it('keeps the record and the bytes in one revision object, the record on the first line', async () => {
      const bytes = manifest({ n: 'layout' });
      const record = await manifests.put('repo', parseReference('v1'), OCI_MANIFEST, bytes);
      const stored = await driver.getContent(paths.manifestRevision('repo', parseDigest(record.digest)));
      expect(decodeRevision(stored)).toEqual({ record, bytes });
      expect(stored.subarray(0, stored.indexOf(0x0a)).toString()).toBe(JSON.stringify(record));
      // No blob under the manifest's digest.
      expect(await blobs.getSmall(parseDigest(record.digest))).toBeUndefined();
    });

    it('reads revisions of the old layout, whose bytes are a blob', async () => {
      const bytes = manifest({ n: 'old' });
      const digest = parseDigest(sha(bytes));
      const record = { digest: digest.value, mediaType: OCI_MANIFEST, size: bytes.length, createdAt: new Date().toISOString() };
      await blobs.putSmall(digest, bytes);
      await driver.putContent(paths.manifestRevision('repo', digest), Buffer.from(JSON.stringify(record)));
      await driver.putContent(paths.tag('repo', 'old'), Buffer.from(JSON.stringify({ digest: digest.value, updatedAt: record.createdAt })));
      expect(await manifests.get('repo', parseReference('old'))).toEqual({ ...record, bytes });
      expect(await manifests.stat('repo', parseReference(digest.value))).toEqual(record);
      // Pushing it again (under a new tag) leaves it as it is.
      expect((await manifests.put('repo', parseReference('again'), OCI_MANIFEST, bytes)).digest).toBe(digest.value);
      expect(await manifests.get('repo', parseReference('again'))).toEqual({ ...record, bytes });
    });

    it('rewrites the record of a tag under a configured expiration at every push, so the object\'s time is its updatedAt', async () => {
      const fs = await tempDir('hoist-tags-');
      try {
        const d = await createDriver(`fs:${fs.path}`);
        const store = new ManifestStore({ driver: d, blobs: new BlobStore(d), maxBytes: 8192, expiry: new ExpiryPolicy({ repositories: { repo: 3_600_000 } }) });
        const bytes = manifest({ n: 'mtime' });
        // updatedAt and the object's time both fall within the put, however long a loaded
        // machine makes it (tag lists trust the object's time to within EXPIRY_BOUNDARY_MS, 5 min).
        const before = Date.now();
        await store.put('repo', parseReference('t'), OCI_MANIFEST, bytes);
        const after = Date.now();
        const first = await d.stat(paths.tag('repo', 't'));
        const record = await store.tagRecord('repo', 't');
        const updatedAt = Date.parse(record!.updatedAt);
        expect(updatedAt).toBeGreaterThanOrEqual(before);
        expect(updatedAt).toBeLessThanOrEqual(after);
        // The file system dates a write by the kernel's coarse clock, up to a tick (≤ 10 ms)
        // behind Date.now(); 50 ms covers that.
        expect(first.modTime.getTime()).toBeGreaterThanOrEqual(before - 50);
        expect(first.modTime.getTime()).toBeLessThanOrEqual(after);
        // Pushed again: the expiration counts from this push, and so does the object's time.
        await new Promise((r) => setTimeout(r, 20));
        const before2 = Date.now();
        await store.put('repo', parseReference('t'), OCI_MANIFEST, bytes);
        const after2 = Date.now();
        const again = await store.tagRecord('repo', 't');
        expect(again!.digest).toBe(record!.digest);
        expect(Date.parse(again!.updatedAt)).toBeGreaterThanOrEqual(before2);
        expect(Date.parse(again!.updatedAt)).toBeLessThanOrEqual(after2);
        const second = (await d.stat(paths.tag('repo', 't'))).modTime.getTime();
        expect(second).toBeGreaterThanOrEqual(before2 - 50);
        expect(second).toBeLessThanOrEqual(after2);
      } finally {
        await fs.cleanup();
      }
    });

    it('rewrites the record of a tag that cannot expire without reading it, its time and updatedAt moving together', async () => {
      const fs = await tempDir('hoist-tags-');
      try {
        const d = await createDriver(`fs:${fs.path}`);
        const store = new ManifestStore({ driver: d, blobs: new BlobStore(d), maxBytes: 8192 });
        const bytes = manifest({ n: 'no-expiry' });
        await store.put('repo', parseReference('t'), OCI_MANIFEST, bytes);
        const first = await store.tagRecord('repo', 't');
        await new Promise((r) => setTimeout(r, 20));
        const before = Date.now();
        await store.put('repo', parseReference('t'), OCI_MANIFEST, bytes);
        const after = Date.now();
        const again = await store.tagRecord('repo', 't');
        expect(again!.digest).toBe(first!.digest);
        expect(again).not.toHaveProperty('expiresAt');
        expect(Date.parse(again!.updatedAt)).toBeGreaterThanOrEqual(before);
        expect(Date.parse(again!.updatedAt)).toBeLessThanOrEqual(after);
        const mtime = (await d.stat(paths.tag('repo', 't'))).modTime.getTime();
        expect(mtime).toBeGreaterThanOrEqual(before - 50);
        expect(mtime).toBeLessThanOrEqual(after);
      } finally {
        await fs.cleanup();
      }
    });
  });

  describe('what a push asks of storage', () => {
    // Per blob: the link (stat), the record (get), the data (the layer's stat; the config's
    // bytes, read for its labels).
    const perBlobs = ['getContent', 'getContent', 'getContent', 'stat', 'stat', 'stat'];

    /** A store counting its storage calls, and an image (a config, a layer) to push to it. */
    async function countedImage(expiry?: ExpiryPolicy): Promise<{ counting: CountingDriver; store: ManifestStore; bytes: Buffer }> {
      const counting = new CountingDriver(driver);
      const store = new ManifestStore({ driver: counting, blobs: new BlobStore(counting), maxBytes: 8192, ...(expiry ? { expiry } : {}) });
      const config = await pushConfig('repo');
      const layer = randomBytes(100);
      await pushBlob('repo', layer);
      return { counting, store, bytes: manifest({ config, layers: [desc('application/vnd.oci.image.layer.v1.tar', layer)] }) };
    }

    it('an image pushed under a new tag: per blob its link, record and data; the revision written if absent; the tag', async () => {
      const { counting, store, bytes } = await countedImage();
      // Then the revision, written unless there; the tag, written.
      const first = await counting.during(() => store.put('repo', parseReference('t1'), OCI_MANIFEST, bytes));
      expect(first.calls.map((c) => c.op).sort()).toEqual([...perBlobs, 'putContent', 'putContent'].sort());
      // A known manifest under another tag, and under the same tag again: no tag in this
      // repository can expire, so the tag is written without a look.
      const again = await counting.during(() => store.put('repo', parseReference('t2'), OCI_MANIFEST, bytes));
      expect(again.calls.map((c) => c.op).sort()).toEqual([...perBlobs, 'putContent', 'putContent'].sort());
      const same = await counting.during(() => store.put('repo', parseReference('t2'), OCI_MANIFEST, bytes));
      expect(same.calls.map((c) => c.op).sort()).toEqual([...perBlobs, 'putContent', 'putContent'].sort());
    });

    it('a tag under a configured expiration: written without a look at every push, which restarts the expiration', async () => {
      const { counting, store, bytes } = await countedImage(new ExpiryPolicy({ repositories: { repo: 3_600_000 } }));
      for (const t of ['t1', 't2', 't2']) {
        const { calls } = await counting.during(() => store.put('repo', parseReference(t), OCI_MANIFEST, bytes));
        expect(calls.map((c) => c.op).sort()).toEqual([...perBlobs, 'putContent', 'putContent'].sort());
      }
    });

    it('a tag with a label expiry: read before a known manifest is pushed under it, and left alone when it names it already', async () => {
      const counting = new CountingDriver(driver);
      const store = new ManifestStore({ driver: counting, blobs: new BlobStore(counting), maxBytes: 8192 });
      const bytes = manifest({ config: await pushConfig('repo', { 'quay.expires-after': '1h' }) });
      // A new manifest: its tag cannot name it yet, so it is written without a look (its
      // expiring-index entry first).
      const first = await counting.during(() => store.put('repo', parseReference('t1'), OCI_MANIFEST, bytes));
      expect(first.calls.filter((c) => c.op === 'putContent').map((c) => c.path)).toEqual([
        paths.manifestRevision('repo', parseDigest(sha(bytes))), paths.tagExpiring('repo', 't1'), paths.tag('repo', 't1'),
      ]);
      const again = await counting.during(() => store.put('repo', parseReference('t2'), OCI_MANIFEST, bytes));
      expect(again.calls.filter((c) => c.path.startsWith(paths.tags('repo')) || c.path.startsWith(paths.tagsExpiring('repo'))).map((c) => [c.op, c.path])).toEqual([
        ['getContent', paths.tag('repo', 't2')], ['putContent', paths.tagExpiring('repo', 't2')], ['putContent', paths.tag('repo', 't2')],
      ]);
      const same = await counting.during(() => store.put('repo', parseReference('t2'), OCI_MANIFEST, bytes));
      // The revision's conditional write finds it there; the tag names it already.
      expect(same.calls.filter((c) => c.op === 'putContent').map((c) => c.path)).toEqual([paths.manifestRevision('repo', parseDigest(sha(bytes)))]);
    });
  });

  describe('tag lists', () => {
    /** `count` tags t0000…, all naming one manifest. */
    async function tagged(store: ManifestStore, count: number, labels?: Record<string, string>): Promise<string[]> {
      const config = labels ? await pushConfig('repo', labels) : undefined;
      const bytes = manifest(config ? { config } : { n: 'many' });
      const names = Array.from({ length: count }, (_, i) => `t${String(i).padStart(4, '0')}`);
      for (const t of names) await store.put('repo', parseReference(t), OCI_MANIFEST, bytes);
      return names;
    }

    it('a page of n reads two listings and no tag record when no tag can expire', async () => {
      const counting = new CountingDriver(driver);
      const store = new ManifestStore({ driver: counting, blobs: new BlobStore(counting), maxBytes: 8192 });
      const names = await tagged(store, 300);
      const { result, calls } = await counting.during(() => store.tags('repo', 10, 't0100'));
      expect(result).toEqual({ items: names.slice(101, 111), next: 't0110' });
      expect(calls).toEqual([
        { op: 'listPage', path: paths.tags('repo') },
        { op: 'listPage', path: paths.tagsExpiring('repo') },
      ]);
      expect((await counting.during(() => store.tags('repo', undefined, undefined))).calls).toHaveLength(2);
      expect((await store.tags('repo', undefined, undefined)).items).toEqual(names);
      expect(await store.tags('repo', 10, 't0295')).toEqual({ items: names.slice(296) });
      expect(await store.tags('repo', 0, undefined)).toEqual({ items: [] });
    });

    it('reads only the records of tags whose manifest carries a label expiry, and hides the expired', async () => {
      const counting = new CountingDriver(driver);
      const store = new ManifestStore({ driver: counting, blobs: new BlobStore(counting), maxBytes: 8192 });
      const plain = await tagged(store, 20);
      const config = await pushConfig('repo', { 'quay.expires-after': '1s' });
      const expiring = manifest({ config });
      // Date is the test's (timers stay real): the labelled tags are live until the test moves
      // the clock past their second, however long a loaded machine takes over the first list.
      vi.useFakeTimers({ toFake: ['Date'], now: Date.now() });
      try {
        for (const t of ['t0005x', 't0010x', 't0015x']) await store.put('repo', parseReference(t), OCI_MANIFEST, expiring);
        expect((await driver.list(paths.tagsExpiring('repo'))).length).toBe(3);
        const { result, calls } = await counting.during(() => store.tags('repo', 8, undefined));
        expect(result).toEqual({ items: ['t0000', 't0001', 't0002', 't0003', 't0004', 't0005', 't0005x', 't0006'], next: 't0006' });
        expect(calls.filter((c) => c.op === 'getContent').map((c) => c.path)).toEqual([paths.tag('repo', 't0005x')]);
        vi.setSystemTime(Date.now() + 1100);
        // Expired: left out, and the page reads on to fill itself.
        expect(await store.tags('repo', 8, undefined)).toEqual({ items: plain.slice(0, 8), next: 't0007' });
        expect((await store.tags('repo', undefined, 't0009')).items).toEqual(plain.slice(10));
        expect(await codeOf(store.get('repo', parseReference('t0010x')))).toBe('MANIFEST_UNKNOWN');
        // Gone to DELETE too (found by probing, 2026-12-02: it answered 202), its record left for the collector.
        expect(await codeOf(store.delete('repo', parseReference('t0015x')))).toBe('MANIFEST_UNKNOWN');
        expect(await driver.getContent(paths.tag('repo', 't0015x'))).toBeDefined();
        // Moved to a manifest without the label: listed again (its stale index entry costs a read).
        await store.put('repo', parseReference('t0010x'), OCI_MANIFEST, manifest({ n: 'many' }));
        expect((await store.tags('repo', undefined, 't0009')).items).toEqual(['t0010', 't0010x', ...plain.slice(11)]);
      } finally {
        vi.useRealTimers();
      }
    });

    // Found by probing: a page listed only the n tags it still wanted, and every pass of that
    // cost a full listing (fs reads and sorts the whole directory; S3 makes two requests). A
    // page of 2 over 3,000 expired tags (gc.schedule is off by default, so they stay) made
    // 1,500 passes and took 10 s; two at once over 8,000 did not finish in 30.
    it('reads on over expired tags a listing page at a time, each record once', async () => {
      const counting = new CountingDriver(driver);
      const store = new ManifestStore({ driver: counting, blobs: new BlobStore(counting), maxBytes: 8192 });
      vi.useFakeTimers({ toFake: ['Date'], now: Date.now() });
      try {
        const expired = await tagged(store, 300, { 'quay.expires-after': '1s' });
        for (const t of ['a0', 'z0']) await store.put('repo', parseReference(t), OCI_MANIFEST, manifest({ n: 'live' }));
        vi.setSystemTime(Date.now() + 1100);
        const reads = expired.map((t) => paths.tag('repo', t)).sort();
        const list = (n: number, last?: string) => counting.during(() => store.tags('repo', n, last));
        for (const n of [2, 3]) {
          const { result, calls } = await list(n);
          expect(result).toEqual({ items: ['a0', 'z0'] });
          // n + 1 tags, then the rest in one page; with the index listed beside each.
          expect(calls.filter((c) => c.op === 'listPage')).toHaveLength(4);
          expect(calls.filter((c) => c.op === 'getContent').map((c) => c.path).sort()).toEqual(reads);
        }
        // After a0 comes an expired tag, and only reading every record after it would tell
        // that no live one follows: the next page may be empty (the spec allows it).
        const first = await list(1);
        expect(first.result).toEqual({ items: ['a0'], next: 'a0' });
        expect(first.calls.filter((c) => c.op === 'listPage')).toHaveLength(2);
        const second = await list(1, 'a0');
        expect(second.result).toEqual({ items: ['z0'] });
        expect(second.calls.filter((c) => c.op === 'listPage')).toHaveLength(4);
        expect(second.calls.filter((c) => c.op === 'getContent').map((c) => c.path).sort()).toEqual(reads);
        expect(await store.tags('repo', 1, 'z0')).toEqual({ items: [] });
      } finally {
        vi.useRealTimers();
      }
    });

    it('links a next page when what it listed shows a live tag follows, or cannot tell', async () => {
      const hour = 3_600_000;
      const store = new ManifestStore({ driver, blobs, maxBytes: 8192, expiry: new ExpiryPolicy({ repositories: { repo: hour } }) });
      vi.useFakeTimers({ toFake: ['Date'], now: Date.now() });
      try {
        // The memory driver dates objects by Date: t0000… and v0… are pushed two hours before the rest.
        const old = await tagged(store, 300);
        for (const t of ['v0', 'v1', 'v2']) await store.put('repo', parseReference(t), OCI_MANIFEST, manifest({ n: 'many' }));
        vi.setSystemTime(Date.now() + 2 * hour);
        for (const t of ['a0', 'u0', 'u1']) await store.put('repo', parseReference(t), OCI_MANIFEST, manifest({ n: 'live' }));
        // Past the expired tags, the listing page that found u0 shows u1 after it, and after u1
        // only expired tags to its end.
        expect(await store.tags('repo', 1, 'a0')).toEqual({ items: ['u0'], next: 'u0' });
        expect(await store.tags('repo', 2, 'a0')).toEqual({ items: ['u0', 'u1'] });
        expect(await store.tags('repo', 3, undefined)).toEqual({ items: ['a0', 'u0', 'u1'] });
        expect(await store.tags('repo', 5, old[10])).toEqual({ items: ['u0', 'u1'] });
        // A page without expired tags in it lists one tag past it, here an expired one with
        // more after it: that one look cannot tell, so the next page is linked.
        expect(await store.tags('repo', 1, undefined)).toEqual({ items: ['a0'], next: 'a0' });
        expect((await store.tags('repo', undefined, undefined)).items).toEqual(['a0', 'u0', 'u1']);
      } finally {
        vi.useRealTimers();
      }
    });

    it('decides a configured expiration from the tag objects\' times, reading records only near the boundary', async () => {
      const fs = await tempDir('hoist-tags-');
      try {
        const inner = await createDriver(`fs:${fs.path}`);
        const d = new CountingDriver(inner);
        const hour = 3_600_000;
        const store = new ManifestStore({ driver: d, blobs: new BlobStore(d), maxBytes: 8192, expiry: new ExpiryPolicy({ repositories: { repo: hour } }) });
        const names = await tagged(store, 6);
        // Pushed 2 h ago (t0000, t0001), right at the boundary (t0002), 30 min ago (the rest).
        const age = (t: string, ms: number) => pushedAt(inner, fs.path, t, Date.now() - ms);
        await age('t0000', 2 * hour);
        await age('t0001', 2 * hour);
        await age('t0002', hour + 1000);
        await age('t0003', hour / 2);
        const { result, calls } = await d.during(() => store.tags('repo', undefined, undefined));
        expect(result.items).toEqual(names.slice(3));
        expect(calls.filter((c) => c.op === 'getContent').map((c) => c.path)).toEqual([paths.tag('repo', 't0002')]);
        expect(await codeOf(store.get('repo', parseReference('t0002')))).toBe('MANIFEST_UNKNOWN');
        expect(await codeOf(store.get('repo', parseReference('t0000')))).toBe('MANIFEST_UNKNOWN');
        expect((await store.get('repo', parseReference('t0003'))).digest).toBe(sha(manifest({ n: 'many' })));
      } finally {
        await fs.cleanup();
      }
    });
  });

  // Found by probing: an index of 20,000 children that do not exist cost 20,000 store
  // requests before its 400; the checks now stop at the first missing child.
  it('an index whose children are missing is refused after a handful of store requests, naming the first missing child', async () => {
    const counting = new CountingDriver();
    const store = new ManifestStore({ driver: counting, blobs: new BlobStore(counting), maxBytes: 4 * 1024 * 1024 });
    const present = manifest({ n: 'present' });
    await store.put('repo', parseReference(sha(present)), OCI_MANIFEST, present);
    const children = [present, ...Array.from({ length: 500 }, (_, i) => manifest({ n: `absent-${i}` }))];
    const idx = index(children);
    const { result: err, calls } = await counting.during(() => errorOf(store.put('repo', parseReference('many'), OCI_INDEX, idx)));
    expect(err.code).toBe('MANIFEST_UNKNOWN');
    expect(err.detail).toEqual({ digest: sha(children[1]!) });
    expect(calls.length).toBeLessThan(20);
  });

  // Found by probing: each child's revision was read whole (up to 4 MiB) for its size, and 32
  // pushes at once of a 3 KB index of 4 MiB children grew the process by 800 MiB.
  it('an index push and a manifest HEAD read the records of large manifests, not their bytes', async () => {
    let bytesRead = 0;
    const reading = intercepted(driver, {
      getContent: async (call, args) => {
        const b = (await call(...args)) as Buffer;
        bytesRead += b.length;
        return b;
      },
      reader: async (call, args) => (await call(...args) as Readable).pipe(new Transform({
        transform(chunk: Buffer, _encoding, done) {
          bytesRead += chunk.length;
          done(null, chunk);
        },
      })),
    });
    const store = new ManifestStore({ driver: reading, blobs: new BlobStore(reading), maxBytes: 4 * 1024 * 1024 });
    const children = Array.from({ length: 4 }, (_, i) => manifest({ annotations: { 'org.example.big': 'x'.repeat(1024 * 1024), n: String(i) } }));
    for (const c of children) await store.put('repo', parseReference(sha(c)), OCI_MANIFEST, c);
    bytesRead = 0;
    await store.put('repo', parseReference('idx'), OCI_INDEX, index(children));
    expect(await store.stat('repo', parseReference(sha(children[0]!)))).toMatchObject({ size: children[0]!.length });
    expect(bytesRead).toBeLessThanOrEqual(5 * 16 * 1024);
    // A child of another size is still refused.
    const lying = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [{ ...desc(OCI_MANIFEST, children[0]!), size: 10 }] }));
    expect(await codeOf(store.put('repo', parseReference('lying'), OCI_INDEX, lying))).toBe('MANIFEST_INVALID');
  });

  describe('referrers', () => {
    const subject = { mediaType: OCI_MANIFEST, digest: sha('the subject'), size: 11 };

    it('indexes a manifest with a subject under that subject, with artifactType and annotations', async () => {
      const sig = manifest({ artifactType: 'application/vnd.example.sig', subject, annotations: { 'org.example.k': 'v' } });
      await manifests.put('repo', parseReference(sha(sig)), OCI_MANIFEST, sig);
      const config = await pushConfig('repo');
      const image = manifest({ config, subject });
      await manifests.put('repo', parseReference('img'), OCI_MANIFEST, image);
      const idx = index([], { artifactType: 'application/vnd.example.bundle', subject });
      await manifests.put('repo', parseReference(sha(idx)), OCI_INDEX, idx);

      const found = (await manifests.referrers('repo', parseDigest(subject.digest))).items;
      const expected = [
        { mediaType: OCI_MANIFEST, digest: sha(sig), size: sig.length, artifactType: 'application/vnd.example.sig', annotations: { 'org.example.k': 'v' } },
        { mediaType: OCI_MANIFEST, digest: sha(image), size: image.length, artifactType: MEDIA_TYPES.ociImageConfig },
        { mediaType: OCI_INDEX, digest: sha(idx), size: idx.length, artifactType: 'application/vnd.example.bundle' },
      ];
      expect(sortByDigest(found)).toEqual(sortByDigest(expected));
      expect((await manifests.referrers('repo', parseDigest(subject.digest), 'application/vnd.example.sig')).items).toEqual([expected[0]]);
      expect((await manifests.referrers('repo', parseDigest(subject.digest), 'application/none')).items).toEqual([]);
    });

    it('is empty for a digest nothing refers to, and per repository', async () => {
      const sig = manifest({ artifactType: 'application/vnd.example.sig', subject });
      await manifests.put('repo', parseReference('sig'), OCI_MANIFEST, sig);
      expect((await manifests.referrers('repo', parseDigest(sha('something else')))).items).toEqual([]);
      expect((await manifests.referrers('other', parseDigest(subject.digest))).items).toEqual([]);
    });

    it('pushing a referrer twice lists it once', async () => {
      const sig = manifest({ artifactType: 'application/vnd.example.sig', subject });
      await manifests.put('repo', parseReference('a'), OCI_MANIFEST, sig);
      await manifests.put('repo', parseReference('b'), OCI_MANIFEST, sig);
      expect((await manifests.referrers('repo', parseDigest(subject.digest))).items).toHaveLength(1);
    });

    // Found by probing: a subject's referrers were read entry by entry on every request, a
    // filter that matched none included (5,000 entries: 5,000 object reads on S3). Entries
    // name their manifests and never change, so a request reads again only what it never read.
    it('reads an entry once: later requests list the subject and answer from what was read, without entries gone since', async () => {
      const counting = new CountingDriver();
      const store = new ManifestStore({ driver: counting, blobs: new BlobStore(counting), maxBytes: 8192 });
      const digests: string[] = [];
      for (let i = 0; i < 150; i++) {
        const m = manifest({ artifactType: 'application/vnd.example.sig', subject, annotations: { n: String(i) } });
        await store.put('repo', parseReference(sha(m)), OCI_MANIFEST, m);
        digests.push(sha(m));
      }
      const reads = (calls: readonly { op: string; path: string }[]) => calls.filter((c) => (c.op === 'getContent' || c.op === 'reader') && c.path.includes('/_manifests/referrers/')).length;
      const first = await counting.during(() => store.referrers('repo', parseDigest(subject.digest), 'application/none'));
      expect(first.result.items).toEqual([]);
      expect(reads(first.calls)).toBe(150);
      const again = await counting.during(() => store.referrers('repo', parseDigest(subject.digest), 'application/none'));
      expect(again.result.items).toEqual([]);
      expect(reads(again.calls)).toBe(0);
      // What the listing no longer shows is not answered; what it shows anew is read.
      await store.delete('repo', parseReference(digests[0]!));
      const added = manifest({ artifactType: 'application/vnd.example.sbom', subject });
      await store.put('repo', parseReference(sha(added)), OCI_MANIFEST, added);
      const after = await counting.during(() => store.referrers('repo', parseDigest(subject.digest)));
      expect(after.result.items.map((d) => d.digest).sort()).toEqual([...digests.slice(1), sha(added)].sort());
      expect(reads(after.calls)).toBe(1);
      expect(after.result.items.find((d) => d.digest === digests[1])).toEqual({ mediaType: OCI_MANIFEST, digest: digests[1], size: expect.any(Number), artifactType: 'application/vnd.example.sig', annotations: { n: '1' } });
    });

    // Found by probing: a listing batch of 64 entries, each with up to a manifest's size of
    // annotations, was read whole before the page budget was looked at: about 260 MiB a
    // request, and 20 requests at once took the process past its heap.
    it('reads entries in runs that fit a page (by their listed sizes), never a whole listing batch of large ones', async () => {
      const counting = new CountingDriver();
      const store = new ManifestStore({ driver: counting, blobs: new BlobStore(counting), maxBytes: 4 * 1024 * 1024 });
      const big = 'x'.repeat(600 * 1024);
      const digests: string[] = [];
      for (let i = 0; i < 12; i++) {
        const m = manifest({ artifactType: 'application/vnd.example.sig', subject, annotations: { 'org.example.blob': big, 'org.example.n': String(i) } });
        await store.put('repo', parseReference(sha(m)), OCI_MANIFEST, m);
        digests.push(sha(m));
      }
      const seen: string[] = [];
      let last: string | undefined;
      for (let pages = 0; ; pages++) {
        expect(pages).toBeLessThan(12);
        const { result, calls } = await counting.during(() => store.referrers('repo', parseDigest(subject.digest), undefined, last));
        // One 600 KiB entry fits a 1 MiB page, two do not: each page is one entry, and reads
        // at most the run that fits it (one) and the next run (one), never all twelve.
        expect(result.items).toHaveLength(1);
        expect(calls.filter((c) => c.op === 'getContent' || c.op === 'reader').length).toBeLessThanOrEqual(2);
        seen.push(...result.items.map((d) => d.digest));
        if (result.next === undefined) break;
        last = result.next;
      }
      expect(seen.sort()).toEqual([...digests].sort());
    });

    // Found by probing: a page was measured in UTF-16 units, and annotations of `€` (three
    // bytes each) made pages of 3 MB.
    it('measures a page in bytes: annotations outside ASCII fill it sooner', async () => {
      const store = new ManifestStore({ driver, blobs, maxBytes: 4 * 1024 * 1024 });
      for (let i = 0; i < 8; i++) {
        const m = manifest({ artifactType: 'application/vnd.example.sig', subject, annotations: { 'org.example.note': '€'.repeat(100_000), n: String(i) } });
        await store.put('repo', parseReference(sha(m)), OCI_MANIFEST, m);
      }
      const seen: string[] = [];
      let last: string | undefined;
      for (;;) {
        const page = await store.referrers('repo', parseDigest(subject.digest), undefined, last);
        expect(Buffer.byteLength(JSON.stringify(page.items))).toBeLessThanOrEqual(1024 * 1024);
        seen.push(...page.items.map((d) => d.digest));
        if (page.next === undefined) break;
        last = page.next;
      }
      expect(new Set(seen).size).toBe(8);
    });

    it('deleting a referrer by digest removes it from the list', async () => {
      const a = manifest({ artifactType: 'application/vnd.example.a', subject });
      const b = manifest({ artifactType: 'application/vnd.example.b', subject });
      await manifests.put('repo', parseReference('a'), OCI_MANIFEST, a);
      await manifests.put('repo', parseReference('b'), OCI_MANIFEST, b);
      await manifests.delete('repo', parseReference(sha(a)));
      expect(((await manifests.referrers('repo', parseDigest(subject.digest))).items).map((d) => d.digest)).toEqual([sha(b)]);
      // Deleting a tag leaves the manifest, and so its entry.
      await manifests.delete('repo', parseReference('b'));
      expect((await manifests.referrers('repo', parseDigest(subject.digest))).items).toHaveLength(1);
      await manifests.delete('repo', parseReference(sha(b)));
      expect((await manifests.referrers('repo', parseDigest(subject.digest))).items).toEqual([]);
    });
  });
});

/** Dates tag `tag` of `repo` as pushed at `atMs`: its record's updatedAt and its file's time, as a push then would have. */
async function pushedAt(driver: StorageDriver, root: string, tag: string, atMs: number): Promise<void> {
  const path = paths.tag('repo', tag);
  const record = JSON.parse((await driver.getContent(path)).toString('utf8')) as Record<string, unknown>;
  await driver.putContent(path, Buffer.from(JSON.stringify({ ...record, updatedAt: new Date(atMs).toISOString() })));
  await utimes(join(root, path), new Date(atMs), new Date(atMs));
}

function sortByDigest<T extends { digest: string }>(items: T[]): T[] {
  return [...items].sort((x, y) => lexical(x.digest, y.digest));
}

/** A promise, and the function that resolves it: where a test holds one side of a race. */
function gate(): { open: () => void; opened: Promise<void> } {
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  return { open, opened };
}

/**
 * The driver with its writes to paths `match` picks held: each opens `at` on arrival and
 * waits for `go` (the push side of a race test).
 */
function heldPut(driver: StorageDriver, match: (path: string) => boolean): { held: StorageDriver; at: ReturnType<typeof gate>; go: ReturnType<typeof gate> } {
  const at = gate();
  const go = gate();
  const held = intercepted(driver, {
    putContent: async (call, args) => {
      if (match(String(args[0]))) {
        at.open();
        await go.opened;
      }
      return call(...args);
    },
  });
  return { held, at, go };
}

type DriverCall = (...args: unknown[]) => Promise<unknown>;

/** The driver with some methods wrapped: `around.<method>(call, args)` runs in place of each call, `call` being the method itself. */
function intercepted(driver: StorageDriver, around: Partial<Record<keyof StorageDriver, (call: DriverCall, args: unknown[]) => Promise<unknown>>>): StorageDriver {
  return new Proxy(driver, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver) as unknown;
      if (typeof value !== 'function') return value;
      // Bound: the driver's methods reach its private fields, which the proxy has not.
      const call = (value as DriverCall).bind(target);
      const wrap = around[prop as keyof StorageDriver];
      return wrap ? (...args: unknown[]) => wrap(call, args) : call;
    },
  });
}

/** The driver with every call delayed by a random 0–2 ms, so concurrent callers interleave. */
function shuffled(driver: StorageDriver): StorageDriver {
  return new Proxy(driver, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver) as unknown;
      if (typeof value !== 'function') return value;
      return async (...args: unknown[]) => {
        await new Promise((r) => setTimeout(r, Math.random() * 2));
        try {
          return (await (value as (...a: unknown[]) => unknown).apply(target, args)) as unknown;
        } finally {
          await new Promise((r) => setTimeout(r, Math.random() * 2));
        }
      };
    },
  });
}
