import { GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { PathNotFoundError, StorageUnavailableError } from '../../../../src/storage/driver.js';
import { S3Driver } from '../../../../src/storage/s3/driver.js';
import { parseS3Url } from '../../../../src/storage/s3/url.js';
import type { WriterState } from '../../../../src/storage/s3/writer.js';
import { createTestBucket, deleteBucket, listAllKeys, listUploads, s3StorageUrl, testClient } from '../../../helpers/s3.js';
import { describeS3, MiB, PART_BYTES } from '../../../helpers/s3-http.js';

/**
 * The S3 writer (src/storage/s3/writer.ts) against radosgw: the state object any instance
 * continues an upload from (what it records: parts, and each session's remainder as a piece
 * staged once), and what the
 * writer does with a state it must not trust: another version, parts bigger than this
 * driver's, a tail shorter than recorded, a state left beside a committed object. Part
 * cutting, resumption across instances, failures and retries are in test/storage/s3.test.ts.
 */
const PART = PART_BYTES;

describeS3('S3 writer (radosgw)', (env) => {
  let client: S3Client;
  let bucket: string;
  let n = 0;
  let prefix: string;
  const drivers: S3Driver[] = [];

  beforeAll(async () => {
    client = testClient(env);
    bucket = await createTestBucket(client, 'writer-unit');
  });
  afterEach(async () => {
    for (const d of drivers.splice(0)) await d.close();
  });
  afterAll(async () => {
    if (bucket) await deleteBucket(client, bucket);
    client?.destroy();
  });

  /** A driver on a fresh prefix (listings see only this test's keys). */
  async function driver(options: Record<string, string> = {}, bufferWaitTimeoutMs?: number): Promise<S3Driver> {
    prefix = `u${++n}`;
    const url = s3StorageUrl(env, bucket, prefix, { partSize: '5MiB', maxBufferedBytes: '64MiB', ...options });
    const d = await S3Driver.open({ ...parseS3Url(url), ...(bufferWaitTimeoutMs ? { bufferWaitTimeoutMs } : {}) });
    drivers.push(d);
    return d;
  }

  const stateKey = (path: string) => `${prefix}/_s3/writers/${path.slice(1)}.json`;
  const tailKey = (path: string, g: number) => `${prefix}/_s3/writers/${path.slice(1)}.tail.${g}`;
  const put = (key: string, body: Uint8Array | string) => client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
  async function state(path: string): Promise<WriterState> {
    const out = await client.send(new GetObjectCommand({ Bucket: bucket, Key: stateKey(path) }));
    return JSON.parse(await out.Body!.transformToString('utf8')) as WriterState;
  }
  async function staging(): Promise<string[]> {
    return (await listAllKeys(client, bucket, `${prefix}/_s3/`)).map((k) => k.key).sort();
  }

  it('records parts, size and pieces in its state at each close, each session\'s remainder staged once as a piece of its own', async () => {
    const d = await driver();
    const path = '/blobs/data/s1';
    const first = randomBytes(PART + 1000);
    const w1 = await d.writer(path, false);
    await w1.write(first);
    await w1.close();
    const s1 = await state(path);
    expect(s1).toEqual({
      version: 2, uploadId: expect.any(String), partSizeBytes: PART, size: PART + 1000, pieces: [{ n: 1, bytes: 1000 }], nextPiece: 2,
      writeId: expect.any(String), parts: [{ partNumber: 1, etag: expect.stringMatching(/^".+"$/), size: PART }],
    });
    expect(await listUploads(client, bucket, prefix)).toEqual([{ key: `${prefix}${path}`, uploadId: s1.uploadId }]);
    expect(await staging()).toEqual([stateKey(path), tailKey(path, 1)]);

    // The next session: its 500 bytes are a piece of their own, the first piece stays, the same multipart upload.
    const second = randomBytes(500);
    const w2 = await d.writer(path, true);
    expect(w2.size).toBe(PART + 1000);
    await w2.write(second);
    await w2.close();
    const s2 = await state(path);
    expect(s2).toMatchObject({ uploadId: s1.uploadId, size: PART + 1500, pieces: [{ n: 1, bytes: 1000 }, { n: 2, bytes: 500 }], nextPiece: 3, parts: s1.parts });
    expect(s2.writeId).not.toBe(s1.writeId);
    expect(await staging()).toEqual([stateKey(path), tailKey(path, 1), tailKey(path, 2)]);

    await (await d.writer(path, true)).commit();
    expect(Buffer.compare(await d.getContent(path), Buffer.concat([first, second]))).toBe(0);
    expect(await staging()).toEqual([]);
    expect(await listUploads(client, bucket, prefix)).toEqual([]);
  });

  it('an upload smaller than a part has no multipart upload: its state says uploadId null', async () => {
    const d = await driver();
    const w = await d.writer('/small', false);
    await w.write(randomBytes(10));
    await w.close();
    expect(await state('/small')).toEqual({
      version: 2, uploadId: null, partSizeBytes: PART, parts: [], size: 10, pieces: [{ n: 1, bytes: 10 }], nextPiece: 2, writeId: expect.any(String),
    });
    expect(await listUploads(client, bucket, prefix)).toEqual([]);
  });

  it('refuses a state of another version instead of misreading it', async () => {
    const d = await driver();
    await put(stateKey('/v'), JSON.stringify({ version: 3, uploadId: null, partSizeBytes: PART, parts: [], size: 3, tailBytes: 0, generation: 1 }));
    await expect(d.writer('/v', true)).rejects.toThrow(/S3 writer state of \/v: unknown version 3/);
    // Version 2 in name only (the fields of version 1): refused by name, not a TypeError.
    await put(stateKey('/v'), JSON.stringify({ version: 2, uploadId: null, partSizeBytes: PART, parts: [], size: 3, tailBytes: 0, generation: 1 }));
    await expect(d.writer('/v', true)).rejects.toThrow(/S3 writer state of \/v: malformed version 2 state/);
  });

  // 503, not 500 (found by probing): an instance still configured as the upload started can
  // continue it, during a rolling change of partSize.
  it('refuses to continue an upload started with bigger parts, naming the setting, as storage unavailable here', async () => {
    const d = await driver();
    await put(stateKey('/big'), JSON.stringify({ version: 1, uploadId: null, partSizeBytes: 8 * MiB, parts: [], size: 0, tailBytes: 0, generation: 1 }));
    const err = await d.writer('/big', true).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StorageUnavailableError);
    expect((err as Error).message).toMatch(/started with 8388608-byte parts; this driver's parts are 5242880 bytes \(set partSize back/);
  });

  it('fails on a tail shorter than its state says, and gives its part buffer back (a version 1 state, read as one piece)', async () => {
    // One part buffer in all: a writer that kept it would leave the next one waiting.
    const d = await driver({ maxBufferedBytes: '5MiB' }, 5_000);
    await put(stateKey('/torn'), JSON.stringify({ version: 1, uploadId: null, partSizeBytes: PART, parts: [], size: 100, tailBytes: 100, generation: 1 }));
    await put(tailKey('/torn', 1), randomBytes(50));
    await expect(d.writer('/torn', true)).rejects.toThrow(/S3 upload \/torn: piece 1 has 50 bytes, the state says 100/);
    const w = await d.writer('/other', false);
    await w.write(randomBytes(1000));
    await w.commit();
    expect((await d.stat('/other')).size).toBe(1000);
  });

  it('a state left beside a committed object is stale: the object wins and the state goes', async () => {
    const d = await driver();
    const stored = randomBytes(2000);
    await d.putContent('/done', stored);
    // As a commit that stopped between completing the object and removing its state leaves it.
    await put(stateKey('/done'), JSON.stringify({ version: 1, uploadId: null, partSizeBytes: PART, parts: [], size: 7, tailBytes: 7, generation: 3 }));
    await put(tailKey('/done', 3), randomBytes(7));
    const w = await d.writer('/done', true);
    expect(w.size).toBe(2000);
    // The stale state and its tail are gone; the object's bytes are the upload now (adopted:
    // smaller than a part, so its first piece).
    expect(await staging()).toEqual([stateKey('/done'), tailKey('/done', 1)]);
    expect(await state('/done')).toMatchObject({ uploadId: null, size: 2000, pieces: [{ n: 1, bytes: 2000 }], nextPiece: 2 });
    const more = randomBytes(300);
    await w.write(more);
    await w.commit();
    expect(Buffer.compare(await d.getContent('/done'), Buffer.concat([stored, more]))).toBe(0);
  });

  it('appending to nothing is PathNotFound; opening without append discards the upload in progress', async () => {
    const d = await driver();
    await expect(d.writer('/nothing', true)).rejects.toBeInstanceOf(PathNotFoundError);
    const w = await d.writer('/restart', false);
    await w.write(randomBytes(PART + 10));
    await w.close();
    expect(await listUploads(client, bucket, prefix)).toHaveLength(1);
    const again = await d.writer('/restart', false);
    expect(again.size).toBe(0);
    expect(await listUploads(client, bucket, prefix)).toEqual([]);
    expect(await staging()).toEqual([]);
    await again.cancel();
  });

  it('refuses use after it ended, and a second call while a write is in progress', async () => {
    const d = await driver();
    const w = await d.writer('/ended', false);
    const writing = w.write(randomBytes(PART + 1));
    await expect(w.close()).rejects.toThrow(/a write\(\) is still in progress/);
    await writing;
    await w.commit();
    await expect(w.write(randomBytes(1))).rejects.toThrow(/the writer is already committed/);
    await expect(w.close()).rejects.toThrow(/already committed/);
    expect((await d.stat('/ended')).size).toBe(PART + 1);
  });
});
