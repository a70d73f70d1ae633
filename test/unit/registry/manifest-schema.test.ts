import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { RegistryError } from '../../../src/errors.js';
import { artifactTypeOf, isNonDistributable, MEDIA_TYPES, parseManifest } from '../../../src/registry/manifest-schema.js';

const D1 = `sha256:${'1'.repeat(64)}`;
const D2 = `sha256:${'2'.repeat(64)}`;
const D3 = `sha512:${'3'.repeat(128)}`;

const desc = (mediaType: string, digest = D1, extra: Record<string, unknown> = {}) => ({ mediaType, digest, size: 10, ...extra });

const ociManifest = (extra: Record<string, unknown> = {}) => ({
  schemaVersion: 2,
  mediaType: MEDIA_TYPES.ociManifest,
  config: desc(MEDIA_TYPES.ociImageConfig, D1),
  layers: [desc('application/vnd.oci.image.layer.v1.tar+gzip', D2)],
  ...extra,
});
const ociIndex = (extra: Record<string, unknown> = {}) => ({
  schemaVersion: 2,
  mediaType: MEDIA_TYPES.ociIndex,
  manifests: [desc(MEDIA_TYPES.ociManifest, D1, { platform: { architecture: 'amd64', os: 'linux' } })],
  ...extra,
});
const dockerManifest = (extra: Record<string, unknown> = {}) => ({
  schemaVersion: 2,
  mediaType: MEDIA_TYPES.dockerManifest,
  config: desc(MEDIA_TYPES.dockerImageConfig, D1),
  layers: [desc('application/vnd.docker.image.rootfs.diff.tar.gzip', D2)],
  ...extra,
});
const dockerList = (extra: Record<string, unknown> = {}) => ({
  schemaVersion: 2,
  mediaType: MEDIA_TYPES.dockerManifestList,
  manifests: [desc(MEDIA_TYPES.dockerManifest, D1, { platform: { architecture: 'arm64', os: 'linux', variant: 'v8' } })],
  ...extra,
});

const bytes = (doc: unknown): Buffer => Buffer.from(typeof doc === 'string' ? doc : JSON.stringify(doc));

/** The MANIFEST_INVALID error parseManifest throws (fails the test if it doesn't). */
function invalid(doc: unknown, contentType?: string): RegistryError {
  try {
    parseManifest(bytes(doc), contentType);
  } catch (err) {
    expect(err).toBeInstanceOf(RegistryError);
    expect((err as RegistryError).code).toBe('MANIFEST_INVALID');
    return err as RegistryError;
  }
  throw new Error(`expected MANIFEST_INVALID for ${JSON.stringify(doc).slice(0, 200)}`);
}

describe('parseManifest: the four schema 2 types', () => {
  it.each([
    ['OCI image manifest', ociManifest(), MEDIA_TYPES.ociManifest, 'manifest'],
    ['OCI image index', ociIndex(), MEDIA_TYPES.ociIndex, 'index'],
    ['Docker schema 2 manifest', dockerManifest(), MEDIA_TYPES.dockerManifest, 'manifest'],
    ['Docker manifest list', dockerList(), MEDIA_TYPES.dockerManifestList, 'index'],
  ])('accepts a %s, with its Content-Type or without one', (_label, doc, type, kind) => {
    for (const contentType of [type, `${type}; charset=utf-8`, undefined, 'application/octet-stream']) {
      const m = parseManifest(bytes(doc), contentType);
      expect(m.mediaType).toBe(type);
      expect(m.kind).toBe(kind);
    }
  });

  it('returns the config, layers and children it found', () => {
    const m = parseManifest(bytes(ociManifest()), MEDIA_TYPES.ociManifest);
    expect(m.kind === 'manifest' && m.config.digest).toBe(D1);
    expect(m.kind === 'manifest' && m.layers.map((l) => l.digest)).toEqual([D2]);
    const i = parseManifest(bytes(ociIndex()), MEDIA_TYPES.ociIndex);
    expect(i.kind === 'index' && i.manifests.map((c) => c.digest)).toEqual([D1]);
  });

  it('takes the media type from Content-Type when an OCI document leaves it out', () => {
    const { mediaType: _m, ...noType } = ociManifest();
    expect(parseManifest(bytes(noType), MEDIA_TYPES.ociManifest).mediaType).toBe(MEDIA_TYPES.ociManifest);
    const { mediaType: _i, ...noTypeIndex } = ociIndex();
    expect(parseManifest(bytes(noTypeIndex), MEDIA_TYPES.ociIndex).mediaType).toBe(MEDIA_TYPES.ociIndex);
    // Neither header nor field: nothing says what it is.
    expect(invalid(noType).message).toMatch(/Content-Type/);
  });

  it('accepts sha512 digests, empty layer lists, urls, annotations and unknown fields', () => {
    const doc = ociManifest({
      layers: [],
      annotations: { 'org.opencontainers.image.created': '2024-01-01T00:00:00Z' },
      'x-vendor-extension': { anything: [1, 2, 3] },
      config: desc(MEDIA_TYPES.ociImageConfig, D3, { urls: ['https://example.com/c'], 'x-field': true }),
    });
    const m = parseManifest(bytes(doc), MEDIA_TYPES.ociManifest);
    expect(m.annotations).toEqual({ 'org.opencontainers.image.created': '2024-01-01T00:00:00Z' });
  });
});

describe('parseManifest: refusals (MANIFEST_INVALID)', () => {
  it.each([
    ['not JSON', '{"schemaVersion": 2,'],
    ['empty', ''],
    ['an array', '[]'],
    ['a string', '"manifest"'],
    ['null', 'null'],
  ])('%s', (_label, text) => {
    invalid(text, MEDIA_TYPES.ociManifest);
  });

  it('refuses schema 1 as deprecated, by field, by header and by media type', () => {
    const v1 = { schemaVersion: 1, name: 'library/busybox', tag: 'latest', fsLayers: [], history: [] };
    for (const ct of [undefined, 'application/vnd.docker.distribution.manifest.v1+prettyjws', 'application/vnd.docker.distribution.manifest.v1+json']) {
      expect(invalid(v1, ct).message).toMatch(/schema 1.*deprecated/);
    }
    expect(invalid({ ...v1, schemaVersion: 2 }, 'application/vnd.docker.distribution.manifest.v1+prettyjws').message).toMatch(/deprecated/);
  });

  it('refuses a document whose mediaType disagrees with Content-Type', () => {
    const e = invalid(ociManifest(), MEDIA_TYPES.dockerManifest);
    expect(e.detail).toEqual({ contentType: MEDIA_TYPES.dockerManifest, mediaType: MEDIA_TYPES.ociManifest });
    invalid(ociIndex(), MEDIA_TYPES.ociManifest);
    invalid(dockerList(), MEDIA_TYPES.ociIndex);
  });

  it('refuses media types that are not manifests, and the withdrawn OCI artifact manifest', () => {
    expect(invalid(ociManifest({ mediaType: undefined }), 'text/plain').detail).toMatchObject({ mediaType: 'text/plain' });
    invalid({ schemaVersion: 2, mediaType: 'application/vnd.oci.artifact.manifest.v1+json', blobs: [] });
  });

  it('refuses an index pushed as a manifest, and a manifest pushed as an index (schema check)', () => {
    const { mediaType: _a, ...bareIndex } = ociIndex();
    invalid(bareIndex, MEDIA_TYPES.ociManifest);
    const { mediaType: _b, ...bareManifest } = ociManifest();
    invalid(bareManifest, MEDIA_TYPES.ociIndex);
  });

  it.each<[string, Record<string, unknown>]>([
    ['schemaVersion 3', { schemaVersion: 3 }],
    ['schemaVersion as a string', { schemaVersion: '2' }],
    ['no schemaVersion', { schemaVersion: undefined }],
    ['no config', { config: undefined }],
    ['no layers', { layers: undefined }],
    ['layers not an array', { layers: {} }],
    ['a config without a digest', { config: { mediaType: MEDIA_TYPES.ociImageConfig, size: 1 } }],
    ['a layer with a malformed digest', { layers: [desc('application/vnd.oci.image.layer.v1.tar', 'sha256:abc')] }],
    ['a layer with an upper-case digest', { layers: [desc('application/vnd.oci.image.layer.v1.tar', `sha256:${'A'.repeat(64)}`)] }],
    ['a layer with an unknown digest algorithm', { layers: [desc('application/vnd.oci.image.layer.v1.tar', `md5:${'a'.repeat(32)}`)] }],
    ['a negative size', { layers: [desc('application/vnd.oci.image.layer.v1.tar', D2, { size: -1 })] }],
    ['a fractional size', { layers: [desc('application/vnd.oci.image.layer.v1.tar', D2, { size: 1.5 })] }],
    ['a size given as a string', { layers: [desc('application/vnd.oci.image.layer.v1.tar', D2, { size: '10' })] }],
    ['a descriptor media type that is not one', { layers: [desc('not a media type', D2)] }],
    ['annotations with a non-string value', { annotations: { a: 1 } }],
    ['urls that are not URLs', { layers: [desc('application/vnd.oci.image.layer.v1.tar', D2, { urls: ['not a url'] })] }],
    ['data that is not base64', { config: desc(MEDIA_TYPES.ociEmpty, D1, { data: '{}' }) }],
    ['an artifactType that is not a media type', { artifactType: 'example' }],
    ['a subject that is not a descriptor', { subject: { digest: D1 } }],
  ])('an OCI image manifest with %s', (_label, change) => {
    const e = invalid(ociManifest(change), MEDIA_TYPES.ociManifest);
    expect((e.detail as { issues: unknown[] }).issues.length).toBeGreaterThan(0);
  });

  it.each<[string, Record<string, unknown>]>([
    ['no manifests', { manifests: undefined }],
    ['a child with a bad digest', { manifests: [desc(MEDIA_TYPES.ociManifest, 'sha256:zz')] }],
    ['a platform without os', { manifests: [desc(MEDIA_TYPES.ociManifest, D1, { platform: { architecture: 'amd64' } })] }],
  ])('an OCI index with %s', (_label, change) => {
    invalid(ociIndex(change), MEDIA_TYPES.ociIndex);
  });

  it('requires the mediaType field in Docker documents', () => {
    invalid(dockerManifest({ mediaType: undefined }), MEDIA_TYPES.dockerManifest);
    invalid(dockerList({ mediaType: undefined }), MEDIA_TYPES.dockerManifestList);
  });

  it('refuses a descriptor whose data is not the content it names (image-spec descriptor.md), wherever it is', () => {
    const content = Buffer.from('{"architecture":"amd64","os":"linux"}');
    const digestOf = (b: Buffer, alg = 'sha256'): string => `${alg}:${createHash(alg).update(b).digest('hex')}`;
    const other = Buffer.from('{"architecture":"arm64","os":"linux"}');
    const named = { mediaType: MEDIA_TYPES.ociImageConfig, digest: digestOf(content), size: content.length };
    const lying = { ...named, data: other.toString('base64') };
    const e = invalid(ociManifest({ config: lying }), MEDIA_TYPES.ociManifest);
    expect(e.message).toMatch(/data is not the content/);
    expect(e.detail).toEqual({ path: 'config', digest: named.digest, size: content.length, dataDigest: digestOf(other), dataSize: other.length });
    // Right bytes, wrong size: the size is what a client allots.
    invalid(ociManifest({ config: { ...named, size: content.length + 1, data: content.toString('base64') } }), MEDIA_TYPES.ociManifest);
    expect(invalid(ociManifest({ layers: [desc(MEDIA_TYPES.ociEmpty), lying] }), MEDIA_TYPES.ociManifest).detail).toMatchObject({ path: 'layers.1' });
    expect(invalid(ociManifest({ subject: { ...lying, mediaType: MEDIA_TYPES.ociManifest } }), MEDIA_TYPES.ociManifest).detail).toMatchObject({ path: 'subject' });
    expect(invalid(ociIndex({ manifests: [{ ...lying, mediaType: MEDIA_TYPES.ociManifest }] }), MEDIA_TYPES.ociIndex).detail).toMatchObject({ path: 'manifests.0' });
    invalid(dockerManifest({ config: { ...lying, mediaType: MEDIA_TYPES.dockerImageConfig } }), MEDIA_TYPES.dockerManifest);
    // Data that is the content, by sha256 or sha512, is fine; so is a Docker document's
    // subject, which its schema does not have and nobody reads.
    parseManifest(bytes(ociManifest({ config: { ...named, data: content.toString('base64') } })), MEDIA_TYPES.ociManifest);
    parseManifest(bytes(ociManifest({ config: { ...named, digest: digestOf(content, 'sha512'), data: content.toString('base64') } })), MEDIA_TYPES.ociManifest);
    parseManifest(bytes(ociManifest({ config: { ...named, size: 0, digest: digestOf(Buffer.alloc(0)), data: '' } })), MEDIA_TYPES.ociManifest);
    parseManifest(bytes(dockerManifest({ subject: { data: 5 } })), MEDIA_TYPES.dockerManifest);
  });

  it('names where the schema was violated', () => {
    const e = invalid(ociManifest({ layers: [desc('application/vnd.oci.image.layer.v1.tar', D2, { size: -1 })] }), MEDIA_TYPES.ociManifest);
    expect(e.detail).toMatchObject({ mediaType: MEDIA_TYPES.ociManifest, issues: [{ path: 'layers.0.size' }] });
  });
});

describe('parseManifest: artifacts (image-spec v1.1)', () => {
  const emptyConfig = desc(MEDIA_TYPES.ociEmpty, 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a', { size: 2, data: 'e30=' });
  const subject = desc(MEDIA_TYPES.ociManifest, D2, { size: 500 });

  it('reads artifactType and subject of manifests and indexes', () => {
    const m = parseManifest(bytes(ociManifest({ artifactType: 'application/vnd.example.sbom+json', config: emptyConfig, subject })), undefined);
    expect(m.artifactType).toBe('application/vnd.example.sbom+json');
    expect(m.subject?.digest).toBe(D2);
    expect(artifactTypeOf(m)).toBe('application/vnd.example.sbom+json');
    const i = parseManifest(bytes(ociIndex({ artifactType: 'application/vnd.example.set', subject })), undefined);
    expect(i.subject?.digest).toBe(D2);
    expect(artifactTypeOf(i)).toBe('application/vnd.example.set');
  });

  it("reports an image manifest's config media type as its artifact type when it has none", () => {
    const m = parseManifest(bytes(ociManifest({ config: desc('application/vnd.cncf.helm.config.v1+json'), subject })), undefined);
    expect(m.artifactType).toBeUndefined();
    expect(artifactTypeOf(m)).toBe('application/vnd.cncf.helm.config.v1+json');
    expect(artifactTypeOf(parseManifest(bytes(ociIndex()), undefined))).toBeUndefined();
  });

  it('ignores subject and artifactType in Docker documents, whose schemas have neither', () => {
    const m = parseManifest(bytes(dockerManifest({ subject, artifactType: 'application/x-thing' })), undefined);
    expect(m.subject).toBeUndefined();
    expect(m.artifactType).toBeUndefined();
  });
});

describe('isNonDistributable', () => {
  it('is true only for foreign layer types that carry urls', () => {
    const foreign = 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip';
    expect(isNonDistributable(desc(foreign, D1, { urls: ['https://example.com/layer'] }))).toBe(true);
    expect(isNonDistributable(desc('application/vnd.oci.image.layer.nondistributable.v1.tar+gzip', D1, { urls: ['https://x.example/l'] }))).toBe(true);
    expect(isNonDistributable(desc(foreign, D1))).toBe(false);
    expect(isNonDistributable(desc(foreign, D1, { urls: [] }))).toBe(false);
    expect(isNonDistributable(desc('application/vnd.oci.image.layer.v1.tar+gzip', D1, { urls: ['https://example.com/layer'] }))).toBe(false);
  });
});
