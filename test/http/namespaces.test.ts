import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectError, expectStatus, pathOf, request, type RequestOptions } from '../helpers/http.js';
import { makeImage, pushImage, randomBlob, sha256 } from '../helpers/oci.js';
import { s3Env, s3EnvOrFail, s3ServerEnv, useTestBucket } from '../helpers/s3-http.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * Namespaces (config `namespaces`): one process serving several registries, each with its
 * own blobs, manifests, tags and uploads, chosen by Host header or by a path prefix.
 * Whatever is pushed into one must be unknown in every other.
 */

const FRONTENDS = ['uws', 'node'] as const;
const NAMESPACES = [
  { name: 'team-a', host: 'a.registry.test' },
  { name: 'team-b', host: 'b.registry.test' },
  { name: 'team-c', pathPrefix: 'team-c' },
];

const combos: Array<{ frontend: (typeof FRONTENDS)[number]; storage: 'fs' | 's3' }> = [
  ...FRONTENDS.map((frontend) => ({ frontend, storage: 'fs' as const })),
  { frontend: 'node', storage: 's3' },
];

describe.each(combos)('namespaces ($frontend front end, $storage storage)', ({ frontend, storage }) => {
  let server: TestServer;
  let base: string;
  let storageDir: string | undefined;

  if (storage === 's3' && !s3EnvOrFail()) return;
  const bucket = storage === 's3' ? useTestBucket(s3Env!, 'namespaces') : undefined;

  beforeAll(async () => {
    const env = { HOIST_NAMESPACES: JSON.stringify(NAMESPACES) };
    if (bucket) {
      server = await startServer({ storage: bucket.url('namespaces'), frontend, env: { ...env, ...s3ServerEnv() } });
    } else {
      storageDir = await mkdtemp(join(tmpdir(), 'hoist-namespaces-'));
      server = await startServer({ storage: `fs:${storageDir}`, frontend, env });
    }
    base = server.url;
  });

  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
    if (storageDir) await rm(storageDir, { recursive: true, force: true });
  });

  /** A request as a client that reached the registry under `host` sends it. */
  const at = (host: string | undefined, path: string, opts: RequestOptions = {}) =>
    request(base, path, host ? { ...opts, headers: { ...(opts.headers ?? {}), host: `${host}:${server.port}` } } : opts);

  /** Pushes a blob, POST then PUT at the Location, to the registry behind `host`. */
  async function pushBlobAt(host: string | undefined, name: string, data: Buffer): Promise<void> {
    const post = await at(host, `/v2/${name}/blobs/uploads/`, { method: 'POST' });
    expectStatus(post, 202);
    const u = new URL(pathOf(base, post.header('location')!), base);
    u.searchParams.set('digest', sha256(data));
    expectStatus(await at(host, `${u.pathname}${u.search}`, { method: 'PUT', body: data }), 201);
  }

  async function pushImageAt(host: string | undefined, name: string, tag: string) {
    const image = makeImage({ layerSizesBytes: [100] });
    for (const b of [image.config, ...image.layers]) await pushBlobAt(host, name, b.bytes);
    const r = await at(host, `/v2/${name}/manifests/${tag}`, { method: 'PUT', headers: { 'content-type': image.mediaType }, body: image.manifestBytes });
    expectStatus(r, 201);
    return image;
  }

  it('logs the namespaces it serves', () => {
    const listening = server.records().find((r) => r.msg === 'listening');
    expect(listening?.namespaces).toEqual(['team-a', 'team-b', 'team-c']);
  });

  it('keeps two host namespaces apart: blobs, manifests, tags and the catalog', async () => {
    const a = 'a.registry.test';
    const b = 'b.registry.test';
    const image = await pushImageAt(a, 'shared/app', 'v1');
    // Visible in a …
    expectStatus(await at(a, `/v2/shared/app/manifests/v1`), 200);
    expectStatus(await at(a.toUpperCase(), `/v2/shared/app/blobs/${image.layers[0]!.descriptor.digest}`, { method: 'HEAD' }), 200);
    // … and nowhere else: not in b, not in the default registry.
    for (const host of [b, undefined, 'localhost']) {
      expectError(await at(host, `/v2/shared/app/manifests/v1`), 404, 'MANIFEST_UNKNOWN');
      expectError(await at(host, `/v2/shared/app/manifests/${image.manifestDigest}`), 404, 'MANIFEST_UNKNOWN');
      expectError(await at(host, `/v2/shared/app/blobs/${image.layers[0]!.descriptor.digest}`), 404, 'BLOB_UNKNOWN');
      expectError(await at(host, `/v2/shared/app/tags/list`), 404, 'NAME_UNKNOWN');
      expect((await at(host, '/v2/_catalog')).json<{ repositories: string[] }>().repositories).not.toContain('shared/app');
    }
    expect((await at(a, '/v2/_catalog')).json<{ repositories: string[] }>().repositories).toEqual(['shared/app']);
  });

  it('does not let a blob pushed in one namespace complete a manifest in another, nor be mounted from it', async () => {
    const a = 'a.registry.test';
    const b = 'b.registry.test';
    const image = await pushImageAt(a, 'mount/src', 'v1');
    await pushBlobAt(b, 'mount/dst', image.config.bytes);
    const put = await at(b, '/v2/mount/dst/manifests/v1', { method: 'PUT', headers: { 'content-type': image.mediaType }, body: image.manifestBytes });
    expectError(put, 400, 'MANIFEST_BLOB_UNKNOWN', 'PUT');
    const mount = await at(b, `/v2/mount/dst/blobs/uploads/?mount=${image.layers[0]!.descriptor.digest}&from=mount/src`, { method: 'POST' });
    expectStatus(mount, 202); // not mounted: an ordinary upload starts instead
  });

  it('the same name and tag in two namespaces are two different images', async () => {
    const inA = await pushImageAt('a.registry.test', 'same/name', 'latest');
    const inB = await pushImageAt('b.registry.test', 'same/name', 'latest');
    const inDefault = await pushImageAt(undefined, 'same/name', 'latest');
    for (const [host, image] of [['a.registry.test', inA], ['b.registry.test', inB], [undefined, inDefault]] as const) {
      const g = await at(host, '/v2/same/name/manifests/latest');
      expectStatus(g, 200);
      expect(g.header('docker-content-digest')).toBe(image.manifestDigest);
    }
  });

  it('serves a path-prefix namespace under /<prefix>/v2/, with prefixed Location and Link headers', async () => {
    const prefixed = `${base}/team-c`;
    expectStatus(await request(base, '/team-c/v2/'), 200);
    // pushImage follows the Location headers it is given: they must stay under the prefix.
    const image = makeImage({ layerSizesBytes: [1000] });
    const pushed = await pushImage(prefixed, 'tools/x', 'v1', image);
    expect(pathOf(base, pushed.location.href)).toBe(`/team-c/v2/tools/x/manifests/${image.manifestDigest}`);
    const post = await request(base, '/team-c/v2/tools/x/blobs/uploads/', { method: 'POST' });
    expect(post.header('location')).toMatch(/^\/team-c\/v2\/tools\/x\/blobs\/uploads\//);

    const g = await request(base, '/team-c/v2/tools/x/manifests/v1');
    expectStatus(g, 200);
    expect(g.header('docker-content-digest')).toBe(image.manifestDigest);
    for (const tag of ['v2', 'v3']) {
      expectStatus(await request(base, `/team-c/v2/tools/x/manifests/${tag}`, { method: 'PUT', headers: { 'content-type': image.mediaType }, body: image.manifestBytes }), 201);
    }
    const t = await request(base, '/team-c/v2/tools/x/tags/list?n=1');
    expect(t.json<{ tags: string[] }>().tags).toEqual(['v1']);
    expect(t.header('link')).toBe('</team-c/v2/tools/x/tags/list?n=1&last=v1>; rel="next"');
    // Not in the default registry.
    expectError(await request(base, '/v2/tools/x/manifests/v1'), 404, 'MANIFEST_UNKNOWN');
    // Errors in the namespace are the registry's errors.
    expectError(await request(base, `/team-c/v2/tools/x/blobs/${sha256(randomBlob(4))}`), 404, 'BLOB_UNKNOWN');
    expectError(await request(base, '/team-x/v2/'), 404, 'NOT_FOUND');
  });
});
