import { beforeAll, describe, expect, it } from 'vitest';
import { expectError, expectStatus, parseRawReply, repoNamer, request, socketExchange } from '../helpers/http.js';
import { MEDIA_TYPES, makeImage, pushBlob, pushImage, pushManifest, randomBlob, sha256 } from '../helpers/oci.js';
import { useRegistryServer } from '../helpers/s3-http.js';
import type { TestServer } from '../helpers/server.js';

/**
 * Manifest validation over HTTP, one test per error a manifest PUT can answer (distribution-
 * spec v1.1 "Pushing Manifests", "Error Codes"): a digest that doesn't match, documents that
 * are not schema 2 manifests, blobs and index children the repository doesn't hold. Also the
 * blobs every repository has without a push, idempotent pushes and racing tag pushes.
 */

const FRONTENDS = ['uws', 'node'] as const;
const combos: Array<{ frontend: (typeof FRONTENDS)[number]; storage: 'memory' | 's3' }> = [
  ...FRONTENDS.map((frontend) => ({ frontend, storage: 'memory' as const })),
  { frontend: 'node', storage: 's3' },
];

const EMPTY_JSON = 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a';
const EMPTY_LAYER = 'sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4';
const DOCKER = {
  manifest: 'application/vnd.docker.distribution.manifest.v2+json',
  list: 'application/vnd.docker.distribution.manifest.list.v2+json',
  config: 'application/vnd.docker.container.image.v1+json',
  layer: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
};

const repo = repoNamer('validation');

describe.each(combos)('manifest validation ($frontend front end, $storage storage)', ({ frontend, storage }) => {
  let server: TestServer;
  let base: string;
  const started = useRegistryServer(frontend, storage, 'validation');
  if (!started) return;
  beforeAll(() => {
    server = started.server;
    base = server.url;
  });

  const put = (name: string, reference: string, body: string | Buffer | object, contentType?: string) =>
    request(base, `/v2/${name}/manifests/${reference}`, {
      method: 'PUT',
      headers: contentType ? { 'content-type': contentType } : {},
      body: typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body),
    });

  /** The reference must still be unknown: a refused PUT stores nothing. */
  async function expectNothingStored(name: string, reference: string): Promise<void> {
    const r = await request(base, `/v2/${name}/manifests/${reference}`);
    expectStatus(r, 404, `GET ${reference} after a refused PUT`);
  }

  it('DIGEST_INVALID (400): PUT by a digest the bytes do not have', async () => {
    const name = repo('digest');
    const image = makeImage({ layerSizesBytes: [10] });
    for (const b of [image.config, ...image.layers]) await pushBlob(base, name, b.bytes);
    const wrong = sha256('other bytes');
    const [e] = expectError(await put(name, wrong, image.manifestBytes, image.mediaType), 400, 'DIGEST_INVALID', 'PUT');
    expect(e!.detail).toEqual({ expected: wrong, actual: image.manifestDigest });
    await expectNothingStored(name, wrong);
    await expectNothingStored(name, image.manifestDigest);
  });

  describe('MANIFEST_INVALID (400)', () => {
    it('for schema 1, saying it is deprecated', async () => {
      const name = repo('schema1');
      const v1 = { schemaVersion: 1, name, tag: 'v1', architecture: 'amd64', fsLayers: [{ blobSum: EMPTY_LAYER }], history: [{ v1Compatibility: '{}' }] };
      for (const ct of ['application/vnd.docker.distribution.manifest.v1+prettyjws', 'application/vnd.docker.distribution.manifest.v1+json', undefined]) {
        const [e] = expectError(await put(name, 'v1', v1, ct), 400, 'MANIFEST_INVALID', 'PUT');
        expect(e!.message).toMatch(/schema 1.*deprecated/);
      }
      await expectNothingStored(name, 'v1');
    });

    it('for a schema violation, naming where', async () => {
      const name = repo('schema');
      const image = makeImage({ layerSizesBytes: [10] });
      const broken = { ...image.manifest, layers: [{ mediaType: MEDIA_TYPES.layerTar, digest: 'sha256:abc', size: -5 }] };
      const [e] = expectError(await put(name, 'v1', broken, MEDIA_TYPES.imageManifest), 400, 'MANIFEST_INVALID', 'PUT');
      const paths = (e!.detail as { issues: Array<{ path: string }> }).issues.map((i) => i.path).sort();
      expect(paths).toEqual(['layers.0.digest', 'layers.0.size']);
      expectError(await put(name, 'v1', { schemaVersion: 2, mediaType: MEDIA_TYPES.imageManifest, layers: [] }, MEDIA_TYPES.imageManifest), 400, 'MANIFEST_INVALID', 'PUT');
      expectError(await put(name, 'v1', { schemaVersion: 2, mediaType: MEDIA_TYPES.imageIndex }, MEDIA_TYPES.imageIndex), 400, 'MANIFEST_INVALID', 'PUT');
      await expectNothingStored(name, 'v1');
    });

    it('for invalid JSON', async () => {
      const name = repo('json');
      expectError(await put(name, 'v1', '{"schemaVersion":2,', MEDIA_TYPES.imageManifest), 400, 'MANIFEST_INVALID', 'PUT');
      expectError(await put(name, 'v1', 'null', MEDIA_TYPES.imageManifest), 400, 'MANIFEST_INVALID', 'PUT');
    });

    it('for a manifest larger than manifests.maxBytes, with 413; when announced, before its body is sent', async () => {
      const name = repo('large');
      // Only the head: the answer must not wait for the 4 MiB + 1 bytes announced.
      const reply = await socketExchange(server.port,
        `PUT /v2/${name}/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: ${MEDIA_TYPES.imageManifest}\r\nContent-Length: ${4 * 1024 * 1024 + 1}\r\n\r\n`,
        { timeoutMs: 5000, until: (received) => parseRawReply(received.toString('latin1')).codes.length > 0 });
      expect(reply.timedOut).toBe(false);
      const r = parseRawReply(reply.text);
      // distribution-spec "Pushing Manifests": a registry that enforces a limit SHOULD answer 413.
      expect(r.status).toBe(413);
      expect(r.codes).toEqual(['MANIFEST_INVALID']);
      await expectNothingStored(name, 'v1');
      // Chunked, so that only the bytes tell: the same.
      const chunked = await request(base, `/v2/${name}/manifests/v1`, {
        method: 'PUT', headers: { 'content-type': MEDIA_TYPES.imageManifest }, body: [Buffer.alloc(3 * 1024 * 1024, 32), Buffer.alloc(1024 * 1024 + 1, 32)],
      });
      const [e] = expectError(chunked, 413, 'MANIFEST_INVALID', 'PUT chunked');
      expect(e!.message).toMatch(/too large/);
      await expectNothingStored(name, 'v1');
    });

    it('when the document media type disagrees with Content-Type', async () => {
      const name = repo('type');
      const image = makeImage({ layerSizesBytes: [10] });
      for (const b of [image.config, ...image.layers]) await pushBlob(base, name, b.bytes);
      const [e] = expectError(await put(name, 'v1', image.manifestBytes, DOCKER.manifest), 400, 'MANIFEST_INVALID', 'PUT');
      expect(e!.detail).toEqual({ contentType: DOCKER.manifest, mediaType: MEDIA_TYPES.imageManifest });
      expectError(await put(name, 'v1', image.manifestBytes, MEDIA_TYPES.imageIndex), 400, 'MANIFEST_INVALID', 'PUT');
      await expectNothingStored(name, 'v1');
      // The same bytes under their own type are fine.
      expectStatus(await put(name, 'v1', image.manifestBytes, MEDIA_TYPES.imageManifest), 201);
    });

    // Found by probing (2026-12-02): each of these was stored with 201, and Go clients
    // (skopeo, containerd, docker) then read it otherwise than this registry checked it, or
    // could not read it at all.
    it('for a document that is a manifest and an index at once (CVE-2021-41190)', async () => {
      const name = repo('ambiguous');
      const empty = { mediaType: 'application/vnd.oci.empty.v1+json', digest: EMPTY_JSON, size: 2 };
      const cases: Array<[string, object]> = [
        [MEDIA_TYPES.imageManifest, { schemaVersion: 2, mediaType: MEDIA_TYPES.imageManifest, config: empty, layers: [], manifests: [empty] }],
        [MEDIA_TYPES.imageIndex, { schemaVersion: 2, mediaType: MEDIA_TYPES.imageIndex, manifests: [], layers: [empty] }],
        [MEDIA_TYPES.imageIndex, { schemaVersion: 2, mediaType: MEDIA_TYPES.imageIndex, manifests: [], config: empty }],
        [DOCKER.list, { schemaVersion: 2, mediaType: DOCKER.list, manifests: [], layers: [] }],
        [DOCKER.manifest, { schemaVersion: 2, mediaType: DOCKER.manifest, config: empty, layers: [], manifests: [] }],
      ];
      for (const [type, doc] of cases) {
        const [e] = expectError(await put(name, 'v1', doc, type), 400, 'MANIFEST_INVALID', `PUT ${JSON.stringify(doc)}`);
        expect(e!.message).toMatch(/expected an? (manifest|index) but found/);
      }
      await expectNothingStored(name, 'v1');
      // null is no value in Go either: a manifest with "manifests": null is a manifest.
      expectStatus(await put(name, 'v1', { schemaVersion: 2, mediaType: MEDIA_TYPES.imageManifest, config: empty, layers: [], manifests: null }, MEDIA_TYPES.imageManifest), 201);
    });

    it('for a field that differs from a known one only in case, where Go would read it', async () => {
      const name = repo('case');
      const empty = { mediaType: 'application/vnd.oci.empty.v1+json', digest: EMPTY_JSON, size: 2 };
      const missing = { mediaType: MEDIA_TYPES.layerTar, digest: sha256('never pushed'), size: 3 };
      const base2 = { schemaVersion: 2, mediaType: MEDIA_TYPES.imageManifest, config: empty, layers: [] as object[] };
      const cases: object[] = [
        { ...base2, Layers: [missing] },
        { ...base2, layerſ: [missing] },
        { ...base2, SchemaVersion: 2 },
        { ...base2, config: { ...empty, Digest: missing.digest } },
        { ...base2, layers: [{ ...empty, SIZE: 5 }] },
        { schemaVersion: 2, mediaType: MEDIA_TYPES.imageIndex, manifests: [{ ...empty, platform: { architecture: 'amd64', os: 'linux', OS: 'windows' } }] },
      ];
      for (const doc of cases) {
        const [e] = expectError(await put(name, 'v1', doc, (doc as { mediaType: string }).mediaType), 400, 'MANIFEST_INVALID', `PUT ${JSON.stringify(doc)}`);
        expect(e!.message).toMatch(/only in case/);
      }
      await expectNothingStored(name, 'v1');
      // Map keys are exact in Go too: annotations and unknown fields may spell what they like.
      const fine = { ...base2, annotations: { Size: 'x', LAYERS: 'y' }, extension: { Layers: [missing] } };
      expectStatus(await put(name, 'v1', fine, MEDIA_TYPES.imageManifest), 201);
    });

    it('for a schemaVersion not written as the integer 2, and for nesting Go gives up on', async () => {
      const name = repo('gojson');
      const empty = { mediaType: 'application/vnd.oci.empty.v1+json', digest: EMPTY_JSON, size: 2 };
      const body = JSON.stringify({ mediaType: MEDIA_TYPES.imageManifest, config: empty, layers: [] });
      for (const v of ['2.0', '2e0', '20e-1', '2.000']) {
        const [e] = expectError(await put(name, 'v1', `{"schemaVersion": ${v},${body.slice(1)}`, MEDIA_TYPES.imageManifest), 400, 'MANIFEST_INVALID', `schemaVersion ${v}`);
        expect(e!.message).toMatch(/integer 2/);
      }
      const nested = (depth: number): string => `{"schemaVersion":2,"x":${'['.repeat(depth)}${']'.repeat(depth)},${body.slice(1)}`;
      const [e] = expectError(await put(name, 'v1', nested(5000), MEDIA_TYPES.imageManifest), 400, 'MANIFEST_INVALID', 'nested 5000 deep');
      expect(e!.message).toMatch(/nests deeper/);
      await expectNothingStored(name, 'v1');
      expectStatus(await put(name, 'v1', nested(100), MEDIA_TYPES.imageManifest), 201);
      // The depth is known before the document is parsed (V8 parses any depth, slowly: 4 MiB of
      // `[` took 2.6 s of the event loop), so text that would never parse is refused for it too,
      // while brackets inside strings are only text.
      for (const deep of ['['.repeat(1_000_000), `{"schemaVersion":2,"x":${'{"a":'.repeat(5000)}`]) {
        const [d] = expectError(await put(name, 'v3', deep, MEDIA_TYPES.imageManifest), 400, 'MANIFEST_INVALID', `${deep.slice(0, 10)}... unterminated`);
        expect(d!.message).toMatch(/nests deeper/);
      }
      await expectNothingStored(name, 'v3');
      const bracketed = `{"schemaVersion":2,"annotations":{"a":"${'[{'.repeat(3000)}\\\"${'['.repeat(3000)}"},${body.slice(1)}`;
      expectStatus(await put(name, 'v3', bracketed, MEDIA_TYPES.imageManifest), 201);
      // The key's own spelling does not matter: an escaped "schemaVersion" is still it.
      expectStatus(await put(name, 'v2', `{"schema\\u0056ersion": 2,${body.slice(1)}`, MEDIA_TYPES.imageManifest), 201);
    });

    // Found by probing (2026-12-03): `"size": 24.0` passed (JSON.parse reads 24), and Go's
    // ParseInt refuses it, so every Go client's pull of the manifest failed.
    it('for a descriptor size not written as an integer Go can read', async () => {
      const name = repo('gosize');
      const empty = { mediaType: 'application/vnd.oci.empty.v1+json', digest: EMPTY_JSON, size: 2 };
      const sized = (size: string): Record<string, string> => ({
        config: `{"schemaVersion":2,"mediaType":"${MEDIA_TYPES.imageManifest}","config":{"mediaType":"${empty.mediaType}","digest":"${EMPTY_JSON}","size":${size}},"layers":[]}`,
        layer: `{"schemaVersion":2,"mediaType":"${MEDIA_TYPES.imageManifest}","config":${JSON.stringify(empty)},"layers":[{"mediaType":"${empty.mediaType}","digest":"${EMPTY_JSON}","size":${size}}]}`,
        subject: `{"schemaVersion":2,"mediaType":"${MEDIA_TYPES.imageManifest}","config":${JSON.stringify(empty)},"layers":[],"subject":{"mediaType":"${MEDIA_TYPES.imageManifest}","digest":"${EMPTY_JSON}","size":${size}}}`,
        child: `{"schemaVersion":2,"mediaType":"${MEDIA_TYPES.imageIndex}","manifests":[{"mediaType":"${MEDIA_TYPES.imageManifest}","digest":"${EMPTY_JSON}","size":${size}}]}`,
      });
      for (const v of ['2.0', '2e0', '20E-1', '0.2e1', '9223372036854775808']) {
        for (const [where, doc] of Object.entries(sized(v))) {
          const type = where === 'child' ? MEDIA_TYPES.imageIndex : MEDIA_TYPES.imageManifest;
          const [e] = expectError(await put(name, 'v1', doc, type), 400, 'MANIFEST_INVALID', `${where} size ${v}`);
          expect(e!.message).toMatch(/size must be written as an integer/);
        }
      }
      await expectNothingStored(name, 'v1');
      // Elsewhere a number is Go's to ignore (an unknown field) or a string (annotations).
      const fine = `{"schemaVersion":2,"mediaType":"${MEDIA_TYPES.imageManifest}","config":${JSON.stringify(empty)},"layers":[],"extension":{"size":2.0,"layers":[{"size":1e3}]},"annotations":{"size":"2.0"}}`;
      expectStatus(await put(name, 'v1', fine, MEDIA_TYPES.imageManifest), 201);
    });

    // Found by probing (2026-12-04): a config descriptor whose `data` held other bytes than
    // the config was stored (201); image-spec says the decoded data MUST be the content, and
    // a client that reads `data` instead of fetching the blob read a config nobody checked.
    it('for a descriptor whose embedded data is not the content it names, naming where', async () => {
      const name = repo('data');
      const image = makeImage({ layerSizesBytes: [10] });
      for (const b of [image.config, ...image.layers]) await pushBlob(base, name, b.bytes);
      const withData = (config: Record<string, unknown>): Buffer => Buffer.from(JSON.stringify({ ...image.manifest, config }));
      const other = Buffer.from('{"architecture":"arm64","os":"linux"}');
      const [e] = expectError(
        await put(name, 'v1', withData({ ...image.config.descriptor, data: other.toString('base64') }), image.mediaType), 400, 'MANIFEST_INVALID', 'PUT',
      );
      expect(e!.message).toMatch(/data is not the content/);
      expect(e!.detail).toMatchObject({ path: 'config', digest: image.config.descriptor.digest, dataDigest: sha256(other) });
      await expectNothingStored(name, 'v1');
      // The config's own bytes as its data: stored.
      expectStatus(await put(name, 'v1', withData({ ...image.config.descriptor, data: image.config.bytes.toString('base64') }), image.mediaType), 201);
    });

    it('for a media type that is not a manifest', async () => {
      const name = repo('unsupported');
      expectError(await put(name, 'v1', '{"schemaVersion":2}', 'text/plain'), 400, 'MANIFEST_INVALID', 'PUT');
      expectError(await put(name, 'v1', '{"schemaVersion":2,"mediaType":"application/vnd.oci.artifact.manifest.v1+json","blobs":[]}'), 400, 'MANIFEST_INVALID', 'PUT');
    });
  });

  it('MANIFEST_INVALID for a layer or config descriptor whose size is not the blob\'s, naming it; nothing stored', async () => {
    const name = repo('sizes');
    const image = makeImage({ layerSizesBytes: [10, 20] });
    for (const b of [image.config, ...image.layers]) await pushBlob(base, name, b.bytes);
    const lying = (m: Record<string, unknown>): Buffer => Buffer.from(JSON.stringify(m));
    const layers = image.layers.map((l) => l.descriptor);
    const shortLayer = lying({ ...image.manifest, layers: [layers[0], { ...layers[1]!, size: 19 }] });
    const [e] = expectError(await put(name, 'v1', shortLayer, image.mediaType), 400, 'MANIFEST_INVALID', 'PUT');
    expect(e!.detail).toEqual({ digest: layers[1]!.digest, size: 19, stored: 20 });
    const bigConfig = lying({ ...image.manifest, config: { ...image.config.descriptor, size: image.config.bytes.length + 1 } });
    expectError(await put(name, 'v1', bigConfig, image.mediaType), 400, 'MANIFEST_INVALID', 'PUT');
    await expectNothingStored(name, 'v1');
    expectStatus(await put(name, 'v1', image.manifestBytes, image.mediaType), 201);
  });

  it('MANIFEST_INVALID for an index child descriptor whose size is not the manifest\'s, naming it; nothing stored', async () => {
    // Found by probing: accepted (201), and containerd's pull of the index then failed with
    // "failed to read expected number of bytes: unexpected EOF".
    const name = repo('child-sizes');
    const image = makeImage({ layerSizesBytes: [10] });
    await pushImage(base, name, image.manifestDigest, image);
    const index = (size: number): Record<string, unknown> => ({
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.imageIndex,
      manifests: [{ mediaType: image.mediaType, digest: image.manifestDigest, size, platform: { architecture: 'amd64', os: 'linux' } }],
    });
    const stored = image.manifestBytes.length;
    for (const size of [stored + 7, stored - 1]) {
      const [e] = expectError(await put(name, 'multi', index(size), MEDIA_TYPES.imageIndex), 400, 'MANIFEST_INVALID', `size ${size}`);
      expect(e!.detail).toEqual({ digest: image.manifestDigest, size, stored });
    }
    await expectNothingStored(name, 'multi');
    expectStatus(await put(name, 'multi', index(stored), MEDIA_TYPES.imageIndex), 201);
  });

  describe('MANIFEST_BLOB_UNKNOWN (400)', () => {
    it('for a layer that was never pushed, naming it', async () => {
      const name = repo('layer');
      const image = makeImage({ layerSizesBytes: [10, 20] });
      await pushBlob(base, name, image.config.bytes);
      await pushBlob(base, name, image.layers[0]!.bytes);
      const [e] = expectError(await put(name, 'v1', image.manifestBytes, image.mediaType), 400, 'MANIFEST_BLOB_UNKNOWN', 'PUT');
      expect(e!.detail).toEqual({ digest: image.layers[1]!.descriptor.digest });
      await expectNothingStored(name, 'v1');
      await pushBlob(base, name, image.layers[1]!.bytes);
      expectStatus(await put(name, 'v1', image.manifestBytes, image.mediaType), 201);
    });

    it('for a config that was never pushed, naming it', async () => {
      const name = repo('config');
      const image = makeImage({ layerSizesBytes: [10] });
      await pushBlob(base, name, image.layers[0]!.bytes);
      const [e] = expectError(await put(name, 'v1', image.manifestBytes, image.mediaType), 400, 'MANIFEST_BLOB_UNKNOWN', 'PUT');
      expect(e!.detail).toEqual({ digest: image.config.descriptor.digest });
    });

    it('for a blob pushed to another repository only; mounting it makes the push work', async () => {
      const name = repo('mount');
      const other = repo('mount-source');
      const image = makeImage({ layerSizesBytes: [10] });
      for (const b of [image.config, ...image.layers]) await pushBlob(base, other, b.bytes);
      await pushBlob(base, name, image.config.bytes);
      const [e] = expectError(await put(name, 'v1', image.manifestBytes, image.mediaType), 400, 'MANIFEST_BLOB_UNKNOWN', 'PUT');
      expect(e!.detail).toEqual({ digest: image.layers[0]!.descriptor.digest });
      const m = await request(base, `/v2/${name}/blobs/uploads/?mount=${image.layers[0]!.descriptor.digest}&from=${other}`, { method: 'POST' });
      expectStatus(m, 201);
      expectStatus(await put(name, 'v1', image.manifestBytes, image.mediaType), 201);
    });
  });

  it('MANIFEST_UNKNOWN for an index child the repository does not hold, naming it', async () => {
    const name = repo('child');
    const amd64 = makeImage({ layerSizesBytes: [10] });
    const arm64 = makeImage({ layerSizesBytes: [10] });
    await pushImage(base, name, amd64.manifestDigest, amd64);
    // arm64 is complete in another repository, which does not count.
    await pushImage(base, repo('elsewhere'), 'v1', arm64);
    const index = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.imageIndex,
      manifests: [amd64, arm64].map((i, n) => ({
        mediaType: i.mediaType, digest: i.manifestDigest, size: i.manifestBytes.length, platform: { architecture: ['amd64', 'arm64'][n], os: 'linux' },
      })),
    };
    // A bad request (400), though the code is MANIFEST_UNKNOWN (the issue's rule).
    const [e] = expectError(await put(name, 'multi', index, MEDIA_TYPES.imageIndex), 400, 'MANIFEST_UNKNOWN', 'PUT');
    expect(e!.detail).toEqual({ digest: arm64.manifestDigest });
    expect(e!.message).toMatch(/index references a manifest/);
    await expectNothingStored(name, 'multi');
    await pushImage(base, name, arm64.manifestDigest, arm64);
    const ok = await put(name, 'multi', index, MEDIA_TYPES.imageIndex);
    expectStatus(ok, 201);
  });

  it('the empty layer and the empty JSON config need no push', async () => {
    const name = repo('well-known');
    const docker = {
      schemaVersion: 2,
      mediaType: DOCKER.manifest,
      config: { mediaType: DOCKER.config, digest: EMPTY_JSON, size: 2 },
      layers: [{ mediaType: DOCKER.layer, digest: EMPTY_LAYER, size: 32 }],
    };
    expectStatus(await put(name, 'docker', docker, DOCKER.manifest), 201);
    const artifact = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.imageManifest,
      artifactType: 'application/vnd.example.empty',
      config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: EMPTY_JSON, size: 2 },
      layers: [{ mediaType: 'application/vnd.oci.empty.v1+json', digest: EMPTY_JSON, size: 2 }],
    };
    expectStatus(await put(name, 'artifact', artifact, MEDIA_TYPES.imageManifest), 201);
    const g = await request(base, `/v2/${name}/manifests/artifact`);
    expectStatus(g, 200);
    expect(g.header('content-type')).toBe(MEDIA_TYPES.imageManifest);
    expect(g.json()).toEqual(artifact);
  });

  it('Docker schema 2 and manifest list are stored and served as pushed', async () => {
    const name = repo('docker');
    const config = Buffer.from(JSON.stringify({ architecture: 'arm64', os: 'linux', config: { Labels: { a: 'b' } }, rootfs: { type: 'layers', diff_ids: [] } }));
    const layer = randomBlob(100);
    await pushBlob(base, name, config);
    await pushBlob(base, name, layer);
    const manifest = {
      schemaVersion: 2,
      mediaType: DOCKER.manifest,
      config: { mediaType: DOCKER.config, digest: sha256(config), size: config.length },
      layers: [{ mediaType: DOCKER.layer, digest: sha256(layer), size: layer.length }],
    };
    const m = await pushManifest(base, name, 'arm64', `${JSON.stringify(manifest, null, 2)}\n`, DOCKER.manifest);
    const list = {
      schemaVersion: 2,
      mediaType: DOCKER.list,
      manifests: [{ mediaType: DOCKER.manifest, digest: m.digest, size: m.bytes.length, platform: { architecture: 'arm64', os: 'linux', variant: 'v8' } }],
    };
    const l = await pushManifest(base, name, 'latest', list, DOCKER.list);
    for (const [ref, pushed, type] of [['arm64', m, DOCKER.manifest], ['latest', l, DOCKER.list]] as const) {
      const g = await request(base, `/v2/${name}/manifests/${ref}`);
      expectStatus(g, 200);
      expect(g.header('content-type')).toBe(type);
      expect(g.header('docker-content-digest')).toBe(pushed.digest);
      expect(Buffer.compare(g.body, pushed.bytes)).toBe(0);
    }
  });

  it('pushing the same manifest again is idempotent', async () => {
    const name = repo('again');
    const image = makeImage({ layerSizesBytes: [10] });
    const first = await pushImage(base, name, 'v1', image);
    for (const ref of ['v1', image.manifestDigest, 'v1']) {
      const r = await put(name, ref, image.manifestBytes, image.mediaType);
      expectStatus(r, 201);
      expect(r.header('docker-content-digest')).toBe(first.digest);
    }
    const t = await request(base, `/v2/${name}/tags/list`);
    expect(t.json<{ tags: string[] }>().tags).toEqual(['v1']);
  });

  it('concurrent pushes of one tag leave one of them, whole', async () => {
    const name = repo('race');
    const images = Array.from({ length: 6 }, () => makeImage({ layerSizesBytes: [10] }));
    for (const i of images) for (const b of [i.config, ...i.layers]) await pushBlob(base, name, b.bytes);
    const replies = await Promise.all(images.map((i) => put(name, 'race', i.manifestBytes, i.mediaType)));
    for (const r of replies) expectStatus(r, 201);
    const g = await request(base, `/v2/${name}/manifests/race`);
    expectStatus(g, 200);
    const winner = images.find((i) => i.manifestDigest === g.header('docker-content-digest'));
    expect(winner, 'the tag names one of the pushed manifests').toBeDefined();
    expect(Buffer.compare(g.body, winner!.manifestBytes)).toBe(0);
    for (const i of images) expectStatus(await request(base, `/v2/${name}/manifests/${i.manifestDigest}`, { method: 'HEAD' }), 200);
  });

  it('tag DELETE removes the tag only; manifest DELETE by digest removes the manifest', async () => {
    const name = repo('delete');
    const image = makeImage({ layerSizesBytes: [10] });
    await pushImage(base, name, 'a', image);
    await pushManifest(base, name, 'b', image.manifestBytes);
    expectStatus(await request(base, `/v2/${name}/manifests/a`, { method: 'DELETE' }), 202);
    expectError(await request(base, `/v2/${name}/manifests/a`), 404, 'MANIFEST_UNKNOWN');
    expectError(await request(base, `/v2/${name}/manifests/a`, { method: 'DELETE' }), 404, 'MANIFEST_UNKNOWN');
    expectStatus(await request(base, `/v2/${name}/manifests/b`), 200);
    expect((await request(base, `/v2/${name}/tags/list`)).json<{ tags: string[] }>().tags).toEqual(['b']);
    expectStatus(await request(base, `/v2/${name}/manifests/${image.manifestDigest}`, { method: 'DELETE' }), 202);
    expectError(await request(base, `/v2/${name}/manifests/b`), 404, 'MANIFEST_UNKNOWN');
    expect((await request(base, `/v2/${name}/tags/list`)).json<{ tags: string[] }>().tags).toEqual([]);
  });
});
