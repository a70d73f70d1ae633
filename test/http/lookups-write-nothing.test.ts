import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from '../helpers/http.js';
import { pushBlob, randomBlob, sha256 } from '../helpers/oci.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * Found by probing (2026-12-03): every blob HEAD, and every manifest HEAD by digest, wrote the
 * digest's touched marker (gc/guard.ts) before it looked, so anyone allowed to pull (anonymous
 * clients of a public repository) could have the registry write one object per request, for
 * digests it never held, kept until a collection ran (by default none does). A lookup that
 * finds nothing now writes nothing; one that finds the blob still touches it.
 */

async function markers(root: string): Promise<string[]> {
  const all = await readdir(join(root, 'blobs'), { recursive: true }).catch(() => [] as string[]);
  return all.filter((p) => p.endsWith('.touched'));
}

const randomDigest = (): string => `sha256:${randomBytes(32).toString('hex')}`;

describe.each(['node', 'uws'] as const)('lookups of what is not there write nothing (%s front end)', (frontend) => {
  let server: TestServer;
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hoist-lookups-'));
    server = await startServer({ frontend, storage: `fs:${dir}` });
  });
  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
    await rm(dir, { recursive: true, force: true });
  });

  it('HEADs and mounts of unknown digests answer 404 or 202 and leave no marker; a HEAD of a stored blob touches it', async () => {
    const data = randomBlob(1000);
    const digest = sha256(data);
    await pushBlob(server.url, 'look/a', data);
    const before = await markers(dir);
    for (let i = 0; i < 5; i++) {
      expect((await request(server.url, `/v2/look/a/blobs/${randomDigest()}`, { method: 'HEAD' })).status).toBe(404);
      expect((await request(server.url, `/v2/look/none/blobs/${randomDigest()}`, { method: 'HEAD' })).status).toBe(404);
      expect((await request(server.url, `/v2/look/a/manifests/${randomDigest()}`, { method: 'HEAD' })).status).toBe(404);
      // Stored, but not in this repository.
      expect((await request(server.url, `/v2/look/b/blobs/${digest}`, { method: 'HEAD' })).status).toBe(404);
      const mount = await request(server.url, `/v2/look/c/blobs/uploads/?mount=${randomDigest()}&from=look/a`, { method: 'POST' });
      expect(mount.status).toBe(202);
    }
    expect(await markers(dir)).toEqual(before);

    const marker = `${digest.slice('sha256:'.length)}.touched`;
    await rm(join(dir, 'blobs', 'sha256', digest.slice(7, 9), marker), { force: true });
    expect((await request(server.url, `/v2/look/a/blobs/${digest}`, { method: 'HEAD' })).status).toBe(200);
    expect((await markers(dir)).some((p) => p.endsWith(marker))).toBe(true);
  });
});
