import { AsyncLocalStorage } from 'node:async_hooks';
import { randomBytes, randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { objectExists, readOrUndefined, statOrUndefined, type StorageDriver } from '../storage/driver.js';
import { WELL_KNOWN_BLOBS } from '../registry/blobs.js';
import { clockSkew, defaultOwner, runningGeneration } from './lease.js';
import { intentRemaining, intentWindow } from './intent.js';
import { processIdentity, type ProcessIdentity } from '../process-identity.js';
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

/** What paths.gcServer() holds: a server that runs operations on this registry's storage. */
export interface PresenceRecord extends Partial<ProcessIdentity> {
  readonly id: string;
  /** host:pid, for people. (The identity's fields let a collector on the same host tell a crashed server from a live one.) */
  readonly owner: string;
  readonly startedAt: string;
  readonly heartbeatAt: string;
  /**
   * The newest collection generation this server has acknowledged: every operation it had
   * started before it saw that collection running has finished.
   */
  readonly ack?: number;
  /**
   * The store's clock minus this server's, in ms, as its last presence write measured it (the
   * store's date of the object against the moments before the write and after a look at
   * it): the collector refuses to run beside a server whose clock is too far off, since it
   * judges that server's touches, upload locks and records by their dates. Not on local
   * storage, whose clock is the host's.
   */
  readonly skewMs?: number;
}

export interface GcGuardOptions {
  /**
   * How often the server looks at the lease (ms; default 1 s). A collection waits about this
   * long for each server's acknowledgement before it lists anything.
   */
  pollMs?: number;
  /** How often the presence is rewritten (ms; default 1 min). Collectors take a presence unwritten for their `inflightTimeoutMs` (10 min) for a dead server's. */
  heartbeatMs?: number;
}

interface OpContext {
  /** Generation of the collection the server knew to be running when the operation started, if any. */
  readonly gen: number | undefined;
}

/**
 * The operations a server started while it believed one thing about the lease: that no
 * collection ran, or that collection `gen` did.
 */
class Epoch {
  readonly gen: number | undefined;
  #ops = 0;
  #waiters: Array<() => void> = [];

  constructor(gen: number | undefined) {
    this.gen = gen;
  }

  enter(): void {
    this.#ops++;
  }

  leave(): void {
    if (--this.#ops === 0) for (const w of this.#waiters.splice(0)) w();
  }

  /** Resolves when no operation of this epoch is running. */
  idle(): Promise<void> {
    return this.#ops === 0 ? Promise.resolve() : new Promise((resolve) => this.#waiters.push(resolve));
  }
}

/** Touches written at once; a manifest lists a config, its layers or its children. */
const TOUCH_CONCURRENCY = 8;
/**
 * When a check right after a touch finds a reference missing while a collection runs, it is
 * looked for again after these pauses (3 s in all): the collector puts back within three
 * store requests what it deleted under a fresh touch (gc/collector.ts A).
 */
const RECHECK_PAUSES_MS = [50, 100, 250, 500, 800, 1300];
const DEFAULT_POLL_MS = 1000;
const DEFAULT_HEARTBEAT_MS = 60_000;

/**
 * The server's half of online garbage collection (the collector's half is gc/collector.ts,
 * where the whole argument is written out, A-G). Four duties:
 *
 * 1. Presence and acknowledgement (C). Before its first operation (a manifest PUT, an upload
 *    commit, a mount: op()) the server writes its presence, /gc/servers/<id>, and only then
 *    reads the lease; it rewrites the presence every minute and deletes it on close(). It
 *    looks at the lease every second. Each operation belongs to the epoch it started in:
 *    what the server then believed about the lease (no collection, or collection g). When the
 *    server sees collection g start, new operations belong to g's epoch, and once every
 *    operation of the earlier epochs has finished it writes `ack: g` into its presence. The
 *    collector writes the lease, lists the presences, and waits for each to acknowledge g
 *    before it lists anything. So an operation either started knowing that g runs, or
 *    finished before g listed anything. While no collection runs, an operation costs the
 *    store nothing for garbage collection.
 *
 * 2. touch(digests) (A, B): in an operation that knows collection g runs, before the registry
 *    vouches for a blob or manifest (accepts a manifest that references it, adopts an upload
 *    onto it, mounts it), it rewrites the digest's touched marker, tagged with g, and only
 *    then checks that the thing exists. The collector deletes in the opposite order (record
 *    first, then re-reads the marker). On a store where every write is seen by every later
 *    read (fs, S3 since 2020), at least one of the two sees the other: either our check finds
 *    the record gone (we answer "unknown", the client uploads again), or the collector finds
 *    our touch and puts the record back. Blob HEADs, upload commits and mounts touch always,
 *    for the grace period (B): the client will name the blob in a manifest soon. Where the
 *    check falls between the collector's delete and its putting back, it finds nothing
 *    though the thing stays: a HEAD then answers 404 and the client uploads again, but a
 *    manifest PUT would fail a push the grace period keeps (B), so it looks again for a
 *    moment before it answers "unknown" (recheck()).
 *
 * 3. tagIntent() (F): a collector deleting an expired tag first writes an intent, then re-reads
 *    the tag; a PUT that knew a collection was running looks for the intent after writing its
 *    tag, waits for the collector to be done (or for the intent's window to pass: one a killed
 *    collector left is not waited for, gc/intent.ts), and repairs the tag if it was deleted
 *    under it (ManifestStore.repairTag).
 *
 * 4. deleting() (J): before a client's delete of a manifest, a referrer entry or a link, if a
 *    collector's sweep note exists (it is mid-batch, or it died there), writes down that the
 *    client deleted it, so that the note's replay, or the collector's own putting back,
 *    does not bring it back, and waits for a put-back under way (its intent), as duty 3 waits.
 *    One stat of the note per delete while none exists.
 */
export class GcGuard {
  readonly #driver: StorageDriver;
  readonly #ops = new AsyncLocalStorage<OpContext>();
  readonly #pollMs: number;
  readonly #heartbeatMs: number;
  readonly #id = randomUUID();
  readonly #startedAt = new Date().toISOString();
  #started: Promise<void> | undefined;
  #closed = false;
  #epoch = new Epoch(undefined);
  /** Epochs that ended with operations still running. */
  readonly #draining = new Set<Epoch>();
  #ack: number | undefined;
  /** PresenceRecord.skewMs, as the last presence write measured it. */
  #skewMs: number | undefined;
  #timers: NodeJS.Timeout[] = [];
  #polling: Promise<void> | undefined;
  /** Presence writes, one after another, so that none overtakes a newer one. */
  #writes: Promise<void> = Promise.resolve();

  constructor(driver: StorageDriver, opts: GcGuardOptions = {}) {
    this.#driver = driver;
    this.#pollMs = opts.pollMs ?? DEFAULT_POLL_MS;
    this.#heartbeatMs = opts.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
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
        // Transient (fs: no fsync): a marker is read by collections of a running registry, and
        // what a machine crash may leave of it (nothing, or an empty file) reads as no marker,
        // the blob's own times deciding (collector #isFresh): at worst a client that HEADed an
        // old blob just before the crash gets MANIFEST_BLOB_UNKNOWN and pushes it again (B).
        // Every blob HEAD and every push's commit writes one; the fsync was ~2.5 ms of each.
        await this.#driver.putContent(paths.blobTouched(d), Buffer.from(JSON.stringify(record)), { transient: true });
      }
    };
    await Promise.all(Array.from({ length: Math.min(TOUCH_CONCURRENCY, list.length) }, worker));
  }

  /** Runs `fn` as an operation of the current epoch (duty 1); nested calls join the outer one. */
  async op<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#ops.getStore()) return fn();
    await (this.#started ??= this.#start().catch((err: unknown) => {
      // The next operation tries again.
      this.#started = undefined;
      throw err;
    }));
    if (this.#closed) throw new Error('garbage collection guard is closed');
    const epoch = this.#epoch;
    epoch.enter();
    try {
      return await this.#ops.run({ gen: epoch.gen }, fn);
    } finally {
      epoch.leave();
    }
  }

  /**
   * Inside an op that knows a collection runs, after touch(): runs `check`, and when it fails
   * for a missing reference (`missing(err)`), runs it again after short pauses, 3 s at most.
   * The collector deletes a record, re-reads its marker and puts the record back when our
   * touch made it fresh (A); a check between the two would otherwise call a kept blob
   * unknown. Missing on every try, it is gone: the collector's re-read came before our touch.
   * `check` must have written nothing when it fails so. Outside a collection: one try.
   */
  async recheck<T>(check: () => Promise<T>, missing: (err: unknown) => boolean): Promise<T> {
    if (!this.collecting) return check();
    for (const pause of RECHECK_PAUSES_MS) {
      try {
        return await check();
      } catch (err) {
        if (!missing(err)) throw err;
      }
      await sleep(pause);
    }
    return check();
  }

  /** Inside op(): whether a collection was running when the operation started. */
  get collecting(): boolean {
    return this.#ops.getStore()?.gen !== undefined;
  }

  /**
   * After writing tag `tag` inside an op that saw a collection running: if the collector is
   * deleting that tag (its intent exists), waits until it is done. Returns whether it found
   * an intent. The caller then repairs the tag (ManifestStore.repairTag).
   */
  async tagIntent(repo: string, tag: string): Promise<boolean> {
    if (!this.collecting) return false;
    return this.#waitGone(paths.gcTagIntent(repo, tag), paths.tag(repo, tag));
  }

  /**
   * Waits while a collector's intent at `intent` exists, for as long as its collector may still
   * write under it (gc/intent.ts: its window, which one a killed collector left has long
   * passed; on local storage none once its process is gone). `mine`: the object this server wrote just before it called this (its tag, its
   * tombstone), whose date tells how old the intent is by the store's clock. Returns whether
   * there was one. While there is none: one stat; else one read and one stat more.
   */
  async #waitGone(intent: string, mine: string): Promise<boolean> {
    const found = await statOrUndefined(this.#driver, intent);
    if (!found) return false;
    // It was written before that stat answered: its window has passed by then + window.
    const seenAt = performance.now();
    const windowMs = intentWindow(await readOrUndefined(this.#driver, intent), this.#driver.local);
    let until = seenAt + windowMs;
    const own = await statOrUndefined(this.#driver, mine);
    if (own) until = Math.min(until, performance.now() + intentRemaining(found, own, windowMs));
    while (performance.now() < until && (await objectExists(this.#driver, intent))) await sleep(20);
    return true;
  }

  /**
   * Before a client deletes `targets` (duty 4): while a sweep note exists, a tombstone for each
   * that exists now (one already gone is no delete of the client's, and must not stop a put-back
   * a push needs). Durable: a replay after a machine crash reads them.
   */
  async deleting(targets: readonly string[]): Promise<void> {
    if (!(await objectExists(this.#driver, paths.gcSweeping()))) return;
    await Promise.all(targets.map(async (target) => {
      if (!(await objectExists(this.#driver, target))) return;
      const tombstone = paths.gcDeleted(target);
      await this.#driver.putContent(tombstone, Buffer.from(target));
      // A collector that looked for the tombstone before it was written may be putting the
      // path back: the delete waits for that to be done, or it would be undone
      // (gc/collector.ts #putBackUnlessDeleted). One stat more, and only while a note exists.
      // The tombstone's date tells how old an intent found is (gc/intent.ts).
      await this.#waitGone(paths.gcPutBackIntent(target), tombstone);
    }));
  }

  /**
   * Looks at the lease now rather than at the next tick (tests; a server that is told of a
   * collection some other way).
   */
  poll(): Promise<void> {
    return (this.#polling ??= this.#poll().finally(() => (this.#polling = undefined)));
  }

  /** Stops looking at the lease and deletes the presence. Operations still running should have finished. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const t of this.#timers) clearInterval(t);
    if (!this.#started) return;
    await this.#started.catch(() => undefined);
    await this.#polling;
    await this.#writes;
    await this.#driver.delete(paths.gcServer(this.#id)).catch(() => undefined);
  }

  /** The presence first, then the lease: the order duty 1 needs. */
  async #start(): Promise<void> {
    await this.#writePresence();
    const gen = await runningGeneration(this.#driver);
    if (gen !== undefined) this.#enter(gen);
    this.#timers = [
      setInterval(() => void this.poll().catch(() => undefined), this.#pollMs),
      setInterval(() => void this.#writePresence().catch(() => undefined), this.#heartbeatMs),
    ];
    for (const t of this.#timers) t.unref();
  }

  async #poll(): Promise<void> {
    if (this.#closed) return;
    const gen = await runningGeneration(this.#driver);
    if (gen !== this.#epoch.gen) this.#enter(gen);
  }

  /** A new epoch; for a collection, its acknowledgement once the earlier epochs have drained. */
  #enter(gen: number | undefined): void {
    const before = [this.#epoch, ...this.#draining];
    this.#draining.add(this.#epoch);
    this.#epoch = new Epoch(gen);
    const drained = Promise.all(before.map(async (e) => {
      await e.idle();
      this.#draining.delete(e);
    }));
    if (gen === undefined) return;
    void drained.then(async () => {
      if (this.#ack !== undefined && this.#ack >= gen) return;
      this.#ack = gen;
      await this.#writePresence();
    }).catch(() => undefined);
  }

  #writePresence(): Promise<void> {
    const write = async (): Promise<void> => {
      if (this.#closed && this.#started) return;
      const before = Date.now();
      const record: PresenceRecord = {
        id: this.#id,
        owner: defaultOwner(),
        ...processIdentity(),
        startedAt: this.#startedAt,
        heartbeatAt: new Date(before).toISOString(),
        ...(this.#ack !== undefined ? { ack: this.#ack } : {}),
        ...(this.#skewMs !== undefined ? { skewMs: this.#skewMs } : {}),
      };
      await this.#driver.putContent(paths.gcServer(this.#id), Buffer.from(JSON.stringify(record)));
      // Measured for the next write, without holding this one: the server's first operation
      // waits for its presence, not for the look (a later write seen by it is dated within
      // this window too).
      if (!this.#driver.local) {
        void this.#driver.stat(paths.gcServer(this.#id)).then(
          (stored) => (this.#skewMs = clockSkew(stored.modTime.getTime(), before, Date.now())),
          () => undefined,
        );
      }
    };
    const next = this.#writes.then(write, write);
    this.#writes = next.catch(() => undefined);
    return next;
  }
}
