import { CreateMultipartUploadCommand, PutObjectCommand, UploadPartCommand } from '@aws-sdk/client-s3';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdir, readdir, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GcRunReport } from '../../src/gc/runner.js';
import { FsDriver } from '../../src/storage/fs.js';
import { blobRef, GcTestClient, image, sha256 } from '../helpers/gc-client.js';
import { runGcCli } from '../helpers/gc.js';
import { listTree, openRequest, patchChunk, pathOf, request, startUpload, tempDir, waitFor, withQuery } from '../helpers/http.js';
import { describeS3, MiB, partSizes, s3ServerEnv, useTestBucket } from '../helpers/s3-http.js';
import { listAllKeys, listUploads } from '../helpers/s3.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * What crashes and abandoned clients leave behind, and `hoist gc` finding it: an upload a
 * client started and never finished (record, data; on S3 a multipart upload, its writer
 * state and staging tail), a monolithic upload cut off by the server being killed (data no
 * record names; on S3 a multipart upload no writer state knows, found only by listing
 * multipart uploads), and, on S3, a stray staging object and an orphaned multipart upload
 * made directly in the bucket. A tagged image pushed alongside must survive it all.
 *
 * `--stale-upload-after 0s` treats anything idle as abandoned; the dry run before it must
 * report the same and remove nothing.
 */

/**
 * How long a wait for an event may take before the test calls it a hang: far beyond what a
 * loaded 2-core machine takes (the fs case timed out twice at 10 s under load 15-30).
 */
const HANG_MS = 120_000;

function sumRegistries(run: GcRunReport, pick: (r: GcRunReport['registries'][number]['report']) => number): number {
  return run.registries.reduce((n, r) => n + pick(r.report), 0);
}

/** Sends the first `sentBytes` of a `totalBytes` monolithic upload and leaves the request open. */
function startMonolithic(server: TestServer, repo: string, totalBytes: number, sentBytes: number): ReturnType<typeof openRequest> {
  const data = randomBytes(totalBytes);
  const o = openRequest(server.url, `/v2/${repo}/blobs/uploads/?digest=${sha256(data)}`, {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream', 'content-length': totalBytes },
  });
  // The write fails when the test kills the server or destroys the request: expected.
  o.write(data.subarray(0, sentBytes)).catch(() => undefined);
  return o;
}

async function gcJson(args: string[], env: Record<string, string> = {}): Promise<GcRunReport> {
  const r = await runGcCli([...args, '--json'], env);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as GcRunReport;
}

describe('crash leftovers on fs', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let server: TestServer;
  const env = { HOIST_UPLOADS_CHUNK_BYTES: '256KiB', HOIST_UPLOADS_MAX_SESSION_BUFFERED_BYTES: '1MiB' };
  beforeAll(async () => {
    dir = await tempDir('hoist-gc-crash-');
  });
  afterAll(async () => {
    await server?.kill();
    await dir?.cleanup();
  });

  // The timeout is a hang guard, far above what a loaded machine takes.
  it('removes an abandoned upload and the data of an upload cut off by a crash, and nothing else', async () => {
    server = await startServer({ storage: `fs:${dir.path}`, frontend: 'node', env });
    const client = new GcTestClient(server.url);
    const kept = image('crash/app', [blobRef(randomBytes(100_000)), blobRef(randomBytes(50_000))]);
    await client.push(kept, 'v1');
    // Abandoned: started, one chunk, never finished.
    const abandoned = await startUpload(server.url, 'crash/app');
    expect((await patchChunk(server.url, abandoned.location, randomBytes(300_000), 0)).status).toBe(202);
    // Cut off: 2 MiB of a 4 MiB monolithic upload reach storage, then the server dies.
    // (What is on disk before it starts, listed first: its own data file must not be among it.)
    const dataDir = join(dir.path, 'blobs', 'data');
    const initial = new Set(await readdir(dataDir));
    const cut = startMonolithic(server, 'crash/app', 4 * MiB, 2 * MiB);
    // Waits for the event (a MiB of it on disk); the bound only turns a hang into a failure
    // that says how far the upload got.
    let largest = 0;
    await waitFor('the cut-off upload\'s data on disk', async () => {
      for (const f of await readdir(dataDir)) {
        if (initial.has(f)) continue;
        const size = (await stat(join(dataDir, f)).catch(() => undefined))?.size ?? 0;
        largest = Math.max(largest, size);
        if (size >= MiB) return f;
      }
      return undefined;
    }, HANG_MS).catch((err: Error) => {
      throw new Error(`${err.message} (its largest data file had ${largest} bytes)`);
    });
    await server.kill();
    cut.req.destroy();

    const dry = await gcJson(['--storage', `fs:${dir.path}`, '--grace', '0s', '--stale-upload-after', '0s', '--dry-run']);
    expect(sumRegistries(dry, (r) => r.uploads.count)).toBe(1);
    // Unnamed data goes only once a collection before has seen it unnamed (collector.ts E).
    expect(sumRegistries(dry, (r) => r.orphanData.count)).toBe(0);
    const before = (await readdir(dataDir)).length;

    const first = await runGcCli(['--storage', `fs:${dir.path}`, '--grace', '0s', '--stale-upload-after', '0s']);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toMatch(/1 stale upload \(293\.0 KiB\)/);
    expect(first.stdout).toMatch(/0 orphaned data objects/);
    expect((await readdir(dataDir)).length).toBe(before - 1);
    const human = await runGcCli(['--storage', `fs:${dir.path}`, '--grace', '0s', '--stale-upload-after', '0s']);
    expect(human.code, human.stderr).toBe(0);
    expect(human.stdout).toMatch(/1 orphaned data object \([\d.]+ MiB\)/);
    expect(human.stdout).toMatch(/^freed [\d.]+ MiB in \d+ objects?; took /m);
    expect((await readdir(dataDir)).length).toBe(before - 2);
    // Only the image's blobs are left (its manifest's bytes are in its revision), all referenced.
    expect((await readdir(dataDir)).length).toBe(3);
    // Of its uploads only the pushed ones' finished markers are left (for a day).
    expect((await readdir(join(dir.path, 'repositories', 'crash', 'app', '_uploads'))).filter((f) => !f.endsWith('.finished'))).toEqual([]);

    server = await startServer({ storage: `fs:${dir.path}`, frontend: 'node', env });
    await new GcTestClient(server.url).pull('crash/app', 'v1');
    const again = await gcJson(['--storage', `fs:${dir.path}`, '--grace', '0s', '--stale-upload-after', '0s']);
    expect(sumRegistries(again, (r) => r.uploads.count + r.orphanData.count + r.blobs.count + r.manifests)).toBe(0);
    expect(await server.stop()).toBe(0);
  }, 300_000);
});

/**
 * The fs driver writes every small object (records, tags, a manifest's bytes) to a temp file
 * `.<name>.<hex>.tmp` beside it and renames it into place. A kill -9 between the two left the
 * temp file forever: no listing shows it, so no collection removed it. A collection now removes
 * those idle for staleUploadAfter (and 10 minutes at least, so a live server's write in
 * progress keeps its file whatever the bound), and reports them as abandoned writes.
 */
describe('crash leftovers on fs: temp files', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  beforeAll(async () => {
    dir = await tempDir('hoist-gc-temp-');
  });
  afterAll(async () => {
    await dir?.cleanup();
  });

  it('removes temp files a killed writer left, once idle for staleUploadAfter; keeps fresh ones', async () => {
    const driver = await FsDriver.open({ rootDirectory: dir.path });
    await driver.putContent('/repositories/a/_manifests/tags/v1', Buffer.from('{}'));
    await driver.close();
    const tags = join(dir.path, 'repositories', 'a', 'a-gone');
    await mkdir(tags, { recursive: true });
    // As putContent() leaves them when killed before its rename: a tag's, a manifest's bytes'
    // (in a directory nothing else is in), and open()'s probe; one written just now.
    const twoHoursAgo = new Date(Date.now() - 2 * 3_600_000);
    const stale = [
      join(dir.path, 'repositories', 'a', '_manifests', 'tags', '.v1.0123456789ab.tmp'),
      join(tags, '.x.a1b2c3d4e5f6.tmp'),
      join(dir.path, '.probe-00aa11bb22cc'),
    ];
    const sizes = [2, 300_000, 0];
    for (const [i, f] of stale.entries()) {
      await writeFile(f, randomBytes(sizes[i]!));
      await utimes(f, twoHoursAgo, twoHoursAgo);
    }
    const fresh = join(dir.path, 'repositories', 'a', '_manifests', 'tags', '.v2.ba9876543210.tmp');
    await writeFile(fresh, '{}');
    // Dot-files that are not ours stay, however old.
    const foreign = join(dir.path, '.keep');
    await writeFile(foreign, 'x');
    await utimes(foreign, twoHoursAgo, twoHoursAgo);

    const dry = await gcJson(['--storage', `fs:${dir.path}`, '--dry-run']);
    expect(dry.incompleteWrites).toEqual({ count: 3, bytes: 300_002 });
    const human = await runGcCli(['--storage', `fs:${dir.path}`]);
    expect(human.code, human.stderr).toBe(0);
    expect(human.stdout).toMatch(/^store: aborted 3 abandoned writes \(293\.0 KiB\)$/m);
    // (The collection's own bookkeeping is under gc/.)
    expect((await listTree(dir.path)).filter((f) => !f.startsWith('gc/'))).toEqual([
      '.keep', 'repositories/', 'repositories/a/', 'repositories/a/_manifests/', 'repositories/a/_manifests/tags/',
      'repositories/a/_manifests/tags/.v2.ba9876543210.tmp', 'repositories/a/_manifests/tags/v1',
    ]);
    // A bound of 0s still spares a temp file written just now: its writer may be alive.
    const zero = await gcJson(['--storage', `fs:${dir.path}`, '--stale-upload-after', '0s', '--grace', '0s']);
    expect(zero.incompleteWrites.count).toBe(0);
    expect((await stat(fresh)).isFile()).toBe(true);
  }, 120_000);
});

describeS3('crash leftovers on S3', (env) => {
  const bucket = useTestBucket(env, 'gc-crash');
  const PREFIX = 'reg/';
  let server: TestServer;
  const serverEnv = { ...s3ServerEnv(), HOIST_UPLOADS_CHUNK_BYTES: '1MiB' };
  afterAll(async () => {
    await server?.kill();
  });

  // The timeout is a hang guard: radosgw on a loaded machine takes minutes for this.
  it('aborts abandoned and orphaned multipart uploads, removes staging objects, keeps what is live', async () => {
    const url = bucket.url('reg');
    server = await startServer({ storage: url, frontend: 'node', env: serverEnv });
    const client = new GcTestClient(server.url);
    const kept = image('crash/app', [blobRef(randomBytes(6 * MiB)), blobRef(randomBytes(10_000))]);
    await client.push(kept, 'v1');
    // Abandoned: 6 MiB in one PATCH: one 5 MiB part, a 1 MiB staging tail, a writer state.
    const abandoned = await startUpload(server.url, 'crash/app');
    expect((await patchChunk(server.url, abandoned.location, randomBytes(6 * MiB), 0)).status).toBe(202);
    // Cut off: a monolithic upload whose first two parts are stored when the server dies:
    // a multipart upload no writer state records.
    const before = new Set((await listUploads(bucket.client, bucket.name, PREFIX)).map((u) => u.uploadId));
    const cut = startMonolithic(server, 'crash/app', 16 * MiB, 12 * MiB);
    // Both full parts of what was sent (5 MiB each) stored in radosgw, then the kill.
    let mostParts = 0;
    await waitFor('two parts of the cut-off upload in radosgw', async () => {
      for (const u of await listUploads(bucket.client, bucket.name, PREFIX)) {
        if (before.has(u.uploadId)) continue;
        const parts = (await partSizes(bucket.client, bucket.name, u.key, u.uploadId)).length;
        mostParts = Math.max(mostParts, parts);
        if (parts >= 2) return true;
      }
      return undefined;
    }, HANG_MS).catch((err: Error) => {
      throw new Error(`${err.message} (its multipart upload had ${mostParts} parts)`);
    });
    await server.kill();
    cut.req.destroy();
    // Made by hand, as a crash elsewhere would: an orphaned multipart upload with one part,
    // and a staging tail whose writer state is gone.
    const orphanKey = `${PREFIX}blobs/data/${randomUUID()}`;
    const mp = await bucket.client.send(new CreateMultipartUploadCommand({ Bucket: bucket.name, Key: orphanKey }));
    await bucket.client.send(new UploadPartCommand({ Bucket: bucket.name, Key: orphanKey, UploadId: mp.UploadId, PartNumber: 1, Body: randomBytes(5 * MiB) }));
    const strayTail = `${PREFIX}_s3/writers/blobs/data/${randomUUID()}.tail.3`;
    await bucket.client.send(new PutObjectCommand({ Bucket: bucket.name, Key: strayTail, Body: randomBytes(1000) }));
    await sleep(1100);

    const args = ['--storage', url, '--grace', '0s', '--stale-upload-after', '0s'];
    const dry = await gcJson([...args, '--dry-run'], s3ServerEnv());
    const uploadsBefore = await listUploads(bucket.client, bucket.name, PREFIX);
    expect(uploadsBefore.length).toBe(3); // abandoned, cut off, made by hand
    expect(sumRegistries(dry, (r) => r.uploads.count)).toBe(1);
    expect(dry.incompleteWrites.count).toBe(3); // cut off, made by hand, stray tail

    const run = await gcJson(args, s3ServerEnv());
    expect(sumRegistries(run, (r) => r.uploads.count)).toBe(1);
    expect(run.incompleteWrites.count).toBe(3);
    expect(run.incompleteWrites.bytes).toBeGreaterThanOrEqual(15 * MiB + 1000);
    expect(await listUploads(bucket.client, bucket.name, PREFIX)).toEqual([]);
    const keys = (await listAllKeys(bucket.client, bucket.name, PREFIX)).map((k) => k.key);
    expect(keys.filter((k) => k.startsWith(`${PREFIX}_s3/`))).toEqual([]);
    expect(keys.filter((k) => k.includes('/_uploads/') && !k.endsWith('.finished'))).toEqual([]);
    // Data objects left: the image's three blobs (its manifest's bytes are in its revision).
    expect(keys.filter((k) => k.startsWith(`${PREFIX}blobs/data/`)).length).toBe(3);

    server = await startServer({ storage: url, frontend: 'node', env: serverEnv });
    await new GcTestClient(server.url).pull('crash/app', 'v1');
    expect(await server.stop()).toBe(0);
  }, 600_000);

  // Found by probing: a PATCH sending its parts slower than one per staleUploadAfter (6 MiB,
  // then a trickle) had its multipart upload aborted as abandoned, since no writer state names
  // it until the request ends; the PATCH was answered 202 and the PUT 404. The request holds
  // the upload's lock, which the collection now looks at.
  it('keeps the multipart upload of a PATCH still under way, however slow, and its upload', async () => {
    const url = bucket.url('slow');
    server = await startServer({ storage: url, frontend: 'node', env: serverEnv });
    const data = randomBytes(7 * MiB);
    const up = await startUpload(server.url, 'slow/app');
    const patch = openRequest(server.url, up.location, { method: 'PATCH', headers: { 'content-type': 'application/octet-stream', 'content-length': data.length } });
    await patch.write(data.subarray(0, 6 * MiB));
    await waitFor('the PATCH\'s first part in radosgw', async () => {
      for (const u of await listUploads(bucket.client, bucket.name, 'slow/')) {
        if ((await partSizes(bucket.client, bucket.name, u.key, u.uploadId)).length >= 1) return true;
      }
      return undefined;
    }, HANG_MS);
    await sleep(1100);
    const run = await gcJson(['--storage', url, '--grace', '0s', '--stale-upload-after', '0s'], s3ServerEnv());
    expect(run.incompleteWrites.count).toBe(0);
    expect(sumRegistries(run, (r) => r.uploads.count)).toBe(0);
    await patch.write(data.subarray(6 * MiB));
    patch.req.end();
    const r = await patch.reply;
    expect(r.status, r.text()).toBe(202);
    const put = await request(server.url, withQuery(pathOf(server.url, r.header('location')!), 'digest', sha256(data)), { method: 'PUT' });
    expect(put.status, put.text()).toBe(201);
    const get = await request(server.url, `/v2/slow/app/blobs/${sha256(data)}`);
    expect(get.status).toBe(200);
    expect(Buffer.compare(get.body, data)).toBe(0);
    expect(await server.stop()).toBe(0);
  }, 300_000);
});
