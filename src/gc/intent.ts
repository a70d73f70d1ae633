import { isPathNotFound, type FileInfo, type StorageDriver } from '../storage/driver.js';
import { processGone, type ProcessIdentity } from '../process-identity.js';

/**
 * How long a collector's intent (F: deleting a tag; J: putting a path back) binds it, and how
 * long a server waits for one at most. A collector holds an intent for milliseconds; one a
 * killed collector left was waited out in full by every tag PUT and client DELETE of its
 * path until the next replay cleared it (5 to 6 minutes on S3, the lease's TTL): 30 s each.
 *
 * Why a window and not the lease. The intent could name its collector's lease, and a server
 * could stop waiting once that lease is gone or expired; but a killed collector's lease stays
 * live for its TTL (5 min), which is the whole gap, and a lease released or taken over proves
 * nothing about writes still in flight (a collection that fails releases its lease while other
 * put-backs of its batch still run). A window is bound on both sides, and by the clocks each
 * side can read without trusting another host's:
 *
 *   collector  takes its clock (monotonic) before it sends the intent, and sends a write the
 *              intent covers only within `windowMs / 6` of that (5 s of 30 s), leaving the rest
 *              for a request in flight (the allowance gc/lease.ts and engine/upload-lock.ts
 *              make, 30 s, is the same assumption: no storage request lands that long after it
 *              was sent). Later, it writes the intent again and reads again what it decided on
 *              (the tombstone, the tag) before it writes: a waiter that gave up on the first
 *              intent wrote its tombstone or tag before it looked, so that read sees it.
 *   waiter     wrote its own object (the tombstone, the tag) before it looked. It waits while
 *              the intent exists, until `windowMs` has passed since the intent was written,
 *              which it bounds twice: by its own clock since the look that found it, as before,
 *              and by the store's dates of the intent and of its own object (both stamped by the
 *              store's clock; its own object stamped before the stat that read it returned, so
 *              the intent is at least their difference old then, less the stamps' granularity).
 *              No host's clock is compared with another's: an intent a killed collector left
 *              long ago is not waited for at all, whatever the clocks say.
 *   local      on local storage (fs, StorageDriver.local) a dead process's writes are done or
 *              never happen, so an intent whose writer is a process of this host that is gone
 *              binds nothing: the waiter stops at once, as gc/lease.ts takes over such a
 *              collector's lease at once. (Found by probing with a real kill -9 of `hoist gc`:
 *              the next PUT of the tag it held the intent of waited 30 s, the whole window.) On
 *              S3 a request the dead process sent may still land, so the window is waited out.
 *
 * The window is the collector's to state (GcOptions.intentWindowMs, tests shorten it), and at
 * most INTENT_WAIT_MS; an intent that states none (an older collector) has INTENT_WAIT_MS.
 */
export const INTENT_WAIT_MS = 30_000;

/** The share of its window within which a collector sends the writes an intent covers. */
export const INTENT_SEND_SHARE = 1 / 6;

/** The coarsest dates a store gives objects (S3: whole seconds; some file systems: 2 s). */
const STAMP_GRANULARITY_MS = 2_000;

/** What an intent object holds: its writer's process too (the collector's, or a server's replaying). */
export interface IntentRecord extends Partial<ProcessIdentity> {
  /** The collection (its lease generation); undefined for none (a dry run writes no intents). */
  readonly gen: number | undefined;
  /** When (the collector's clock), for people. */
  readonly at: string;
  /** The collector's writes under it land within this long of its writing it (see above). */
  readonly windowMs: number;
}

/**
 * What an intent's bytes bind a waiter to: the window they state (INTENT_WAIT_MS when they
 * state none, at most that), or none at all when `local` and its writer is a process of this
 * host that is gone (an intent of an older version names none: the window).
 */
export function intentWindow(raw: Buffer | undefined, local: boolean | undefined): number {
  let record: Partial<Record<keyof IntentRecord, unknown>> = {};
  try {
    const parsed: unknown = raw ? JSON.parse(raw.toString('utf8')) : undefined;
    if (parsed && typeof parsed === 'object') record = parsed;
  } catch {
    // Not ours: the default.
  }
  if (local === true && processGone(record) === true) return 0;
  const w = record.windowMs;
  return typeof w === 'number' && Number.isFinite(w) && w >= 0 ? Math.min(w, INTENT_WAIT_MS) : INTENT_WAIT_MS;
}

/**
 * How much longer (ms, from when `mine` was read) an intent stamped `intent` may still be
 * followed by its collector's writes, given `mine`, an object the waiter wrote before it
 * looked at the intent and read after (both FileInfo of the same store).
 */
export function intentRemaining(intent: FileInfo, mine: FileInfo, windowMs: number): number {
  return windowMs - (mine.modTime.getTime() - intent.modTime.getTime() - STAMP_GRANULARITY_MS);
}

