import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectError, request } from '../helpers/http.js';
import { MEDIA_TYPES, makeImage, pushImage } from '../helpers/oci.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * Issue 12: GET and HEAD of a manifest whose reference is neither a valid tag nor a valid
 * digest answered 400 TAG_INVALID (or DIGEST_INVALID). The distribution-spec conformance
 * suite asks for `/v2/<name>/manifests/.INVALID_MANIFEST_NAME` and expects 404 (three of its
 * specs failed on Hoist), as distribution answers: no manifest can be stored under such a
 * reference, so a read finds nothing. Writes (PUT, DELETE) that carry one still get 400.
 */

const INVALID_REFERENCES = ['.INVALID_MANIFEST_NAME', '-leading-dash', 't'.repeat(129), 'a+b', 'sha256:abc', `md5:${'a'.repeat(32)}`];

for (const frontend of ['uws', 'node'] as const) describe(`manifest reads by an invalid reference (${frontend} front end)`, () => {
  let server: TestServer;
  let base: string;
  const repo = 'conformance/app';

  beforeAll(async () => {
    server = await startServer({ storage: 'memory:', frontend });
    base = server.url;
    await pushImage(base, repo, 'v1', makeImage({ layerSizesBytes: [16] }));
  });

  afterAll(async () => {
    // A crash on shutdown is a failure too: the server must exit cleanly on SIGTERM.
    if (server) expect(await server.stop()).toBe(0);
  });

  it.each(INVALID_REFERENCES)('GET and HEAD %s → 404 MANIFEST_UNKNOWN, in a repository that exists and in one that does not', async (reference) => {
    for (const name of [repo, 'conformance/nobody']) {
      const path = `/v2/${name}/manifests/${encodeURIComponent(reference)}`;
      const [e] = expectError(await request(base, path), 404, 'MANIFEST_UNKNOWN', 'GET');
      expect(e!.detail).toEqual({ reference });
      const head = await request(base, path, { method: 'HEAD' });
      expectError(head, 404, undefined, 'HEAD');
      expect(head.body.byteLength, 'HEAD has no body').toBe(0);
    }
  });

  it.each(INVALID_REFERENCES)('PUT and DELETE %s still → 400 (TAG_INVALID or DIGEST_INVALID)', async (reference) => {
    const path = `/v2/${repo}/manifests/${encodeURIComponent(reference)}`;
    const code = reference.includes(':') ? 'DIGEST_INVALID' : 'TAG_INVALID';
    const body = makeImage({ layerSizesBytes: [16] }).manifestBytes;
    expectError(await request(base, path, { method: 'PUT', headers: { 'content-type': MEDIA_TYPES.imageManifest }, body }), 400, code, 'PUT');
    expectError(await request(base, path, { method: 'DELETE' }), 400, code, 'DELETE');
  });

  it('an invalid name is still 400 NAME_INVALID, whatever the reference', async () => {
    expectError(await request(base, '/v2/Upper/manifests/.INVALID_MANIFEST_NAME'), 400, 'NAME_INVALID');
    expectError(await request(base, '/v2/Upper/manifests/.INVALID_MANIFEST_NAME', { method: 'HEAD' }), 400, undefined, 'HEAD');
  });

  it('valid references are unaffected: the pushed tag answers 200, an unknown tag 404', async () => {
    expect((await request(base, `/v2/${repo}/manifests/v1`, { method: 'HEAD' })).status).toBe(200);
    expectError(await request(base, `/v2/${repo}/manifests/v2`), 404, 'MANIFEST_UNKNOWN');
  });
});
