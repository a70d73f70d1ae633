import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { isPathNotFound, objectExists, type StorageDriver } from '../storage/driver.js';
import { paths } from '../registry/paths.js';
import { processGone, processIdentity, type ProcessIdentity } from '../process-identity.js';

/**
 * The collection lease: `/gc/lease` exists while a collection runs and says which one
 * (its generation); the collector deletes it when done.
 *
 *   {"gen": 7, "state": "running", "owner": "host:pid", "startedAt": "…", "heartbeatAt": "…"}
 *
 * Servers look for it at the start of every manifest PUT (gc/guard.ts): a stat, which on S3
 * is a HEAD that answers 404 at once when no collection runs (the common case), and a read
 * only when one does. They tag the touches they write with the running generation; the
 * collector spares whatever carries its generation.
 *
 * One collector at a time: a collector claims generation n+1 by creating
 * `/gc/generations/<n+1>` with create-if-absent (atomic on every driver), so of two collectors
 * that start together exactly one wins; the other gets GcBusyError. Two that read the lease
 * at different moments could claim different generations (one reads no lease before the
 * other wrote its own, then lists the other's claim): so a claim above the lease that is
 * neither marked done (release() marks it) nor older than the TTL is a collection starting
 * right now, and makes the second busy too. A lease whose heartbeat
 * is older than the TTL belongs to a collector that died; the next one takes over, and on
 * local storage (fs) at once when the lease names a process of this host that is gone.
 */
export interface LeaseRecord extends Partial<ProcessIdentity> {
  readonly gen: number;
  readonly state: 'running';
  readonly owner: string;
  readonly startedAt: string;
  readonly heartbeatAt: string;
}

export class GcBusyError extends Error {
  override readonly name = 'GcBusyError';
  readonly lease: LeaseRecord | undefined;
  constructor(message: string, lease: LeaseRecord | undefined) {
    super(message);
    this.lease = lease;
  }
}

/**
 * This host's clock is too far from the store's for a collection: the collector judges what
 * is old by the store's modification times and the times servers and collectors write, with
 * its own clock.
 */
export class ClockSkewError extends Error {
  override readonly name = 'ClockSkewError';
  /**
   * `clock`: whose ("this host's clock"); `skewMs`: the store's clock minus it (clockSkew());
   * `needs`: what must be within the bound ("the two").
   */
  constructor(clock: string, skewMs: number, needs: string) {
    super(`${clock} is ${Math.round(Math.abs(skewMs) / 1000)} s ${skewMs < 0 ? 'ahead of' : 'behind'} the storage's; a collection needs ${needs} within ${MAX_CLOCK_SKEW_MS / 1000} s (set the time, e.g. with NTP)`);
  }
}

/**
 * How far this host's clock may be from the store's for a collection to run. Found by
 * probing: a collector 12 minutes ahead took every server's presence for silent and swept a
 * manifest push in flight; one 6 minutes behind wrote heartbeats that another collector took
 * for a dead one's, and two collections ran at once; at 55 s ahead (a first bound of 60 s)
 * it removed an upload whose PATCH held its lock, since upload locks allow 30 s of skew
 * (engine/upload-lock.ts), and swept a blob vouched for within a 30 s grace. Hosts kept by
 * NTP are milliseconds apart; S3 dates objects to the second.
 */
export const MAX_CLOCK_SKEW_MS = 10_000;

/** The lease went to another collector (ours missed its heartbeats for longer than the TTL). */
export class LeaseLostError extends Error {
  override readonly name = 'LeaseLostError';
}

export async function readLease(driver: StorageDriver): Promise<LeaseRecord | undefined> {
  try {
    return JSON.parse((await driver.getContent(paths.gcLease())).toString('utf8')) as LeaseRecord;
  } catch (err) {
    if (isPathNotFound(err)) return undefined;
    throw err;
  }
}

/** The running collection's generation, if any: an existence check, and a read only when there is a lease. */
export async function runningGeneration(driver: StorageDriver): Promise<number | undefined> {
  if (!(await objectExists(driver, paths.gcLease()))) return undefined;
  return (await readLease(driver))?.gen;
}

/** Is `lease` a collection that is running now (heartbeat within `ttlMs`)? */
export function isRunning(lease: LeaseRecord | undefined, ttlMs: number, nowMs = Date.now()): boolean {
  return lease !== undefined && nowMs - Date.parse(lease.heartbeatAt) < ttlMs;
}

export function defaultOwner(): string {
  return `${hostname()}:${process.pid}`;
}

export interface LeaseOptions {
  owner?: string;
  /** A running lease without a heartbeat for this long is taken over. */
  ttlMs: number;
}

/** A held lease; renews its heartbeat every ttl/4 until released. */
export class Lease {
  readonly gen: number;
  /** When this collection started (the collector's clock). */
  readonly startedAt: Date;
  readonly #driver: StorageDriver;
  readonly #record: LeaseRecord;
  readonly #timer: NodeJS.Timeout;
  #lost = false;
  #renewing: Promise<void> | undefined;

  private constructor(driver: StorageDriver, record: LeaseRecord, ttlMs: number) {
    this.#driver = driver;
    this.#record = record;
    this.gen = record.gen;
    this.startedAt = new Date(record.startedAt);
    this.#timer = setInterval(() => {
      this.#renewing ??= this.#renew().finally(() => (this.#renewing = undefined));
    }, Math.max(50, Math.floor(ttlMs / 4)));
    this.#timer.unref();
  }

  static async acquire(driver: StorageDriver, opts: LeaseOptions): Promise<Lease> {
    const owner = opts.owner ?? defaultOwner();
    const current = await readLease(driver);
    // A collector of this host that died (a killed `hoist gc`) holds nothing on local storage:
    // the next one need not wait out the TTL (StorageDriver.local says why only there).
    if (current && isRunning(current, opts.ttlMs) && !(driver.local && processGone(current) === true)) {
      throw new GcBusyError(`a collection is running already (generation ${current.gen}, ${current.owner}, since ${current.startedAt})`, current);
    }
    const claims = (await driver.list(paths.gcGenerationsDir()).catch(() => [])).map((p) => Number(p.slice(p.lastIndexOf('/') + 1)));
    const newest = Math.max(0, ...claims.filter(Number.isSafeInteger));
    if (newest > (current?.gen ?? 0) && (await claimStarting(driver, newest, opts.ttlMs))) {
      throw new GcBusyError(`collection ${newest} is starting`, current);
    }
    let gen = Math.max(current?.gen ?? 0, newest) + 1;
    // Whose claim it is, when a create-if-absent whose answer was lost is sent again and
    // finds its own first write (found by probing: the collector then took its own claim for
    // another's, and every collection was refused for the TTL).
    const token = randomUUID();
    let claimedAtMs: number;
    for (let attempt = 0; ; attempt++) {
      claimedAtMs = Date.now();
      const claim: ClaimRecord = { owner, at: new Date(claimedAtMs).toISOString(), token, ...processIdentity() };
      if (await driver.putContent(paths.gcGeneration(gen), json(claim), { ifNotExists: true })) break;
      if ((await readClaim(driver, gen))?.token === token) break;
      // Somebody claimed this generation. If its lease never appeared and the claim is old,
      // that collector died between the two writes: skip the generation. Otherwise it's
      // starting right now.
      const info = await driver.stat(paths.gcGeneration(gen)).catch(() => undefined);
      if (attempt < 3 && info && Date.now() - info.modTime.getTime() > opts.ttlMs) {
        gen++;
        continue;
      }
      throw new GcBusyError(`another collection claimed generation ${gen} just now`, await readLease(driver));
    }
    // The claim's modification time is the store's clock: before this collector writes a
    // lease (which would replace a running one it misjudged), it checks its own. (On local
    // storage the store's clock is this host's.)
    const skewMs = driver.local ? 0 : clockSkew((await driver.stat(paths.gcGeneration(gen))).modTime.getTime(), claimedAtMs, Date.now());
    if (Math.abs(skewMs) > MAX_CLOCK_SKEW_MS) {
      const done: ClaimRecord = { owner, at: new Date(claimedAtMs).toISOString(), token, done: true };
      await driver.putContent(paths.gcGeneration(gen), json(done)).catch(() => undefined);
      throw new ClockSkewError('this host\'s clock', skewMs, 'the two');
    }
    const now = new Date().toISOString();
    const record: LeaseRecord = { gen, state: 'running', owner, startedAt: now, heartbeatAt: now, ...processIdentity() };
    await driver.putContent(paths.gcLease(), json(record));
    // Older claims are no longer needed (the lease says which generation is current): the
    // two before, and any older the listing found (claims of collectors refused for their
    // clocks would otherwise pile up, one per scheduled run).
    const older = new Set([gen - 1, gen - 2, ...claims.filter((c) => Number.isSafeInteger(c) && c < gen)]);
    for (const old of older) if (old > 0) await driver.delete(paths.gcGeneration(old)).catch(() => undefined);
    return new Lease(driver, record, opts.ttlMs);
  }

  get lost(): boolean {
    return this.#lost;
  }

  /** Throws LeaseLostError when another collector took over: a collector must stop deleting then. */
  async assertHeld(): Promise<void> {
    if (!this.#lost) {
      const now = await readLease(this.#driver);
      if (now?.gen !== this.gen) this.#lost = true;
    }
    if (this.#lost) throw new LeaseLostError(`collection ${this.gen} lost its lease to another collector; it stopped`);
  }

  async #renew(): Promise<void> {
    if (this.#lost) return;
    try {
      const now = await readLease(this.#driver);
      if (now?.gen !== this.gen) {
        this.#lost = true;
        return;
      }
      await this.#driver.putContent(paths.gcLease(), json({ ...this.#record, heartbeatAt: new Date().toISOString() }));
    } catch {
      // The next beat tries again; a lease unrenewed for the TTL may be taken over, which
      // assertHeld() then notices.
    }
  }

  /** Ends the collection: deletes the lease (if it is still ours). */
  async release(): Promise<void> {
    clearInterval(this.#timer);
    await this.#renewing;
    if (this.#lost) return;
    const current = await readLease(this.#driver);
    if (current?.gen !== this.gen) return;
    // Done, for the next collector to tell from one starting now (acquire()).
    const claim: ClaimRecord = { owner: this.#record.owner, at: this.#record.startedAt, done: true };
    await this.#driver.putContent(paths.gcGeneration(this.gen), json(claim)).catch(() => undefined);
    await this.#driver.delete(paths.gcLease()).catch((err: unknown) => {
      if (!isPathNotFound(err)) throw err;
    });
  }
}

/** What /gc/generations/<n> holds. */
interface ClaimRecord extends Partial<ProcessIdentity> {
  readonly owner: string;
  /** When it was claimed (the claimer's clock). */
  readonly at: string;
  /** The claimer's own mark (claims before it have none). */
  readonly token?: string;
  /** The collection ended and released its lease. */
  readonly done?: boolean;
}

async function readClaim(driver: StorageDriver, gen: number): Promise<Partial<ClaimRecord> | undefined> {
  try {
    return JSON.parse((await driver.getContent(paths.gcGeneration(gen))).toString('utf8')) as Partial<ClaimRecord>;
  } catch {
    return undefined; // gone, or unreadable
  }
}

/**
 * The store's clock minus this host's, as far as one write tells: the store stamped it
 * (`storeMs`, whole seconds on S3) between `beforeMs` and `afterMs` of this host. 0 when
 * the stamp falls within that window.
 */
export function clockSkew(storeMs: number, beforeMs: number, afterMs: number): number {
  if (storeMs < beforeMs - 1000) return storeMs - beforeMs;
  if (storeMs > afterMs) return storeMs - afterMs;
  return 0;
}

/**
 * Whether claim `gen` is a collection starting now: not done, younger than the TTL, and on
 * local storage not of a process of this host that is gone. (A claim written before claims
 * were marked done counts as starting for a TTL after it was made.)
 */
async function claimStarting(driver: StorageDriver, gen: number, ttlMs: number): Promise<boolean> {
  const claim = await readClaim(driver, gen);
  // Gone since the listing, or unreadable: nothing to wait for.
  if (claim === undefined || claim.done === true) return false;
  // Its age by the store's clock too: a claim dated by a clock far ahead, whose collector
  // was refused for it (or died) before marking it done, would otherwise hold every
  // collection off until that date (found by probing: a day).
  const stored = (await driver.stat(paths.gcGeneration(gen)).catch(() => undefined))?.modTime.getTime() ?? Infinity;
  const at = Math.min(Date.parse(claim.at ?? ''), stored);
  if (!Number.isFinite(at) || Date.now() - at >= ttlMs) return false;
  return !(driver.local && processGone(claim) === true);
}

function json(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value));
}
