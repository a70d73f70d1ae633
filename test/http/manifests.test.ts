import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectError, expectStatus, pathOf, repoNamer, request, type Reply } from '../helpers/http.js';
import { MEDIA_TYPES, makeImage, pushBlob, pushImage, pushManifest, sha256, type Image } from '../helpers/oci.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * Manifests and tags over HTTP (distribution-spec v1.1 "Pushing Manifests", "Pulling
 * manifests", "Deleting Manifests", "Listing Tags") and the catalog ("Listing Repositories",
 * the `_catalog` extension every registry client uses). Basic behaviour only: the pushed
 * images are complete (every blob pushed first) so these tests stay valid once the registry
 * validates manifest references.
 */

const FRONTENDS = ['uws', 'node'] as const;

const repo = repoNamer('manifests');

/** `<url>; rel="next"` (RFC 8288) → the URL's path and query. */
function nextLink(base: string, r: Reply): string | undefined {
  const link = r.header('link');
  if (link === undefined) return undefined;
  const m = /^<([^>]+)>\s*;\s*rel="?next"?$/.exec(link.trim());
  expect(m, `Link header ${JSON.stringify(link)}`).not.toBeNull();
  return pathOf(base, m![1]!);
}

/** Follows `Link: rel="next"` from `first` and returns every page's items. */
async function allPages(base: string, first: string, key: 'tags' | 'repositories', pageSize: number): Promise<string[][]> {
  const pages: string[][] = [];
  let next: string | undefined = first;
  while (next !== undefined) {
    expect(pages.length, 'pagination does not end').toBeLessThan(1000);
    const r = await request(base, next);
    expectStatus(r, 200, `GET ${next}`);
    const items = r.json<Record<string, string[]>>()[key];
    expect(Array.isArray(items)).toBe(true);
    expect(items!.length).toBeLessThanOrEqual(pageSize);
    pages.push(items!);
    next = nextLink(base, r);
  }
  return pages;
}

/** Byte-wise order, which for the lower-case names used here is also case-insensitive order. */
function sorted(items: string[]): string[] {
  return [...items].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

describe.each(FRONTENDS)('manifests and tags (%s front end, memory storage)', (frontend) => {
  let server: TestServer;
  let base: string;

  beforeAll(async () => {
    server = await startServer({ storage: 'memory:', frontend });
    base = server.url;
  });

  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
  });

  async function pushed(name: string, tag: string): Promise<Image> {
    const image = makeImage({ layerSizesBytes: [512, 2048] });
    await pushImage(base, name, tag, image);
    return image;
  }

  it('PUT by tag → 201 with Docker-Content-Digest and Location', async () => {
    const name = repo('put-tag');
    const image = makeImage();
    for (const b of [image.config, ...image.layers]) await pushBlob(base, name, b.bytes);
    const r = await request(base, `/v2/${name}/manifests/v1`, {
      method: 'PUT',
      headers: { 'content-type': MEDIA_TYPES.imageManifest },
      body: image.manifestBytes,
    });
    expectStatus(r, 201);
    expect(r.header('docker-content-digest')).toBe(image.manifestDigest);
    expect(pathOf(base, r.header('location') ?? '')).toBe(`/v2/${name}/manifests/${image.manifestDigest}`);
  });

  it('PUT by digest → 201 with Docker-Content-Digest and Location', async () => {
    const name = repo('put-digest');
    const image = makeImage();
    for (const b of [image.config, ...image.layers]) await pushBlob(base, name, b.bytes);
    const r = await request(base, `/v2/${name}/manifests/${image.manifestDigest}`, {
      method: 'PUT',
      headers: { 'content-type': MEDIA_TYPES.imageManifest },
      body: image.manifestBytes,
    });
    expectStatus(r, 201);
    expect(r.header('docker-content-digest')).toBe(image.manifestDigest);
    expect(pathOf(base, r.header('location') ?? '')).toBe(`/v2/${name}/manifests/${image.manifestDigest}`);
    const g = await request(base, `/v2/${name}/manifests/${image.manifestDigest}`);
    expectStatus(g, 200);
    expect(Buffer.compare(g.body, image.manifestBytes)).toBe(0);
  });

  // distribution-spec 1.1+dev (the conformance suite's tag parameters): a PUT by digest with
  // `?tag=` points each tag at the manifest and names them in OCI-Tag; a client that finds
  // no OCI-Tag pushes each tag by itself instead.
  it('PUT by digest with ?tag= → 201 with OCI-Tag, and every tag serves the manifest', async () => {
    const name = repo('put-tags');
    const image = makeImage();
    for (const b of [image.config, ...image.layers]) await pushBlob(base, name, b.bytes);
    const r = await request(base, `/v2/${name}/manifests/${image.manifestDigest}?tag=v1&tag=latest&tag=v1`, {
      method: 'PUT',
      headers: { 'content-type': MEDIA_TYPES.imageManifest },
      body: image.manifestBytes,
    });
    expectStatus(r, 201);
    expect(r.header('oci-tag')).toBe('v1, latest');
    expect(r.header('docker-content-digest')).toBe(image.manifestDigest);
    for (const tag of ['v1', 'latest']) {
      const g = await request(base, `/v2/${name}/manifests/${tag}`);
      expectStatus(g, 200, tag);
      expect(g.header('docker-content-digest')).toBe(image.manifestDigest);
      expect(Buffer.compare(g.body, image.manifestBytes)).toBe(0);
    }
    expect((await request(base, `/v2/${name}/tags/list`)).json<{ tags: string[] }>().tags).toEqual(['latest', 'v1']);
  });

  it('a tag set by a PUT by sha512 digest names the manifest by that digest', async () => {
    const name = repo('put-tags-sha512');
    const image = makeImage();
    for (const b of [image.config, ...image.layers]) await pushBlob(base, name, b.bytes);
    const digest = `sha512:${createHash('sha512').update(image.manifestBytes).digest('hex')}`;
    const r = await request(base, `/v2/${name}/manifests/${digest}?tag=s5`, {
      method: 'PUT',
      headers: { 'content-type': MEDIA_TYPES.imageManifest },
      body: image.manifestBytes,
    });
    expectStatus(r, 201);
    expect(r.header('oci-tag')).toBe('s5');
    expect(r.header('docker-content-digest')).toBe(digest);
    for (const method of ['GET', 'HEAD'] as const) {
      const g = await request(base, `/v2/${name}/manifests/s5`, { method });
      expectStatus(g, 200, method);
      expect(g.header('docker-content-digest')).toBe(digest);
    }
  });

  it.each([
    ['an invalid tag', ['ok', '-bad']],
    ['more than 100 tags', Array.from({ length: 101 }, (_, i) => `t${i}`)],
  ])('PUT with ?tag= of %s → 400 TAG_INVALID, and nothing is stored or tagged', async (_label, tags) => {
    const name = repo('put-tags-bad');
    const image = makeImage();
    for (const b of [image.config, ...image.layers]) await pushBlob(base, name, b.bytes);
    const q = new URLSearchParams(tags.map((t) => ['tag', t]));
    const r = await request(base, `/v2/${name}/manifests/${image.manifestDigest}?${q.toString()}`, {
      method: 'PUT',
      headers: { 'content-type': MEDIA_TYPES.imageManifest },
      body: image.manifestBytes,
    });
    expectError(r, 400, 'TAG_INVALID', 'PUT');
    expectError(await request(base, `/v2/${name}/manifests/${image.manifestDigest}`), 404, 'MANIFEST_UNKNOWN');
    expectError(await request(base, `/v2/${name}/manifests/ok`), 404, 'MANIFEST_UNKNOWN');
  });

  it('GET and HEAD by tag and by digest return the exact bytes and the pushed Content-Type', async () => {
    const name = repo('get');
    const image = await pushed(name, 'latest');
    for (const ref of ['latest', image.manifestDigest]) {
      const g = await request(base, `/v2/${name}/manifests/${ref}`, { headers: { accept: MEDIA_TYPES.imageManifest } });
      expectStatus(g, 200, ref);
      expect(g.header('content-type')).toBe(MEDIA_TYPES.imageManifest);
      expect(g.header('docker-content-digest')).toBe(image.manifestDigest);
      expect(g.header('content-length')).toBe(String(image.manifestBytes.byteLength));
      expect(g.body.toString('utf8')).toBe(image.manifestBytes.toString('utf8'));

      const h = await request(base, `/v2/${name}/manifests/${ref}`, { method: 'HEAD', headers: { accept: MEDIA_TYPES.imageManifest } });
      expectStatus(h, 200, `HEAD ${ref}`);
      expect(h.header('content-type')).toBe(MEDIA_TYPES.imageManifest);
      expect(h.header('docker-content-digest')).toBe(image.manifestDigest);
      expect(h.header('content-length')).toBe(String(image.manifestBytes.byteLength));
      expect(h.body.byteLength).toBe(0);
    }
  });

  it('conditional GET and HEAD by tag and by digest: If-None-Match naming the ETag → 304; If-Match naming another → 412; a re-tag changes the answer', async () => {
    const name = repo('conditional');
    const image = await pushed(name, 'latest');
    const etag = `"${image.manifestDigest}"`;
    for (const method of ['GET', 'HEAD'] as const) {
      for (const ref of ['latest', image.manifestDigest]) {
        const r = await request(base, `/v2/${name}/manifests/${ref}`, { method, headers: { accept: MEDIA_TYPES.imageManifest, 'if-none-match': etag } });
        expectStatus(r, 304, `${method} ${ref}`);
        expect(r.header('etag')).toBe(etag);
        expect(r.header('docker-content-digest')).toBe(image.manifestDigest);
        expect(r.body.byteLength).toBe(0);
        expectError(await request(base, `/v2/${name}/manifests/${ref}`, { method, headers: { 'if-match': '"sha256:0"' } }), 412, 'PRECONDITION_FAILED', method);
        expectStatus(await request(base, `/v2/${name}/manifests/${ref}`, { method, headers: { 'if-match': etag } }), 200, `${method} If-Match`);
      }
    }
    // The tag moves: the cached ETag no longer matches, and the new manifest comes whole.
    const next = await pushed(name, 'latest');
    const g = await request(base, `/v2/${name}/manifests/latest`, { headers: { 'if-none-match': etag } });
    expectStatus(g, 200);
    expect(g.header('docker-content-digest')).toBe(next.manifestDigest);
    expectError(await request(base, `/v2/${name}/manifests/nosuchtag`, { headers: { 'if-none-match': '*' } }), 404, 'MANIFEST_UNKNOWN');
  });

  it('keeps bytes exactly as pushed (whitespace, key order) and serves other media types as pushed', async () => {
    const name = repo('exact');
    const image = makeImage({ layerSizesBytes: [100] });
    for (const b of [image.config, ...image.layers]) await pushBlob(base, name, b.bytes);
    // Pretty-printed, Docker schema 2 media type: the digest is of these bytes, not a re-encoding.
    const docker = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.dockerManifest,
      config: { ...image.config.descriptor, mediaType: 'application/vnd.docker.container.image.v1+json' },
      layers: image.layers.map((l) => ({ ...l.descriptor, mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip' })),
    };
    const text = `${JSON.stringify(docker, null, 3)}\n`;
    const p = await pushManifest(base, name, 'docker', text, MEDIA_TYPES.dockerManifest);
    expect(p.digest).toBe(sha256(text));
    const g = await request(base, `/v2/${name}/manifests/docker`);
    expectStatus(g, 200);
    expect(g.header('content-type')).toBe(MEDIA_TYPES.dockerManifest);
    expect(g.header('docker-content-digest')).toBe(sha256(text));
    expect(g.body.toString('utf8')).toBe(text);

    // An index pointing at the manifest, pushed with the index media type.
    const index = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.imageIndex,
      manifests: [{ mediaType: MEDIA_TYPES.dockerManifest, digest: p.digest, size: Buffer.byteLength(text), platform: { architecture: 'amd64', os: 'linux' } }],
    };
    const ip = await pushManifest(base, name, 'multi', index, MEDIA_TYPES.imageIndex);
    const gi = await request(base, `/v2/${name}/manifests/multi`);
    expectStatus(gi, 200);
    expect(gi.header('content-type')).toBe(MEDIA_TYPES.imageIndex);
    expect(gi.header('docker-content-digest')).toBe(ip.digest);
    expect(Buffer.compare(gi.body, ip.bytes)).toBe(0);
  });

  it('PUT by digest with bytes of another digest → 400 DIGEST_INVALID, and nothing is stored', async () => {
    const name = repo('bad-digest');
    const image = await pushed(name, 'v1');
    const other = makeImage();
    const r = await request(base, `/v2/${name}/manifests/${other.manifestDigest}`, {
      method: 'PUT',
      headers: { 'content-type': MEDIA_TYPES.imageManifest },
      body: image.manifestBytes,
    });
    expectError(r, 400, 'DIGEST_INVALID', 'PUT');
    expectError(await request(base, `/v2/${name}/manifests/${other.manifestDigest}`), 404, 'MANIFEST_UNKNOWN');
  });

  it.each([
    ['not JSON', '{"schemaVersion": 2, '],
    ['not an object', '[1, 2, 3]'],
    ['empty', ''],
  ])('PUT of a manifest that is %s → 400 MANIFEST_INVALID', async (_label, body) => {
    const name = repo('invalid');
    await pushed(name, 'keep');
    const r = await request(base, `/v2/${name}/manifests/broken`, {
      method: 'PUT',
      headers: { 'content-type': MEDIA_TYPES.imageManifest },
      body: Buffer.from(body),
    });
    expectError(r, 400, 'MANIFEST_INVALID', 'PUT');
    expectError(await request(base, `/v2/${name}/manifests/broken`), 404, 'MANIFEST_UNKNOWN');
  });

  it('an unknown manifest is 404 MANIFEST_UNKNOWN by tag and by digest', async () => {
    const name = repo('unknown');
    await pushed(name, 'v1');
    expectError(await request(base, `/v2/${name}/manifests/nope`), 404, 'MANIFEST_UNKNOWN');
    expectError(await request(base, `/v2/${name}/manifests/${sha256('nothing')}`), 404, 'MANIFEST_UNKNOWN');
    expectError(await request(base, `/v2/${name}/manifests/nope`, { method: 'HEAD' }), 404, undefined, 'HEAD');
  });

  it('DELETE by digest → 202; then 404 MANIFEST_UNKNOWN by digest and by tag, and its tags are gone', async () => {
    const name = repo('delete');
    const image = await pushed(name, 'one');
    await pushManifest(base, name, 'two', image.manifestBytes);
    const keep = await pushed(name, 'other');
    const d = await request(base, `/v2/${name}/manifests/${image.manifestDigest}`, { method: 'DELETE' });
    expectStatus(d, 202);
    expectError(await request(base, `/v2/${name}/manifests/${image.manifestDigest}`), 404, 'MANIFEST_UNKNOWN');
    expectError(await request(base, `/v2/${name}/manifests/${image.manifestDigest}`, { method: 'HEAD' }), 404, undefined, 'HEAD');
    expectError(await request(base, `/v2/${name}/manifests/one`), 404, 'MANIFEST_UNKNOWN');
    expectError(await request(base, `/v2/${name}/manifests/two`), 404, 'MANIFEST_UNKNOWN');
    const t = await request(base, `/v2/${name}/tags/list`);
    expectStatus(t, 200);
    expect(t.json<{ tags: string[] }>().tags).toEqual(['other']);
    // The other manifest is untouched.
    const g = await request(base, `/v2/${name}/manifests/other`);
    expectStatus(g, 200);
    expect(g.header('docker-content-digest')).toBe(keep.manifestDigest);
    // Deleting it again: 404.
    expectError(await request(base, `/v2/${name}/manifests/${image.manifestDigest}`, { method: 'DELETE' }), 404, 'MANIFEST_UNKNOWN');
  });

  it('moving a tag to another manifest serves the new one', async () => {
    const name = repo('retag');
    await pushed(name, 'latest');
    const second = await pushed(name, 'latest');
    const g = await request(base, `/v2/${name}/manifests/latest`);
    expectStatus(g, 200);
    expect(g.header('docker-content-digest')).toBe(second.manifestDigest);
    const t = await request(base, `/v2/${name}/tags/list`);
    expect(t.json<{ tags: string[] }>().tags).toEqual(['latest']);
  });

  describe('tags list', () => {
    // Pushed in this (unsorted) order; all lower case, so byte order and case-insensitive
    // order (the spec's "lexical order") agree.
    const TAGS = ['v2', 'v10', 'latest', '1.0', '1.0.1', 'a-b', 'a.b', 'a_b', 'b', 'v1', '0', 'zz'];
    let name: string;

    beforeAll(async () => {
      name = repo('tags');
      const image = await pushed(name, TAGS[0]!);
      for (const tag of TAGS.slice(1)) await pushManifest(base, name, tag, image.manifestBytes);
    });

    it('lists every tag in lexical order with the repository name', async () => {
      const r = await request(base, `/v2/${name}/tags/list`);
      expectStatus(r, 200);
      expect(r.header('content-type') ?? '').toMatch(/^application\/json\b/);
      const body = r.json<{ name: string; tags: string[] }>();
      expect(body.name).toBe(name);
      expect(body.tags).toEqual(sorted(TAGS));
      expect(r.header('link')).toBeUndefined();
    });

    it('paginates with n and a Link header until every tag was listed once, in order', async () => {
      const r = await request(base, `/v2/${name}/tags/list?n=5`);
      expectStatus(r, 200);
      expect(r.json<{ tags: string[] }>().tags).toEqual(sorted(TAGS).slice(0, 5));
      expect(nextLink(base, r)).toBeDefined();
      const pages = await allPages(base, `/v2/${name}/tags/list?n=5`, 'tags', 5);
      expect(pages.map((p) => p.length)).toEqual([5, 5, 2]);
      expect(pages.flat()).toEqual(sorted(TAGS));
    });

    it('n larger than the list returns everything and no Link', async () => {
      const r = await request(base, `/v2/${name}/tags/list?n=1000`);
      expectStatus(r, 200);
      expect(r.json<{ tags: string[] }>().tags).toEqual(sorted(TAGS));
      expect(r.header('link')).toBeUndefined();
    });

    it('last returns the tags after it, with or without n', async () => {
      const all = sorted(TAGS);
      const after = all.indexOf('a_b');
      const r = await request(base, `/v2/${name}/tags/list?last=a_b`);
      expectStatus(r, 200);
      expect(r.json<{ tags: string[] }>().tags).toEqual(all.slice(after + 1));
      const r2 = await request(base, `/v2/${name}/tags/list?n=2&last=a_b`);
      expectStatus(r2, 200);
      expect(r2.json<{ tags: string[] }>().tags).toEqual(all.slice(after + 1, after + 3));
      // `last` need not be a tag that exists: the list continues after where it would sort.
      const r3 = await request(base, `/v2/${name}/tags/list?last=v15`);
      expectStatus(r3, 200);
      expect(r3.json<{ tags: string[] }>().tags).toEqual(all.filter((t) => t > 'v15'));
    });

    it('the last page has no Link header', async () => {
      const all = sorted(TAGS);
      const r = await request(base, `/v2/${name}/tags/list?n=3&last=${all[all.length - 4]}`);
      expectStatus(r, 200);
      expect(r.json<{ tags: string[] }>().tags).toEqual(all.slice(-3));
      expect(r.header('link')).toBeUndefined();
    });
  });

  it('tags list of an unknown repository → 404 NAME_UNKNOWN', async () => {
    expectError(await request(base, `/v2/${repo('nobody')}/tags/list`), 404, 'NAME_UNKNOWN');
  });

  it('catalog lists repositories, nested names included, sorted and paginated', async () => {
    const names = ['catalog/a', 'catalog/a/b/c', 'catalog/x-y', 'catalog/x/y/z', 'catalog/m'];
    for (const n of names) await pushed(n, 'v1');
    const r = await request(base, '/v2/_catalog');
    expectStatus(r, 200);
    const all = r.json<{ repositories: string[] }>().repositories;
    expect(Array.isArray(all)).toBe(true);
    for (const n of names) expect(all).toContain(n);
    // Namespaces that only contain repositories are not repositories themselves.
    for (const ns of ['catalog', 'catalog/a/b', 'catalog/x', 'catalog/x/y']) expect(all).not.toContain(ns);
    expect(all).toEqual(sorted(all));
    expect(new Set(all).size).toBe(all.length);

    const pages = await allPages(base, '/v2/_catalog?n=2', 'repositories', 2);
    expect(pages.length).toBeGreaterThanOrEqual(Math.ceil(all.length / 2));
    expect(pages.flat()).toEqual(all);

    const after = await request(base, '/v2/_catalog?last=catalog/a/b/c');
    expectStatus(after, 200);
    expect(after.json<{ repositories: string[] }>().repositories).toEqual(all.filter((n) => n > 'catalog/a/b/c'));
  });

  it('a catalog page holds at most 1,000 names, asked for with n or not; its Link leads on to the rest', async () => {
    // A repository is a directory with uploads in it, too: 1,005 upload sessions make 1,005.
    const names = Array.from({ length: 1005 }, (_, i) => `catalog-cap/r${String(i).padStart(4, '0')}`);
    for (let i = 0; i < names.length; i += 50) {
      await Promise.all(names.slice(i, i + 50).map(async (n) => expectStatus(await request(base, `/v2/${n}/blobs/uploads/`, { method: 'POST' }), 202)));
    }
    for (const first of ['/v2/_catalog', '/v2/_catalog?n=5000']) {
      const r = await request(base, first);
      expectStatus(r, 200);
      expect(r.json<{ repositories: string[] }>().repositories, first).toHaveLength(1000);
      expect(nextLink(base, r), first).toBeDefined();
      const all = (await allPages(base, first, 'repositories', 1000)).flat();
      expect(all.filter((n) => n.startsWith('catalog-cap/')), first).toEqual(names);
      expect(all).toEqual(sorted(all));
    }
  });
});
