import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { HashPool } from '../../src/engine/hash-pool.js';
import { MEDIA_TYPES } from '../../src/registry/manifest-schema.js';
import { paths } from '../../src/registry/paths.js';
import { parseDigest } from '../../src/registry/reference.js';
import { objectExists, type StorageDriver } from '../../src/storage/index.js';
import { GcFixture, sha256 } from '../helpers/gc.js';
import { describeOnEveryDriver } from '../helpers/drivers.js';
import { staged, type StageHooks } from '../helpers/staged-driver.js';
import { bodyOf } from '../helpers/uploads.js';

/**
 * Found by probing (S3 behind a proxy that held one write for 8 s, `timeout=3s`): the write of
 * an upload record that a PUT made as it began (its touch) timed out, its retry succeeded, and
 * the PUT committed the blob (the record deleted, the blob record naming the upload's data,
 * 201); then the held write reached the store and the record was there again. The upload's
 * data is the blob's data, so after that a DELETE of the upload (3 of 3) and a PATCH (on S3
 * the writer adopted the complete object into a multipart upload and deleted it; 1 of 1)
 * destroyed the blob, a status GET answered 204, and a collection (2 of 2) removed the "stale
 * upload" with its data: a tagged image's layer answered 404.
 *
 * Now the PUT writes the upload's finished marker as it deletes the record, before its 201;
 * a record with the marker is no upload to any request (BLOB_UPLOAD_UNKNOWN), and the collector
 * removes such a record but never its data (src/engine/uploads.ts, #unrecord; src/gc/collector.ts,
 * E). The late write is staged: the server's view of the store keeps the content of the PUT's
 * touch and the test applies it once more after the 201, on every driver.
 */

let pool: HashPool;
beforeAll(() => {
  pool = new HashPool({ threads: 1, maxQueue: 100 });
});
afterAll(async () => {
  await pool.close();
});

function lateRecord(open: () => Promise<StorageDriver>): void {
  let base: StorageDriver;
  let server: StageHooks;
  let t: GcFixture;
  const setUp = async (): Promise<void> => {
    base = await open();
    server = {};
    t = new GcFixture(staged(base, server), pool);
  };
  afterEach(async () => {
    await t?.close();
  });

  /** An upload of two chunks, committed (201), whose record the store then writes once more, as the PUT's touch. */
  async function committedThenRecordBack(repo: string): Promise<{ id: string; data: Buffer; digest: string; record: string }> {
    const [first, second] = [randomBytes(3000), randomBytes(2000)];
    const data = Buffer.concat([first, second]);
    const { id } = await t.registry.startUpload(repo);
    await t.registry.appendUpload(repo, id, {}, bodyOf(first));
    await t.registry.appendUpload(repo, id, {}, bodyOf(second));
    const record = paths.upload(repo, id);
    let late: Buffer | undefined;
    server.before = (op, path, args) => {
      if (op === 'putContent' && path === record && !late) late = Buffer.from(args[0] as Uint8Array);
    };
    await expect(t.registry.completeUpload(repo, id, sha256(data), {}, undefined)).resolves.toMatchObject({ digest: sha256(data) });
    server.before = undefined;
    expect(late).toBeDefined();
    expect(await objectExists(base, record)).toBe(false);
    await base.putContent(record, late!);
    return { id, data, digest: sha256(data), record };
  }

  async function blobBytes(repo: string, digest: string): Promise<Buffer> {
    const read = await t.registry.readBlob(repo, digest);
    const parts: Buffer[] = [];
    for await (const c of read.stream) parts.push(Buffer.from(c as Uint8Array));
    return Buffer.concat(parts);
  }

  it('the upload\'s status and DELETE answer BLOB_UPLOAD_UNKNOWN, and the blob stays whole', async () => {
    await setUp();
    const { id, data, digest } = await committedThenRecordBack('r');
    // Before the fix: 204 with the blob's size as the offset.
    await expect(t.registry.uploadStatus('r', id)).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
    // Before the fix: 204, and the blob's data deleted.
    await expect(t.registry.cancelUpload('r', id)).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
    expect(await t.blobStored(digest)).toBe(true);
    expect((await blobBytes('r', digest)).equals(data)).toBe(true);
  });

  it('a PATCH or PUT on the upload answers BLOB_UPLOAD_UNKNOWN, and the blob stays whole', async () => {
    await setUp();
    const { id, data, digest } = await committedThenRecordBack('r');
    const more = randomBytes(1000);
    // Before the fix: 202, the bytes appended to the blob's data (on S3 the object adopted and deleted).
    await expect(t.registry.appendUpload('r', id, {}, bodyOf(more))).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
    await expect(t.registry.completeUpload('r', id, sha256(Buffer.concat([data, more])), {}, bodyOf(more)))
      .rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
    expect(await t.blobStored(digest)).toBe(true);
    expect((await blobBytes('r', digest)).equals(data)).toBe(true);
  });

  it('a collection removes the record the late write brought back, and keeps the layer of a tagged image', async () => {
    await setUp();
    const { digest, data, record, id } = await committedThenRecordBack('r');
    const config = Buffer.from('{"architecture":"amd64","os":"linux"}');
    const manifest = Buffer.from(JSON.stringify({
      schemaVersion: 2, mediaType: MEDIA_TYPES.ociManifest,
      config: { mediaType: MEDIA_TYPES.ociImageConfig, digest: await t.pushBlob('r', config), size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest, size: data.length }],
    }));
    await t.registry.putManifest('r', 'v1', MEDIA_TYPES.ociManifest, manifest);
    const report = await t.gc({ staleUploadAfterMs: 0 });
    // Before the fix: the upload removed with its data (5000 bytes), and the layer gone.
    expect(report.uploads).toEqual({ count: 1, bytes: 0 });
    expect(await objectExists(base, record)).toBe(false);
    expect(await t.blobStored(digest)).toBe(true);
    expect((await blobBytes('r', digest)).equals(data)).toBe(true);
    // The marker outlives the record (a day): a write of the record landing later is no upload either.
    expect(await objectExists(base, paths.uploadFinished('r', id))).toBe(true);
    expect((await t.gc({ staleUploadAfterMs: 0 })).uploads.count).toBe(0);
    expect(await t.blobStored(digest)).toBe(true);
  });

  // The marker is written as the record goes, before the blob record: a commit whose blob
  // record the store refuses puts the upload back for the client's retry, its marker first gone.
  it('a PUT whose blob record fails leaves the upload to its retry, which stores the blob', async () => {
    await setUp();
    const data = randomBytes(3000);
    const { id } = await t.registry.startUpload('r');
    await t.registry.appendUpload('r', id, {}, bodyOf(data));
    const blobRecord = paths.blobRecord(parseDigest(sha256(data)));
    let refused = false;
    server.before = (op, path) => {
      if (op === 'putContent' && path === blobRecord && !refused) {
        refused = true;
        throw new Error('the store refused the write');
      }
    };
    await expect(t.registry.completeUpload('r', id, sha256(data), {}, undefined)).rejects.toThrow('the store refused the write');
    expect(refused).toBe(true);
    expect(await objectExists(base, paths.uploadFinished('r', id))).toBe(false);
    await expect(t.registry.uploadStatus('r', id)).resolves.toMatchObject({ offset: data.length });
    await expect(t.registry.completeUpload('r', id, sha256(data), {}, undefined)).resolves.toMatchObject({ digest: sha256(data) });
    expect((await blobBytes('r', sha256(data))).equals(data)).toBe(true);
  });
}

describeOnEveryDriver('a write of an upload record the store applies after the commit', 'late-record', lateRecord);
