import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { HashPool } from '../../src/engine/hash-pool.js';
import { MEDIA_TYPES } from '../../src/registry/manifest-schema.js';
import { paths } from '../../src/registry/paths.js';
import { parseDigest } from '../../src/registry/reference.js';
import { objectExists, type StorageDriver } from '../../src/storage/index.js';
import { BY_DIGEST, GcFixture } from '../helpers/gc.js';
import { describeOnEveryDriver } from '../helpers/drivers.js';
import { staged, type StageHooks } from '../helpers/staged-driver.js';

/**
 * Found by probing (gc/collector.ts A and J, reading the put-back against gc/guard.ts duty 4):
 * a collector that deleted a manifest of its batch puts it back when it was touched since
 * (pushed again), unless a client deleted it meanwhile, which the client's tombstone says. The
 * look for the tombstone and the put-back were two steps, and a client's delete between them
 * (its tombstone, then the revision's delete) was undone: the manifest answered 200 after the
 * client's 202, until a later collection took it again. A CI job that pushes an image and
 * deletes it at once meets a collection that is sweeping an old copy of it so.
 *
 * Now the collector (and a replay of a dead one's note) writes an intent for the path before
 * it looks for the tombstone, and deletes it once it has put back; a client that wrote a
 * tombstone waits for such an intent to go before it deletes. Either the client sees the
 * intent and deletes after the put-back, or its tombstone came first and the collector sees
 * it. Staged: the collector's view holds its put-back until the client's delete has had its
 * chance; on every driver.
 */

let pool: HashPool;
beforeAll(() => {
  pool = new HashPool({ threads: 1, maxQueue: 100 });
});
afterAll(async () => {
  await pool.close();
});

function putBackRace(open: () => Promise<StorageDriver>): void {
  let t: GcFixture | undefined;
  afterEach(async () => {
    await t?.close();
  });

  it('a manifest pushed again and deleted while the collector puts it back stays deleted', async () => {
    const base = await open();
    t = new GcFixture(base, pool);
    const repo = 'ci/app';
    // Untagged: the collection (grace 0) sweeps it.
    const img = await t.pushImage(repo, BY_DIGEST);
    const revision = paths.manifestRevision(repo, parseDigest(img.digest));
    const marker = paths.blobTouched(parseDigest(img.digest));
    let pushedAgain = false;
    let deleted: Promise<void> | undefined;
    const collector: StageHooks = {
      before: async (op, path) => {
        // The collector re-reads the manifest's marker after deleting it: the client pushes it
        // again just before (a touch, and the revision is back).
        if (op === 'getContent' && path === marker && !pushedAgain && !(await objectExists(base, revision))) {
          pushedAgain = true;
          await t!.registry.putManifest(repo, img.digest, MEDIA_TYPES.ociManifest, img.bytes);
        }
        // The collector found the touch and no tombstone, and is about to put the manifest
        // back: the client deletes it now. The put-back goes on once the delete is done, or
        // waits itself.
        if (op === 'putContent' && path === revision && pushedAgain && !deleted) {
          deleted = t!.registry.deleteManifest(repo, img.digest);
          const settled = deleted.then(() => true, () => true);
          for (let i = 0; i < 100 && !(await Promise.race([settled, sleep(10).then(() => false)])); i++);
        }
      },
    };
    await t.gc({ driver: staged(base, collector) });
    expect(pushedAgain).toBe(true);
    expect(deleted).toBeDefined();
    await deleted;
    expect(await t.manifestStored(repo, img.digest)).toBe(false);
    await expect(t.registry.getManifest(repo, img.digest)).rejects.toMatchObject({ code: 'MANIFEST_UNKNOWN' });
  });
}

describeOnEveryDriver('a client delete during a collector\'s put-back', 'put-back', putBackRace);
