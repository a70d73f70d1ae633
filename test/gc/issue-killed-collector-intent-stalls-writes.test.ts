import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { HashPool } from '../../src/engine/hash-pool.js';
import { MEDIA_TYPES } from '../../src/registry/manifest-schema.js';
import { paths } from '../../src/registry/paths.js';
import { parseDigest } from '../../src/registry/reference.js';
import { objectExists, type StorageDriver } from '../../src/storage/index.js';
import { BY_DIGEST, GcFixture } from '../helpers/gc.js';
import { describeOnEveryDriver } from '../helpers/drivers.js';
import { signal, staged, type StagedOp, type StageHooks } from '../helpers/staged-driver.js';

/**
 * Found by reading gc/guard.ts against gc/collector.ts (F, J): a collector holds an intent for
 * milliseconds while it deletes an expired tag or puts a path back, and a tag PUT or a client
 * DELETE of that path waits for it to go, 30 s at most. A collector killed while it held one
 * left it, and every such PUT or DELETE waited the full 30 s until the next replay cleared it
 * (on S3 not before the lease's TTL, 5 minutes).
 *
 * Now an intent binds its collector for a window (30 s; here 2 s, which the collector states
 * in the intent): it sends the writes the intent covers within a sixth of it, or looks again
 * under the intent written anew, and a server waits no longer than the window, judged by the
 * store's dates of the intent and of what the server itself just wrote. So a killed
 * collector's intent stalls nothing once its window has passed, and a live collector late
 * past its window still does not undo a DELETE that stopped waiting.
 *
 * The kill: from the moment named, the collector's view of the store takes nothing more (every
 * call hangs), which is what storage sees of a kill -9: the intent, the sweep note and the lease
 * stay as they were, and no renewal comes. Memory storage is one process's, so it is killed so
 * on every driver.
 */

/** The collectors' intent window here (the default is 30 s). */
const WINDOW_MS = 2_000;
/**
 * Past the window by the store's dates, with their granularity (2 s allowed, S3 dates to the
 * second) and a second to spare.
 */
const PAST_WINDOW_MS = WINDOW_MS + 4_000;
/** A write that does not wait for an intent takes far less (one that waits: 30 s before). */
const PROMPT_MS = 5_000;

let pool: HashPool;
beforeAll(() => {
  pool = new HashPool({ threads: 1, maxQueue: 100 });
});
afterAll(async () => {
  await pool.close();
});

/** A view of `base` that dies when `at` says so, before that call reaches the store. */
function killable(base: StorageDriver, at: (op: StagedOp, path: string) => Promise<boolean> | boolean): {
  driver: StorageDriver; killed: Promise<void>; release: () => void;
} {
  let dead = false;
  const killed = signal();
  let release!: (err: Error) => void;
  const hang = new Promise<never>((_, reject) => (release = reject));
  hang.catch(() => undefined);
  const hooks: StageHooks = {
    before: async (op, path) => {
      if (!dead && (await at(op, path))) {
        dead = true;
        killed.resolve();
      }
      if (dead) await hang;
    },
  };
  return { driver: staged(base, hooks), killed: killed.promise, release: () => release(new Error('killed')) };
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

function killedCollector(open: () => Promise<StorageDriver>): void {
  let t: GcFixture | undefined;
  let release: (() => void) | undefined;
  afterEach(async () => {
    release?.();
    await t?.close();
  });

  it('a DELETE does not wait for the put-back intent a killed collector left, once its window has passed', async () => {
    const base = await open();
    t = new GcFixture(base, pool);
    const repo = 'ci/app';
    const img = await t.pushImage(repo, BY_DIGEST);
    const revision = paths.manifestRevision(repo, parseDigest(img.digest));
    const marker = paths.blobTouched(parseDigest(img.digest));
    let pushedAgain = false;
    const collector = killable(base, async (op, path) => {
      // Pushed again while the collector deleted it (its re-read of the marker comes next)...
      if (op === 'getContent' && path === marker && !pushedAgain && !(await objectExists(base, revision))) {
        pushedAgain = true;
        await t!.registry.putManifest(repo, img.digest, MEDIA_TYPES.ociManifest, img.bytes);
      }
      // ...so it holds the put-back intent, has looked for a tombstone, and dies as it puts it back.
      return op === 'putContent' && path === revision && pushedAgain;
    });
    release = collector.release;
    const run = t.gc({ driver: collector.driver, intentWindowMs: WINDOW_MS }).catch(() => undefined);
    await collector.killed;
    expect(await objectExists(base, paths.gcPutBackIntent(revision))).toBe(true);
    expect(await objectExists(base, paths.gcSweeping())).toBe(true);
    expect(await objectExists(base, paths.gcLease())).toBe(true);

    await sleep(PAST_WINDOW_MS);
    const ms = await timed(() => t!.registry.deleteManifest(repo, img.digest));
    expect(ms).toBeLessThan(PROMPT_MS);
    expect(await t.manifestStored(repo, img.digest)).toBe(false);
    collector.release();
    await run;
  }, 120_000);

  it('a tag PUT does not wait for the tag intent a killed collector left, once its window has passed', async () => {
    const base = await open();
    t = new GcFixture(base, pool);
    const repo = 'ci/app';
    const img = await t.pushImage(repo, 'v1', { labels: { 'quay.expires-after': '1s' } });
    await sleep(1_100);
    const tag = paths.tag(repo, 'v1');
    // It holds the tag's intent, has read the tag, and dies as it deletes it.
    const collector = killable(base, (op, path) => op === 'delete' && path === tag);
    release = collector.release;
    const run = t.gc({ driver: collector.driver, intentWindowMs: WINDOW_MS }).catch(() => undefined);
    await collector.killed;
    expect(await objectExists(base, paths.gcTagIntent(repo, 'v1'))).toBe(true);

    // (The registry sees the lease, still there, within its 10 ms poll: its PUT looks for intents.)
    await sleep(PAST_WINDOW_MS);
    const ms = await timed(() => t!.registry.putManifest(repo, 'v1', MEDIA_TYPES.ociManifest, img.bytes));
    expect(ms).toBeLessThan(PROMPT_MS);
    expect((await t.registry.getManifest(repo, 'v1')).digest).toBe(img.digest);
    collector.release();
    await run;
  }, 120_000);

  it('a live collector whose put-back is late past its intent\'s window looks again, and does not undo a DELETE answered meanwhile', async () => {
    const base = await open();
    t = new GcFixture(base, pool);
    const repo = 'ci/app';
    const img = await t.pushImage(repo, BY_DIGEST);
    const revision = paths.manifestRevision(repo, parseDigest(img.digest));
    const marker = paths.blobTouched(parseDigest(img.digest));
    const tombstone = paths.gcDeleted(revision);
    let pushedAgain = false;
    let deleted: Promise<number> | undefined;
    const hooks: StageHooks = {
      before: async (op, path) => {
        if (op === 'getContent' && path === marker && !pushedAgain && !(await objectExists(base, revision))) {
          pushedAgain = true;
          await t!.registry.putManifest(repo, img.digest, MEDIA_TYPES.ociManifest, img.bytes);
        }
      },
      // The collector looked for a tombstone under its intent and found none; its answer comes
      // late, once the client has deleted the manifest (waiting for the intent's window).
      settled: async (op, path) => {
        if (op === 'reader' && path === tombstone && pushedAgain && !deleted) {
          deleted = timed(() => t!.registry.deleteManifest(repo, img.digest));
          await deleted;
        }
      },
    };
    await t.gc({ driver: staged(base, hooks), intentWindowMs: WINDOW_MS });
    expect(deleted).toBeDefined();
    // The client waited for the live intent (its window), then deleted.
    expect(await deleted).toBeGreaterThanOrEqual(WINDOW_MS - 100);
    expect(await t.manifestStored(repo, img.digest)).toBe(false);
    await expect(t.registry.getManifest(repo, img.digest)).rejects.toMatchObject({ code: 'MANIFEST_UNKNOWN' });
  }, 120_000);
}

describeOnEveryDriver('a killed collector\'s intent', 'killed-intent', killedCollector);
