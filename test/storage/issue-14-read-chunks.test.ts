/**
 * Issue 14: pulls from S3 cost 2-2.5 CPU s/GiB in the driver alone, because node's HTTP client
 * reads its socket into a fresh 64 KiB buffer per read (garbage for full mark-compacts). Blob
 * reads from an http:// store now go through plain-get.ts: the body lands in recycled chunks
 * that the consumer gives back. What must hold: the bytes and Range are exact (across window
 * and chunk edges, over kept-alive connections), and a chunk given back carries the next read.
 */
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { recyclerOf } from '../../src/storage/file-reader.js';
import { createDriver, type StorageDriver } from '../../src/storage/index.js';
import { createTestBucket, deleteBucket, s3StorageUrl, s3TestEnv, S3_ENDPOINT_MISSING, testClient } from '../helpers/s3.js';

const env = s3TestEnv();
let client: S3Client;
let bucket: string;
let driver: StorageDriver;
const blob = randomBytes(40 * 1024 * 1024 + 12345);

beforeAll(async () => {
  if (!env) throw new Error(S3_ENDPOINT_MISSING);
  client = testClient(env);
  bucket = await createTestBucket(client, 'issue14');
  await client.send(new PutObjectCommand({ Bucket: bucket, Key: 'blob', Body: blob }));
  driver = await createDriver(s3StorageUrl(env, bucket));
});

afterAll(async () => {
  if (env) await deleteBucket(client, bucket);
});

/** Reads a stream to its end, giving each chunk back when `recycle`; returns the bytes and the chunks' memory. */
async function read(r: Readable, recycle: boolean): Promise<{ bytes: Buffer; memory: Set<ArrayBufferLike>; chunks: number }> {
  const give = recyclerOf(r);
  const parts: Buffer[] = [];
  const memory = new Set<ArrayBufferLike>();
  for await (const c of r as AsyncIterable<Buffer>) {
    parts.push(Buffer.from(c));
    memory.add(c.buffer);
    if (recycle) give?.(c);
  }
  return { bytes: Buffer.concat(parts), memory, chunks: parts.length };
}

it('reads the whole object and exact ranges across window and chunk edges', async () => {
  expect((await read(await driver.reader('/blob'), true)).bytes.equals(blob)).toBe(true);
  const MiB = 1024 * 1024;
  for (const [offset, length] of [[0, 1], [256 * 1024 - 1, 2], [16 * MiB - 7, 16 * MiB + 14], [5, 33 * MiB], [blob.length - 3, 3]] as const) {
    const got = (await read(await driver.reader('/blob', offset, length), true)).bytes;
    expect(got.equals(blob.subarray(offset, offset + length))).toBe(true);
  }
});

it('chunks given back carry the next reads; chunks kept are not reused', async () => {
  const kept = await read(await driver.reader('/blob', 0, 8 * 1024 * 1024), false);
  const keptCopy = Buffer.concat([...kept.memory].map((ab) => Buffer.from(ab as ArrayBuffer)));
  const a = await read(await driver.reader('/blob', 0, 8 * 1024 * 1024), true);
  const b = await read(await driver.reader('/blob', 8 * 1024 * 1024, 8 * 1024 * 1024), true);
  // Recycled: a few buffers carry all of a read's chunks, and the next read's too.
  expect(a.chunks).toBeGreaterThanOrEqual(32);
  expect(a.memory.size).toBeLessThanOrEqual(a.chunks / 4);
  expect([...b.memory].some((m) => a.memory.has(m))).toBe(true);
  // Never given back: untouched by the reads after it.
  expect(Buffer.concat([...kept.memory].map((ab) => Buffer.from(ab as ArrayBuffer))).equals(keptCopy)).toBe(true);
});
