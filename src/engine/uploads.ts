import { createHash, randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { BlobTooLargeError, RegistryError, UploadRangeError } from '../errors.js';
import { deleteObject, isPathNotFound, objectExists, type FileWriter, type StorageDriver } from '../storage/driver.js';
import { channels, type UploadBodyMessage } from '../diagnostics.js';
import type { HashPool } from './hash-pool.js';
import { paths } from '../registry/paths.js';
import type { Digest } from '../registry/reference.js';
import type { SlabPool } from './slab-pool.js';
import { Admission, type AdmissionOptions, type Ticket } from './admission.js';
import { UploadLocks, type UploadLock, type UploadLockOptions } from './upload-lock.js';
import { UploadWrite, type BodySource } from './upload-write.js';
import { Slots } from './slots.js';

/** What is stored at paths.upload(): the upload's identity. Its offset is the data's size. */
interface UploadRecord {
  startedAt: string;
  data: string;
  /**
   * Last sign of life the collector can see on any store (gc/collector.ts removes uploads idle for
   * gc.staleUploadAfter): refreshed when a request starts on an upload idle for a while, on every
   * beat of the upload lock (10 s) while a long body streams, and when the upload is being finished.
   */
  touchedAt?: string;
}

/** How stale an upload's record may get between requests before one refreshes it (the collector's default is an hour). */
const ACTIVITY_REFRESH_MS = 60_000;

export interface UploadState {
  readonly id: string;
  /** Bytes stored so far. */
  readonly offset: number;
}

export interface ChunkRange {
  /** The chunk must start here (Content-Range); undefined for a streamed PATCH. */
  start?: number;
  /** The chunk's declared length (Content-Length / Content-Range), when known. */
  length?: number;
}

/** The finished content of an upload, ready to become a blob. */
export interface CommittedData {
  readonly dataPath: string;
  readonly size: number;
}

/**
 * What an adopt callback (UploadEngine.complete) throws when it failed but left the data
 * named by no blob record: the upload may keep its data for the client's retry of the PUT.
 * Any other failure may have left a record naming the data, which is then the blob's and no
 * longer the upload's to append to, cancel or sweep: that upload goes. `cause` is what failed.
 */
export class UnclaimedDataError extends Error {
  override readonly name = 'UnclaimedDataError';
  constructor(cause: unknown) {
    super('the blob could not be recorded; its data is the upload\'s still', { cause });
  }
}

export interface UploadEngineOptions {
  driver: StorageDriver;
  hashPool: HashPool;
  slabs: SlabPool;
  maxSessionBufferedBytes: number;
  maxBlobBytes: number;
  /** The per-upload storage lock's timing (tests shorten it). */
  lock?: UploadLockOptions;
  /** When an admitted body counts as too slow (admission.ts; tests shorten it). */
  admission?: AdmissionOptions;
}

const UPLOAD_ID_RE = /^[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}$/;

/** How many uploads' worker pins to remember; an evicted pin only costs a rebuild. */
const MAX_PINS = 50_000;

/**
 * Hash states rebuilt from storage at once; each holds a buffer of `uploads.chunkBytes`
 * outside the slab pool (it cannot wait for a slab: the upload asking may hold one). Found
 * by probing: 200 uploads of 8 MiB finished at once after a restart took the process to
 * 987 MB, a fresh 4 MiB buffer per rebuild and per batch.
 */
const MAX_REBUILDS = 4;

/**
 * One request's hold on an upload: the upload's storage lock (engine/upload-lock.ts), and
 * the bookkeeping of the record's touchedAt while the request runs.
 */
interface Session {
  readonly repo: string;
  readonly id: string;
  readonly dataPath: string;
  /** Undefined for a monolithic upload, which nobody else can name. */
  readonly lock: UploadLock | undefined;
  /** When the record was last written (by anyone, as far as we know). */
  touchedMs: number;
  touching: Promise<void> | undefined;
  /** The record may be rewritten; false once the request is about to remove it. */
  live: boolean;
  /** The record as this request last wrote it (#touch). */
  record?: UploadRecord;
  /**
   * This request looked for the collector's intent and the upload's finished marker and found
   * neither (#touch): it need not look again.
   */
  sawNoIntent?: boolean;
}

/**
 * Upload sessions: start, append, status, commit, cancel. All state that matters lives in
 * storage (the record and the data), so an upload survives a restart and any instance can
 * continue it. Requests that write to or end an upload hold its storage lock, so that one
 * runs at a time across instances (engine/upload-lock.ts argues why that is enough). In memory
 * there are only hints: which worker holds an upload's running hash, and which uploads a
 * request of this process holds.
 */
export class UploadEngine {
  readonly #o: UploadEngineOptions;
  readonly #locks: UploadLocks;
  /** Uploads (`<repo>@<id>`) a request of this process holds: others are refused without asking storage. */
  readonly #busy = new Set<string>();
  /** Requests in their write section (#exclusive), monolithic uploads included. */
  #writing = 0;
  readonly #pins = new Map<string, number>();
  readonly #rebuilds = new Slots(MAX_REBUILDS);
  /** Admission of writing requests, for drivers that buffer whole parts (see maxConcurrentWriters). */
  readonly #admission: Admission | undefined;

  constructor(opts: UploadEngineOptions) {
    this.#o = opts;
    this.#locks = new UploadLocks(opts.driver, opts.lock);
    const driverCap = opts.driver.maxConcurrentWriters;
    // Not also bounded by the slabs: an admitted request waiting for a slab waits for batches
    // being written or hashed, and a batch being written waits at most for a part buffer,
    // which the driver's cap guarantees (half its buffers are parts in flight, which finish
    // on the network alone). So fewer slabs than admitted writers is slower, never stuck.
    if (driverCap !== undefined) this.#admission = new Admission(driverCap, opts.admission);
  }

  #maxInflightSlabs(): number {
    return Math.max(1, Math.floor(this.#o.maxSessionBufferedBytes / this.#o.slabs.slabBytes) - 1);
  }

  /** The size limit of a blob (uploads.maxBlobBytes; 0: none), which a pull-through cache's fetches keep too. */
  get maxBlobBytes(): number {
    return this.#o.maxBlobBytes;
  }

  /** Uploads with a request writing to them now, on this instance (metrics read it at scrape time). */
  get writing(): number {
    return this.#writing;
  }

  async start(repo: string): Promise<UploadState> {
    const id = randomUUID();
    const record: UploadRecord = { startedAt: new Date().toISOString(), data: paths.blobData(id) };
    await this.#o.driver.putContent(paths.upload(repo, id), Buffer.from(JSON.stringify(record)));
    return { id, offset: 0 };
  }

  /** Reads only, so it takes no lock: the offset is what storage holds at that moment. */
  async status(repo: string, id: string): Promise<UploadState> {
    await this.#recordTime(repo, id);
    return { id, offset: await this.#storedSize(paths.blobData(id)) };
  }

  /**
   * Appends one request body. `range.start`, when given, must equal the stored offset
   * (distribution-spec: chunks in order, else 416). If the client goes away, what arrived is
   * kept and the upload stays resumable; the ClientAbortError is rethrown.
   */
  async append(repo: string, id: string, range: ChunkRange, body: BodySource): Promise<UploadState> {
    return this.#locked(repo, id, 'stat', busyRange, async (s) => {
      if (!(Date.now() - s.touchedMs < ACTIVITY_REFRESH_MS)) await this.#touch(s);
      if (!s.live) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { detail: { id } });
      return this.#exclusive(s, async (writer, ticket) => {
        this.#checkRange(repo, id, writer.size, range);
        const start = writer.size;
        const t0 = performance.now();
        const offset = await this.#pumpBody(id, writer, body, ticket);
        await this.#stored(id, () => writer.close());
        if (channels.uploadAppend.hasSubscribers) {
          channels.uploadAppend.publish({ repository: repo, uploadId: id, bytes: offset - start, offset, ms: performance.now() - t0 });
        }
        this.#checkLength(repo, id, range, offset - start, offset);
        return { id, offset };
      }, range.length, body);
    });
  }

  /**
   * Finishes an upload: appends an optional last body, verifies the digest of everything
   * stored, and commits the data. A mismatch cancels the upload (those bytes never become a
   * blob) and throws DIGEST_INVALID. On success `adopt` has linked the data under its digest
   * and the upload record is gone, all before the upload's lock is released: a DELETE or
   * another PUT that comes after finds no upload (BLOB_UPLOAD_UNKNOWN).
   */
  async complete(
    repo: string, id: string, digest: Digest, range: ChunkRange, body: BodySource | undefined,
    adopt?: (data: CommittedData) => Promise<void>,
  ): Promise<CommittedData> {
    // The record is rewritten (#locked, 'touch') only after a look for the collector's intent
    // (#touch), so an upload is never finished and removed at once (gc/collector.ts, E).
    return this.#locked(repo, id, 'touch', busyRange, (s) => this.#complete(s, digest, range, body, adopt));
  }

  /**
   * A monolithic upload (POST with `?digest=` and the whole blob): one request, so there is
   * nothing to resume, no upload record to write and delete, and no lock (nobody else can
   * name it). If it fails, its data is deleted here; if the process dies, what it wrote is an
   * orphan that garbage collection finds (no record points at it).
   */
  async oneShot(repo: string, digest: Digest, length: number | undefined, body: BodySource): Promise<CommittedData> {
    const id = randomUUID();
    const s: Session = { repo, id, dataPath: paths.blobData(id), lock: undefined, touchedMs: Date.now(), touching: undefined, live: false };
    try {
      return await this.#complete(s, digest, { start: 0, length }, body, undefined);
    } catch (err) {
      await this.#o.driver.delete(s.dataPath).catch(() => undefined);
      await this.#dropHash(id);
      throw err;
    }
  }

  async #complete(
    s: Session, digest: Digest, range: ChunkRange, body: BodySource | undefined,
    adopt: ((data: CommittedData) => Promise<void>) | undefined,
  ): Promise<CommittedData> {
    const { repo, id } = s;
    const t0 = performance.now();
    let appended = 0;
    const committed = await this.#exclusive(s, async (writer, ticket) => {
      if (body) {
        this.#checkRange(repo, id, writer.size, range);
        const start = writer.size;
        const offset = await this.#pumpBody(id, writer, body, ticket);
        appended = offset - start;
        this.#checkLength(repo, id, range, appended, offset);
      }
      const size = writer.size;
      // Commit first: the data is then complete and readable (S3: the multipart upload is
      // completed), yet no digest points at it until the caller links it.
      await this.#stored(id, () => writer.commit());
      const actual = await this.#digestOf(id, s.dataPath, size, digest.algorithm);
      if (actual !== digest.hex) {
        s.lock?.assertHeld();
        await this.#o.driver.delete(s.dataPath).catch(() => undefined);
        if (s.lock) await this.#forget(s);
        throw new RegistryError('DIGEST_INVALID', { detail: { expected: digest.value, actual: `${digest.algorithm}:${actual}` } });
      }
      return { dataPath: s.dataPath, size };
    }, body ? range.length : undefined, body);
    if (adopt) {
      // The upload record goes out before the blob record comes in. The other way round, a
      // crash between the two (kill -9, found by probing) left an upload whose data a blob
      // record named, and a cancel, a PATCH, a retried PUT with its body or a sweep of that
      // upload then destroyed the blob under every repository linked to it. This way the data
      // is named by neither for the milliseconds between, which the collector's rule for
      // unnamed data allows for (gc/collector.ts, E); a crash there leaves data nobody was
      // told about, which a later collection removes.
      const record = s.lock ? s.record : undefined;
      if (s.lock) await this.#unrecord(s, true);
      try {
        await adopt(committed);
      } catch (err) {
        // The data is stored whole and matched its digest; only its record or link is missing
        // (the store failed). While no record names the data (UnclaimedDataError), an upload
        // whose last PUT brought no bytes is put back, so that the client's retry of that same
        // PUT finds it and links the blob, rather than BLOB_UPLOAD_UNKNOWN and a push started
        // over (if the store refuses that too, the push starts over). A PUT that brought bytes
        // would bring them again, after those already stored; and data a record may name is a
        // blob's, which a cancel, a PATCH or a sweep of the upload would destroy: those go.
        const unclaimed = err instanceof UnclaimedDataError;
        const putBack = unclaimed && record !== undefined && appended === 0
          && (await this.#putBack(s, record).then(() => true, () => false));
        if (!putBack) await this.#dropHash(id);
        throw unclaimed ? err.cause : err;
      }
      await this.#dropHash(id);
    } else if (s.lock) {
      await this.#forget(s);
    }
    if (channels.uploadCommit.hasSubscribers) {
      channels.uploadCommit.publish({ repository: repo, uploadId: id, digest: digest.value, size: committed.size, ms: performance.now() - t0 });
    }
    return committed;
  }

  async cancel(repo: string, id: string): Promise<void> {
    const busy = async (): Promise<Error> => new RegistryError('BLOB_UPLOAD_INVALID', { message: 'upload is busy', detail: { id } });
    await this.#locked(repo, id, 'stat', busy, async (s) => {
      s.live = false;
      await s.touching;
      s.lock!.assertHeld();
      await this.#o.driver.delete(s.dataPath).catch((err) => {
        if (!isPathNotFound(err)) throw err;
      });
      await this.#forget(s);
    });
  }

  /**
   * Runs `fn` holding the upload's lock, from before the record is read until after the
   * request's last storage effect (engine/upload-lock.ts). The record is looked for with a
   * stat, or read and rewritten with a fresh touchedAt ('touch'); BLOB_UPLOAD_UNKNOWN when it
   * is not there. `busy` makes the error for an upload another request holds.
   */
  async #locked<T>(
    repo: string, id: string, record: 'stat' | 'touch',
    busy: (repo: string, id: string, storedSize: () => Promise<number>) => Promise<Error>, fn: (s: Session) => Promise<T>,
  ): Promise<T> {
    if (!UPLOAD_ID_RE.test(id)) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { detail: { id: id.slice(0, 100) } });
    const refuse = async (): Promise<never> => {
      throw await busy(repo, id, () => this.#storedSize(paths.blobData(id)));
    };
    // By repository and id: a request naming another repository's upload finds no record
    // there (BLOB_UPLOAD_UNKNOWN below) and must not learn, or hold up, that one's state.
    const busyKey = `${repo}@${id}`;
    if (this.#busy.has(busyKey)) return refuse();
    this.#busy.add(busyKey);
    try {
      const lock = await this.#locks.acquire(paths.uploadLock(repo, id));
      if (!lock) return await refuse();
      const s: Session = { repo, id, dataPath: paths.blobData(id), lock, touchedMs: 0, touching: undefined, live: true };
      try {
        if (record === 'stat') {
          s.touchedMs = await this.#recordTime(repo, id);
        } else {
          await this.#touch(s);
          if (!s.live) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { detail: { id } });
        }
        // A long body: the lock renews itself, and on the same beat (ttl/3, 10 s) the record's
        // touchedAt, so that no collection finds an upload stale while a request writes to it,
        // whatever gc.staleUploadAfter says (down to a beat or two).
        lock.onBeat = () => {
          if (s.live && !s.touching) {
            s.touching = this.#touch(s).catch(() => undefined).finally(() => (s.touching = undefined));
          }
        };
        return await fn(s);
      } finally {
        lock.onBeat = undefined;
        await s.touching;
        await lock.release();
      }
    } finally {
      this.#busy.delete(busyKey);
    }
  }

  /** Deletes the record and the worker's state; the data (now a blob's, or deleted) stays. */
  async #forget(s: Session): Promise<void> {
    await this.#unrecord(s);
    await this.#dropHash(s.id);
  }

  /**
   * Deletes the record: no request finds the upload any more. `finished`: its data is about to
   * become a blob's, so the upload's finished marker is written too, and both are done before
   * the caller goes on. A store may apply a write of the record after it answered it (found by
   * probing: a touch held 8 s by a proxy while its retry succeeded landed after the commit's
   * 201), and nothing we write can be sure to land after such a write: the record came back,
   * and a DELETE, a PATCH or a sweep of that upload destroyed the blob. A record and a marker
   * together are no upload (#recordTime, #touch; gc/collector.ts, E), and no request writes
   * the marker but this one, so no late write undoes it.
   */
  async #unrecord(s: Session, finished = false): Promise<void> {
    s.live = false;
    await s.touching;
    s.lock?.assertHeld();
    const deleted = deleteObject(this.#o.driver, paths.upload(s.repo, s.id));
    if (!finished) return deleted;
    // Both settle before either failure is thrown: nothing of ours is in flight once the lock goes.
    const marker = Buffer.from(JSON.stringify({ finishedAt: new Date().toISOString() }));
    const marked = this.#o.driver.putContent(paths.uploadFinished(s.repo, s.id), marker);
    for (const r of await Promise.allSettled([marked, deleted])) if (r.status === 'rejected') throw r.reason;
  }

  /** Writes back the record #unrecord() deleted (the lock still held), its finished marker gone first. */
  async #putBack(s: Session, record: UploadRecord): Promise<void> {
    s.lock?.assertHeld();
    await deleteObject(this.#o.driver, paths.uploadFinished(s.repo, s.id));
    await this.#o.driver.putContent(paths.upload(s.repo, s.id), Buffer.from(JSON.stringify(record)));
  }

  /**
   * Forgets the upload's running hash, here and at its worker. A state that may have seen
   * bytes storage does not hold must go at once, not just lose its pin: an unpinned task can
   * land on the worker that keeps it, and another instance can bring storage to the same
   * offset with other bytes, which the stale state would then vouch for at commit.
   */
  async #dropHash(id: string): Promise<void> {
    const pin = this.#pins.get(id);
    this.#pins.delete(id);
    await this.#o.hashPool.drop(id, pin).catch(() => undefined);
  }

  /**
   * Runs the step that makes a body's bytes durable (a writer's close() or commit(): on S3 the
   * parts and the writer's state go to the store only then). The running hash already covers
   * those bytes; if the step fails, storage may hold fewer, or (once another instance resumes
   * the upload) others, so the state is dropped and the next request rebuilds it from storage
   * (found by probing: a PUT on an instance whose close had failed got 201 for the digest of
   * bytes another instance had since replaced).
   */
  async #stored(id: string, step: () => Promise<void>): Promise<void> {
    try {
      await step();
    } catch (err) {
      await this.#dropHash(id);
      throw err;
    }
  }

  /**
   * When the upload record was last written; BLOB_UPLOAD_UNKNOWN when there is none, or when the
   * upload is finished (a record a late write brought back: #unrecord).
   */
  async #recordTime(repo: string, id: string): Promise<number> {
    if (!UPLOAD_ID_RE.test(id)) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { detail: { id: id.slice(0, 100) } });
    try {
      // A stat, not a read: on S3 a HEAD, which radosgw answers several times faster than a GET.
      // The marker is looked for alongside, so the request waits no longer.
      const [info, finished] = await Promise.all([
        this.#o.driver.stat(paths.upload(repo, id)), objectExists(this.#o.driver, paths.uploadFinished(repo, id)),
      ]);
      if (info.isDir || finished) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { detail: { id } });
      return info.modTime.getTime();
    } catch (err) {
      if (isPathNotFound(err)) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { detail: { id } });
      throw err;
    }
  }

  /**
   * Rewrites the record with a fresh touchedAt (activity the collector can see). A record
   * that is gone (the collector removed the upload as stale) stays gone: the session ends.
   *
   * The read and the write are two steps, and a collector's delete landing between them was
   * undone by the write (found by probing at staleUploadAfter 0s: the upload looked alive with
   * its data gone, and its PUT answered DIGEST_INVALID for correct bytes). So the request's
   * first touch, holding the lock, looks for the collector's intent before it reads: the
   * collector writes its intent, then looks at the lock, and deletes the record before the
   * intent. Either we see the intent (the session ends), or we looked before it was written
   * and the collector finds our lock (it leaves the upload alone, for as long as we hold it),
   * or we looked after it was deleted, and our read finds any delete it made (gc/collector.ts, E).
   * The upload's finished marker is looked for alongside: a record that is there with it is no
   * upload (#unrecord).
   */
  async #touch(s: Session): Promise<void> {
    if (!s.sawNoIntent) {
      const looks = await Promise.all([
        objectExists(this.#o.driver, paths.gcUploadIntent(s.repo, s.id)), objectExists(this.#o.driver, paths.uploadFinished(s.repo, s.id)),
      ]);
      if (looks.includes(true)) {
        s.live = false;
        return;
      }
      s.sawNoIntent = true;
    }
    let record: UploadRecord;
    try {
      record = JSON.parse((await this.#o.driver.getContent(paths.upload(s.repo, s.id))).toString('utf8')) as UploadRecord;
    } catch (err) {
      if (!isPathNotFound(err)) throw err;
      s.live = false;
      return;
    }
    if (!s.live) return;
    s.lock?.assertHeld();
    const now = Date.now();
    record.touchedAt = new Date(now).toISOString();
    await this.#o.driver.putContent(paths.upload(s.repo, s.id), Buffer.from(JSON.stringify(record)));
    s.touchedMs = now;
    s.record = record;
  }

  async #storedSize(dataPath: string): Promise<number> {
    try {
      return (await this.#o.driver.stat(dataPath)).size;
    } catch (err) {
      if (isPathNotFound(err)) return 0;
      throw err;
    }
  }

  #checkRange(repo: string, id: string, offset: number, range: ChunkRange): void {
    if (range.start !== undefined && range.start !== offset) {
      throw new UploadRangeError(repo, id, offset, `chunk starts at ${range.start}, upload is at ${offset}`);
    }
    // A body announced past the limit is refused before a byte of it is stored: read, it
    // would be stored up to the limit and then refused all the same (found by probing).
    const max = this.#o.maxBlobBytes;
    if (max > 0 && range.length !== undefined && offset + range.length > max) {
      throw new BlobTooLargeError(max, { offset, length: range.length });
    }
  }

  /**
   * A chunk announced by Content-Range but sent with chunked encoding can turn out shorter or
   * longer than announced. What arrived is stored (the upload stays consistent); the client
   * learns the real offset from the 416's Range and resumes from there.
   */
  #checkLength(repo: string, id: string, range: ChunkRange, received: number, offset: number): void {
    if (range.start !== undefined && range.length !== undefined && received !== range.length) {
      throw new UploadRangeError(repo, id, offset, `Content-Range announced ${range.length} bytes, ${received} arrived`);
    }
  }

  /**
   * Runs `fn` with the upload's writer (the caller holds the upload: #locked, or a monolithic
   * upload's own id). `sizeHintBytes`, the body's declared length, goes to the driver
   * (StorageDriver.writer: S3 sizes a new upload's parts after it). `body`, the request's, if
   * it has one, tells whether it may go before others waiting for admission (readiness()),
   * and is invited (BodySource.invite) if the request has to wait.
   */
  async #exclusive<T>(
    s: Session, fn: (writer: FileWriter, ticket: Ticket | undefined) => Promise<T>, sizeHintBytes: number | undefined,
    body: BodySource | undefined,
  ): Promise<T> {
    const run = async (ticket?: Ticket): Promise<T> => {
      s.lock?.assertHeld();
      const opened = await this.#openWriter(s.dataPath, sizeHintBytes);
      const writer = s.lock ? new FencedWriter(opened, s.lock) : opened;
      try {
        return await fn(writer, ticket);
      } catch (err) {
        // What arrived before the error is kept (a client that went away resumes from there).
        await this.#stored(s.id, () => writer.close()).catch(() => undefined);
        // The data went while we wrote (a cancel, or a collector that took the upload for stale).
        if (isPathNotFound(err) && s.lock) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { detail: { id: s.id } });
        throw err;
      }
    };
    this.#writing++;
    try {
      // Waiting here holds no engine buffer: the front end keeps at most the body's first few
      // KiB, which tell whether it is ready (BodySource.ready), and pauses the socket. The
      // refusals that need no slot (an unknown or busy upload) were made; those that need the
      // writer's size (a chunk out of order, a blob past maxBlobBytes) come once admitted,
      // after the invited body's first bytes.
      return await (this.#admission ? this.#admission.run(run, readiness(body), () => body?.invite?.()) : run());
    } finally {
      this.#writing--;
    }
  }

  async #openWriter(path: string, sizeHintBytes: number | undefined): Promise<FileWriter> {
    try {
      return await this.#o.driver.writer(path, true, { sizeHintBytes });
    } catch (err) {
      // Nothing stored yet: open the real writer only when bytes arrive, so an empty PATCH
      // or PUT creates no object (and, on S3, no multipart upload).
      if (isPathNotFound(err)) return new DeferredWriter(this.#o.driver, path, sizeHintBytes);
      throw err;
    }
  }

  /** `ticket`: the admission's, which may stop a body that crawls while others wait (admission.ts). */
  async #pumpBody(id: string, writer: FileWriter, body: BodySource, ticket?: Ticket): Promise<number> {
    const slabs = this.#o.slabs;
    const w = new UploadWrite({
      writer,
      hashPool: this.#o.hashPool,
      slabs,
      maxInflightSlabs: this.#maxInflightSlabs(),
      maxBlobBytes: this.#o.maxBlobBytes,
      hashKey: id,
      pin: this.#pins.get(id),
      rebuildHash: (offset) => this.#rebuild(id, paths.blobData(id), offset),
      ...(ticket ? { signal: ticket.signal } : {}),
    });
    let bodyError: unknown;
    ticket?.watch(w);
    try {
      await body(w);
    } catch (err) {
      bodyError = err;
    } finally {
      ticket?.watch(undefined);
    }
    try {
      // Also after an abort: keep what arrived, so the stored offset is what the client sent.
      await w.flush();
    } finally {
      if (channels.uploadBody.hasSubscribers) channels.uploadBody.publish({ uploadId: id, ...w.stats } satisfies UploadBodyMessage);
      await this.#rememberPin(id, w.pin, w.hashDirty);
    }
    if (bodyError !== undefined) throw bodyError;
    return w.offset;
  }

  async #rememberPin(id: string, pin: number | undefined, dirty: boolean): Promise<void> {
    this.#pins.delete(id);
    if (pin === undefined) return;
    // A batch that did not reach storage: the state at the worker may have run ahead of it.
    if (dirty) return this.#o.hashPool.drop(id, pin).catch(() => undefined);
    if (this.#pins.size >= MAX_PINS) this.#pins.delete(this.#pins.keys().next().value!);
    this.#pins.set(id, pin);
  }

  /**
   * The slow path (another instance or a restarted worker continues an upload): read back
   * what storage holds and feed it to a worker, through one slab-sized private buffer that
   * is moved, not copied, to the worker and back. At most MAX_REBUILDS at once.
   */
  async #rebuild(id: string, dataPath: string, offset: number): Promise<number> {
    return this.#rebuilds.run(async () => {
      const t0 = performance.now();
      const pin = await this.#rebuildFrom(id, dataPath, offset);
      if (channels.hashRebuild.hasSubscribers) channels.hashRebuild.publish({ uploadId: id, bytes: offset, ms: performance.now() - t0 });
      return pin;
    });
  }

  async #rebuildFrom(id: string, dataPath: string, offset: number): Promise<number> {
    // A small upload's rebuild needs no more than its bytes.
    const chunkBytes = Math.min(this.#o.slabs.slabBytes, Math.max(offset, 1));
    let pin: number | undefined;
    let fed = 0;
    let buf = new Uint8Array(new ArrayBuffer(chunkBytes));
    let fill = 0;
    const send = async (): Promise<void> => {
      const memory = buf.buffer as ArrayBuffer;
      const r = await this.#o.hashPool.update(id, pin, { buffer: memory, byteOffset: 0, length: fill }, fed, true, memory);
      if (!r.ok) throw new Error('hash worker lost the state while rebuilding it');
      pin = r.threadId;
      fed += fill;
      fill = 0;
      buf = new Uint8Array(r.returned!);
    };
    if (offset > 0) {
      const stream = await this.#o.driver.reader(dataPath, 0, offset);
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        let pos = 0;
        while (pos < chunk.length) {
          const n = Math.min(chunkBytes - fill, chunk.length - pos);
          buf.set(chunk.subarray(pos, pos + n), fill);
          fill += n;
          pos += n;
          if (fill === chunkBytes) await send();
        }
      }
    }
    if (fill > 0 || fed === 0) await send();
    if (fed !== offset) throw new Error(`storage returned ${fed} bytes, expected ${offset}`);
    return pin!;
  }

  /** Digest of the committed data: the pinned running state, or (other algorithms, lost state) a re-read. */
  async #digestOf(id: string, dataPath: string, size: number, algorithm: Digest['algorithm']): Promise<string> {
    if (algorithm === 'sha256') {
      let r = await this.#o.hashPool.digest(id, this.#pins.get(id), size, true);
      if (!r.ok) {
        const pin = await this.#rebuild(id, dataPath, size);
        r = await this.#o.hashPool.digest(id, pin, size, true);
        if (!r.ok) throw new Error('hash worker lost the state after a rebuild');
      }
      return r.hex;
    }
    // sha512 uploads are rare (clients push sha256): re-read the stored bytes.
    const hash = createHash(algorithm);
    if (size > 0) {
      for await (const chunk of (await this.#o.driver.reader(dataPath, 0, size)) as AsyncIterable<Buffer>) hash.update(chunk);
    }
    return hash.digest('hex');
  }
}

/**
 * A writer for an upload that has stored nothing yet: the driver's writer is created by the
 * first write, so no object exists until there are bytes. Committing without any bytes
 * stores the empty blob. Made only by a session that found nothing at the path and that
 * nobody else can write to meanwhile (the upload's lock, or a monolithic upload's fresh id),
 * so the driver need not clear the path first (WriterOptions.absent).
 */
class DeferredWriter implements FileWriter {
  readonly #driver: StorageDriver;
  readonly #path: string;
  readonly #sizeHintBytes: number | undefined;
  #real: FileWriter | undefined;
  #opening: Promise<FileWriter> | undefined;

  constructor(driver: StorageDriver, path: string, sizeHintBytes: number | undefined) {
    this.#driver = driver;
    this.#path = path;
    this.#sizeHintBytes = sizeHintBytes;
  }

  get size(): number {
    return this.#real?.size ?? 0;
  }

  async write(data: Uint8Array): Promise<void> {
    await (await this.#open()).write(data);
  }

  async writev(parts: readonly Uint8Array[]): Promise<void> {
    const real = await this.#open();
    if (real.writev) await real.writev(parts);
    else for (const p of parts) await real.write(p);
  }

  /** The real writer, opened on the first bytes (with the size hint, whichever write brings them). */
  async #open(): Promise<FileWriter> {
    // `absent`: the session found nothing stored (#openWriter) and holds the upload's lock.
    this.#real ??= await (this.#opening ??= this.#driver.writer(this.#path, false, { sizeHintBytes: this.#sizeHintBytes, absent: true }));
    return this.#real;
  }

  async close(): Promise<void> {
    await this.#real?.close();
  }

  async commit(): Promise<void> {
    if (this.#real) await this.#real.commit();
    else await this.#driver.putContent(this.#path, new Uint8Array(0));
  }

  async cancel(): Promise<void> {
    await this.#real?.cancel();
  }

  async abandon(): Promise<void> {
    const real = this.#real;
    if (real) await (real.abandon ? real.abandon() : real.close());
  }
}

/**
 * The writer a request holding an upload's lock works with: it refuses to store anything once
 * the lock's lease ran out (storage did not take its renewals for the whole ttl), because by
 * then another request may hold the upload (engine/upload-lock.ts). Bytes already sent stay
 * as they are; a close() then releases the writer without recording anything (S3: no new
 * state generation that could overwrite the next holder's).
 */
class FencedWriter implements FileWriter {
  readonly #inner: FileWriter;
  readonly #lock: UploadLock;
  /** Only when the inner writer has it: callers fall back to write() without it. */
  readonly writev?: (parts: readonly Uint8Array[]) => Promise<void>;

  constructor(inner: FileWriter, lock: UploadLock) {
    this.#inner = inner;
    this.#lock = lock;
    if (inner.writev) {
      const writev = inner.writev.bind(inner);
      this.writev = async (parts) => {
        this.#lock.assertHeld();
        await writev(parts);
      };
    }
  }

  get size(): number {
    return this.#inner.size;
  }

  async write(data: Uint8Array): Promise<void> {
    this.#lock.assertHeld();
    await this.#inner.write(data);
  }

  async close(): Promise<void> {
    if (this.#lock.held) await this.#inner.close();
    else if (this.#inner.abandon) await this.#inner.abandon();
    else await this.#inner.close();
  }

  async commit(): Promise<void> {
    this.#lock.assertHeld();
    await this.#inner.commit();
  }

  async cancel(): Promise<void> {
    this.#lock.assertHeld();
    await this.#inner.cancel();
  }

  async abandon(): Promise<void> {
    await (this.#inner.abandon ? this.#inner.abandon() : this.#inner.close());
  }
}

/**
 * 416 with the stored size, for a request that would write while another one writes: that
 * one's offset is not settled, so no chunk can be known to be in order.
 */
async function busyRange(repo: string, id: string, storedSize: () => Promise<number>): Promise<UploadRangeError> {
  return new UploadRangeError(repo, id, await storedSize(), 'another request is writing to this upload');
}

/**
 * Whether a request may go before others waiting for admission (admission.ts): its body is
 * arriving or there, as the front end tells (BodySource.ready), or it has none.
 */
function readiness(body: BodySource | undefined): () => boolean {
  if (body === undefined) return () => true;
  return () => body.ready?.() ?? false;
}
