import { createHash } from 'node:crypto';
import { deleteObject, isPathNotFound, readOrUndefined, type StorageDriver } from '../storage/driver.js';
import { paths } from './paths.js';

/**
 * Removing an object somebody else created, once it is known to be stale (the lock of an
 * upload whose holder died, a blob record whose data is gone), so that it can be created
 * anew, when several servers may find it stale at the same moment.
 *
 * Storage offers create-if-absent and an unconditional delete, no compare-and-delete. Two
 * servers that both read the stale object and then both delete it and create their own can
 * delete each other's: A deletes the stale one and creates its own, B's delete then removes
 * A's, and both believe they hold the lock (or B's record replaces the one A's client was
 * told about, and B crashes before writing its own). So the removal is claimed first, by
 * creating a marker named after the stale content as read (`<path>.takeover-<h>-<k>`, h a
 * hash of it). Only the server that created the marker re-reads the object, and deletes it
 * if it still holds that content; then it deletes the marker. Content never comes back once
 * deleted (a lock carries a random token, a record names data with a unique id; a collector
 * putting a record back puts back the same record), so a server that wins the marker after
 * the first one finished re-reads something else and leaves it alone.
 *
 * A marker lives for milliseconds, but its creator can die holding it: one older than
 * MARKER_STALE_MS is passed over, and the next taker creates marker k+1. The creator of a
 * marker deletes only within MARKER_ACT_MS of creating it, so a creator that was merely
 * stalled stops before a later one starts. This is the assumption every lease makes: server
 * clocks agree, and a request stays in flight, within the difference (45 s).
 */
export type TakeoverResult =
  /** The object held `raw` and this call deleted it. */
  | 'removed'
  /** The object no longer holds `raw` (gone, or replaced): read it again. */
  | 'changed'
  /** Another server is removing it right now. */
  | 'busy';

const MARKER_STALE_MS = 60_000;
const MARKER_ACT_MS = 15_000;
/** Markers tried per stale object: each one more needs its creator to have died holding the last. */
const MAX_MARKERS = 5;

/** Deletes `path` if it still holds `raw`, as the only one of those who found it so (see above). */
export async function removeStale(driver: StorageDriver, path: string, raw: Buffer): Promise<TakeoverResult> {
  const h = createHash('sha256').update(raw).digest('hex').slice(0, 32);
  let won = 0;
  let createdAt = 0;
  try {
    for (let k = 1; k <= MAX_MARKERS && won === 0; k++) {
      const marker = paths.takeoverMarker(path, h, k);
      createdAt = Date.now();
      const body = Buffer.from(JSON.stringify({ at: new Date(createdAt).toISOString() }));
      if (await driver.putContent(marker, body, { ifNotExists: true, transient: true })) {
        won = k;
        break;
      }
      const at = await markerTime(driver, marker);
      // Gone: whoever had it is done, and the object holds something else by now.
      if (at === undefined) return 'changed';
      if (Date.now() - at < MARKER_STALE_MS) return 'busy';
      // Its creator died (or stalled, and will notice): the next marker.
    }
    if (won === 0) throw new Error(`${path}: ${MAX_MARKERS} servers died taking over one stale object`);
    const now = await readOrUndefined(driver, path);
    if (!now?.equals(raw)) return 'changed';
    if (Date.now() - createdAt >= MARKER_ACT_MS) return 'busy';
    await deleteObject(driver, path);
    return 'removed';
  } finally {
    // Ours, and those of takers that died before us (a stalled one no longer acts on its own).
    for (let k = 1; k <= won; k++) await deleteObject(driver, paths.takeoverMarker(path, h, k)).catch(() => undefined);
  }
}

/** When a marker was created, by its creator's clock; undefined when it is gone; 0 when unreadable (stale). */
async function markerTime(driver: StorageDriver, marker: string): Promise<number | undefined> {
  const raw = await readOrUndefined(driver, marker);
  if (!raw) return undefined;
  try {
    const at = Date.parse((JSON.parse(raw.toString('utf8')) as { at?: string }).at ?? '');
    return Number.isFinite(at) ? at : 0;
  } catch {
    // A transient object after a machine crash (fs) can be empty: its creator is dead.
    return 0;
  }
}
