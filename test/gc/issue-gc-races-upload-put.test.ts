import { randomBytes, randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { HashPool } from '../../src/engine/hash-pool.js';
import { UploadLocks } from '../../src/engine/upload-lock.js';
import { paths } from '../../src/registry/paths.js';
import { objectExists, type StorageDriver } from '../../src/storage/index.js';
import { GcFixture, sha256 } from '../helpers/gc.js';
import { describeOnEveryDriver } from '../helpers/drivers.js';
import { signal, staged, type StageHooks } from '../helpers/staged-driver.js';
import { bodyOf } from '../helpers/uploads.js';

/**
 * Found by probing (1 round in 10, staleUploadAfter 0s): a collection racing an upload's
 * closing PUT had the client told 400 DIGEST_INVALID for correct bytes. The PUT read the
 * upload record, the collector deleted the upload's data and record and then its intent, and
 * the PUT wrote the record back with a fresh touchedAt and only then looked for the intent:
 * gone. The upload looked alive with its data gone, and the digest was checked over what was
 * left (nothing). A PATCH that refreshed the record after a pause did the same, and its bytes
 * went into data of their own. Besides, at 0s the collector deleted the lock of an upload it
 * found gone while a request still held it: staleUploadAfter was taken for the lock's lease.
 *
 * Now a request looks for the intent before it first reads the record (src/engine/uploads.ts,
 * #touch; src/gc/collector.ts, E), and a lock goes only once its lease is over. The races are
 * staged, not hoped for: views of the store for the collector and for the server hold one
 * call until the other side has made its own, on every driver.
 */

let pool: HashPool;
beforeAll(() => {
  pool = new HashPool({ threads: 1, maxQueue: 100 });
});
afterAll(async () => {
  await pool.close();
});

/** The races, on the driver `open` makes (a fresh store for each test). */
function races(open: () => Promise<StorageDriver>): void {
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

  /** Runs a collection at staleUploadAfter 0s whose delete of `record` first waits for `race()`; the server's rewrite of `record` waits for the collection. */
  async function collectDuring(record: string, race: () => Promise<void>): Promise<Awaited<ReturnType<GcFixture['gc']>>> {
    const collected = signal();
    let raced = false;
    server.before = async (op, path) => {
      if (op === 'putContent' && path === record) await collected.promise;
    };
    try {
      return await t.gc({
        staleUploadAfterMs: 0,
        driver: staged(base, {
          before: async (op, path) => {
            if (op !== 'delete' || path !== record || raced) return;
            raced = true;
            await race();
          },
        }),
      });
    } finally {
      collected.resolve();
      expect(raced).toBe(true);
    }
  }

  it('a PUT that reads the upload record just before the collector deletes it gets BLOB_UPLOAD_UNKNOWN, and writes nothing back', async () => {
    await setUp();
    const data = randomBytes(3000);
    const { id } = await t.registry.startUpload('r');
    await t.registry.appendUpload('r', id, {}, bodyOf(data));
    const record = paths.upload('r', id);
    let put: Promise<unknown> | undefined;
    const report = await collectDuring(record, async () => {
      // The data is gone already; the PUT starts now and runs until it has read the record (or is answered).
      const read = signal();
      server.after = (op, path, result) => {
        if (op === 'getContent' && path === record) read.resolve();
        return result;
      };
      put = t.registry.completeUpload('r', id, sha256(data), {}, undefined);
      await Promise.race([read.promise, put.then(() => undefined, () => undefined)]);
    });
    // Before the fix: DIGEST_INVALID (the record written back over data that was gone).
    await expect(put).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
    expect(report.uploads.count).toBe(1);
    expect(await objectExists(base, record)).toBe(false);
    expect(await t.blobStored(sha256(data))).toBe(false);
    // The client starts over, and the blob is stored whole.
    await t.pushBlob('r', data);
    expect(await t.blobStored(sha256(data))).toBe(true);
  });

  it('a PATCH after a pause that reads the record just before the collector deletes it leaves the upload gone, and its PUT gets BLOB_UPLOAD_UNKNOWN', async () => {
    await setUp();
    const [first, second] = [randomBytes(3000), randomBytes(2000)];
    const { id } = await t.registry.startUpload('r');
    await t.registry.appendUpload('r', id, {}, bodyOf(first));
    const record = paths.upload('r', id);
    let patch: Promise<unknown> | undefined;
    const report = await collectDuring(record, async () => {
      // To the PATCH the record looks two minutes old, so it refreshes it (uploads.ts, ACTIVITY_REFRESH_MS).
      const read = signal();
      server.after = (op, path, result) => {
        if (op === 'getContent' && path === record) read.resolve();
        if (op === 'stat' && path === record) {
          const info = result as { modTime: Date };
          return { ...info, modTime: new Date(info.modTime.getTime() - 120_000) };
        }
        return result;
      };
      patch = t.registry.appendUpload('r', id, {}, bodyOf(second));
      await Promise.race([read.promise, patch.then(() => undefined, () => undefined)]);
    });
    server.after = undefined;
    expect(report.uploads.count).toBe(1);
    // Answered 404 at once, or 202 for bytes that no upload names: the PUT says the upload is gone.
    await patch!.catch((err: unknown) => expect(err).toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' }));
    expect(await objectExists(base, record)).toBe(false);
    // Before the fix: DIGEST_INVALID (the PATCH wrote the record back, and its bytes went into data of their own).
    await expect(t.registry.completeUpload('r', id, sha256(Buffer.concat([first, second])), {}, undefined))
      .rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
  });

  it('a PUT that looked for the intent before the collector wrote it is answered 201, and its blob is kept whole', async () => {
    await setUp();
    const data = randomBytes(3000);
    const { id } = await t.registry.startUpload('r');
    await t.registry.appendUpload('r', id, {}, bodyOf(data));
    const intent = paths.gcUploadIntent('r', id);
    let put: Promise<unknown> | undefined;
    const looked = signal();
    server.after = (op, path, result) => {
      if (op === 'reader' && path === intent) looked.resolve();
      return result;
    };
    const report = await t.gc({
      staleUploadAfterMs: 0,
      driver: staged(base, {
        before: async (op, path) => {
          if (op !== 'putContent' || path !== intent || put) return;
          put = t.registry.completeUpload('r', id, sha256(data), {}, undefined);
          await Promise.race([looked.promise, put.then(() => undefined, () => undefined)]);
        },
      }),
    });
    await expect(put).resolves.toMatchObject({ digest: sha256(data) });
    expect(report.uploads.count).toBe(0);
    expect(await t.blobStored(sha256(data))).toBe(true);
    const read = await t.registry.readBlob('r', sha256(data));
    const parts: Buffer[] = [];
    for await (const c of read.stream) parts.push(Buffer.from(c as Uint8Array));
    expect(Buffer.concat(parts).equals(data)).toBe(true);
  });

  // A PUT adopting its blob has removed the upload record and still holds the lock; at 0s the
  // collector took that lock, younger than the collection, for one a dead server left.
  it('a lock within its lease is never removed, though its upload is gone and staleUploadAfter is 0s', async () => {
    await setUp();
    const lockPath = paths.uploadLock('r', randomUUID());
    const held = await new UploadLocks(base).acquire(lockPath);
    expect(held).toBeDefined();
    await sleep(20);
    let report = await t.gc({ staleUploadAfterMs: 0 });
    // Before the fix: removed (uploadLocks 1).
    expect(report.uploadLocks).toBe(0);
    expect(await objectExists(base, lockPath)).toBe(true);
    expect(held!.held).toBe(true);
    await held!.release();
    report = await t.gc({ staleUploadAfterMs: 0 });
    expect(report.uploadLocks).toBe(0);
    expect(await objectExists(base, lockPath)).toBe(false);
  });
}

describeOnEveryDriver('gc racing an upload\'s PUT or PATCH', 'gc-upload-race', races);
