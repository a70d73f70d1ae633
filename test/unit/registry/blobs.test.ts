import { createHash, randomBytes, randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { RangeNotSatisfiableError, RegistryError } from '../../../src/errors.js';
import { BlobStore, resolveRange, WELL_KNOWN_BLOBS, type ByteRange } from '../../../src/registry/blobs.js';
import { HashPool } from '../../../src/engine/hash-pool.js';
import { paths } from '../../../src/registry/paths.js';
import { parseDigest, type Digest } from '../../../src/registry/reference.js';
import { Registry } from '../../../src/registry/registry.js';
import { SlabPool } from '../../../src/engine/slab-pool.js';
import type { CommittedData } from '../../../src/engine/uploads.js';
import { isPathNotFound, type StorageDriver } from '../../../src/storage/driver.js';
import { MemoryDriver } from '../../../src/storage/memory.js';
import { bodyOf, expectSameBytes } from '../../helpers/uploads.js';

const EMPTY_LAYER = 'sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4';
const EMPTY_JSON = 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a';

const digestOf = (b: Uint8Array): Digest => parseDigest(`sha256:${createHash('sha256').update(b).digest('hex')}`);

async function readAll(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(Buffer.from(c as Uint8Array));
  return Buffer.concat(parts);
}

async function exists(driver: StorageDriver, path: string): Promise<boolean> {
  try {
    await driver.stat(path);
    return true;
  } catch (err) {
    if (isPathNotFound(err)) return false;
    throw err;
  }
}

/** The RegistryError code a promise rejects with. */
async function codeOf(p: Promise<unknown>): Promise<string> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(RegistryError);
  return (err as RegistryError).code;
}

/** Puts bytes where a committed upload would have left them. */
async function committed(driver: StorageDriver, bytes: Uint8Array): Promise<CommittedData> {
  const dataPath = paths.blobData(randomUUID());
  await driver.putContent(dataPath, bytes);
  return { dataPath, size: bytes.length };
}

describe('resolveRange', () => {
  it.each<[string, ByteRange | undefined, number, [number, number]]>([
    ['no range: the whole blob', undefined, 100, [0, 99]],
    ['no range on an empty blob', undefined, 0, [0, -1]],
    ['start and end', { start: 10, end: 19 }, 100, [10, 19]],
    ['one byte', { start: 5, end: 5 }, 100, [5, 5]],
    ['the last byte', { start: 99, end: 99 }, 100, [99, 99]],
    ['end past the size is clamped', { start: 90, end: 1000 }, 100, [90, 99]],
    ['open-ended', { start: 42 }, 100, [42, 99]],
    ['open-ended from 0', { start: 0 }, 100, [0, 99]],
    ['suffix', { suffix: 10 }, 100, [90, 99]],
    ['suffix of the whole blob', { suffix: 100 }, 100, [0, 99]],
    ['suffix longer than the blob', { suffix: 1000 }, 100, [0, 99]],
    // Satisfiable (RFC 9110 §14.1.2): the whole, empty, blob.
    ['a suffix on an empty blob', { suffix: 5 }, 0, [0, -1]],
  ])('%s', (_label, range, size, expected) => {
    expect(resolveRange(range, size)).toEqual(expected);
  });

  it.each<[string, ByteRange, number]>([
    ['start at the size', { start: 100 }, 100],
    ['start past the size', { start: 150, end: 200 }, 100],
    ['end before start', { start: 10, end: 9 }, 100],
    ['zero-length suffix', { suffix: 0 }, 100],
    ['any start on an empty blob', { start: 0 }, 0],
    ['a zero-length suffix on an empty blob', { suffix: 0 }, 0],
  ])('is unsatisfiable for %s', (_label, range, size) => {
    let err: unknown;
    try {
      resolveRange(range, size);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(RangeNotSatisfiableError);
    expect((err as RangeNotSatisfiableError).size).toBe(size);
    expect((err as RangeNotSatisfiableError).code).toBe('RANGE_INVALID');
  });
});

describe('well-known blobs', () => {
  it('are the empty gzipped tar layer and the empty JSON descriptor', () => {
    expect([...WELL_KNOWN_BLOBS.keys()].sort()).toEqual([EMPTY_JSON, EMPTY_LAYER].sort());
    expect(WELL_KNOWN_BLOBS.get(EMPTY_JSON)!.toString()).toBe('{}');
    expect(WELL_KNOWN_BLOBS.get(EMPTY_LAYER)!.length).toBe(32);
  });

  it('are stored under the sha256 of their bytes', () => {
    for (const [digest, bytes] of WELL_KNOWN_BLOBS) {
      expect(digestOf(bytes).value).toBe(digest);
    }
  });

  it('resolve in every repository without being pushed', async () => {
    const blobs = new BlobStore(new MemoryDriver());
    for (const [digest, bytes] of WELL_KNOWN_BLOBS) {
      const d = parseDigest(digest);
      expect(await blobs.stat('any/repo', d)).toEqual({ digest, size: bytes.length });
      expect(await blobs.exists('other', d)).toBe(true);
      const read = await blobs.open('any/repo', d);
      expect(await readAll(read.stream)).toEqual(bytes);
      const part = await blobs.open('any/repo', d, { start: 1, end: 1 });
      expect(await readAll(part.stream)).toEqual(bytes.subarray(1, 2));
      expect(part).toMatchObject({ start: 1, end: 1, partial: true });
    }
  });
});

describe('BlobStore', () => {
  let driver: MemoryDriver;
  let blobs: BlobStore;

  beforeEach(() => {
    driver = new MemoryDriver();
    blobs = new BlobStore(driver);
  });

  it('adopts committed data as a blob linked into the repository', async () => {
    const bytes = randomBytes(1000);
    const d = digestOf(bytes);
    const data = await committed(driver, bytes);
    expect(await blobs.adopt('a', d, data)).toEqual({ digest: d.value, size: 1000 });
    expect(await blobs.stat('a', d)).toEqual({ digest: d.value, size: 1000 });
    expect(await exists(driver, paths.layerLink('a', d))).toBe(true);
    const read = await blobs.open('a', d);
    expect(read).toMatchObject({ start: 0, end: 999, partial: false, descriptor: { digest: d.value, size: 1000 } });
    expect(await readAll(read.stream)).toEqual(bytes);
  });

  it('serves ranges of a blob', async () => {
    const bytes = randomBytes(1000);
    const d = digestOf(bytes);
    await blobs.adopt('a', d, await committed(driver, bytes));
    const read = await blobs.open('a', d, { start: 100, end: 199 });
    expect(read).toMatchObject({ start: 100, end: 199, partial: true });
    expect(await readAll(read.stream)).toEqual(bytes.subarray(100, 200));
    expect(await readAll((await blobs.open('a', d, { suffix: 10 })).stream)).toEqual(bytes.subarray(990));
    expect(await codeOf(blobs.open('a', d, { start: 1000 }))).toBe('RANGE_INVALID');
  });

  it('deduplicates: a second adopt of the same digest deletes its duplicate data', async () => {
    const bytes = randomBytes(500);
    const d = digestOf(bytes);
    const first = await committed(driver, bytes);
    const second = await committed(driver, bytes);
    await blobs.adopt('a', d, first);
    expect(await blobs.adopt('b', d, second)).toEqual({ digest: d.value, size: 500 });
    expect(await exists(driver, first.dataPath)).toBe(true);
    expect(await exists(driver, second.dataPath)).toBe(false);
    expect(await driver.list(paths.blobDataDir())).toEqual([first.dataPath]);
    // Both repositories see the one copy.
    expect(await readAll((await blobs.open('a', d)).stream)).toEqual(bytes);
    expect(await readAll((await blobs.open('b', d)).stream)).toEqual(bytes);
  });

  it('keeps the data when the same upload is adopted twice', async () => {
    const bytes = randomBytes(10);
    const d = digestOf(bytes);
    const data = await committed(driver, bytes);
    await blobs.adopt('a', d, data);
    await blobs.adopt('a', d, data);
    expect(await exists(driver, data.dataPath)).toBe(true);
    expect(await readAll((await blobs.open('a', d)).stream)).toEqual(bytes);
  });

  it('deduplicates concurrent adopts of the same digest down to one copy', async () => {
    const bytes = randomBytes(100);
    const d = digestOf(bytes);
    const datas = await Promise.all(Array.from({ length: 5 }, () => committed(driver, bytes)));
    await Promise.all(datas.map((data, i) => blobs.adopt(`r${i}`, d, data)));
    expect(await driver.list(paths.blobDataDir())).toHaveLength(1);
    for (let i = 0; i < 5; i++) expect(await readAll((await blobs.open(`r${i}`, d)).stream)).toEqual(bytes);
  });

  it('shows a blob only in repositories it is linked into', async () => {
    const bytes = randomBytes(10);
    const d = digestOf(bytes);
    await blobs.adopt('a', d, await committed(driver, bytes));
    expect(await codeOf(blobs.stat('b', d))).toBe('BLOB_UNKNOWN');
    expect(await codeOf(blobs.open('b', d))).toBe('BLOB_UNKNOWN');
    expect(await blobs.exists('b', d)).toBe(false);
    expect(await blobs.exists('a', d)).toBe(true);
    // A repository whose name is a prefix of the linked one's, or nested below it, sees nothing.
    expect(await blobs.exists('a/b', d)).toBe(false);
    expect(await codeOf(blobs.stat('a', digestOf(randomBytes(10))))).toBe('BLOB_UNKNOWN');
  });

  describe('mount', () => {
    it('links a blob the source repository can see, without copying bytes', async () => {
      const bytes = randomBytes(64);
      const d = digestOf(bytes);
      await blobs.adopt('from', d, await committed(driver, bytes));
      const before = await driver.list(paths.blobDataDir());
      expect(await blobs.mount('to', d, 'from')).toEqual({ digest: d.value, size: 64 });
      expect(await blobs.stat('to', d)).toEqual({ digest: d.value, size: 64 });
      expect(await driver.list(paths.blobDataDir())).toEqual(before);
    });

    it('refuses (undefined) when the source repository cannot see the blob, linking nothing', async () => {
      const bytes = randomBytes(64);
      const d = digestOf(bytes);
      await blobs.adopt('owner', d, await committed(driver, bytes));
      // The blob exists in the registry, but not in `other`: no mount through it.
      expect(await blobs.mount('to', d, 'other')).toBeUndefined();
      expect(await blobs.exists('to', d)).toBe(false);
      expect(await blobs.mount('to', digestOf(randomBytes(3)), 'owner')).toBeUndefined();
    });

    it('mounts well-known blobs from anywhere without writing a link', async () => {
      const d = parseDigest(EMPTY_JSON);
      expect(await blobs.mount('to', d, 'nowhere')).toEqual({ digest: EMPTY_JSON, size: 2 });
      expect(await exists(driver, paths.layerLink('to', d))).toBe(false);
    });
  });

  describe('unlink', () => {
    it('removes the blob from one repository only, keeping the bytes', async () => {
      const bytes = randomBytes(64);
      const d = digestOf(bytes);
      const data = await committed(driver, bytes);
      await blobs.adopt('a', d, data);
      await blobs.mount('b', d, 'a');
      await blobs.unlink('a', d);
      expect(await blobs.exists('a', d)).toBe(false);
      expect(await blobs.exists('b', d)).toBe(true);
      expect(await exists(driver, data.dataPath)).toBe(true);
      // The repository can get it back by mounting from one that still has it.
      expect(await blobs.mount('a', d, 'b')).toEqual({ digest: d.value, size: 64 });
    });

    it('answers BLOB_UNKNOWN for a blob not linked into the repository', async () => {
      const bytes = randomBytes(64);
      const d = digestOf(bytes);
      await blobs.adopt('a', d, await committed(driver, bytes));
      expect(await codeOf(blobs.unlink('b', d))).toBe('BLOB_UNKNOWN');
      await blobs.unlink('a', d);
      expect(await codeOf(blobs.unlink('a', d))).toBe('BLOB_UNKNOWN');
    });
  });

  it('stores small content unlinked, once per digest', async () => {
    const bytes = Buffer.from('{"schemaVersion":2}');
    const d = digestOf(bytes);
    expect(await blobs.getSmall(d)).toBeUndefined();
    await blobs.putSmall(d, bytes);
    await blobs.putSmall(d, bytes);
    expect(await blobs.getSmall(d)).toEqual(bytes);
    expect(await driver.list(paths.blobDataDir())).toHaveLength(1);
    expect(await blobs.exists('a', d)).toBe(false);
  });
});

/**
 * Issue 10: a DELETE racing a PUT deleted the data a new blob record named. HEAD then said
 * 200 and GET 404, and every later push of the same bytes deduplicated onto the broken
 * record and deleted its own fresh copy. A record without its data is now no content.
 */
describe('BlobStore: a record whose data is gone (issue 10)', () => {
  let driver: MemoryDriver;
  let blobs: BlobStore;

  beforeEach(() => {
    driver = new MemoryDriver();
    blobs = new BlobStore(driver);
  });

  /** A blob in `repo` whose data then vanished (or, with `shorten`, lost its tail). */
  async function broken(repo: string, bytes: Buffer, shorten = false): Promise<{ d: Digest; data: CommittedData }> {
    const d = digestOf(bytes);
    const data = await committed(driver, bytes);
    await blobs.adopt(repo, d, data);
    if (shorten) await driver.putContent(data.dataPath, bytes.subarray(1));
    else await driver.delete(data.dataPath);
    return { d, data };
  }

  it.each([['gone', false], ['of another size', true]])('treats a record whose data is %s as absent: HEAD, GET and mounts', async (_label, shorten) => {
    const { d } = await broken('a', randomBytes(300), shorten);
    expect(await codeOf(blobs.stat('a', d))).toBe('BLOB_UNKNOWN');
    expect(await blobs.exists('a', d)).toBe(false);
    expect(await codeOf(blobs.open('a', d))).toBe('BLOB_UNKNOWN');
    expect(await blobs.mount('b', d, 'a')).toBeUndefined();
    expect(await exists(driver, paths.layerLink('b', d))).toBe(false);
  });

  it('is replaced by the next push of the bytes, which keeps its own copy', async () => {
    const bytes = randomBytes(300);
    const { d, data: old } = await broken('a', bytes);
    const fresh = await committed(driver, bytes);
    expect(await blobs.adopt('b', d, fresh)).toEqual({ digest: d.value, size: 300 });
    expect(await exists(driver, fresh.dataPath)).toBe(true);
    expect(JSON.parse((await driver.getContent(paths.blobRecord(d))).toString()).data).toBe(fresh.dataPath);
    expect(JSON.parse((await driver.getContent(paths.blobRecord(d))).toString()).data).not.toBe(old.dataPath);
    for (const repo of ['a', 'b']) expect(await readAll((await blobs.open(repo, d)).stream)).toEqual(bytes);
    expect((await driver.list('/blobs/sha256/' + d.hex.slice(0, 2))).filter((p) => p.includes('takeover'))).toEqual([]);
  });

  it('is replaced once when many pushes of the bytes come at once, and every one of them reads back', async () => {
    const bytes = randomBytes(300);
    for (let round = 0; round < 10; round++) {
      const { d } = await broken(`a${round}`, bytes);
      const datas = await Promise.all(Array.from({ length: 6 }, () => committed(driver, bytes)));
      await Promise.all(datas.map((data, i) => blobs.adopt(`r${round}-${i}`, d, data)));
      const record = JSON.parse((await driver.getContent(paths.blobRecord(d))).toString()) as { data: string };
      // One copy is the content, the duplicates went.
      expect(datas.filter((x) => x.dataPath === record.data)).toHaveLength(1);
      for (const x of datas) expect(await exists(driver, x.dataPath)).toBe(x.dataPath === record.data);
      for (let i = 0; i < 6; i++) expect(await readAll((await blobs.open(`r${round}-${i}`, d)).stream)).toEqual(bytes);
      await driver.delete(record.data); // broken again for the next round
    }
  });

  it('is replaced by putSmall (a manifest pushed again)', async () => {
    const bytes = Buffer.from('{"schemaVersion":2,"issue":10}');
    const d = digestOf(bytes);
    await blobs.putSmall(d, bytes);
    const record = JSON.parse((await driver.getContent(paths.blobRecord(d))).toString()) as { data: string };
    await driver.delete(record.data);
    expect(await blobs.getSmall(d)).toBeUndefined();
    await blobs.putSmall(d, bytes);
    expect(await blobs.getSmall(d)).toEqual(bytes);
  });
});

describe('blobs through the Registry', () => {
  let pool: HashPool;

  beforeAll(() => {
    pool = new HashPool({ threads: 1, maxQueue: 100 });
  });

  afterAll(async () => {
    await pool.close();
  });

  it('keeps one copy of a blob pushed to two repositories', async () => {
    const driver = new MemoryDriver();
    const registry = new Registry({
      driver, hashPool: pool, slabs: new SlabPool(64 * 1024, 1 << 20), maxSessionBufferedBytes: 192 * 1024, maxBlobBytes: 0, maxManifestBytes: 1 << 20,
    });
    const bytes = randomBytes(200_000);
    const d = digestOf(bytes).value;
    expect(await registry.putBlob('a', d, bytes.length, bodyOf(bytes))).toEqual({ digest: d, size: bytes.length });
    const { id } = await registry.startUpload('b');
    await registry.appendUpload('b', id, { start: 0 }, bodyOf(bytes, { sizes: [4099] }));
    expect(await registry.completeUpload('b', id, d, {}, undefined)).toEqual({ digest: d, size: bytes.length });
    expect(await driver.list(paths.blobDataDir())).toHaveLength(1);
    expectSameBytes(await readAll((await registry.readBlob('b', d)).stream), bytes);
    await registry.deleteBlob('a', d);
    expect(await codeOf(registry.statBlob('a', d))).toBe('BLOB_UNKNOWN');
    expect(await registry.statBlob('b', d)).toEqual({ digest: d, size: bytes.length });
  });
});
