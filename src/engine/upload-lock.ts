import { randomBytes } from 'node:crypto';
import { RegistryError } from '../errors.js';
import { deleteObject, isPathNotFound, readOrUndefined, type StorageDriver } from '../storage/driver.js';
import { removeStale } from '../registry/takeover.js';
import { processGone, processIdentity, type ProcessIdentity } from '../process-identity.js';

/**
 * One request at a time per upload, across every instance that shares the store (issue 10).
 *
 * Why
 * ---
 * An upload is a record and a data object that several requests change: PATCH appends, PUT
 * appends a last chunk, commits, adopts the data as a blob and removes the record, DELETE
 * removes both. Run two at once and storage ends up in a state neither meant: a DELETE that
 * runs while a PUT adopts deletes the data the new blob record names (the digest is
 * acknowledged and gone); two PATCHes on two instances load the same S3 writer state, upload
 * the same part numbers and store the same generation, so the stored bytes are neither's
 * while each instance's running hash covers its own. An in-process busy mark cannot see
 * another instance, and it was cleared before the PUT's last storage effects.
 *
 * The protocol
 * ------------
 * A request that writes to or ends an upload (PATCH, PUT ?digest=, DELETE) holds the upload's
 * lock, `/repositories/<name>/_uploads/<id>.lock` = {"token", "expiresAt"}, from before it
 * reads the upload record until after its last storage effect (the upload record's removal
 * included); what it finds locked it answers at once as busy (416 with the Range, or
 * BLOB_UPLOAD_INVALID for a DELETE), never by waiting. GET status reads only, and takes none.
 *
 *   acquire   create the lock if absent (one atomic step on every driver: link() on fs,
 *             If-None-Match: * on S3); on success we hold it until `expiresAt`, by our clock
 *             (sentAt + ttl, sentAt taken before the request left). A create answered "exists"
 *             by a lock that carries our own token is ours too: the store took an earlier
 *             attempt and its answer was lost (a 500 or a reset after the write), so the SDK's
 *             retry found our own lock.
 *   renew     every ttl/3 while held, overwrite it with a new expiresAt; a request streaming a
 *             long body keeps its lock (and, on the same beat, the upload record's touchedAt).
 *   release   stop renewing, wait for a renewal in flight, delete it. A delete that fails
 *             does not fail the request, whose work is done (onReleaseFailed reports it).
 *   take over a lock whose expiresAt is more than `skewMs` past (its holder died, or lost
 *             storage for longer than the ttl) is removed through registry/takeover.ts, which
 *             lets exactly one of several servers doing this at once remove it, and only if it
 *             still holds what they read; then the lock is created as above. On local storage
 *             (fs) so is a lock whose holder, named in it, is a process of this host that no
 *             longer exists: a server restarted after kill -9 continues its uploads at once
 *             instead of answering busy for a minute. Nothing a dead process asked of a local
 *             file system lands later; on S3 a request may still be in flight, so there only
 *             the expiry counts.
 *   left behind  a lock of ours that may still be in storage though its holder has finished
 *             (the release's delete failed; a create failed with its outcome unknown) is
 *             remembered by this process, which alone knows that nobody holds it:
 *             its next request on the upload takes it over at once, in the same way (through
 *             takeover.ts, so only while it still holds our token), and in the background
 *             it is deleted a few more times, each time only if it still carries our token
 *             and while our lease on it runs, so that other instances need not wait for its
 *             expiry either. Another instance never takes it early: it cannot tell a finished
 *             holder from a live one.
 *
 * Why two requests never both hold it: the lock is created only where none exists, and
 * deleted only by its holder (release) or by the one taker of a stale lock. The holder writes
 * (renews, or lets a storage effect go) only while `now < expiresAt`, by its own clock; a taker
 * acts only when `now > expiresAt + skew` by its own. With clocks within `skew` of each other,
 * and no storage request in flight for longer than that, the holder has stopped before a taker
 * starts: this is the one timing assumption (gc/lease.ts makes the same one). A holder that
 * finds its lease over mid-request (storage did not take its renewals for the whole ttl) stops:
 * the writer it hands the upload engine refuses further writes and the commit (FencedWriter in
 * uploads.ts), and the request fails with 503 UNAVAILABLE.
 *
 * What it costs: one create before, and one delete after, each writing request (on S3 a
 * PutObject with If-None-Match and a DeleteObject); a renewal every ttl/3 only while a body
 * streams for longer. On fs the lock is `transient`: no fsync (a lock need not outlive the
 * machine; its holder does not either). A request on an upload another request of this
 * process holds is refused in memory first, with no storage request at all.
 */

export interface UploadLockOptions {
  /** How long a lock lasts without renewal (default 30 s). */
  readonly ttlMs?: number;
  /** How much longer a taker waits past a lock's expiry: the clock skew allowed between servers (default 30 s). */
  readonly skewMs?: number;
  /** Told when a release could not delete its lock (the request's answer stands; the lock is left behind, see above). */
  readonly onReleaseFailed?: (path: string, err: unknown) => void;
}

const DEFAULT_TTL_MS = 30_000;
const DEFAULT_SKEW_MS = 30_000;
/** Attempts to create a lock that keeps being released or taken over under us. */
const MAX_ATTEMPTS = 4;
/** Locks left behind that a process remembers; past this the oldest is forgotten (it then waits for its expiry). */
const MAX_LEFT_BEHIND = 10_000;
/** When a left-behind lock is deleted again in the background (each one within our lease only). */
const RETRY_DELAYS_MS = [1_000, 2_000, 4_000, 8_000];

/** A lock of ours whose holder finished, which may still be in storage (see "left behind" above). */
interface LeftBehind {
  readonly token: string;
  /** Our lease on it ends here, by our clock: a background delete may start only before. */
  readonly validUntil: number;
  timer: NodeJS.Timeout | undefined;
  /** A background delete in flight. */
  deleting: Promise<void> | undefined;
  /** A request of ours is taking it over: no background delete starts any more. */
  stopped: boolean;
}

/** What the lock object holds; the holder's identity lets a server on its host see it died (process-identity.ts). */
interface LockRecord extends Partial<ProcessIdentity> {
  readonly token: string;
  readonly expiresAt: string;
}

export class UploadLocks {
  readonly #driver: StorageDriver;
  readonly #ttlMs: number;
  readonly #skewMs: number;
  readonly #onReleaseFailed: ((path: string, err: unknown) => void) | undefined;
  /** By lock path, oldest first. */
  readonly #leftBehind = new Map<string, LeftBehind>();

  constructor(driver: StorageDriver, opts: UploadLockOptions = {}) {
    this.#driver = driver;
    this.#ttlMs = opts.ttlMs ?? DEFAULT_TTL_MS;
    this.#skewMs = opts.skewMs ?? DEFAULT_SKEW_MS;
    this.#onReleaseFailed = opts.onReleaseFailed;
  }

  /** Locks this process left behind and still remembers (tests look). */
  get leftBehind(): number {
    return this.#leftBehind.size;
  }

  /** Takes the lock at `path`; undefined when another request holds it. */
  async acquire(path: string): Promise<UploadLock | undefined> {
    const token = randomBytes(16).toString('hex');
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const sentAt = Date.now();
      const lock = (): UploadLock => new UploadLock(this.#driver, path, token, sentAt + this.#ttlMs, this.#ttlMs, (validUntil, err) => this.#leftBehindBy(path, token, validUntil, err));
      let created: boolean;
      try {
        created = await this.#driver.putContent(path, lockBytes(token, sentAt + this.#ttlMs), { ifNotExists: true, transient: true });
      } catch (err) {
        // The store may have taken the create and lost its answer: a lock of ours that nobody holds.
        this.#remember(path, token, sentAt + this.#ttlMs);
        throw err;
      }
      if (created) return lock();
      const raw = await readOrUndefined(this.#driver, path);
      if (!raw) continue; // released between our two requests
      const record = parseRecord(raw);
      if (record.token === token) return lock();
      const mine = this.#leftBehind.get(path);
      if (mine && mine.token === record.token) {
        if (!(await this.#takeOverLeftBehind(path, mine, raw))) return undefined;
        continue;
      }
      if (!(await this.#stale(path, record))) return undefined;
      if ((await removeStale(this.#driver, path, raw)) === 'busy') return undefined;
    }
    return undefined;
  }

  /**
   * Removes a lock this process left behind (its `raw` content as just read), so that it can
   * be created anew: false when another server is removing it right now (then it expired).
   */
  async #takeOverLeftBehind(path: string, entry: LeftBehind, raw: Buffer): Promise<boolean> {
    // A background delete must not land on the lock we are about to create.
    entry.stopped = true;
    clearTimeout(entry.timer);
    await entry.deleting;
    const result = await removeStale(this.#driver, path, raw);
    if (result === 'busy') return false;
    if (this.#leftBehind.get(path) === entry) this.#leftBehind.delete(path);
    return true;
  }

  /** A holder of ours finished and could not delete its lock (`err`). */
  #leftBehindBy(path: string, token: string, validUntil: number, err: unknown): void {
    this.#onReleaseFailed?.(path, err);
    this.#remember(path, token, validUntil);
  }

  #remember(path: string, token: string, validUntil: number): void {
    this.#forget(path);
    while (this.#leftBehind.size >= MAX_LEFT_BEHIND) this.#forget(this.#leftBehind.keys().next().value!);
    const entry: LeftBehind = { token, validUntil, timer: undefined, deleting: undefined, stopped: false };
    this.#leftBehind.set(path, entry);
    this.#retryLater(path, entry, 0);
  }

  #forget(path: string): void {
    const entry = this.#leftBehind.get(path);
    if (!entry) return;
    entry.stopped = true;
    clearTimeout(entry.timer);
    this.#leftBehind.delete(path);
  }

  /**
   * Deletes a left-behind lock in the background, a few times at most, each time only while
   * our lease on it runs and only if it still carries our token: a lock that is gone, or
   * another's (our create was never taken, or our delete was taken and its answer lost, and
   * another request has created one since), is left alone and forgotten. Once our lease is
   * over, only our own next request takes it over (acquire), or anyone after its expiry.
   */
  #retryLater(path: string, entry: LeftBehind, attempt: number): void {
    const delayMs = RETRY_DELAYS_MS[attempt];
    if (delayMs === undefined || Date.now() + delayMs >= entry.validUntil) return;
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      if (entry.stopped || Date.now() >= entry.validUntil) return;
      entry.deleting = this.#deleteIfOurs(path, entry).then(
        (done) => {
          if (done && this.#leftBehind.get(path) === entry) this.#leftBehind.delete(path);
        },
        () => {
          if (!entry.stopped) this.#retryLater(path, entry, attempt + 1);
        },
      ).finally(() => (entry.deleting = undefined));
    }, delayMs);
    entry.timer.unref();
  }

  /** True when the lock no longer needs us: deleted now, gone, or another's; false when we may no longer delete it (our lease ran out, or a request of ours takes it over). */
  async #deleteIfOurs(path: string, entry: LeftBehind): Promise<boolean> {
    const raw = await readOrUndefined(this.#driver, path);
    if (!raw || parseRecord(raw).token !== entry.token) return true;
    if (entry.stopped || Date.now() >= entry.validUntil) return false;
    await deleteObject(this.#driver, path);
    return true;
  }

  /** Whether a lock found held may be taken over: it expired, or (on local storage) its holder is dead. */
  #stale(path: string, record: Partial<LockRecord>): Promise<boolean> {
    return isStale(this.#driver, path, record, this.#ttlMs, this.#skewMs);
  }
}

/**
 * Whether the lock at `path` may still be held by a request: it exists and is not stale as a
 * taker judges it (UploadLocks.acquire). The garbage collector asks before it removes an
 * upload as stale: a request holding the lock (a PUT committing a large blob, a body streaming
 * slowly) is activity, however old the upload record's times are.
 */
export async function lockInForce(driver: StorageDriver, path: string, ttlMs = DEFAULT_TTL_MS, skewMs = DEFAULT_SKEW_MS): Promise<boolean> {
  return (await lockState(driver, path, ttlMs, skewMs)) === 'held';
}

/**
 * Whether the object at `path`, a lock or a takeover marker of one, is left over: it exists
 * and no request can hold it any more, as a taker judges it (UploadLocks.acquire). The
 * collector removes only such locks of uploads that are gone: a request may hold the lock of
 * an upload without a record (a PUT adopting its blob removed the record first), and one
 * deleted under it let another request, or a collection, act on the upload as if nobody did.
 * A takeover marker carries no expiry and is judged by its age: a lease and the skew, as long
 * as takers leave one alone (registry/takeover.ts).
 */
export async function lockLeftOver(driver: StorageDriver, path: string, ttlMs = DEFAULT_TTL_MS, skewMs = DEFAULT_SKEW_MS): Promise<boolean> {
  return (await lockState(driver, path, ttlMs, skewMs)) === 'stale';
}

async function lockState(driver: StorageDriver, path: string, ttlMs: number, skewMs: number): Promise<'absent' | 'held' | 'stale'> {
  const raw = await readOrUndefined(driver, path);
  if (raw === undefined) return 'absent';
  return (await isStale(driver, path, parseRecord(raw), ttlMs, skewMs)) ? 'stale' : 'held';
}

/**
 * Past its expiry and the skew, or (local storage) left by a process of this host that is gone.
 * The expiry is the holder's word, by its clock, but never later than a lease (ttl) from the
 * store's time of its last write: a holder whose clock ran far ahead, or a lock written by
 * hand, would otherwise keep its upload busy, and uncollected, for as long as it says (found
 * by probing: 2099).
 */
async function isStale(driver: StorageDriver, path: string, record: Partial<LockRecord>, ttlMs: number, skewMs: number): Promise<boolean> {
  if (driver.local && processGone(record) === true) return true;
  const claimed = Date.parse(typeof record.expiresAt === 'string' ? record.expiresAt : '');
  const now = Date.now();
  if (Number.isFinite(claimed)) {
    if (now > claimed + skewMs) return true;
    // No further off than a lease and the skew: as a live holder writes it, no need to ask the store.
    if (claimed <= now + ttlMs + skewMs) return false;
  }
  let written: number;
  try {
    written = (await driver.stat(path)).modTime.getTime();
  } catch (err) {
    if (isPathNotFound(err)) return true;
    throw err;
  }
  // Unreadable (a transient object after a machine crash can be empty): judged by its age alone.
  const expiresAt = Number.isFinite(claimed) ? Math.min(claimed, written + ttlMs) : written + ttlMs;
  return now > expiresAt + skewMs;
}

/** A held upload lock: renews itself until released. */
export class UploadLock {
  readonly path: string;
  readonly #driver: StorageDriver;
  readonly #token: string;
  readonly #ttlMs: number;
  /** Our lease ends here, by our clock: no storage effect of ours may start afterwards. */
  #validUntil: number;
  readonly #timer: NodeJS.Timeout;
  #renewing: Promise<void> | undefined;
  #released = false;
  /** Told when the release's delete failed (`err`) and the lock may still be in storage. */
  readonly #onLeftBehind: (validUntil: number, err: unknown) => void;
  /** Called on every renewal beat (the engine refreshes the upload record's touchedAt on it). */
  onBeat: (() => void) | undefined;

  constructor(driver: StorageDriver, path: string, token: string, validUntil: number, ttlMs: number, onLeftBehind: (validUntil: number, err: unknown) => void) {
    this.#driver = driver;
    this.path = path;
    this.#token = token;
    this.#validUntil = validUntil;
    this.#ttlMs = ttlMs;
    this.#onLeftBehind = onLeftBehind;
    this.#timer = setInterval(() => {
      this.#renewing ??= this.#renew().finally(() => (this.#renewing = undefined));
      this.onBeat?.();
    }, Math.max(10, Math.floor(ttlMs / 3)));
    this.#timer.unref();
  }

  /** Whether the lease still runs, by our clock. */
  get held(): boolean {
    return !this.#released && Date.now() < this.#validUntil;
  }

  /** Throws when the lease ran out (storage refused our renewals for the whole ttl). */
  assertHeld(): void {
    if (!this.held) {
      throw new RegistryError('UNAVAILABLE', {
        message: 'the upload lock expired: storage did not take its renewals in time; try again',
        detail: { lock: this.path.slice(this.path.lastIndexOf('/') + 1) },
      });
    }
  }

  /**
   * Ends the lease: deletes the lock, unless it ran out already (then a taker may own the
   * path). Never throws: the request's work is done, whatever happens to its lock; a lock not
   * deleted is left behind (UploadLocks remembers it).
   */
  async release(): Promise<void> {
    if (this.#released) return;
    clearInterval(this.#timer);
    this.onBeat = undefined;
    await this.#renewing;
    const held = this.held;
    this.#released = true;
    // A lease that ran out is not ours to take back early: its renewals failed, and a write
    // of ours may still be on its way to the store; only its expiry frees it.
    if (!held) return;
    try {
      await deleteObject(this.#driver, this.path);
    } catch (err) {
      this.#onLeftBehind(this.#validUntil, err);
    }
  }

  async #renew(): Promise<void> {
    if (!this.held) return;
    const sentAt = Date.now();
    try {
      await this.#driver.putContent(this.path, lockBytes(this.#token, sentAt + this.#ttlMs), { transient: true });
      this.#validUntil = sentAt + this.#ttlMs;
    } catch {
      // The next beat tries again; a lease that runs out stops the request (assertHeld).
    }
  }
}

/** A lock's content; {} when unreadable (a transient object after a machine crash can be empty). */
function parseRecord(raw: Buffer): Partial<LockRecord> {
  try {
    const parsed: unknown = JSON.parse(raw.toString('utf8'));
    if (parsed && typeof parsed === 'object') return parsed as Partial<LockRecord>;
  } catch {
    // Unreadable: judged by its age (#stale).
  }
  return {};
}

function lockBytes(token: string, expiresAtMs: number): Buffer {
  const record: LockRecord = { token, expiresAt: new Date(expiresAtMs).toISOString(), ...processIdentity() };
  return Buffer.from(JSON.stringify(record));
}
