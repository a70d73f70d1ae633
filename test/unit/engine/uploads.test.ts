import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ClientAbortError, RegistryError, UploadRangeError } from '../../../src/errors.js';
import { HashPool } from '../../../src/engine/hash-pool.js';
import { paths } from '../../../src/registry/paths.js';
import { parseDigest, type Digest } from '../../../src/registry/reference.js';
import { Registry } from '../../../src/registry/registry.js';
import { SlabPool } from '../../../src/engine/slab-pool.js';
import type { BodySource } from '../../../src/engine/upload-write.js';
import type { UploadLockOptions } from '../../../src/engine/upload-lock.js';
import { UploadEngine } from '../../../src/engine/uploads.js';
import { collectGarbage } from '../../../src/gc/collector.js';
import { isPathNotFound, type PutOptions, type StorageDriver } from '../../../src/storage/driver.js';
import { FsDriver } from '../../../src/storage/fs.js';
import { MemoryDriver } from '../../../src/storage/memory.js';
import { bodyOf, expectSameBytes, FaultyDriver, newStats, ODD_SIZES, sleep } from '../../helpers/uploads.js';

const KiB = 1024;
const SLAB = 64 * KiB;
const REPO = 'library/test';

const digestOf = (b: Uint8Array, algorithm: 'sha256' | 'sha512' = 'sha256'): Digest =>
  parseDigest(`${algorithm}:${createHash(algorithm).update(b).digest('hex')}`);

let pool: HashPool;

beforeAll(() => {
  pool = new HashPool({ threads: 2, maxQueue: 1000 });
});

afterAll(async () => {
  await pool.close();
});

/** The engine as the server wires it, scaled down: 64 KiB slabs, two in flight per upload. */
function engine(driver: StorageDriver, opts: { hashPool?: HashPool; slabs?: SlabPool; maxBlobBytes?: number; lock?: UploadLockOptions } = {}): UploadEngine {
  return new UploadEngine({
    driver,
    hashPool: opts.hashPool ?? pool,
    slabs: opts.slabs ?? new SlabPool(SLAB, 16 * SLAB),
    maxSessionBufferedBytes: 3 * SLAB,
    maxBlobBytes: opts.maxBlobBytes ?? 0,
    ...(opts.lock ? { lock: opts.lock } : {}),
  });
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

/** The RegistryError a promise rejects with. */
async function rejection(p: Promise<unknown>): Promise<RegistryError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(RegistryError);
  return err as RegistryError;
}

const empty: BodySource = async () => 0;

describe('UploadEngine', () => {
  let driver: MemoryDriver;
  let uploads: UploadEngine;

  beforeEach(() => {
    driver = new MemoryDriver();
    uploads = engine(driver);
  });

  it('starts an upload at offset 0 with a record in storage', async () => {
    const { id, offset } = await uploads.start(REPO);
    expect(id).toMatch(/^[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}$/);
    expect(offset).toBe(0);
    expect(await exists(driver, paths.upload(REPO, id))).toBe(true);
    expect(await uploads.status(REPO, id)).toEqual({ id, offset: 0 });
  });

  it('stores a blob pushed in many requests of odd-sized chunks, with the right digest', async () => {
    const data = randomBytes(1_234_567);
    const { id } = await uploads.start(REPO);
    const cuts = [0, 1, 70_000, 70_001, 400_000, 999_999, data.length];
    for (let i = 0; i + 1 < cuts.length; i++) {
      const [from, to] = [cuts[i]!, cuts[i + 1]!];
      const state = await uploads.append(REPO, id, { start: from, length: to - from }, bodyOf(data.subarray(from, to), { sizes: ODD_SIZES }));
      expect(state).toEqual({ id, offset: to });
      expect(await uploads.status(REPO, id)).toEqual({ id, offset: to });
    }
    const committed = await uploads.complete(REPO, id, digestOf(data), {}, undefined);
    expect(committed).toEqual({ dataPath: paths.blobData(id), size: data.length });
    expectSameBytes(await driver.getContent(committed.dataPath), data);
    // The record is gone: the upload is finished.
    expect(await exists(driver, paths.upload(REPO, id))).toBe(false);
    expect((await rejection(uploads.status(REPO, id))).code).toBe('BLOB_UPLOAD_UNKNOWN');
  });

  it('takes a streamed PATCH (no Content-Range) and a last chunk with the PUT', async () => {
    const data = randomBytes(300_001);
    const { id } = await uploads.start(REPO);
    expect(await uploads.append(REPO, id, {}, bodyOf(data.subarray(0, 200_000), { sizes: ODD_SIZES }))).toEqual({ id, offset: 200_000 });
    const committed = await uploads.complete(REPO, id, digestOf(data), { start: 200_000 }, bodyOf(data.subarray(200_000), { sizes: [4099] }));
    expect(committed.size).toBe(data.length);
    expectSameBytes(await driver.getContent(committed.dataPath), data);
  });

  it('completes an empty blob', async () => {
    const { id } = await uploads.start(REPO);
    const committed = await uploads.complete(REPO, id, digestOf(new Uint8Array(0)), {}, undefined);
    expect(committed.size).toBe(0);
  });

  it('verifies a sha512 digest', async () => {
    const data = randomBytes(100_000);
    const { id } = await uploads.start(REPO);
    await uploads.append(REPO, id, {}, bodyOf(data));
    const committed = await uploads.complete(REPO, id, digestOf(data, 'sha512'), {}, undefined);
    expect(committed.size).toBe(data.length);
  });

  it('pauses the body when its buffers are full and never holds more slabs than allowed', async () => {
    // A tiny pool (4 slabs of 64 KiB) and slow storage: the body must wait for drained().
    const slabs = new SlabPool(SLAB, 4 * SLAB);
    let maxInUse = 0;
    const slow = new FaultyDriver({
      beforeWrite: async () => {
        maxInUse = Math.max(maxInUse, slabs.inUse);
        await sleep(2);
      },
    }, driver);
    const e = engine(slow, { slabs });
    const data = randomBytes(20 * SLAB + 3);
    const stats = newStats();
    const { id } = await e.start(REPO);
    await e.append(REPO, id, {}, bodyOf(data, {
      sizes: [SLAB / 4 + 1],
      stats,
      onWrite: () => {
        maxInUse = Math.max(maxInUse, slabs.inUse);
      },
    }));
    expect(stats.paused).toBeGreaterThan(0);
    expect(stats.waitedForDrain).toBeGreaterThan(0);
    // maxSessionBufferedBytes = 3 slabs: one filling and two in flight.
    expect(maxInUse).toBeLessThanOrEqual(3);
    expect(maxInUse).toBeLessThanOrEqual(slabs.maxSlabs);
    expect(slabs.inUse).toBe(0);
    const committed = await e.complete(REPO, id, digestOf(data), {}, undefined);
    expectSameBytes(await driver.getContent(committed.dataPath), data);
  });

  it('keeps concurrent uploads within a shared pool smaller than their combined demand', async () => {
    const slabs = new SlabPool(SLAB, 3 * SLAB);
    let maxInUse = 0;
    const slow = new FaultyDriver({
      beforeWrite: async () => {
        maxInUse = Math.max(maxInUse, slabs.inUse);
        await sleep(1);
      },
    }, driver);
    const e = engine(slow, { slabs });
    const blobs = [randomBytes(8 * SLAB + 1), randomBytes(9 * SLAB + 2), randomBytes(7 * SLAB + 3)];
    const committed = await Promise.all(blobs.map(async (data) => {
      const { id } = await e.start(REPO);
      await e.append(REPO, id, {}, bodyOf(data, { sizes: ODD_SIZES }));
      return e.complete(REPO, id, digestOf(data), {}, undefined);
    }));
    expect(maxInUse).toBeLessThanOrEqual(3);
    for (const [i, c] of committed.entries()) expectSameBytes(await driver.getContent(c.dataPath), blobs[i]!);
  });

  describe('when a storage write fails', () => {
    it.each([
      ['whole', false],
      ['short', true],
    ])('(%s) rejects, keeps a consistent prefix, reports it, and resumes from there', async (_label, partialFailure) => {
      const faulty = new FaultyDriver({ failWriteAt: 4, partialFailure }, driver);
      const e = engine(faulty);
      const data = randomBytes(10 * SLAB + 99);
      const { id } = await e.start(REPO);
      await expect(e.append(REPO, id, { start: 0 }, bodyOf(data, { sizes: ODD_SIZES }))).rejects.toThrow('injected failure of write #4');

      // Writes 1-3 landed, and half of write 4 when the failure was short. A write is a
      // batch of at most a slab (less when the next kept chunk would not fit).
      const { offset } = await e.status(REPO, id);
      const [w1, w2, w3, w4] = faulty.writeSizes;
      expect(w1! + w2! + w3!).toBeGreaterThan(2 * SLAB);
      expect(offset).toBe(w1! + w2! + w3! + (partialFailure ? Math.floor(w4! / 2) : 0));
      expectSameBytes(await driver.getContent(paths.blobData(id)), data.subarray(0, offset));

      // The client resumes at the reported offset; the running hash (which may have seen
      // the failed slab) must not be trusted, so the digest is still right.
      await expect(e.append(REPO, id, { start: offset + 1 }, bodyOf(data.subarray(offset + 1)))).rejects.toBeInstanceOf(UploadRangeError);
      expect(await e.append(REPO, id, { start: offset }, bodyOf(data.subarray(offset), { sizes: ODD_SIZES }))).toEqual({ id, offset: data.length });
      const committed = await e.complete(REPO, id, digestOf(data), {}, undefined);
      expectSameBytes(await driver.getContent(committed.dataPath), data);
    });

    it('fails the PUT that carries the last chunk, and the upload stays resumable', async () => {
      const faulty = new FaultyDriver({ failWriteAt: 2 }, driver);
      const e = engine(faulty);
      const data = randomBytes(3 * SLAB);
      const { id } = await e.start(REPO);
      await e.append(REPO, id, {}, bodyOf(data.subarray(0, SLAB)));
      await expect(e.complete(REPO, id, digestOf(data), { start: SLAB }, bodyOf(data.subarray(SLAB)))).rejects.toThrow('injected failure of write #2');
      expect(await e.status(REPO, id)).toEqual({ id, offset: SLAB });
      const committed = await e.complete(REPO, id, digestOf(data), { start: SLAB }, bodyOf(data.subarray(SLAB)));
      expectSameBytes(await driver.getContent(committed.dataPath), data);
    });
  });

  describe('after a restart (a new HashPool: the running hash is lost)', () => {
    let restarted: HashPool;

    beforeEach(() => {
      restarted = new HashPool({ threads: 1, maxQueue: 100 });
    });

    afterEach(async () => {
      await restarted.close();
    });

    it('rebuilds the hash from storage for the next chunk', async () => {
      const data = randomBytes(5 * SLAB + 12_345);
      const { id } = await uploads.start(REPO);
      await uploads.append(REPO, id, { start: 0 }, bodyOf(data.subarray(0, 2 * SLAB + 7), { sizes: ODD_SIZES }));
      const after = engine(driver, { hashPool: restarted });
      expect(await after.status(REPO, id)).toEqual({ id, offset: 2 * SLAB + 7 });
      await after.append(REPO, id, { start: 2 * SLAB + 7 }, bodyOf(data.subarray(2 * SLAB + 7), { sizes: ODD_SIZES }));
      const committed = await after.complete(REPO, id, digestOf(data), {}, undefined);
      expect(committed.size).toBe(data.length);
    });

    it('rebuilds the hash from storage for the final digest', async () => {
      const data = randomBytes(3 * SLAB + 1);
      const { id } = await uploads.start(REPO);
      await uploads.append(REPO, id, {}, bodyOf(data));
      const after = engine(driver, { hashPool: restarted });
      expect((await after.complete(REPO, id, digestOf(data), {}, undefined)).size).toBe(data.length);
    });

    // Found by probing: 200 uploads of 8 MiB finished at once after a restart took the
    // process to 987 MB, each rebuild reading and holding chunks of its own.
    it('rebuilds at most four hashes at once, each right', async () => {
      const blobs = Array.from({ length: 12 }, () => randomBytes(3 * SLAB + 1));
      const ids: string[] = [];
      for (const data of blobs) {
        const { id } = await uploads.start(REPO);
        await uploads.append(REPO, id, {}, bodyOf(data));
        ids.push(id);
      }
      let reading = 0;
      let most = 0;
      const counted = new Proxy(driver, {
        get(target, prop, receiver) {
          const value = Reflect.get(target, prop, receiver) as unknown;
          if (typeof value !== 'function') return value;
          if (prop !== 'reader') return value.bind(target);
          return async (...args: Parameters<MemoryDriver['reader']>) => {
            const stream = await target.reader(...args);
            most = Math.max(most, ++reading);
            stream.once('close', () => reading--);
            return stream;
          };
        },
      });
      const after = engine(counted, { hashPool: restarted });
      const done = await Promise.all(blobs.map((data, i) => after.complete(REPO, ids[i]!, digestOf(data), {}, undefined)));
      expect(done.map((r) => r.size)).toEqual(blobs.map((b) => b.length));
      expect(most).toBeGreaterThan(1);
      expect(most).toBeLessThanOrEqual(4);
    });

    it('still rejects a wrong digest', async () => {
      const data = randomBytes(SLAB + 1);
      const { id } = await uploads.start(REPO);
      await uploads.append(REPO, id, {}, bodyOf(data));
      const after = engine(driver, { hashPool: restarted });
      expect((await rejection(after.complete(REPO, id, digestOf(randomBytes(10)), {}, undefined))).code).toBe('DIGEST_INVALID');
    });
  });

  describe('a wrong digest', () => {
    it('fails with DIGEST_INVALID and deletes the data and the upload', async () => {
      const data = randomBytes(2 * SLAB + 5);
      const wrong = digestOf(Buffer.concat([data, Buffer.from('x')]));
      const { id } = await uploads.start(REPO);
      await uploads.append(REPO, id, {}, bodyOf(data));
      const err = await rejection(uploads.complete(REPO, id, wrong, {}, undefined));
      expect(err.code).toBe('DIGEST_INVALID');
      expect(err.detail).toEqual({ expected: wrong.value, actual: digestOf(data).value });
      expect(await exists(driver, paths.blobData(id))).toBe(false);
      expect(await exists(driver, paths.upload(REPO, id))).toBe(false);
      expect((await rejection(uploads.status(REPO, id))).code).toBe('BLOB_UPLOAD_UNKNOWN');
    });

    it('fails with DIGEST_INVALID for a monolithic push through the Registry, linking nothing', async () => {
      const registry = new Registry({
        driver, hashPool: pool, slabs: new SlabPool(SLAB, 16 * SLAB), maxSessionBufferedBytes: 3 * SLAB, maxBlobBytes: 0, maxManifestBytes: 1 << 20,
      });
      const data = randomBytes(SLAB + 1);
      const wrong = digestOf(randomBytes(8)).value;
      const err = await rejection(registry.putBlob(REPO, wrong, data.length, bodyOf(data)));
      expect(err.code).toBe('DIGEST_INVALID');
      expect((await rejection(registry.statBlob(REPO, wrong))).code).toBe('BLOB_UNKNOWN');
      expect(await exists(driver, paths.blobDataDir())).toBe(false);
      expect(await exists(driver, paths.uploads(REPO))).toBe(false);
    });
  });

  describe('range checks', () => {
    it('rejects a chunk that does not start at the offset, with the current offset', async () => {
      const data = randomBytes(1000);
      const { id } = await uploads.start(REPO);
      await uploads.append(REPO, id, { start: 0 }, bodyOf(data.subarray(0, 600)));
      for (const start of [0, 599, 601, 5000]) {
        const err = await rejection(uploads.append(REPO, id, { start }, bodyOf(data.subarray(600))));
        expect(err).toBeInstanceOf(UploadRangeError);
        expect((err as UploadRangeError).offset).toBe(600);
        expect((err as UploadRangeError).uploadId).toBe(id);
        expect((err as UploadRangeError).repository).toBe(REPO);
        expect(err.code).toBe('RANGE_INVALID');
      }
      expect(await uploads.status(REPO, id)).toEqual({ id, offset: 600 });
    });

    it('rejects a first chunk that does not start at 0', async () => {
      const { id } = await uploads.start(REPO);
      const err = await rejection(uploads.append(REPO, id, { start: 1 }, bodyOf(randomBytes(10))));
      expect(err).toBeInstanceOf(UploadRangeError);
      expect((err as UploadRangeError).offset).toBe(0);
    });

    it('rejects a last chunk on the PUT that does not start at the offset, reading none of it', async () => {
      const data = randomBytes(1000);
      const { id } = await uploads.start(REPO);
      await uploads.append(REPO, id, {}, bodyOf(data.subarray(0, 500)));
      let read = false;
      const err = await rejection(uploads.complete(REPO, id, digestOf(data), { start: 400 }, async () => {
        read = true;
        return 0;
      }));
      expect(err).toBeInstanceOf(UploadRangeError);
      expect((err as UploadRangeError).offset).toBe(500);
      expect(read).toBe(false);
      // Nothing was lost: the upload continues.
      expect((await uploads.complete(REPO, id, digestOf(data), { start: 500 }, bodyOf(data.subarray(500)))).size).toBe(1000);
    });
  });

  it('rejects a second request writing to the same upload with UploadRangeError', async () => {
    const data = randomBytes(3 * SLAB);
    const { id } = await uploads.start(REPO);
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    let firstHalfSent!: () => void;
    const sentHalf = new Promise<void>((resolve) => {
      firstHalfSent = resolve;
    });
    const slowBody: BodySource = async (sink) => {
      await bodyOf(data.subarray(0, 2 * SLAB))(sink);
      firstHalfSent();
      await gate;
      await bodyOf(data.subarray(2 * SLAB))(sink);
      return data.length;
    };
    const first = uploads.append(REPO, id, { start: 0 }, slowBody);
    await sentHalf;
    const err = await rejection(uploads.append(REPO, id, {}, bodyOf(randomBytes(10))));
    expect(err).toBeInstanceOf(UploadRangeError);
    expect(err.message).toMatch(/another request/);
    expect(((err as UploadRangeError).offset)).toBeLessThanOrEqual(2 * SLAB);
    // Finishing (PUT) or cancelling while a PATCH writes is refused too.
    expect(await rejection(uploads.complete(REPO, id, digestOf(data), {}, undefined))).toBeInstanceOf(UploadRangeError);
    expect((await rejection(uploads.cancel(REPO, id))).code).toBe('BLOB_UPLOAD_INVALID');
    release();
    expect(await first).toEqual({ id, offset: data.length });
    expect((await uploads.complete(REPO, id, digestOf(data), {}, undefined)).size).toBe(data.length);
  });

  describe('an empty body', () => {
    it('adds nothing to an upload that has bytes', async () => {
      const data = randomBytes(1000);
      const { id } = await uploads.start(REPO);
      await uploads.append(REPO, id, {}, bodyOf(data));
      expect(await uploads.append(REPO, id, { start: 1000 }, empty)).toEqual({ id, offset: 1000 });
      expect(await uploads.append(REPO, id, {}, empty)).toEqual({ id, offset: 1000 });
      expect((await uploads.complete(REPO, id, digestOf(data), {}, undefined)).size).toBe(1000);
    });

    it('creates no data object for an upload that received no bytes', async () => {
      const { id } = await uploads.start(REPO);
      expect(await uploads.append(REPO, id, { start: 0 }, empty)).toEqual({ id, offset: 0 });
      expect(await uploads.status(REPO, id)).toEqual({ id, offset: 0 });
      expect(await exists(driver, paths.blobData(id))).toBe(false);
      expect(await exists(driver, paths.blobDataDir())).toBe(false);
    });
  });

  it('keeps what arrived when the client goes away, and rethrows the abort', async () => {
    const data = randomBytes(4 * SLAB);
    const { id } = await uploads.start(REPO);
    const sent = 2 * SLAB + 777;
    await expect(uploads.append(REPO, id, { start: 0 }, bodyOf(data, { sizes: ODD_SIZES, abortAfterBytes: sent })))
      .rejects.toBeInstanceOf(ClientAbortError);
    expect(await uploads.status(REPO, id)).toEqual({ id, offset: sent });
    expectSameBytes(await driver.getContent(paths.blobData(id)), data.subarray(0, sent));
    await uploads.append(REPO, id, { start: sent }, bodyOf(data.subarray(sent)));
    expect((await uploads.complete(REPO, id, digestOf(data), {}, undefined)).size).toBe(data.length);
  });

  it('refuses an upload beyond maxBlobBytes with SIZE_INVALID', async () => {
    const e = engine(driver, { maxBlobBytes: 2 * SLAB });
    const { id } = await e.start(REPO);
    const err = await rejection(e.append(REPO, id, {}, bodyOf(randomBytes(3 * SLAB))));
    expect(err.code).toBe('SIZE_INVALID');
    expect((await e.status(REPO, id)).offset).toBeLessThanOrEqual(2 * SLAB);
  });

  // Found by probing: a PATCH announcing a Content-Length past the limit was read and stored
  // up to the limit before its 400.
  it('refuses a body announced past maxBlobBytes before storing a byte of it', async () => {
    const e = engine(driver, { maxBlobBytes: 2 * SLAB });
    const { id } = await e.start(REPO);
    await e.append(REPO, id, {}, bodyOf(randomBytes(SLAB)));
    let read = false;
    const body = bodyOf(randomBytes(2 * SLAB));
    const watched: typeof body = (sink) => {
      read = true;
      return body(sink);
    };
    const err = await rejection(e.append(REPO, id, { start: SLAB, length: 2 * SLAB }, watched));
    expect(err.code).toBe('SIZE_INVALID');
    expect(err.detail).toMatchObject({ limit: 2 * SLAB, offset: SLAB, length: 2 * SLAB });
    expect(read).toBe(false);
    expect((await e.status(REPO, id)).offset).toBe(SLAB);
    // A monolithic upload announced past it, the same.
    expect((await rejection(e.oneShot(REPO, digestOf(new Uint8Array(0)), 3 * SLAB, watched))).code).toBe('SIZE_INVALID');
    expect(read).toBe(false);
  });

  it('answers BLOB_UPLOAD_UNKNOWN for unknown, malformed or other repositories\' upload ids', async () => {
    const { id } = await uploads.start(REPO);
    for (const [repo, bad] of [[REPO, '00000000-0000-0000-0000-000000000000'], [REPO, '../../etc'], [REPO, id.toUpperCase()], ['other/repo', id]] as const) {
      expect((await rejection(uploads.status(repo, bad))).code).toBe('BLOB_UPLOAD_UNKNOWN');
      expect((await rejection(uploads.append(repo, bad, {}, empty))).code).toBe('BLOB_UPLOAD_UNKNOWN');
      expect((await rejection(uploads.complete(repo, bad, digestOf(new Uint8Array(0)), {}, undefined))).code).toBe('BLOB_UPLOAD_UNKNOWN');
      expect((await rejection(uploads.cancel(repo, bad))).code).toBe('BLOB_UPLOAD_UNKNOWN');
    }
  });

  it('cancel deletes the data and the record', async () => {
    const { id } = await uploads.start(REPO);
    await uploads.append(REPO, id, {}, bodyOf(randomBytes(SLAB + 1)));
    await uploads.cancel(REPO, id);
    expect(await exists(driver, paths.blobData(id))).toBe(false);
    expect(await exists(driver, paths.upload(REPO, id))).toBe(false);
    expect((await rejection(uploads.status(REPO, id))).code).toBe('BLOB_UPLOAD_UNKNOWN');
    // Cancelling an upload that never received bytes works too.
    const second = await uploads.start(REPO);
    await uploads.cancel(REPO, second.id);
    expect(await exists(driver, paths.upload(REPO, second.id))).toBe(false);
  });
});

/**
 * Issue 10: the busy mark ended with the write section, before the blob was adopted and the
 * upload record removed, so a DELETE sent with the PUT deleted the data the new blob record
 * named. Requests that write to or end an upload now hold its storage lock to the end, on
 * one instance and across instances on one store.
 */
describe('UploadEngine: one request at a time per upload (issue 10)', () => {
  let driver: MemoryDriver;

  beforeEach(() => {
    driver = new MemoryDriver();
  });

  /** Completes `id` with an adopt step that waits for the returned release(). */
  function completeHeldInAdopt(e: UploadEngine, id: string, data: Uint8Array): { put: Promise<unknown>; adopting: Promise<void>; release: () => void } {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    let entered!: () => void;
    const adopting = new Promise<void>((resolve) => {
      entered = resolve;
    });
    const put = e.complete(REPO, id, digestOf(data), {}, undefined, async () => {
      entered();
      await gate;
    });
    return { put, adopting, release };
  }

  it('refuses a DELETE, PATCH or PUT while a PUT adopts its data, and then finds no upload', async () => {
    const uploads = engine(driver);
    const other = engine(driver); // a second instance on the same store
    const data = randomBytes(1000);
    const { id } = await uploads.start(REPO);
    await uploads.append(REPO, id, {}, bodyOf(data));
    const { put, adopting, release } = completeHeldInAdopt(uploads, id, data);
    await adopting;
    for (const e of [uploads, other]) {
      expect((await rejection(e.cancel(REPO, id))).code).toBe('BLOB_UPLOAD_INVALID');
      expect(await rejection(e.append(REPO, id, { start: 1000 }, bodyOf(randomBytes(10))))).toBeInstanceOf(UploadRangeError);
      expect(await rejection(e.complete(REPO, id, digestOf(data), {}, undefined))).toBeInstanceOf(UploadRangeError);
    }
    release();
    await put;
    for (const e of [uploads, other]) {
      expect((await rejection(e.cancel(REPO, id))).code).toBe('BLOB_UPLOAD_UNKNOWN');
      expect((await rejection(e.complete(REPO, id, digestOf(data), {}, undefined))).code).toBe('BLOB_UPLOAD_UNKNOWN');
    }
    // The data the blob now is stays, and no lock is left behind: only the upload's finished marker.
    expectSameBytes(await driver.getContent(paths.blobData(id)), data);
    expect(await driver.list(paths.uploads(REPO)).catch(() => [])).toEqual([paths.uploadFinished(REPO, id)]);
  });

  it('lets a PUT sent while a DELETE runs find no upload, and adopt nothing', async () => {
    const uploads = engine(driver);
    const other = engine(driver);
    const data = randomBytes(1000);
    const { id } = await uploads.start(REPO);
    await uploads.append(REPO, id, {}, bodyOf(data));
    await other.cancel(REPO, id);
    let adopted = false;
    const err = await rejection(uploads.complete(REPO, id, digestOf(data), {}, undefined, async () => {
      adopted = true;
    }));
    expect(err.code).toBe('BLOB_UPLOAD_UNKNOWN');
    expect(adopted).toBe(false);
    expect(await exists(driver, paths.blobData(id))).toBe(false);
    expect(await driver.list(paths.uploads(REPO)).catch(() => [])).toEqual([]);
  });

  it('serializes two instances patching one upload: one chunk is stored, the other gets 416', async () => {
    const a = engine(driver);
    const b = engine(driver);
    for (let round = 0; round < 20; round++) {
      const { id } = await a.start(REPO);
      const [x, y] = [randomBytes(3 * SLAB + round), randomBytes(2 * SLAB + 7)];
      const results = await Promise.allSettled([
        a.append(REPO, id, { start: 0 }, bodyOf(x, { sizes: ODD_SIZES })),
        b.append(REPO, id, { start: 0 }, bodyOf(y, { sizes: ODD_SIZES })),
      ]);
      const stored = results.flatMap((r, i) => (r.status === 'fulfilled' ? [[x, y][i]!] : []));
      // Exactly one chunk went in (or, one after the other, the second found the offset moved).
      expect(stored).toHaveLength(1);
      for (const r of results) if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(UploadRangeError);
      expectSameBytes(await driver.getContent(paths.blobData(id)), stored[0]!);
      expect((await b.complete(REPO, id, digestOf(stored[0]!), {}, undefined)).size).toBe(stored[0]!.length);
    }
  });

  it('takes over the lock a dead server left once it expired', async () => {
    const uploads = engine(driver, { lock: { ttlMs: 30_000, skewMs: 100 } });
    const data = randomBytes(1000);
    const { id } = await uploads.start(REPO);
    const expiresAt = Date.now() + 200;
    const dead = { token: 'dead0000dead0000dead0000dead0000', expiresAt: new Date(expiresAt).toISOString() };
    await driver.putContent(paths.uploadLock(REPO, id), Buffer.from(JSON.stringify(dead)));
    // Refused while the lease lasts: asked of an instance allowing a minute's skew, so that a
    // stalled machine reaching this line after 300 ms still sees the lease as live.
    const patient = engine(driver, { lock: { ttlMs: 30_000, skewMs: 60_000 } });
    expect(await rejection(patient.append(REPO, id, {}, bodyOf(data)))).toBeInstanceOf(UploadRangeError);
    let state;
    for (;;) {
      // Refused until the dead lease (and the skew allowance) is over; no wall-clock bound here.
      state = await uploads.append(REPO, id, { start: 0 }, bodyOf(data)).catch((err: unknown) => {
        if (err instanceof UploadRangeError) return undefined;
        throw err;
      });
      if (state) break;
      await sleep(20);
    }
    expect(state).toEqual({ id, offset: 1000 });
    // Never taken over before the lease and the skew allowance were over.
    expect(Date.now()).toBeGreaterThan(expiresAt + 100);
    expect((await uploads.complete(REPO, id, digestOf(data), {}, undefined)).size).toBe(1000);
  });

  // Found by probing (2026-12-02): the record was refreshed once a minute while a body
  // streamed, so with gc.staleUploadAfter under that, a collection removed the upload of a
  // slow PATCH, whose 202 then acknowledged bytes already deleted.
  it('a body that streams for longer than gc.staleUploadAfter keeps its upload from the collector', async () => {
    const uploads = engine(driver, { lock: { ttlMs: 300, skewMs: 50 } });
    const data = randomBytes(6 * SLAB);
    const { id } = await uploads.start(REPO);
    let streaming = true;
    const body: BodySource = async (sink) => {
      await bodyOf(data.subarray(0, 2 * SLAB))(sink);
      await sleep(1500);
      await bodyOf(data.subarray(2 * SLAB))(sink);
      streaming = false;
      return data.length;
    };
    const collections = (async () => {
      let runs = 0;
      while (streaming) {
        await collectGarbage({ driver, graceMs: 0, staleUploadAfterMs: 600, leaseTtlMs: 5_000 });
        runs++;
        await sleep(50);
      }
      return runs;
    })();
    expect(await uploads.append(REPO, id, { start: 0 }, body)).toEqual({ id, offset: data.length });
    expect(await collections).toBeGreaterThan(3);
    expect((await uploads.complete(REPO, id, digestOf(data), {}, undefined)).size).toBe(data.length);
    expectSameBytes(await driver.getContent(paths.blobData(id)), data);
  });

  it('stops writing when its lock runs out mid-body (storage refused the renewals), keeping a resumable upload', async () => {
    let refuseLock = false;
    const faulty = new FaultyDriver({}, driver);
    const put = faulty.putContent.bind(faulty);
    faulty.putContent = async (path: string, content: Uint8Array, opts?: PutOptions) => {
      if (refuseLock && path.endsWith('.lock')) throw new Error('injected: storage refuses the lock renewal');
      return put(path, content, opts);
    };
    const uploads = engine(faulty, { lock: { ttlMs: 150, skewMs: 50 } });
    const data = randomBytes(6 * SLAB);
    const { id } = await uploads.start(REPO);
    const body: BodySource = async (sink) => {
      await bodyOf(data.subarray(0, 2 * SLAB))(sink);
      refuseLock = true;
      // Long enough for several renewals to fail and the 150 ms lease to run out.
      await sleep(600);
      await bodyOf(data.subarray(2 * SLAB))(sink);
      return data.length;
    };
    const err = await rejection(uploads.append(REPO, id, { start: 0 }, body));
    expect(err.code).toBe('UNAVAILABLE');
    refuseLock = false;
    const stored = (await uploads.status(REPO, id)).offset;
    expect(stored).toBeLessThan(data.length);
    // Once the lock can be taken over, the upload resumes from what was stored. The resume
    // holds an ordinary 30 s lock (another instance, with the first one's 50 ms skew): a
    // 150 ms lease would run out again whenever a loaded machine stalls the renewals.
    const resumed = engine(driver, { lock: { skewMs: 50 } });
    for (;;) {
      const r = await resumed.append(REPO, id, { start: stored }, bodyOf(data.subarray(stored))).catch((e: unknown) => {
        if (e instanceof UploadRangeError) return undefined;
        throw e;
      });
      if (r) break;
      await sleep(20);
    }
    expect((await resumed.complete(REPO, id, digestOf(data), {}, undefined)).size).toBe(data.length);
  });
});

describe('UploadEngine on FsDriver', () => {
  let root: string;
  let driver: FsDriver;

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'hoist-uploads-'));
    driver = await FsDriver.open({ rootDirectory: root });
  });

  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('stores odd-sized chunks across requests and a restart, with the right digest', async () => {
    const data = randomBytes(6 * SLAB + 4321);
    const uploads = engine(driver);
    const { id } = await uploads.start(REPO);
    await uploads.append(REPO, id, { start: 0 }, bodyOf(data.subarray(0, 150_001), { sizes: ODD_SIZES }));
    const restarted = new HashPool({ threads: 1, maxQueue: 100 });
    try {
      const after = engine(driver, { hashPool: restarted });
      expect(await after.status(REPO, id)).toEqual({ id, offset: 150_001 });
      await after.append(REPO, id, { start: 150_001 }, bodyOf(data.subarray(150_001), { sizes: ODD_SIZES }));
      const committed = await after.complete(REPO, id, digestOf(data), {}, undefined);
      expectSameBytes(await driver.getContent(committed.dataPath), data);
    } finally {
      await restarted.close();
    }
  });

  it('keeps a consistent prefix when a write fails', async () => {
    const faulty = new FaultyDriver({ failWriteAt: 3, partialFailure: true }, driver);
    const uploads = engine(faulty);
    const data = randomBytes(5 * SLAB);
    const { id } = await uploads.start(REPO);
    await expect(uploads.append(REPO, id, {}, bodyOf(data))).rejects.toThrow('injected failure');
    const { offset } = await uploads.status(REPO, id);
    expect(offset).toBe(2 * SLAB + SLAB / 2);
    expectSameBytes(await driver.getContent(paths.blobData(id)), data.subarray(0, offset));
    await uploads.append(REPO, id, { start: offset }, bodyOf(data.subarray(offset)));
    expect((await uploads.complete(REPO, id, digestOf(data), {}, undefined)).size).toBe(data.length);
  });

  it('creates no data file for an empty body', async () => {
    const uploads = engine(driver);
    const { id } = await uploads.start(REPO);
    await uploads.append(REPO, id, { start: 0 }, empty);
    expect(await exists(driver, paths.blobData(id))).toBe(false);
  });
});
