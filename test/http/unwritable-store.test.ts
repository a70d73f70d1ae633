import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectError, expectStatus, request } from '../helpers/http.js';
import { makeImage, pushImage, randomBlob, sha256 } from '../helpers/oci.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * fs storage on a file system that stops taking writes (read-only, or full) while the
 * registry runs: what is stored is still served, HEAD included, and writes get 503.
 *
 * A blob HEAD and a manifest HEAD by digest write garbage collection's marker before they
 * look (gc/guard.ts); until that marker's failure was let go on such a store, every HEAD
 * answered 503, and clients that resolve by HEAD could not pull from a store that GET served.
 *
 * Needs a small tmpfs of its own: root (CI runs as root) and mount(8).
 */

function canMount(): boolean {
  if (process.getuid?.() !== 0) return false;
  const dir = join(tmpdir(), `hoist-mount-probe-${process.pid}`);
  try {
    execFileSync('mkdir', ['-p', dir]);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dir], { stdio: 'ignore' });
    execFileSync('umount', [dir], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  } finally {
    execFileSync('rmdir', [dir]);
  }
}

describe.skipIf(!canMount()).each(['node', 'uws'] as const)('fs storage that stops taking writes (%s front end)', (frontend) => {
  let dir: string;
  let server: TestServer;
  const image = makeImage({ layerSizesBytes: [4096] });
  const layer = image.layers[0]!.descriptor.digest;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hoist-unwritable-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=32m', 'tmpfs', dir]);
    server = await startServer({ storage: `fs:${dir}/storage`, frontend });
    await pushImage(server.url, 'ro/app', 'v1', image);
  });

  afterAll(async () => {
    await server?.kill();
    execFileSync('umount', [dir], { stdio: 'ignore' });
    await rm(dir, { recursive: true, force: true });
  });

  async function expectServed(): Promise<void> {
    expectStatus(await request(server.url, `/v2/ro/app/blobs/${layer}`, { method: 'HEAD' }), 200, 'blob HEAD');
    expectStatus(await request(server.url, `/v2/ro/app/manifests/${image.manifestDigest}`, { method: 'HEAD' }), 200, 'manifest HEAD by digest');
    expectStatus(await request(server.url, '/v2/ro/app/manifests/v1', { method: 'HEAD' }), 200, 'manifest HEAD by tag');
    const blob = await request(server.url, `/v2/ro/app/blobs/${layer}`);
    expectStatus(blob, 200, 'blob GET');
    expect(blob.body.equals(image.layers[0]!.bytes)).toBe(true);
    // A blob that is not there is still a 404, not a 503.
    expectError(await request(server.url, `/v2/ro/app/blobs/${sha256('absent')}`, { method: 'HEAD' }), 404, undefined, 'HEAD');
    // Writes cannot happen: 503, which clients retry.
    expectError(await request(server.url, `/v2/ro/app/blobs/uploads/?digest=${sha256(Buffer.from('new'))}`, { method: 'POST', body: Buffer.from('new') }), 503, 'UNAVAILABLE', 'POST');
  }

  it('read-only: serves what is stored, HEAD included; writes get 503', async () => {
    execFileSync('mount', ['-o', 'remount,ro', dir]);
    try {
      await expectServed();
    } finally {
      execFileSync('mount', ['-o', 'remount,rw', dir]);
    }
  });

  it('full: serves what is stored, HEAD included; writes get 503', async () => {
    const filler = join(dir, 'filler');
    await writeFile(filler, randomBlob(40 * 1024 * 1024)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOSPC') throw err;
    });
    try {
      await expectServed();
    } finally {
      await rm(filler, { force: true });
    }
  });
});
