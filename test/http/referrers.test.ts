import { beforeAll, describe, expect, it } from 'vitest';
import { expectError, expectStatus, repoNamer, request } from '../helpers/http.js';
import { MEDIA_TYPES, makeImage, pushBlob, pushImage, pushManifest, randomBlob, sha256, type Image } from '../helpers/oci.js';
import { useRegistryServer } from '../helpers/s3-http.js';
import type { TestServer } from '../helpers/server.js';

/**
 * The referrers API over HTTP (distribution-spec v1.1 "Pushing Manifests with Subject",
 * "Listing Referrers"): a manifest with a `subject` is answered with OCI-Subject and listed
 * under its subject, with its artifactType and annotations, filterable by artifactType.
 */

const FRONTENDS = ['uws', 'node'] as const;
const combos: Array<{ frontend: (typeof FRONTENDS)[number]; storage: 'memory' | 's3' }> = [
  ...FRONTENDS.map((frontend) => ({ frontend, storage: 'memory' as const })),
  { frontend: 'node', storage: 's3' },
];
const EMPTY_CONFIG = { mediaType: 'application/vnd.oci.empty.v1+json', digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a', size: 2 };
const SBOM = 'application/vnd.example.sbom.v1+json';
const SIGNATURE = 'application/vnd.example.signature.v1+json';

interface ReferrersIndex {
  schemaVersion: number;
  mediaType: string;
  manifests: Array<{ mediaType: string; digest: string; size: number; artifactType?: string; annotations?: Record<string, string> }>;
}

const repo = repoNamer('referrers');

describe.each(combos)('referrers ($frontend front end, $storage storage)', ({ frontend, storage }) => {
  let server: TestServer;
  let base: string;
  const started = useRegistryServer(frontend, storage, 'referrers');
  if (!started) return;
  beforeAll(() => {
    server = started.server;
    base = server.url;
  });

  const subjectOf = (image: Image) => ({ mediaType: image.mediaType, digest: image.manifestDigest, size: image.manifestBytes.length });

  /** Pushes an artifact (one layer, empty config) that refers to `subject`; returns the PUT reply and the bytes. */
  async function pushArtifact(name: string, subject: object, artifactType: string, annotations?: Record<string, string>) {
    const payload = randomBlob(64);
    await pushBlob(base, name, payload);
    const manifest = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.imageManifest,
      artifactType,
      config: EMPTY_CONFIG,
      layers: [{ mediaType: 'application/octet-stream', digest: sha256(payload), size: payload.length }],
      subject,
      ...(annotations ? { annotations } : {}),
    };
    const bytes = Buffer.from(JSON.stringify(manifest));
    const r = await request(base, `/v2/${name}/manifests/${sha256(bytes)}`, { method: 'PUT', headers: { 'content-type': MEDIA_TYPES.imageManifest }, body: bytes });
    return { reply: r, bytes, digest: sha256(bytes) };
  }

  async function referrers(name: string, digest: string, query = ''): Promise<{ index: ReferrersIndex; filters: string | undefined }> {
    const r = await request(base, `/v2/${name}/referrers/${digest}${query}`);
    expectStatus(r, 200, `GET referrers ${digest}${query}`);
    expect(r.header('content-type')).toBe(MEDIA_TYPES.imageIndex);
    return { index: r.json<ReferrersIndex>(), filters: r.header('oci-filters-applied') };
  }

  it('PUT of a manifest with a subject answers OCI-Subject; one without does not', async () => {
    const name = repo('put');
    const image = makeImage({ layerSizesBytes: [10] });
    const pushed = await pushImage(base, name, 'v1', image);
    expect(pushed.headers.get('oci-subject')).toBeNull();
    const { reply } = await pushArtifact(name, subjectOf(image), SBOM);
    expectStatus(reply, 201);
    expect(reply.header('oci-subject')).toBe(image.manifestDigest);
  });

  it('lists referrers as an image index with artifactType and annotations', async () => {
    const name = repo('list');
    const image = makeImage({ layerSizesBytes: [10] });
    await pushImage(base, name, 'v1', image);
    const sbom = await pushArtifact(name, subjectOf(image), SBOM, { 'org.opencontainers.image.created': '2024-05-01T00:00:00Z' });
    const sig = await pushArtifact(name, subjectOf(image), SIGNATURE);
    // An image manifest with a subject and no artifactType reports its config's media type.
    const attached = makeImage({ layerSizesBytes: [10] });
    attached.manifest.subject = subjectOf(image);
    const attachedBytes = Buffer.from(JSON.stringify(attached.manifest));
    for (const b of [attached.config, ...attached.layers]) await pushBlob(base, name, b.bytes);
    const a = await pushManifest(base, name, 'attached', attachedBytes);
    expect(a.headers.get('oci-subject')).toBe(image.manifestDigest);

    const { index, filters } = await referrers(name, image.manifestDigest);
    expect(filters).toBeUndefined();
    expect(index.schemaVersion).toBe(2);
    expect(index.mediaType).toBe(MEDIA_TYPES.imageIndex);
    const byDigest = (x: { digest: string }, y: { digest: string }) => (x.digest < y.digest ? -1 : 1);
    expect([...index.manifests].sort(byDigest)).toEqual([
      { mediaType: MEDIA_TYPES.imageManifest, digest: sbom.digest, size: sbom.bytes.length, artifactType: SBOM, annotations: { 'org.opencontainers.image.created': '2024-05-01T00:00:00Z' } },
      { mediaType: MEDIA_TYPES.imageManifest, digest: sig.digest, size: sig.bytes.length, artifactType: SIGNATURE },
      { mediaType: MEDIA_TYPES.imageManifest, digest: a.digest, size: attachedBytes.length, artifactType: MEDIA_TYPES.imageConfig },
    ].sort(byDigest));
    // The listed manifests are what is served.
    const g = await request(base, `/v2/${name}/manifests/${sbom.digest}`);
    expectStatus(g, 200);
    expect(Buffer.compare(g.body, sbom.bytes)).toBe(0);
  });

  it('filters by artifactType and says so in OCI-Filters-Applied', async () => {
    const name = repo('filter');
    const image = makeImage({ layerSizesBytes: [10] });
    await pushImage(base, name, 'v1', image);
    const sbom = await pushArtifact(name, subjectOf(image), SBOM);
    await pushArtifact(name, subjectOf(image), SIGNATURE);
    const only = await referrers(name, image.manifestDigest, `?artifactType=${encodeURIComponent(SBOM)}`);
    expect(only.filters).toBe('artifactType');
    expect(only.index.manifests.map((m) => m.digest)).toEqual([sbom.digest]);
    const none = await referrers(name, image.manifestDigest, `?artifactType=${encodeURIComponent('application/vnd.example.none')}`);
    expect(none.filters).toBe('artifactType');
    expect(none.index.manifests).toEqual([]);
  });

  it('an empty index (200) when nothing refers to the digest, or the repository is unknown', async () => {
    const name = repo('empty');
    const image = makeImage({ layerSizesBytes: [10] });
    await pushImage(base, name, 'v1', image);
    for (const [n, d] of [[name, image.manifestDigest], [name, sha256('nothing')], [repo('nobody'), image.manifestDigest]] as const) {
      const { index } = await referrers(n, d);
      expect(index).toEqual({ schemaVersion: 2, mediaType: MEDIA_TYPES.imageIndex, manifests: [] });
    }
  });

  it('a referrer may be pushed before its subject exists', async () => {
    const name = repo('early');
    const image = makeImage({ layerSizesBytes: [10] });
    const sig = await pushArtifact(name, subjectOf(image), SIGNATURE);
    expectStatus(sig.reply, 201);
    expect((await referrers(name, image.manifestDigest)).index.manifests.map((m) => m.digest)).toEqual([sig.digest]);
    await pushImage(base, name, 'v1', image);
    expect((await referrers(name, image.manifestDigest)).index.manifests.map((m) => m.digest)).toEqual([sig.digest]);
  });

  it('an index with a subject is a referrer too', async () => {
    const name = repo('index');
    const image = makeImage({ layerSizesBytes: [10] });
    await pushImage(base, name, 'v1', image);
    const child = await pushArtifact(name, subjectOf(image), SBOM);
    const index = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.imageIndex,
      artifactType: 'application/vnd.example.bundle',
      manifests: [{ mediaType: MEDIA_TYPES.imageManifest, digest: child.digest, size: child.bytes.length }],
      subject: subjectOf(image),
    };
    const p = await pushManifest(base, name, 'bundle', index, MEDIA_TYPES.imageIndex);
    expect(p.headers.get('oci-subject')).toBe(image.manifestDigest);
    const { index: listed } = await referrers(name, image.manifestDigest, '?artifactType=application/vnd.example.bundle');
    expect(listed.manifests).toEqual([{ mediaType: MEDIA_TYPES.imageIndex, digest: p.digest, size: p.bytes.length, artifactType: 'application/vnd.example.bundle' }]);
  });

  it('deleting a referrer by digest takes it off the list', async () => {
    const name = repo('delete');
    const image = makeImage({ layerSizesBytes: [10] });
    await pushImage(base, name, 'v1', image);
    const a = await pushArtifact(name, subjectOf(image), SBOM);
    const b = await pushArtifact(name, subjectOf(image), SIGNATURE);
    expectStatus(await request(base, `/v2/${name}/manifests/${a.digest}`, { method: 'DELETE' }), 202);
    expect((await referrers(name, image.manifestDigest)).index.manifests.map((m) => m.digest)).toEqual([b.digest]);
  });

  // Found by probing (2026-12-02): referrers came in one response however many there were.
  // Each entry can carry a manifest's size of annotations, so 135 of them made a response
  // JSON.stringify could not build (500), and three already one of 12 MB that clients refuse.
  it('pages a long list with Link headers, about 1 MiB of descriptors a page, the filter kept', async () => {
    const name = repo('pages');
    const image = makeImage({ layerSizesBytes: [10] });
    await pushImage(base, name, 'v1', image);
    const pushed = new Set<string>();
    for (let i = 0; i < 7; i++) {
      const { reply, digest } = await pushArtifact(name, subjectOf(image), i % 2 === 0 ? SBOM : SIGNATURE, { note: String(i).repeat(300_000) });
      expectStatus(reply, 201);
      pushed.add(digest);
    }
    const walk = async (query: string): Promise<Array<{ digest: string; artifactType?: string }>> => {
      const seen: Array<{ digest: string; artifactType?: string }> = [];
      let url: string | undefined = `/v2/${name}/referrers/${image.manifestDigest}${query}`;
      for (let pages = 0; url !== undefined; pages++) {
        expect(pages).toBeLessThan(10);
        const r = await request(base, url);
        expectStatus(r, 200, `GET ${url}`);
        expect(r.body.length).toBeLessThan(1.5 * 1024 * 1024);
        const index = r.json<ReferrersIndex>();
        expect(index.manifests.length).toBeGreaterThan(0);
        seen.push(...index.manifests);
        const link = r.header('link');
        url = link === undefined ? undefined : /^<([^>]+)>; rel="next"$/.exec(link)![1]!;
        if (url !== undefined) expect(url).toContain(`/v2/${name}/referrers/${image.manifestDigest}?`);
      }
      return seen;
    };
    const all = await walk('');
    expect(all.map((d) => d.digest).sort()).toEqual([...pushed].sort());
    const sboms = await walk(`?artifactType=${encodeURIComponent(SBOM)}`);
    expect(sboms).toHaveLength(4);
    expect(sboms.every((d) => d.artifactType === SBOM)).toBe(true);
  });

  it('an invalid digest is 400 DIGEST_INVALID, an invalid name 400 NAME_INVALID', async () => {
    expectError(await request(base, `/v2/${repo('bad')}/referrers/sha256:abc`), 400, 'DIGEST_INVALID');
    expectError(await request(base, `/v2/${repo('bad')}/referrers/latest`), 400, 'DIGEST_INVALID');
    expectError(await request(base, `/v2/Bad/referrers/${sha256('x')}`), 400, 'NAME_INVALID');
    const r = await request(base, `/v2/${repo('bad')}/referrers/${sha256('x')}`, { method: 'DELETE' });
    expectError(r, 405, 'UNSUPPORTED', 'DELETE');
  });
});
