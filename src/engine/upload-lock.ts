import { randomBytes } from 'node:crypto';
import { RegistryError } from '../errors.js';
import { deleteObject, isPathNotFound, type StorageDriver } from '../storage/driver.js';
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
 *             (sentAt + ttl, sentAt taken before the request left).
 *   renew     every ttl/3 while held, overwrite it with a new expiresAt; a request streaming a
 *             long body keeps its lock (and, on the same beat, the upload record's touchedAt).
 *   release   stop renewing, wait for a renewal in flight, delete it.
 *   take over a lock whose expiresAt is more than `skewMs` past (its holder died, or lost
 *             storage for longer than the ttl) is removed through registry/takeover.ts, which
 *             lets exactly one of several servers doing this at once remove it, and only if it
 *             still holds what they read; then the lock is created as above. On local storage
 *             (fs) so is a lock whose holder, named in it, is a process of this host that no
 *             longer exists: a server restarted after kill -9 continues its uploads at once
 *             instead of answering busy for a minute. Nothing a dead process asked of a local
 *             file system lands later; on S3 a request may still be in flight, so there only
 *             the expiry counts.
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
}

const DEFAULT_TTL_MS = 30_000;
const DEFAULT_SKEW_MS = 30_000;
/** Attempts to create a lock that keeps being released or taken over under us. */
const MAX_ATTEMPTS = 4;

/** What the lock object holds; the holder's identity lets a server on its host see it died (process-identity.ts). */
interface LockRecord extends Partial<ProcessIdentity> {
  readonly token: string;
  readonly expiresAt: string;
}

export class UploadLocks {
  readonly #driver: StorageDriver;
  readonly #ttlMs: number;
  readonly #skewMs: number;

  constructor(driver: StorageDriver, opts: UploadLockOptions = {}) {
    this.#driver = driver;
    this.#ttlMs = opts.ttlMs ?? DEFAULT_TTL_MS;
    this.#skewMs = opts.skewMs ?? DEFAULT_SKEW_MS;
  }

  /** Takes the lock at `path`; undefined when another request holds it. */
  async acquire(path: string): Promise<UploadLock | undefined> {
    const token = randomBytes(16).toString('hex');
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const sentAt = Date.now();
      if (await this.#driver.putContent(path, lockBytes(token, sentAt + this.#ttlMs), { ifNotExists: true, transient: true })) {
        return new UploadLock(this.#driver, path, token, sentAt + this.#ttlMs, this.#ttlMs);
      }
      const raw = await readOrUndefined(this.#driver, path);
      if (!raw) continue; // released between our two requests
      if (!(await this.#stale(path, raw))) return undefined;
      if ((await removeStale(this.#driver, path, raw)) === 'busy') return undefined;
    }
    return undefined;
  }

  /** Whether a lock found held may be taken over: it expired, or (on local storage) its holder is dead. */
  async #stale(path: string, raw: Buffer): Promise<boolean> {
    let record: Partial<LockRecord> = {};
    try {
      const parsed: unknown = JSON.parse(raw.toString('utf8'));
      if (parsed && typeof parsed === 'object') record = parsed as Partial<LockRecord>;
    } catch {
      // Unreadable: judged by its age below.
    }
    if (this.#driver.local && processGone(record) === true) return true;
    let expiresAt = Date.parse(typeof record.expiresAt === 'string' ? record.expiresAt : '');
    if (!Number.isFinite(expiresAt)) {
      // Unreadable (a transient object after a machine crash can be empty): judge it by its age.
      try {
        expiresAt = (await this.#driver.stat(path)).modTime.getTime() + this.#ttlMs;
      } catch (err) {
        if (isPathNotFound(err)) return true;
        throw err;
      }
    }
    return Date.now() > expiresAt + this.#skewMs;
  }
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
  /** Called on every renewal beat (the engine refreshes the upload record's touchedAt on it). */
  onBeat: (() => void) | undefined;

  constructor(driver: StorageDriver, path: string, token: string, validUntil: number, ttlMs: number) {
    this.#driver = driver;
    this.path = path;
    this.#token = token;
    this.#validUntil = validUntil;
    this.#ttlMs = ttlMs;
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

  /** Ends the lease: deletes the lock, unless it ran out already (then a taker may own the path). */
  async release(): Promise<void> {
    if (this.#released) return;
    clearInterval(this.#timer);
    this.onBeat = undefined;
    await this.#renewing;
    const held = this.held;
    this.#released = true;
    if (held) await deleteObject(this.#driver, this.path);
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

function lockBytes(token: string, expiresAtMs: number): Buffer {
  const record: LockRecord = { token, expiresAt: new Date(expiresAtMs).toISOString(), ...processIdentity() };
  return Buffer.from(JSON.stringify(record));
}

async function readOrUndefined(driver: StorageDriver, path: string): Promise<Buffer | undefined> {
  try {
    return await driver.getContent(path);
  } catch (err) {
    if (isPathNotFound(err)) return undefined;
    throw err;
  }
}
