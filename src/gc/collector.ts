import pLimit, { type LimitFunction } from 'p-limit';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { InvalidPathError, isPathNotFound, listPage, objectExists, readOrUndefined, type ListedChild, type StorageDriver } from '../storage/driver.js';
import { BlobStore, WELL_KNOWN_BLOBS } from '../registry/blobs.js';
import type { ExpiryPolicy } from '../registry/expiry.js';
import { decodeRevision } from '../registry/manifests.js';
import type { PresenceRecord, TouchRecord } from './guard.js';
import { lockInForce, lockLeftOver } from '../engine/upload-lock.js';
import { processGone, processIdentity } from '../process-identity.js';
import { ClockSkewError, Lease, MAX_CLOCK_SKEW_MS } from './lease.js';
import { INTENT_SEND_SHARE, INTENT_WAIT_MS, type IntentRecord } from './intent.js';
import { manifestRefs, Marker } from './mark.js';
import {
  basename, listData, listOrEmpty, listRepositories, scanBlobs, scanRepository, type RepositoryScan,
} from './scan.js';
import { paths } from '../registry/paths.js';
import { removeStale } from '../registry/takeover.js';
import { tryParseDigest, type Digest } from '../registry/reference.js';

/**
 * Online garbage collection of one registry's storage (the default registry, or one
 * namespace's: pass a PrefixedDriver). Runs while servers push and pull; never deletes a
 * byte that a tag, or a manifest pushed while it runs, refers to.
 *
 * What it removes
 * ---------------
 *   - expired tags (expiry.ts: the `quay.expires-after` label, the configured expiration);
 *   - manifests no live tag reaches (through index children and referrers), with their
 *     referrer entries; layer links no live manifest of their repository uses; blob records
 *     and data no live manifest anywhere uses (mark and sweep, gc/mark.ts), blobs last;
 *   - uploads without activity for `staleUploadAfterMs`, with their data (on S3 the driver
 *     aborts the multipart upload and deletes the staging objects) unless the upload became a
 *     blob (E), and data objects that no record points to (a crash between writing data and
 *     recording it), idle as long; finished markers of uploads a day after their commit (E);
 *   - touched markers of blobs that are gone;
 *   - entries of the expiring index (manifests.ts) whose tag is gone or has no label expiry
 *     any more, and presences of servers that are gone (C).
 * S3 multipart uploads that no writer state knows (a crash mid-PATCH) and fs temp files (a
 * crash mid-putContent) are the driver's: see StorageDriver.listIncompleteWrites, run by
 * gc/runner.ts once per store.
 *
 * Why nothing referenced is lost (the argument the code below follows)
 * -------------------------------------------------------------------
 * Storage is linearizable per object, listings included: a read or a listing sees every
 * write that finished before it started (fs; S3 has been strongly consistent since 2020;
 * radosgw is). The collector reads the lease's generation g and the time it started, t0;
 * `cutoff` is t0 - grace. An "operation" is what a server does under GcGuard.op(): a
 * manifest PUT, an upload commit, a mount.
 *
 * C. Operations in flight (gc/guard.ts duty 1) come first, because they decide what the
 *    others must cover. A server writes its presence (/gc/servers/<id>) before its first
 *    operation and only then reads the lease; it keeps the presence while it runs, looks at
 *    the lease about every second, and files each operation under what it then believed:
 *    no collection, or collection g. Once it sees g, and every operation it started before
 *    has finished, it writes `ack: g` into its presence. The collector writes the lease,
 *    then lists the presences, and waits for each to acknowledge g before it lists anything
 *    else. A presence the listing missed was written after it, so its server read the lease
 *    after the lease was written and knew of g from its first operation. Hence every
 *    operation either knew that g was running when it started, or finished before the
 *    collector's first listing, and what it wrote (a tag, a revision, a blob record, a link)
 *    is in the listings and judged by marking and B like anything else. An operation that
 *    did not know of g never races the collector's deletions, and so costs the store
 *    nothing for garbage collection. The collector stops waiting for a presence that is
 *    deleted (its server stopped), that names a process on this host and PID namespace
 *    which no longer exists (it crashed), or that has not been rewritten for
 *    `inflightTimeoutMs` (10 minutes; servers rewrite it every minute): a server silent
 *    that long is taken for dead, as a registration that old was taken for a crash's by
 *    the servers before this scheme, which registered every operation in /gc/inflight/
 *    (the collector still waits for those registrations). Without C, a PUT that checked its
 *    references just before t0 and wrote its tag just after the tags were listed would
 *    leave a tag to swept blobs whenever grace is shorter than that PUT.
 *
 * A. Touch before check (gc/guard.ts duty 2). An operation that knows g is running, before
 *    it vouches for a digest X (accepts a manifest that refers to X or is X, adopts an
 *    upload onto X, mounts X), rewrites X's touched marker, tagged with g, then checks that
 *    X exists. Blob and manifest HEADs (not operations) touch before they check always. The
 *    collector deletes X's record (the only way to reach X's bytes) first, then re-reads
 *    X's marker, and puts the record back ("resurrects" it) if the marker is fresh or
 *    changed since its first read. If the registry's check found the record, that check ran
 *    before the delete, so the touch ran before the collector's re-read, which therefore
 *    sees it: the record comes back and the bytes were never deleted (data goes only after
 *    the re-read). If the check did not find it, the registry answers "unknown" and the
 *    client uploads again; a manifest PUT first looks again for a moment (gc/guard.ts
 *    recheck), since its check may have fallen between the collector's delete and its
 *    putting back. Manifests (revisions, which hold their bytes) and layer links are
 *    swept the same way, with the same marker. An operation that did not know of g needs no
 *    touch: by C it finished before the collector deleted anything.
 *
 * B. Grace. A marker is fresh if its time is after `cutoff`, or if it carries g (written by
 *    an operation of this collection, however late it comes and whatever the clocks say).
 *    A manifest is fresh as well when its revision was created after `cutoff` (the store's
 *    time for the revision object, which is written once; a push while no collection runs
 *    writes no marker, and pushing an untagged manifest again touches it).
 *    Blob HEADs, upload commits and mounts always touch, and a manifest's references are
 *    kept by the manifest once it is pushed: a client that HEADs a blob, or uploads it, and
 *    pushes a manifest using it less than `grace` later, finds it there: nothing touched
 *    within the grace period is swept. This is the one timing assumption, and it concerns
 *    clients, not bytes: a push slower than the grace period can fail with
 *    MANIFEST_BLOB_UNKNOWN (and is retried), it cannot create a manifest whose blob is gone,
 *    because the PUT either finished before the collector listed anything (C) or re-checks
 *    every reference after touching it (A). With `--grace 0s` everything not in use when the
 *    collection starts goes. (A marker's time is the writing server's clock when it began
 *    the write. A touch the collector cannot tell from an old one, because it was stored
 *    before the collector's first read and dated before the cutoff by a clock running
 *    behind, costs at most such a failed push, for the same reason.)
 *
 * D. Order. Manifests are swept before links and links before blobs, and a manifest that
 *    turns out fresh (or comes back under A) is marked with everything it reaches before any
 *    blob is considered ("late marks"). Manifests are swept parents first (an index before
 *    its children, a subject before its referrers), so that a late mark never reaches one
 *    that is already gone: anything that could refer to a manifest was decided before it.
 *
 * E. Uploads. An upload record names its data. Finishing an upload deletes the upload record
 *    and then writes the blob record, inside one operation (Registry.completeUpload; the other
 *    order let a crash between the two leave an upload whose data a blob record named, which
 *    a cancel or a sweep of the upload then deleted). For those milliseconds the data is named
 *    by neither, as a monolithic upload's is until its record: a collection may see it unnamed
 *    once, and notes it (#sweepOrphanData never deletes on a first sighting); the next one
 *    lists nothing before that operation ends (C), by which time the record names it. Removing a stale upload writes an intent, then
 *    looks at the upload's lock, then re-reads the upload record, and deletes the record
 *    before the intent. A request that rewrites the record (touchedAt: a PUT finishing the
 *    upload, a PATCH after a pause or on its lock's beat) holds the lock and, before its first
 *    read of the record, looks for an intent: it sees it (BLOB_UPLOAD_UNKNOWN), or it looked
 *    before the intent was written, holding the lock, which the collector sees (and leaves the
 *    upload alone), or it looked after the intent was deleted, and its read finds the record
 *    gone. So a record the collector deleted is never written back (a touch that read it just
 *    before the delete and wrote it just after did, when the look came after the rewrite: the
 *    upload looked alive with its data gone, and its PUT answered DIGEST_INVALID for correct
 *    bytes; found by probing at staleUploadAfter 0s). A PATCH that only appends (its record
 *    fresh) may store its bytes just before the collector deletes the data, or just after,
 *    as data no record names: its 202 stands, and the client's next request on the upload,
 *    its PUT at the latest, finds the record gone (BLOB_UPLOAD_UNKNOWN). Data no record names is
 *    deleted only after `staleUploadAfterMs` without a write, and once collections have
 *    seen it unnamed for as long (#sweepOrphanData): data between its commit and its blob
 *    record is unnamed for milliseconds, never for the hour that takes. The requests that
 *    write to or end an upload hold its lock (engine/upload-lock.ts) while they do all that,
 *    the touch and the intent check included; the collector takes no lock, so the intent is
 *    what keeps it and a request apart. Locks of uploads that are gone, left by a server that
 *    died, go once their lease is over (#sweepUploadLocks), whatever staleUploadAfter says.
 *    A store may also apply a write of the record after it answered it (found by probing: a
 *    touch a proxy held for 8 s, whose retry succeeded, landed after the commit's 201), and
 *    bring back the record of an upload whose data is now a blob's: a DELETE, a PATCH or a
 *    sweep of it destroyed the blob. So a commit writes the upload's finished marker
 *    (`_uploads/<id>.finished`) as it deletes the record, before the blob record and before
 *    it lets go of the lock; nothing else writes the marker, so no late write undoes it. A
 *    request looks for it along with the record and finds no upload when it is there. The
 *    collector looks for it after the lock: a commit that held the lock before has written
 *    it, and one that takes the lock after sees the intent or finds the record gone, as
 *    above. A stale record with a marker goes as any other, its data never. A marker goes once
 *    its upload has no record and it is a day old (#sweepFinishedMarkers): a late write lands
 *    while the store still processes its request, not a day later. A commit whose blob record
 *    fails, and which puts the record back for the client's retry, deletes the marker first.
 *
 * F. Tags. Deleting an expired tag writes an intent, re-reads the tag and deletes it only if
 *    it is unchanged; entries of the expiring index (manifests.ts) whose tag is gone or has
 *    no label expiry any more go the same way. A PUT of that tag that did not know of g
 *    finished before the tags were listed (C). One that did writes the tag (its expiring
 *    entry first), then looks for the intent, waits while it is there, then reads the tag
 *    (and its entry) again and writes back what the collector removed (gc/guard.ts duty 3,
 *    ManifestStore.repairTag). If its look found no intent, it came before the intent was
 *    written, so the tag was written before the collector's re-read, which saw it changed
 *    and kept it; or it came after the intent was deleted, so the read that follows sees
 *    any delete the collector made. So a tag pushed again just as it expires is never lost.
 *    The PUT waits no longer than the intent's window (gc/intent.ts): the collector deletes
 *    within it, or writes the intent again and re-reads the tag, which then sees the PUT's.
 *
 * G. One collector at a time (gc/lease.ts); it checks that it still holds the lease before
 *    each phase that deletes, and stops if another took over (only possible after it missed
 *    its heartbeats for the lease TTL).
 *
 * H. Pull-through caches (src/proxy/, gc/mirror.ts). A cache's registry is collected by this
 *    same code with two settings changed: its tags expire proxy.ttl after the upstream last
 *    confirmed them, and its grace is proxy.ttl plus the pull-mark lag. What the cache
 *    writes, it writes the way the registry's own pushes do, so A to G hold as they stand:
 *      - a fetched blob's bytes go to /blobs/data/<id> with no record naming them, as a
 *        monolithic upload's do, and fall under E's orphan rule only after staleUploadAfter
 *        without a write, exactly as long as such an upload (a fetch that stalls for a minute
 *        is given up); its record is adopted as an upload commit's is, inside op() after a
 *        touch (A, C), so a collection running at that moment spares it;
 *      - a fetched manifest is stored inside op() after a touch of its digest, and its tag
 *        written again when a collector was deleting it (C, F), as by a manifest PUT;
 *      - a blob stored for one repository is linked into another inside op() after a touch,
 *        as a mount is;
 *      - a pull touches the blob or manifest it serves before it reads it (A), unless this
 *        process touched it less than pullRefreshMs ago: that marker is fresh in any case
 *        (the grace is longer than the refresh), so no collection is deleting what it reads.
 *        It touches only what the repository holds (a look first, which serves nothing: what
 *        goes in between is fetched again), so a digest asked for in vain leaves no marker.
 *    Unlike a push, a cache needs no grace for its own safety: it checks no references when
 *    it stores a manifest, and whatever a client asks for that is gone is fetched again. Its
 *    grace only says how long unpulled content stays.
 *
 * I. Records without data. A blob record whose data is gone or has another size (issue 10: a
 *    DELETE racing a PUT deleted the data a new record named) names nothing: the registry
 *    answers as if it were absent, and a push of the same bytes replaces it
 *    (BlobStore.#install). It is the only kind of record ever replaced, so neither the push
 *    nor the collector deletes one blindly: both go through registry/takeover.ts, where one
 *    of them removes it, and only as it was read; and the collector never puts one back
 *    under A (it could resurrect it over the record a push just wrote). It finds them among
 *    the records it sweeps, and among all records when the data objects do not add up (one
 *    per record and per upload that stored bytes), which is also how it finds orphan data.
 *
 * J. A collector that dies. A delete and the re-read that may put back what it deleted (A)
 *    are two steps, and a collector killed between them (kill -9, a lost machine) put back
 *    nothing: a push that deduplicated onto a record, or a manifest PUT that checked a link or
 *    re-pushed a revision, was told it is there, and it was gone for good. So each batch of
 *    records, links and revisions is written down first (/gc/sweeping, with the bytes as
 *    read, with each digest's marker as first read), and the note deleted once the batch's
 *    put-backs are done. A collection that finds the note (one runs at a time, G: its writer
 *    died) does, before it lists anything, what the re-reads would have: it puts back what the
 *    note names that is gone and whose marker has changed since (a blob record only while its
 *    data is there, I). What comes back is judged by this collection like everything else.
 *    Servers do the same between collections (replaySweepNote, gc/schedule.ts startSweepWatch),
 *    taking the lease as a collection does, once it is free or expired: the next collection may
 *    be hours away, and until the put-back a push answered 201 meanwhile answers 404.
 *    A client's delete must not be undone so: the note may outlive the put-back it was kept
 *    for (a collector killed between the two), and a client may delete, or push and delete,
 *    what it names before the next collection comes (hours, perhaps). So a client deleting a
 *    manifest, a referrer entry or a link while a note exists leaves a tombstone first
 *    (/gc/deleted/, gc/guard.ts duty 4), and neither the replay nor a live put-back brings a
 *    tombstoned path back. Each collection clears the tombstones after its replay: no note
 *    they could be held against is left then, and a path deleted and pushed again later is
 *    fresh (B) for as long as the collection that might delete it again runs.
 */

export interface GcOptions {
  /** One registry's storage. */
  driver: StorageDriver;
  /** Spare what was touched this recently (ms). */
  graceMs: number;
  /** Uploads and unrecorded data idle this long are removed (ms). */
  staleUploadAfterMs: number;
  /** Report what would be removed; delete nothing, take no lease. */
  dryRun?: boolean;
  /** Tag expiry (label and configured expiration); without one, only labels expire tags. */
  expiry?: ExpiryPolicy;
  onProgress?: (p: GcProgress) => void;
  /**
   * Told the uploads that remain after the sweep, by data path, with their lock's path: the
   * runner keeps a store's abandoned-looking write of one whose lock is held (gc/runner.ts).
   */
  onUploads?: (locks: ReadonlyMap<string, string>) => void;
  /** Lease owner, for `/gc/lease` (default host:pid). */
  owner?: string;
  /** Storage requests in flight at once (default 16). */
  concurrency?: number;
  /** A lease whose collector has not renewed it for this long may be taken over (default 5 min). */
  leaseTtlMs?: number;
  /** A registration in /gc/inflight/ older than this was left by a crash (default 10 min). */
  inflightTimeoutMs?: number;
  /**
   * How long after writing an intent the writes it covers land at the latest (default and at
   * most 30 s, which servers wait for an intent at most; gc/intent.ts). Tests shorten it.
   */
  intentWindowMs?: number;
  /** Stops the collection between steps (the lease is released); it rejects with the signal's reason. */
  signal?: AbortSignal;
}

export type GcPhase = 'waiting' | 'scanning' | 'marking' | 'tags' | 'manifests' | 'links' | 'blobs' | 'uploads' | 'data' | 'markers';

export interface GcProgress {
  readonly phase: GcPhase;
  readonly done: number;
  readonly total: number;
}

export interface Removed {
  count: number;
  bytes: number;
}

export interface GcReport {
  /** The lease generation (undefined for a dry run). */
  readonly generation: number | undefined;
  readonly dryRun: boolean;
  readonly startedAt: string;
  elapsedMs: number;
  repositories: number;
  /** What was kept: live manifests (per repository) and live blobs. */
  live: { manifests: number; blobs: number };
  expiredTags: number;
  manifests: number;
  referrerEntries: number;
  links: number;
  blobs: Removed;
  uploads: Removed;
  /** Upload locks (and takeover markers) of uploads that are gone, left by servers that died. */
  uploadLocks: number;
  /** Blob records whose data is gone or has another size (I): named nothing, removed. */
  danglingRecords: number;
  orphanData: Removed;
  markers: number;
  /** Candidates kept because they were touched during the collection (some put back after their delete). */
  spared: number;
  /** Live manifests whose bytes could not be read: what they refer to was kept by luck only. */
  unreadableManifests: string[];
}

const DEFAULT_CONCURRENCY = 16;
const DEFAULT_LEASE_TTL_MS = 5 * 60_000;
const DEFAULT_INFLIGHT_TIMEOUT_MS = 10 * 60_000;
/** Objects deleted per batch (S3 DeleteObjects takes at most 1,000). */
const DELETE_BATCH = 500;
/**
 * How long an upload's finished marker outlives the commit that wrote it (E): far longer than
 * a store takes to apply a write it answered late, which is all the marker guards against.
 */
const FINISHED_UPLOAD_KEEP_MS = 24 * 3_600_000;
/** A batch's note (J) holds what it deletes: manifests are batched by their bytes too. */
const SWEEP_NOTE_MAX_BYTES = 8 * 1024 * 1024;

/**
 * An object about to be deleted, as read (J); `d`: the digest whose touched marker decides
 * whether it comes back (A); `record`: a blob record, put back only with its data.
 */
interface SweepEntry {
  readonly path: string;
  readonly raw: Buffer;
  readonly d: string;
  readonly record?: boolean;
}

/**
 * `items` in batches of at most DELETE_BATCH, and of SWEEP_NOTE_MAX_BYTES by `bytes` (one item
 * at least): every sweep deletes in these, so that each batch's note (J) stays bounded.
 */
function batches<T>(items: T[], bytes: (item: T) => number): T[][] {
  const out: T[][] = [];
  let current: T[] = [];
  let size = 0;
  for (const item of items) {
    const n = bytes(item);
    if (current.length > 0 && (current.length >= DELETE_BATCH || size + n > SWEEP_NOTE_MAX_BYTES)) {
      out.push(current);
      current = [];
      size = 0;
    }
    current.push(item);
    size += n;
  }
  if (current.length > 0) out.push(current);
  return out;
}
/** Returned by a body of #underIntent that was too late to write: it runs again. */
const LATE = Symbol('late');
/** Runs of an #underIntent body, at most. */
const INTENT_ATTEMPTS = 3;
/** Progress callbacks per phase, at most. */
const PROGRESS_STEPS = 200;

/** What uploads.ts stores at paths.upload() (the fields the collector reads). */
interface UploadRecordLike {
  startedAt?: string;
  touchedAt?: string;
  data?: string;
}

/** Runs one collection. Throws GcBusyError when another collection holds the lease. */
export async function collectGarbage(opts: GcOptions): Promise<GcReport> {
  const lease = opts.dryRun ? undefined : await Lease.acquire(opts.driver, { owner: opts.owner, ttlMs: opts.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS });
  try {
    return await new Collection(opts, lease).run();
  } finally {
    await lease?.release();
  }
}

export type SweepReplayOptions = Pick<GcOptions, 'driver' | 'owner' | 'concurrency' | 'leaseTtlMs' | 'intentWindowMs'>;

/**
 * Replays the sweep note of a collector that died mid-batch (J) without waiting for the next
 * collection, which may be hours away: until then a push that was answered 201 while the
 * batch was deleted answers 404. Takes the lease (a live one's collector is mid-batch, or
 * will replay itself: GcBusyError), does what a collection does first (#replaySweep), and
 * releases it. Undefined when there is no note (one stat, the common case); else how many
 * objects it put back.
 */
export async function replaySweepNote(opts: SweepReplayOptions): Promise<{ restored: number } | undefined> {
  if (!(await objectExists(opts.driver, paths.gcSweeping()))) return undefined;
  const lease = await Lease.acquire(opts.driver, { owner: opts.owner, ttlMs: opts.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS });
  try {
    // Its collector may have finished the batch, and let go of the lease, since the look.
    if (!(await objectExists(opts.driver, paths.gcSweeping()))) return undefined;
    // Grace and staleness judge nothing here: a replay only puts back.
    return { restored: await new Collection({ ...opts, graceMs: 0, staleUploadAfterMs: 0 }, lease).replay() };
  } finally {
    await lease.release();
  }
}

class Collection {
  readonly #o: GcOptions;
  readonly #d: StorageDriver;
  readonly #lease: Lease | undefined;
  readonly #limit: LimitFunction;
  readonly #blobs: BlobStore;
  readonly #t0: number;
  readonly #cutoff: number;
  readonly #dry: boolean;
  readonly #report: GcReport;
  #marker!: Marker;
  readonly #repos = new Map<string, RepositoryScan>();
  /** Records found without data (I), by path: each is handled once. */
  readonly #dangling = new Set<string>();
  /** First reads of touched markers (raw text, '' for none), for "changed since". */
  readonly #firstTouch = new Map<string, string>();


  constructor(opts: GcOptions, lease: Lease | undefined) {
    this.#o = opts;
    this.#d = opts.driver;
    this.#lease = lease;
    this.#limit = pLimit(opts.concurrency ?? DEFAULT_CONCURRENCY);
    this.#blobs = new BlobStore(opts.driver);
    this.#t0 = lease?.startedAt.getTime() ?? Date.now();
    this.#cutoff = this.#t0 - opts.graceMs;
    this.#dry = opts.dryRun ?? false;
    this.#report = {
      generation: lease?.gen,
      dryRun: this.#dry,
      startedAt: new Date(this.#t0).toISOString(),
      elapsedMs: 0,
      repositories: 0,
      live: { manifests: 0, blobs: 0 },
      expiredTags: 0,
      manifests: 0,
      referrerEntries: 0,
      links: 0,
      blobs: { count: 0, bytes: 0 },
      uploads: { count: 0, bytes: 0 },
      uploadLocks: 0,
      danglingRecords: 0,
      orphanData: { count: 0, bytes: 0 },
      markers: 0,
      spared: 0,
      unreadableManifests: [],
    };
  }

  async run(): Promise<GcReport> {
    const started = performance.now();
    if (this.#lease) {
      await this.#replaySweep();
      await this.#waitForServers();
      await this.#waitForInflight();
    }

    // --- listings (order: uploads, then blob records, then data; see E) -----------------
    this.#progress('scanning', 0, 0);
    const names = await listRepositories(this.#d);
    let scanned = 0;
    await Promise.all(names.map(async (name) => {
      this.#o.signal?.throwIfAborted();
      this.#repos.set(name, await scanRepository(this.#d, name, this.#limit));
      this.#progress('scanning', ++scanned, names.length);
    }));
    this.#report.repositories = names.length;
    const blobScan = await scanBlobs(this.#d, this.#limit);
    const dataPaths = await listData(this.#d);

    // --- mark ---------------------------------------------------------------------------
    this.#marker = new Marker(this.#repos, (repo, d) => this.#loadRefs(repo, d), pLimit(this.#o.concurrency ?? DEFAULT_CONCURRENCY));
    const expired: Array<[string, string, string]> = [];
    const roots: Array<[string, string]> = [];
    const now = Date.now();
    for (const [name, repo] of this.#repos) {
      for (const [tag, t] of repo.tags) {
        const isExpired = this.#o.expiry ? this.#o.expiry.isExpired(name, t, now) : t.expiresAt !== undefined && Date.parse(t.expiresAt) <= now;
        if (isExpired) expired.push([name, tag, t.raw]);
        else roots.push([name, t.digest]);
      }
    }
    this.#progress('marking', 0, roots.length);
    await this.#marker.mark(roots);

    // --- sweep --------------------------------------------------------------------------
    await this.#sweepExpiredTags(expired);
    await this.#tidyExpiringIndex(new Set(expired.map(([name, tag]) => `${name}\u0000${tag}`)));
    await this.#sweepManifests();
    await this.#sweepLinks();
    const { swept, sweptData } = await this.#sweepBlobs(blobScan.records);
    const remainingUploads = await this.#sweepUploads();
    this.#o.onUploads?.(remainingUploads);
    await this.#sweepUploadLocks(remainingUploads);
    await this.#sweepFinishedMarkers();
    await this.#sweepOrphanData(dataPaths.filter((p) => !sweptData.has(p)), blobScan.records, swept, new Set(remainingUploads.keys()));
    await this.#sweepMarkers(blobScan.markers, blobScan.records, swept);
    if (this.#lease) await this.#sweepStaleIntents();

    let liveManifests = 0;
    for (const set of this.#marker.manifests.values()) liveManifests += set.size;
    this.#report.live = { manifests: liveManifests, blobs: [...blobScan.records].filter((d) => !swept.has(d)).length };
    this.#report.unreadableManifests = [...this.#marker.unreadable].sort();
    this.#report.elapsedMs = Math.round(performance.now() - started);
    return this.#report;
  }

  /** Only the replay of a dead collector's note (replaySweepNote); how many objects it put back. */
  async replay(): Promise<number> {
    await this.#replaySweep();
    return this.#report.spared;
  }

  // --- C: wait for operations that started before the servers knew of this collection ------

  /**
   * Waits until every server that runs operations on this storage has acknowledged this
   * collection (gc/guard.ts duty 1): all it started before it saw the lease has finished. A
   * server is not waited for once its presence is gone (it stopped), has not been rewritten
   * for `inflightTimeoutMs` (it died, or hangs longer than an operation may take, as a
   * registration that old counts as left by a crash), or names a process on this host that
   * no longer exists.
   */
  async #waitForServers(): Promise<void> {
    const gen = this.#lease!.gen;
    const timeoutMs = this.#o.inflightTimeoutMs ?? DEFAULT_INFLIGHT_TIMEOUT_MS;
    const settled = new Set<string>();
    let total = 0;
    for (;;) {
      this.#o.signal?.throwIfAborted();
      const { children } = await listPage(this.#d, paths.gcServersDir(), { details: true });
      const pending = children.filter((c) => !c.isDir && !settled.has(c.path));
      total = Math.max(total, settled.size + pending.length);
      this.#progress('waiting', settled.size, total);
      if (pending.length === 0) return;
      await Promise.all(pending.map((c) => this.#limit(async () => {
        const raw = await readOrUndefined(this.#d, c.path);
        let p: Partial<PresenceRecord> = {};
        try {
          if (raw) p = JSON.parse(raw.toString('utf8')) as Partial<PresenceRecord>;
        } catch {
          // Unreadable: judged by its age alone.
        }
        const silent = c.modTime !== undefined && Date.now() - c.modTime.getTime() > timeoutMs;
        // A dead server's clock no longer matters.
        if (!silent) this.#checkServerClock(c, p);
        if (!raw || (typeof p.ack === 'number' && p.ack >= gen)) {
          settled.add(c.path);
          return;
        }
        if (silent || processGone(p) === true) {
          settled.add(c.path);
          await ignoreNotFound(this.#d.delete(c.path));
        }
      })));
      if (pending.every((c) => settled.has(c.path))) continue;
      // Servers look at the lease every second or so.
      await sleep(50);
    }
  }

  /**
   * Servers date their touches, upload locks and records by their own clocks, which the
   * collector compares with its own: a server minutes behind had a PATCH's upload removed
   * under it and blobs it had just vouched for swept (found by probing, 90 s and 10 min
   * behind). Each server measures its clock against the store's at every presence write
   * (PresenceRecord.skewMs), so before it lists anything a collection refuses to run beside
   * a live server off by more than MAX_CLOCK_SKEW_MS. (Comparing the presence's heartbeatAt
   * with the listing's date of it refused healthy servers in 7 collections of 15: a rewrite
   * between the listing and the read.)
   */
  #checkServerClock(c: ListedChild, p: Partial<PresenceRecord>): void {
    if (this.#d.local || typeof p.skewMs !== 'number' || Math.abs(p.skewMs) <= MAX_CLOCK_SKEW_MS) return;
    throw new ClockSkewError(`the clock of server ${p.owner ?? c.path}`, p.skewMs, 'every server');
  }

  /** Registrations of operations by servers of earlier versions, which register each one. */
  async #waitForInflight(): Promise<void> {
    const timeoutMs = this.#o.inflightTimeoutMs ?? DEFAULT_INFLIGHT_TIMEOUT_MS;
    const registrations = await listOrEmpty(this.#d, paths.gcInflightDir());
    let done = 0;
    this.#progress('waiting', 0, registrations.length);
    await Promise.all(registrations.map(async (path) => {
      const modTime = await this.#modTime(path);
      if (modTime !== undefined) {
        // Registered less than the timeout ago: wait for it to go (a PUT takes milliseconds).
        const deadline = modTime + timeoutMs;
        while (Date.now() < deadline && (await objectExists(this.#d, path))) {
          this.#o.signal?.throwIfAborted();
          await sleep(20);
        }
        // Older: left behind by a server that died mid-PUT, which will never write anything.
        if (Date.now() >= deadline) await ignoreNotFound(this.#d.delete(path));
      }
      this.#progress('waiting', ++done, registrations.length);
    }));
  }

  // --- F: expired tags ------------------------------------------------------------------

  async #sweepExpiredTags(expired: Array<[string, string, string]>): Promise<void> {
    if (expired.length === 0) return;
    await this.#checkLease();
    let done = 0;
    await Promise.all(expired.map(([repo, tag, raw]) => this.#limit(async () => {
      if (this.#dry) {
        this.#report.expiredTags++;
      } else {
        let deleted = false;
        await this.#underIntent(paths.gcTagIntent(repo, tag), async (inTime) => {
          const now = await readOrUndefined(this.#d, paths.tag(repo, tag));
          if (!deleted) {
            if (now?.toString('utf8') !== raw) return;
            if (!inTime()) return LATE;
            await ignoreNotFound(this.#d.delete(paths.tag(repo, tag)));
            deleted = true;
            this.#report.expiredTags++;
          } else if (now) {
            // Pushed again since our delete (late, we looked again): the index entry is its.
            return;
          }
          if (!this.#repos.get(repo)?.expiring.has(tag)) return;
          if (!inTime()) return LATE;
          await ignoreNotFound(this.#d.delete(paths.tagExpiring(repo, tag)));
        });
      }
      this.#progress('tags', ++done, expired.length);
    })));
  }

  /**
   * Entries of the expiring index (manifests.ts tags()) whose tag is gone or carries no
   * label expiry any more, removed as F removes expired tags: under an intent, after reading
   * the tag again, so that a push of the tag meanwhile gets its entry back (gc/guard.ts).
   * Those of the expired tags just deleted (`done`) went with them.
   */
  async #tidyExpiringIndex(done: Set<string>): Promise<void> {
    const stale: Array<[string, string]> = [];
    for (const [name, repo] of this.#repos) {
      for (const tag of repo.expiring) {
        if (done.has(`${name}\u0000${tag}`)) continue;
        if (repo.tags.get(tag)?.expiresAt === undefined) stale.push([name, tag]);
      }
    }
    if (stale.length === 0 || this.#dry) return;
    await this.#checkLease();
    await Promise.all(stale.map(([repo, tag]) => this.#limit(async () => {
      await this.#underIntent(paths.gcTagIntent(repo, tag), async (inTime) => {
        const raw = await readOrUndefined(this.#d, paths.tag(repo, tag));
        let expiresAt: unknown;
        try {
          expiresAt = raw ? (JSON.parse(raw.toString('utf8')) as { expiresAt?: unknown }).expiresAt : undefined;
        } catch {
          // Not a record: no expiry either.
        }
        if (expiresAt !== undefined) return;
        if (!inTime()) return LATE;
        await ignoreNotFound(this.#d.delete(paths.tagExpiring(repo, tag)));
      });
    })));
  }

  // --- manifests (A, D) -----------------------------------------------------------------

  async #sweepManifests(): Promise<void> {
    const unmarked = (): Array<[string, string]> => {
      const out: Array<[string, string]> = [];
      for (const [name, repo] of this.#repos) for (const d of repo.revisions) if (!this.#marker.isLive(name, d)) out.push([name, d]);
      return out;
    };
    // Fresh manifests (pushed or vouched for within the grace period, or during this
    // collection) are roots too; marking them can make other candidates live.
    const first = unmarked();
    const fresh: Array<[string, string]> = [];
    await Promise.all(first.map(([name, d]) => this.#limit(async () => {
      // A push writes no marker while no collection runs: the revision's own time counts too.
      const written = this.#repos.get(name)?.revisionTimes.get(d);
      if ((written !== undefined && written >= this.#cutoff) || (await this.#isFresh(d, () => this.#revisionTime(name, d)))) fresh.push([name, d]);
    })));
    if (fresh.length > 0) await this.#marker.mark(fresh);
    const levels = await this.#parentsFirst(unmarked());
    const total = levels.reduce((n, l) => n + l.length, 0);
    if (total === 0) return;
    await this.#checkLease();
    // Level by level: every parent is decided before its children (D). Within a level no
    // manifest can make another live, so they go together.
    let done = 0;
    for (const level of levels) {
      this.#o.signal?.throwIfAborted();
      const doomed: Array<{ repo: string; d: string; revisionPath: string; revision: Buffer; entryPath?: string; entry?: Buffer }> = [];
      await Promise.all(level.map(([repo, d]) => this.#limit(async () => {
        if (this.#marker.isLive(repo, d)) return;
        const digest = tryParseDigest(d)!;
        const revisionPath = paths.manifestRevision(repo, digest);
        const revision = await readOrUndefined(this.#d, revisionPath);
        if (!revision) return;
        const subject = subjectOf(revision);
        const entryPath = subject ? paths.referrer(repo, subject, digest) : undefined;
        const entry = entryPath ? await readOrUndefined(this.#d, entryPath) : undefined;
        doomed.push({ repo, d, revisionPath, revision, ...(entryPath && entry ? { entryPath, entry } : {}) });
      })));
      for (const batch of batches(doomed, (x) => x.revision.length)) {
        if (this.#dry) {
          this.#report.manifests += batch.length;
          this.#report.referrerEntries += batch.filter((x) => x.entry).length;
          continue;
        }
        const noted = batch.flatMap((x) => [
          { path: x.revisionPath, raw: x.revision, d: x.d },
          ...(x.entryPath && x.entry ? [{ path: x.entryPath, raw: x.entry, d: x.d }] : []),
        ]);
        await this.#sweepNoted(noted, async () => {
          // The referrer entries first, as ManifestStore.delete does: never an entry without its manifest.
          await this.#deleteMany(batch.flatMap((x) => (x.entryPath ? [x.entryPath] : [])));
          await this.#deleteMany(batch.map((x) => x.revisionPath));
          await Promise.all(batch.map((x) => this.#limit(async () => {
            // A: vouched for while we deleted it: put it back, and keep everything it reaches.
            if ((await this.#touchedSinceFirstRead(x.d)) && (await this.#putBackUnlessDeleted(x.revisionPath, [
              () => this.#d.putContent(x.revisionPath, x.revision, { ifNotExists: true }),
              ...(x.entryPath && x.entry ? [() => this.#d.putContent(x.entryPath!, x.entry!)] : []),
            ]))) {
              await this.#spare(x.repo, x.d);
            } else {
              this.#report.manifests++;
              if (x.entry) this.#report.referrerEntries++;
            }
          })));
        });
      }
      done += level.length;
      this.#progress('manifests', done, total);
    }
  }

  /** Keeps a manifest: it and everything it reaches become live (late mark). */
  async #spare(repo: string, d: string): Promise<void> {
    this.#report.spared++;
    await this.#marker.mark([[repo, d]]);
  }

  /**
   * Groups candidate manifests into levels so that anything that can make one live is in an
   * earlier level: an index before its children, a subject before its referrers (same
   * repository). Kahn's algorithm; content addressing makes cycles impossible, but whatever
   * is left over goes last, one per level.
   */
  async #parentsFirst(candidates: Array<[string, string]>): Promise<Array<Array<[string, string]>>> {
    const key = (repo: string, d: string): string => `${repo}\u0000${d}`;
    const set = new Set(candidates.map(([r, d]) => key(r, d)));
    const children = new Map<string, string[]>();
    const indegree = new Map<string, number>(candidates.map(([r, d]) => [key(r, d), 0]));
    const edge = (from: string, to: string): void => {
      if (!set.has(to) || from === to) return;
      let list = children.get(from);
      if (!list) children.set(from, (list = []));
      list.push(to);
      indegree.set(to, indegree.get(to)! + 1);
    };
    await Promise.all(candidates.map(async ([repo, d]) => {
      const refs = await this.#marker.refs(repo, d);
      for (const c of refs?.children ?? []) edge(key(repo, d), key(repo, c));
      for (const r of this.#repos.get(repo)?.referrers.get(d) ?? []) edge(key(repo, d), key(repo, r));
    }));
    const byKey = new Map(candidates.map((c) => [key(c[0], c[1]), c]));
    const levels: Array<Array<[string, string]>> = [];
    const placed = new Set<string>();
    let current = candidates.map(([r, d]) => key(r, d)).filter((k) => indegree.get(k) === 0);
    while (current.length > 0) {
      levels.push(current.map((k) => byKey.get(k)!));
      const next: string[] = [];
      for (const k of current) {
        placed.add(k);
        for (const c of children.get(k) ?? []) {
          indegree.set(c, indegree.get(c)! - 1);
          if (indegree.get(c) === 0) next.push(c);
        }
      }
      current = next;
    }
    for (const [k, c] of byKey) if (!placed.has(k)) levels.push([c]);
    return levels;
  }

  // --- links (A) ------------------------------------------------------------------------

  async #sweepLinks(): Promise<void> {
    const candidates: Array<[string, string]> = [];
    for (const [name, repo] of this.#repos) {
      const live = this.#marker.links.get(name);
      for (const d of repo.links) if (!live?.has(d) && !WELL_KNOWN_BLOBS.has(d)) candidates.push([name, d]);
    }
    if (candidates.length === 0) return;
    await this.#checkLease();
    const doomed: Array<{ d: string; link: string }> = [];
    await Promise.all(candidates.map(([repo, d]) => this.#limit(async () => {
      const link = paths.layerLink(repo, tryParseDigest(d)!);
      if (!(await this.#isFresh(d, () => this.#modTime(link)))) doomed.push({ d, link });
    })));
    let done = 0;
    for (const batch of batches(doomed, (x) => x.d.length)) {
      if (!this.#dry) {
        await this.#sweepNoted(batch.map((x) => ({ path: x.link, raw: Buffer.from(x.d), d: x.d })), async () => {
          await this.#deleteMany(batch.map((x) => x.link));
          await Promise.all(batch.map((x) => this.#limit(async () => {
            if ((await this.#touchedSinceFirstRead(x.d)) && (await this.#putBackUnlessDeleted(x.link, [() => this.#d.putContent(x.link, Buffer.from(x.d))]))) {
              this.#report.spared++;
              this.#report.links--;
            }
          })));
        });
      }
      this.#report.links += batch.length;
      done += batch.length;
      this.#progress('links', done, doomed.length);
    }
  }

  // --- blobs, last (A, D) ----------------------------------------------------------------

  /** Returns the digests whose records were deleted, and the data paths deleted with them. */
  async #sweepBlobs(records: Set<string>): Promise<{ swept: Set<string>; sweptData: Set<string> }> {
    const swept = new Set<string>();
    const sweptData = new Set<string>();
    const candidates = [...records].filter((d) => !this.#marker.blobs.has(d));
    if (candidates.length === 0) return { swept, sweptData };
    await this.#checkLease();
    const doomed: Array<{ d: string; recordPath: string; raw: Buffer; data?: string; size: number }> = [];
    await Promise.all(candidates.map((d) => this.#limit(async () => {
      const recordPath = paths.blobRecord(tryParseDigest(d)!);
      if (await this.#isFresh(d, () => this.#modTime(recordPath))) return;
      const raw = await readOrUndefined(this.#d, recordPath);
      if (!raw) return;
      const record = parseBlobRecord(raw);
      // I: a record without its data is not put back under A, it is removed the way a push
      // replacing it removes it.
      if (!(await this.#hasData(record))) {
        await this.#removeDangling(recordPath, raw);
        return;
      }
      doomed.push({ d, recordPath, raw, ...(record?.data ? { data: record.data } : {}), size: record?.size ?? 0 });
    })));
    let done = 0;
    for (const batch of batches(doomed, (x) => x.raw.length)) {
      let gone = batch;
      if (!this.#dry) {
        gone = [];
        await this.#sweepNoted(batch.map((x) => ({ path: x.recordPath, raw: x.raw, d: x.d, record: true })), async () => {
          await this.#deleteMany(batch.map((x) => x.recordPath));
          await Promise.all(batch.map((x) => this.#limit(async () => {
            if (await this.#touchedSinceFirstRead(x.d)) {
              // A: vouched for while we deleted it. Its data is untouched; put the record back
              // unless an upload of the same content recorded new data meanwhile (ours is
              // then unreferenced, and a later collection removes it as orphan data).
              await this.#d.putContent(x.recordPath, x.raw, { ifNotExists: true });
              this.#report.spared++;
            } else {
              gone.push(x);
            }
          })));
        });
        // Only now, after the re-reads, the bytes.
        await this.#deleteMany(gone.flatMap((x) => (x.data ? [x.data] : [])));
        await this.#deleteMany(gone.map((x) => paths.blobTouched(tryParseDigest(x.d)!)));
      }
      for (const x of gone) {
        swept.add(x.d);
        if (x.data) sweptData.add(x.data);
        this.#report.blobs.count++;
        this.#report.blobs.bytes += x.size;
      }
      done += batch.length;
      this.#progress('blobs', done, doomed.length);
    }
    return { swept, sweptData };
  }

  // --- E: uploads and orphan data ----------------------------------------------------------

  /** Removes stale uploads; returns the uploads that remain, by data path, with their lock's path. */
  async #sweepUploads(): Promise<Map<string, string>> {
    const remaining = new Map<string, string>();
    const all: Array<[string, string]> = [];
    for (const [name, repo] of this.#repos) for (const id of repo.uploads) all.push([name, id]);
    if (all.length === 0) return remaining;
    await this.#checkLease();
    const staleBefore = Date.now() - this.#o.staleUploadAfterMs;
    let done = 0;
    await Promise.all(all.map(([repo, id]) => this.#limit(async () => {
      const recordPath = paths.upload(repo, id);
      const dataPath = paths.blobData(id);
      const lockPath = paths.uploadLock(repo, id);
      remaining.set(dataPath, lockPath);
      const finishedPath = paths.uploadFinished(repo, id);
      const first = await this.#uploadActivity(recordPath, dataPath);
      if (first && first.lastActivity < staleBefore) {
        if (this.#dry) {
          this.#report.uploads.count++;
          if (!(await objectExists(this.#d, finishedPath))) this.#report.uploads.bytes += first.size;
        } else {
          const intent = paths.gcUploadIntent(repo, id);
          await this.#d.putContent(intent, json({ gen: this.#lease!.gen, at: new Date().toISOString() }));
          try {
            // A request that holds the upload's lock is using it, however long ago it touched
            // the record: a PUT committing a large blob, a slow body (found by probing with a
            // staleUploadAfter shorter than such a request: a commit answered 201 lost its data).
            // Looked at after the intent is stored and before the re-read: a request that takes
            // the lock later sees the intent (a commit) or finds the record gone; one that
            // released it since has deleted the record (a commit) or left it touched.
            const inUse = await lockInForce(this.#d, lockPath);
            // Re-read after the intent is stored: a commit that touched the record before
            // seeing no intent is seen here (E). The finished marker is looked for after the
            // lock too: a commit that held the lock before wrote it before letting go.
            const [again, finished] = inUse
              ? [undefined, false]
              : await Promise.all([this.#uploadActivity(recordPath, dataPath), objectExists(this.#d, finishedPath)]);
            if (again && again.lastActivity < staleBefore) {
              // A finished upload's record is one a late write brought back; its data is a blob's.
              if (!finished) await ignoreNotFound(this.#d.delete(again.data));
              await ignoreNotFound(this.#d.delete(recordPath));
              this.#report.uploads.count++;
              if (!finished) this.#report.uploads.bytes += again.size;
              remaining.delete(dataPath);
            }
          } finally {
            await ignoreNotFound(this.#d.delete(intent));
          }
        }
      }
      this.#progress('uploads', ++done, all.length);
    })));
    return remaining;
  }

  /**
   * Locks and takeover markers of uploads that have no record (any more), once their lease is
   * over as a taker judges it (engine/upload-lock.ts, lockLeftOver): a server died between
   * removing an upload record and deleting the lock, or while taking a lock over. Never by
   * staleUploadAfter, which may be shorter than a lease: at 0s a lock a live PUT held went
   * (found by probing). The lock of an upload that has a record is left to the next request
   * on it, which takes it over.
   */
  async #sweepUploadLocks(remainingData: ReadonlyMap<string, string>): Promise<void> {
    const candidates: string[] = [];
    for (const [name, repo] of this.#repos) {
      for (const [id, child] of repo.uploadLocks) if (!remainingData.has(paths.blobData(id))) candidates.push(paths.uploadsChild(name, child));
    }
    if (candidates.length === 0) return;
    await this.#checkLease();
    const stale: string[] = [];
    await Promise.all(candidates.map((p) => this.#limit(async () => {
      if (await lockLeftOver(this.#d, p)) stale.push(p);
    })));
    if (!this.#dry) await this.#deleteMany(stale);
    this.#report.uploadLocks += stale.length;
  }

  /**
   * Finished markers (E) whose upload has no record, once FINISHED_UPLOAD_KEEP_MS old: a write
   * of the record that a store applies late lands within its processing of the request, long
   * before. A marker whose record is there stays until the record goes (a sweep of the upload).
   */
  async #sweepFinishedMarkers(): Promise<void> {
    const before = Date.now() - FINISHED_UPLOAD_KEEP_MS;
    const old: string[] = [];
    for (const [name, repo] of this.#repos) {
      const records = new Set(repo.uploads);
      for (const [id, at] of repo.finishedUploads) if (at < before && !records.has(id)) old.push(paths.uploadFinished(name, id));
    }
    if (old.length === 0 || this.#dry) return;
    await this.#checkLease();
    await this.#deleteMany(old);
  }

  async #uploadActivity(recordPath: string, dataPath: string): Promise<{ lastActivity: number; size: number; data: string } | undefined> {
    const raw = await readOrUndefined(this.#d, recordPath);
    if (!raw) return undefined;
    let record: UploadRecordLike = {};
    try {
      record = JSON.parse(raw.toString('utf8')) as UploadRecordLike;
    } catch {
      // A record we cannot read: judge it by its data and its own age.
    }
    const data = typeof record.data === 'string' ? record.data : dataPath;
    const times = [Date.parse(record.startedAt ?? ''), Date.parse(record.touchedAt ?? '')];
    let size = 0;
    try {
      const info = await this.#d.stat(data);
      times.push(info.modTime.getTime());
      size = info.size;
    } catch (err) {
      if (!isPathNotFound(err)) throw err;
    }
    if (!times.some(Number.isFinite)) times.push((await this.#modTime(recordPath)) ?? 0);
    return { lastActivity: Math.max(...times.filter(Number.isFinite)), size, data };
  }

  /**
   * Data objects no blob record and no upload names: a monolithic upload in progress (no
   * record until it commits), or what a crash left. One goes when it has been idle (no
   * write) for staleUploadAfter and collections have seen it unnamed for as long, and never
   * in the collection that first saw it: that one notes when (/gc/orphans/<id>). The second
   * condition is for data on its way to becoming a blob, which is unnamed for the
   * milliseconds between its commit and its record, and may look idle then: S3 dates a
   * multipart object by when its upload began (radosgw by when it completed).
   *
   * Finding them means reading every blob record (which data it names), so it is done only
   * when there are more data objects than records and uploads, each of which names one.
   */
  async #sweepOrphanData(dataPaths: string[], records: Set<string>, swept: Set<string>, uploadData: Set<string>): Promise<void> {
    // A dry run deleted nothing: the data of what it would sweep is still referenced.
    const kept = [...records].filter((d) => this.#dry || !swept.has(d));
    const notes = (await listOrEmpty(this.#d, paths.gcOrphansDir())).map(basename);
    // Every kept record and every upload that has stored bytes names one data object of its
    // own: more data objects than that means orphans, fewer means records without data (I).
    const listed = new Set(dataPaths);
    let uploadsWithData = 0;
    for (const p of uploadData) if (listed.has(p)) uploadsWithData++;
    if (dataPaths.length === kept.length + uploadsWithData && notes.length === 0) return;
    const referenced = new Set(uploadData);
    const total = kept.length + dataPaths.length;
    let done = 0;
    await this.#checkLease();
    await Promise.all(kept.map((d) => this.#limit(async () => {
      const recordPath = paths.blobRecord(tryParseDigest(d)!);
      const raw = await readOrUndefined(this.#d, recordPath);
      const record = raw ? parseBlobRecord(raw) : undefined;
      if (record?.data) referenced.add(record.data);
      // Data that was not listed may be new (the record was replaced since we listed): ask.
      if (raw && !(record?.data && listed.has(record.data)) && !(await this.#hasData(record))) await this.#removeDangling(recordPath, raw);
      this.#progress('data', ++done, total);
    })));
    const orphans = dataPaths.filter((p) => !referenced.has(p));
    await this.#checkLease();
    const now = Date.now();
    const staleBefore = now - this.#o.staleUploadAfterMs;
    const noted = new Set<string>();
    await Promise.all(orphans.map((p) => this.#limit(async () => {
      let info;
      try {
        info = await this.#d.stat(p);
      } catch (err) {
        if (isPathNotFound(err)) return;
        throw err;
      }
      if (info.isDir || info.modTime.getTime() >= staleBefore) return;
      const id = basename(p);
      const note = paths.gcOrphan(id);
      let firstSeen = now;
      const raw = await readOrUndefined(this.#d, note);
      if (raw) firstSeen = Date.parse((JSON.parse(raw.toString('utf8')) as { firstSeen?: string }).firstSeen ?? '') || now;
      else if (!this.#dry) await this.#d.putContent(note, json({ firstSeen: new Date(now).toISOString() }));
      // Never on the first sighting, whatever staleUploadAfter says: at 0 the data a commit
      // is about to name (its record follows its last write by milliseconds) would go in the
      // same collection that first saw it unnamed, and the blob's 201 would name deleted bytes.
      if (!raw || firstSeen > staleBefore) {
        noted.add(id);
        return;
      }
      if (!this.#dry) {
        await ignoreNotFound(this.#d.delete(p));
        await ignoreNotFound(this.#d.delete(note));
      }
      this.#report.orphanData.count++;
      this.#report.orphanData.bytes += info.size;
    })));
    // Notes of data that is named again, or gone.
    if (!this.#dry) await this.#deleteMany(notes.filter((id) => !noted.has(id) && !orphans.includes(paths.blobData(id))).map((id) => paths.gcOrphan(id)));
    this.#progress('data', total, total);
  }

  /** Whether a blob record names data that is there, with the record's size (I). */
  async #hasData(record: { data?: string; size?: number } | undefined): Promise<boolean> {
    if (!record?.data) return false;
    try {
      const info = await this.#d.stat(record.data);
      return !info.isDir && (record.size === undefined || info.size === record.size);
    } catch (err) {
      if (isPathNotFound(err) || err instanceof InvalidPathError) return false;
      throw err;
    }
  }

  /** Removes a record without data, unless it changed or a push is replacing it right now (I). */
  async #removeDangling(recordPath: string, raw: Buffer): Promise<void> {
    if (this.#dangling.has(recordPath)) return;
    this.#dangling.add(recordPath);
    if (this.#dry) {
      this.#report.danglingRecords++;
      return;
    }
    if ((await removeStale(this.#d, recordPath, raw)) === 'removed') this.#report.danglingRecords++;
  }

  /**
   * Touched markers of digests that have no blob record (a blob deleted by hand, a PUT that
   * named a missing blob), unless fresh. Those of swept blobs went with them.
   */
  async #sweepMarkers(markers: Set<string>, records: Set<string>, swept: Set<string>): Promise<void> {
    const candidates = [...markers].filter((d) => !records.has(d) && !swept.has(d));
    if (candidates.length === 0) return;
    const stale: string[] = [];
    await Promise.all(candidates.map((d) => this.#limit(async () => {
      if (!(await this.#isFresh(d, async () => undefined))) stale.push(paths.blobTouched(tryParseDigest(d)!));
    })));
    if (!this.#dry) await this.#deleteMany(stale);
    this.#report.markers += stale.length;
    this.#progress('markers', candidates.length, candidates.length);
  }

  /** Intents a collector that died left behind (servers wait for an intent to go). */
  async #sweepStaleIntents(): Promise<void> {
    const ttl = this.#o.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS;
    const walk = async (dir: string): Promise<void> => {
      for (const p of await listOrEmpty(this.#d, dir)) {
        const info = await this.#d.stat(p).catch(() => undefined);
        if (!info) continue;
        if (info.isDir) await walk(p);
        else if (Date.now() - info.modTime.getTime() > ttl) await ignoreNotFound(this.#d.delete(p));
      }
    };
    await walk(paths.gcIntentsDir());
  }

  // --- touched markers (A, B) ----------------------------------------------------------------

  /**
   * Fresh: touched by an operation of this collection's generation, or at/after the cutoff.
   * Without a marker (data from before markers existed), `fallback` gives the object's own
   * time. Remembers what it read, for #touchedSinceFirstRead.
   */
  async #isFresh(d: string, fallback: () => Promise<number | undefined>): Promise<boolean> {
    // The first read is enough here: a touch since then is caught by the re-read that
    // follows every delete (#touchedSinceFirstRead), which is what the argument rests on.
    // Read, even for a digest that had no marker when the blobs were listed: a marker written
    // since (a HEAD that answered 200) must spare it now, not only bring it back after a
    // delete, which a manifest PUT checking it meanwhile would see (B).
    let raw = this.#firstTouch.get(d);
    if (raw === undefined) {
      raw = (await readOrUndefined(this.#d, paths.blobTouched(tryParseDigest(d)!)))?.toString('utf8') ?? '';
      this.#firstTouch.set(d, raw);
    }
    if (raw) return this.#freshTouch(raw);
    const t = await fallback();
    return t !== undefined && t >= this.#cutoff;
  }

  #freshTouch(raw: string): boolean {
    let t: Partial<TouchRecord>;
    try {
      t = JSON.parse(raw) as Partial<TouchRecord>;
    } catch {
      return true;
    }
    if (this.#lease && t.gen === this.#lease.gen) return true;
    const at = Date.parse(t.at ?? '');
    return !Number.isFinite(at) || at >= this.#cutoff;
  }

  /** The re-read after a delete (A): fresh now, or different from what we first read. */
  async #touchedSinceFirstRead(d: string): Promise<boolean> {
    const raw = await this.#touchOf(tryParseDigest(d)!);
    if (raw !== (this.#firstTouch.get(d) ?? '')) return true;
    return raw !== '' && this.#freshTouch(raw);
  }

  /** A digest's touched marker as stored ('' for none). */
  async #touchOf(d: Digest): Promise<string> {
    return (await readOrUndefined(this.#d, paths.blobTouched(d)))?.toString('utf8') ?? '';
  }

  /**
   * Puts `path` back by `writes` unless a client deleted it while a note existed (J). The look
   * for the client's tombstone and the writes are two steps, and a client's delete between
   * them was undone: the manifest answered 200 after the client's 202 (found by probing). So
   * an intent for the path is held from before the look until the writes are done, and a
   * client that wrote a tombstone waits for it to go before it deletes (gc/guard.ts
   * deleting()): either the client sees the intent and deletes after the put-back, or its
   * tombstone came before the look, which then sees it. The client waits only for the
   * intent's window (gc/intent.ts): a put-back that would write later looks again. Two
   * requests more per put-back. Returns whether it wrote.
   */
  async #putBackUnlessDeleted(path: string, writes: Array<() => Promise<unknown>>): Promise<boolean> {
    return (await this.#underIntent(paths.gcPutBackIntent(path), async (inTime) => {
      if (await this.#clientDeleted(path)) return false;
      // All of them again after a late one: each writes the same bytes.
      for (const write of writes) {
        if (!inTime()) return LATE;
        await write();
      }
      return true;
    })) ?? false;
  }

  /**
   * Runs `body` under an intent at `intent` (F, J), and deletes the intent after. Servers wait
   * for an intent only for its window (gc/intent.ts), so `body` sends a write the intent covers
   * only while `inTime()`; else it returns LATE, and runs again under the intent written anew:
   * what it read before it wrote (a tombstone, a tag) is read again, since a server that gave
   * up waiting wrote its own before it looked. INTENT_ATTEMPTS at most: a store that slow
   * fails the collection (a batch's note stays, and its replay puts back what it must).
   */
  async #underIntent<T>(intent: string, body: (inTime: () => boolean) => Promise<T | typeof LATE>): Promise<T> {
    const windowMs = Math.min(this.#o.intentWindowMs ?? INTENT_WAIT_MS, INTENT_WAIT_MS);
    try {
      for (let attempt = 1; ; attempt++) {
        // Taken before the intent is sent: it is stored after this, and the window runs from there.
        const startedAt = performance.now();
        const record: IntentRecord = { gen: this.#lease?.gen, at: new Date().toISOString(), windowMs, ...processIdentity() };
        await this.#d.putContent(intent, json(record));
        const result = await body(() => performance.now() - startedAt < windowMs * INTENT_SEND_SHARE);
        if (result !== LATE) return result;
        if (attempt >= INTENT_ATTEMPTS) {
          throw new Error(`storage too slow for garbage collection: ${INTENT_ATTEMPTS} times it took longer than ${Math.round(windowMs * INTENT_SEND_SHARE)} ms to write an intent (${intent}) and read what it decides on`);
        }
      }
    } finally {
      await ignoreNotFound(this.#d.delete(intent));
    }
  }

  /** Whether a client deleted `path` while a sweep note existed (gc/guard.ts duty 4). */
  #clientDeleted(path: string): Promise<boolean> {
    return objectExists(this.#d, paths.gcDeleted(path));
  }

  /** When the manifest was first pushed, from its record (a revision the listing had no time for). */
  async #revisionTime(repo: string, d: string): Promise<number | undefined> {
    const raw = await readOrUndefined(this.#d, paths.manifestRevision(repo, tryParseDigest(d)!));
    if (!raw) return undefined;
    try {
      const createdAt = Date.parse(decodeRevision(raw).record.createdAt ?? '');
      if (Number.isFinite(createdAt)) return createdAt;
    } catch {
      // Fall back to the object's time.
    }
    return this.#modTime(paths.manifestRevision(repo, tryParseDigest(d)!));
  }

  async #modTime(path: string): Promise<number | undefined> {
    try {
      return (await this.#d.stat(path)).modTime.getTime();
    } catch (err) {
      if (isPathNotFound(err)) return undefined;
      throw err;
    }
  }

  /** What a manifest of `repo` refers to: from its revision, or for a revision of the old layout its bytes' blob. */
  async #loadRefs(repo: string, d: string) {
    const digest: Digest | undefined = tryParseDigest(d);
    if (!digest || WELL_KNOWN_BLOBS.has(d)) return { blobs: [], children: [] };
    const raw = await readOrUndefined(this.#d, paths.manifestRevision(repo, digest));
    let bytes: Buffer | undefined;
    try {
      bytes = raw ? decodeRevision(raw).bytes : undefined;
    } catch {
      // Unreadable record: try the blob.
    }
    bytes ??= await this.#blobs.getSmall(digest);
    return bytes ? manifestRefs(bytes) : undefined;
  }

  /**
   * Runs one batch's deletes and put-backs (`sweep`) between writing down what it deletes, as
   * read, and removing that note (J). A sweep that fails leaves the note for the next collection.
   */
  async #sweepNoted(entries: SweepEntry[], sweep: () => Promise<void>): Promise<void> {
    const note = entries.map((e) => ({
      path: e.path, raw: e.raw.toString('base64'), d: e.d, touch: this.#firstTouch.get(e.d) ?? '', ...(e.record ? { record: true } : {}),
    }));
    await this.#d.putContent(paths.gcSweeping(), Buffer.from(JSON.stringify({ gen: this.#lease?.gen, entries: note })));
    await sweep();
    await this.#sweepDone();
  }

  /** The batch's put-backs are done (J). */
  async #sweepDone(): Promise<void> {
    await ignoreNotFound(this.#d.delete(paths.gcSweeping()));
  }

  /**
   * Puts back what a collector that died mid-batch deleted and someone vouched for meanwhile,
   * as its own re-read would have (A), unless a client deleted it since (J). Then forgets the
   * clients' deletes: from here on no note is left that they could be replayed against.
   */
  async #replaySweep(): Promise<void> {
    // Put-back intents are a collector's for milliseconds; any there now is of one that died
    // (we hold the lease), and a client's delete of its path would wait for it in vain.
    await this.#deleteMany(await listOrEmpty(this.#d, paths.gcPutBackIntentsDir()));
    const raw = await readOrUndefined(this.#d, paths.gcSweeping());
    if (raw) await this.#replayNote(raw);
    await this.#deleteMany(await listOrEmpty(this.#d, paths.gcDeletedDir()));
  }

  async #replayNote(raw: Buffer): Promise<void> {
    let entries: unknown[] = [];
    try {
      const parsed = JSON.parse(raw.toString('utf8')) as { entries?: unknown };
      if (Array.isArray(parsed.entries)) entries = parsed.entries;
    } catch {
      // A note cut short (fs after a machine crash): nothing to go by.
    }
    await Promise.all(entries.map((item) => this.#limit(async () => {
      // An entry not of our making (a hand edit) is skipped: it must not stop every collection.
      const e = (typeof item === 'object' && item !== null ? item : {}) as { path?: unknown; raw?: unknown; record?: unknown; d?: unknown; touch?: unknown };
      if (typeof e.path !== 'string' || typeof e.raw !== 'string') return;
      const path = e.path;
      // Untouched since the dead collector first read it: its delete stands. (A note written
      // before notes named the marker puts back all it names, as it did then.)
      const digest = typeof e.d === 'string' ? tryParseDigest(e.d) : undefined;
      if (digest && typeof e.touch === 'string' && (await this.#touchOf(digest)) === e.touch) return;
      const bytes = Buffer.from(e.raw, 'base64');
      if (e.record === true && !(await this.#hasData(parseBlobRecord(bytes)))) return;
      try {
        await this.#putBackUnlessDeleted(path, [async () => {
          if (await this.#d.putContent(path, bytes, { ifNotExists: true })) this.#report.spared++;
        }]);
      } catch (err) {
        // A path this version cannot write is no path it noted.
        if (!(err instanceof InvalidPathError)) throw err;
      }
    })));
    await this.#sweepDone();
  }

  /** Deletes objects (missing ones are fine): in batches where the driver can, else one by one. */
  async #deleteMany(list: string[]): Promise<void> {
    if (list.length === 0) return;
    if (this.#d.deleteObjects) {
      for (let i = 0; i < list.length; i += DELETE_BATCH) await this.#d.deleteObjects(list.slice(i, i + DELETE_BATCH));
      return;
    }
    await Promise.all(list.map((p) => this.#limit(() => ignoreNotFound(this.#d.delete(p)))));
  }

  async #checkLease(): Promise<void> {
    this.#o.signal?.throwIfAborted();
    await this.#lease?.assertHeld();
  }

  #progress(phase: GcPhase, done: number, total: number): void {
    const cb = this.#o.onProgress;
    if (!cb) return;
    const step = Math.max(1, Math.floor(total / PROGRESS_STEPS));
    if (done === 0 || done === total || done % step === 0) cb({ phase, done, total });
  }
}

function subjectOf(revision: Buffer): Digest | undefined {
  try {
    const s = (decodeRevision(revision).record as { subject?: unknown }).subject;
    return typeof s === 'string' ? tryParseDigest(s) : undefined;
  } catch {
    return undefined;
  }
}

function parseBlobRecord(raw: Buffer): { data?: string; size?: number } | undefined {
  try {
    const r = JSON.parse(raw.toString('utf8')) as { data?: unknown; size?: unknown };
    return {
      ...(typeof r.data === 'string' ? { data: r.data } : {}),
      ...(typeof r.size === 'number' ? { size: r.size } : {}),
    };
  } catch {
    return undefined;
  }
}

async function ignoreNotFound(p: Promise<void>): Promise<void> {
  try {
    await p;
  } catch (err) {
    if (!isPathNotFound(err)) throw err;
  }
}

function json(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value));
}
