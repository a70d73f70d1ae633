import { AsyncLocalStorage } from 'node:async_hooks';
import { randomBytes, randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { StorageDriver } from '../storage/driver.js';
import { WELL_KNOWN_BLOBS } from '../registry/blobs.js';
import { objectExists, runningGeneration } from './lease.js';
import { paths } from '../registry/paths.js';
import { tryParseDigest, type Digest } from '../registry/reference.js';

/** What paths.blobTouched() holds. */
export interface TouchRecord {
  /** When (the writing server's clock). */
  readonly at: string;
  /** The collection that was running when the operation that wrote it started. */
  readonly gen?: number;
  /** Random, so that every touch changes the object (the collector compares before and after). */
  readonly n: string;
}

interface OpContext {
  /** Generation of the collection that was running when the operation registered, if any. */
  readonly gen: number | undefined;
}

/** Touches written at once; a manifest lists a config, its layers or its children. */
const TOUCH_CONCURRENCY = 8;
/** How long a tag write waits for a collector to finish deleting that tag (gc/collector.ts holds an intent for milliseconds). */
const INTENT_WAIT_MS = 30_000;

/**
 * The server's half of online garbage collection (the collector's half is gc/collector.ts, where the
 * whole argument is written out). Three duties:
 *
 * 1. touch(digests): before the registry vouches for a blob or manifest (answers a blob HEAD,
 *    mounts it, adopts an upload onto it, or accepts a manifest that references it), it
 *    rewrites the digest's touched marker, and only then checks that the thing exists. The
 *    collector deletes in the opposite order (record first, then re-reads the marker). On a
 *    store where every write is seen by every later read (fs, S3 since 2020), at least one of
 *    the two sees the other: either our check finds the record gone (we answer "unknown",
 *    the client uploads again), or the collector finds our touch and puts the record back.
 *
 * 2. op(fn): a manifest PUT (an upload commit, a mount) registers itself under
 *    /gc/inflight/ and only then reads the lease. A collector writes the lease and only then lists /gc/inflight/. So either the PUT
 *    sees the collection (and tags its touches with the collection's generation, which the
 *    collector spares however old the touch looks) or the collector sees the PUT (and waits
 *    for it to finish before it lists tags and manifests, so it sees what the PUT wrote).
 *    This closes the one gap a grace period alone leaves: a PUT that checked its references
 *    before the collection started and writes its tag after the collector listed the tags.
 *
 * 3. tagIntent(): a collector deleting an expired tag first writes an intent, then re-reads
 *    the tag; a PUT that saw a collection running re-reads the intent after writing its tag,
 *    and writes the tag again once the collector is done. So a tag pushed again just as it
 *    expires is never deleted under the push.
 */
export class GcGuard {
  readonly #driver: StorageDriver;
  readonly #ops = new AsyncLocalStorage<OpContext>();

  constructor(driver: StorageDriver) {
    this.#driver = driver;
  }

  /**
   * Rewrites the touched markers of `digests` (the well-known blobs have none). Inside op(),
   * each carries the running collection's generation. Resolves once every marker is stored:
   * the caller checks existence after this.
   */
  async touch(digests: Iterable<Digest | string>): Promise<void> {
    const unique = new Map<string, Digest>();
    for (const d of digests) {
      const digest = typeof d === 'string' ? tryParseDigest(d) : d;
      if (digest && !WELL_KNOWN_BLOBS.has(digest.value)) unique.set(digest.value, digest);
    }
    const gen = this.#ops.getStore()?.gen;
    const list = [...unique.values()];
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < list.length) {
        const d = list[next++]!;
        const record: TouchRecord = { at: new Date().toISOString(), ...(gen !== undefined ? { gen } : {}), n: randomBytes(6).toString('hex') };
        await this.#driver.putContent(paths.blobTouched(d), Buffer.from(JSON.stringify(record)));
      }
    };
    await Promise.all(Array.from({ length: Math.min(TOUCH_CONCURRENCY, list.length) }, worker));
  }

  /** Runs `fn` as a registered operation (see duty 2 above); nested calls join the outer one. */
  async op<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#ops.getStore()) return fn();
    const registration = paths.gcInflight(randomUUID());
    await this.#driver.putContent(registration, Buffer.from(JSON.stringify({ startedAt: new Date().toISOString() })));
    try {
      // Read after the registration is stored: the order the argument needs.
      const gen = await runningGeneration(this.#driver);
      return await this.#ops.run({ gen }, fn);
    } finally {
      // Not awaited: what the operation wrote is stored already; a collector waiting for
      // the registration to go waits a few milliseconds longer, the client does not.
      void this.#driver.delete(registration).catch(() => undefined);
    }
  }

  /** Inside op(): whether a collection was running when the operation started. */
  get collecting(): boolean {
    return this.#ops.getStore()?.gen !== undefined;
  }

  /**
   * After writing tag `tag` inside an op that saw a collection running: if the collector is
   * deleting that tag (its intent exists), waits until it is done and returns true: the
   * caller must write the tag again. False when no collector is after it.
   */
  async tagIntent(repo: string, tag: string): Promise<boolean> {
    if (!this.collecting) return false;
    const intent = paths.gcTagIntent(repo, tag);
    if (!(await objectExists(this.#driver, intent))) return false;
    const deadline = Date.now() + INTENT_WAIT_MS;
    while (Date.now() < deadline && (await objectExists(this.#driver, intent))) await sleep(20);
    return true;
  }
}
