import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectStatus, request } from '../helpers/http.js';
import { MEDIA_TYPES, makeImage, pushImage, sha256, type Image } from '../helpers/oci.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * Found by probing (2026-12-04): a manifest GET or HEAD by tag with `If-Match` resolved the
 * tag twice, once for the precondition and once for the answer, so a tag moved in between
 * made a 200 to `If-Match: "<A>"` carry manifest B (445 of 2,805 GETs on fs). On fs, whose
 * reads take a turn of the event loop each, the tag moves between them often enough to see.
 */
describe.each(['node', 'uws'] as const)('a tag moving under a conditional manifest GET (%s front end, fs storage)', (frontend) => {
  let server: TestServer;
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hoist-cond-'));
    server = await startServer({ frontend, storage: `fs:${dir}` });
  });
  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
    await rm(dir, { recursive: true, force: true });
  });

  it('a 200 to If-Match carries the manifest it names, never the other', async () => {
    const base = server.url;
    const name = 'cond/race';
    const [a, b]: Image[] = [makeImage({ layerSizesBytes: [100] }), makeImage({ layerSizesBytes: [200] })];
    await pushImage(base, name, 'a', a!);
    await pushImage(base, name, 'b', b!);
    const tag = (image: Image): Promise<unknown> => request(base, `/v2/${name}/manifests/t`, {
      method: 'PUT', headers: { 'content-type': MEDIA_TYPES.imageManifest }, body: image.manifestBytes,
    }).then((r) => expectStatus(r, 201));
    await tag(a!);
    let moving = true;
    // The tag flips between the two manifests as fast as the server takes them.
    const mover = (async () => {
      for (let i = 0; moving; i++) await tag(i % 2 === 0 ? b! : a!);
    })();
    const seen = { 200: 0, 412: 0 };
    try {
      for (let round = 0; round < 200; round++) {
        await Promise.all((['GET', 'HEAD', 'GET', 'HEAD'] as const).map(async (method) => {
          const r = await request(base, `/v2/${name}/manifests/t`, { method, headers: { 'if-match': `"${a!.manifestDigest}"` } });
          if (r.status === 412) {
            seen[412]++;
            return;
          }
          expectStatus(r, 200, method);
          seen[200]++;
          expect(r.header('docker-content-digest'), method).toBe(a!.manifestDigest);
          if (method === 'GET') expect(sha256(r.body)).toBe(a!.manifestDigest);
          else expect(r.header('content-length')).toBe(String(a!.manifestBytes.length));
        }));
      }
    } finally {
      moving = false;
      await mover;
    }
    expect(seen[200], 'requests that found the tag at A').toBeGreaterThan(0);
    expect(seen[412], 'requests that found it at B').toBeGreaterThan(0);
  });
});
