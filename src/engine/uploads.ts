import { createHash, randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import pLimit, { type LimitFunction } from 'p-limit';
import { ClientAbortError, RegistryError, UploadRangeError } from '../errors.js';
import { isPathNotFound, type FileWriter, type StorageDriver } from '../storage/driver.js';
import { channels } from '../diagnostics.js';
import { objectExists } from '../gc/lease.js';
import type { HashPool } from './hash-pool.js';
import { paths } from '../registry/paths.js';
import type { Digest } from '../registry/reference.js';
import type { SlabPool } from './slab-pool.js';
import { UploadWrite, type BodySource } from './upload-write.js';

/** What is stored at paths.upload(): the upload's identity. Its offset is the data's size. */
interface UploadRecord {
  startedAt: string;
  data: string;
  /**
   * Last sign of life the collector can see on any store (gc/collector.ts removes uploads idle for
   * gc.staleUploadAfter): refreshed when a request starts on an upload idle for a while, every
   * ACTIVITY_REFRESH_MS while a long body streams, and when the upload is being finished.
   */
  touchedAt?: string;
}

/** How stale an upload's record may get while it is in use (the collector's default is an hour). */
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

export interface UploadEngineOptions {
  driver: StorageDriver;
  hashPool: HashPool;
  slabs: SlabPool;
  maxSessionBufferedBytes: number;
  maxBlobBytes: number;
}

const UPLOAD_ID_RE = /^[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}$/;

/** How many uploads' worker pins to remember; an evicted pin only costs a rebuild. */
const MAX_PINS = 50_000;

/**
 * Upload sessions: start, append, status, commit, cancel. All state that matters lives in
 * storage (the record and the data), so an upload survives a restart and any instance can
 * continue it. In memory there are only hints: which worker holds an upload's running hash,
 * and which uploads have a request writing right now.
 */
export class UploadEngine {
  readonly #o: UploadEngineOptions;
  /** Uploads with a request writing: one writer per upload (per instance) at a time. */
  readonly #busy = new Set<string>();
  readonly #pins = new Map<string, number>();
  /** Admission of writing requests, for drivers that buffer whole parts (see maxConcurrentWriters). */
  readonly #admission: LimitFunction | undefined;

  constructor(opts: UploadEngineOptions) {
    this.#o = opts;
    const driverCap = opts.driver.maxConcurrentWriters;
    if (driverCap !== undefined) {
      // Admitted requests must also be able to hold their share of slabs at once, so that no
      // admitted request waits for a slab another admitted request holds while it waits.
      const slabCap = Math.floor(opts.slabs.maxSlabs / (this.#maxInflightSlabs() + 1));
      this.#admission = pLimit(Math.max(1, Math.min(driverCap, slabCap)));
    }
  }

  #maxInflightSlabs(): number {
    return Math.max(1, Math.floor(this.#o.maxSessionBufferedBytes / this.#o.slabs.slabBytes) - 1);
  }

  /** Uploads with a request writing to them now, on this instance (metrics read it at scrape time). */
  get writing(): number {
    return this.#busy.size;
  }

  async start(repo: string): Promise<UploadState> {
    const id = randomUUID();
    const record: UploadRecord = { startedAt: new Date().toISOString(), data: paths.blobData(id) };
    await this.#o.driver.putContent(paths.upload(repo, id), Buffer.from(JSON.stringify(record)));
    return { id, offset: 0 };
  }

  async status(repo: string, id: string): Promise<UploadState> {
    const record = await this.#record(repo, id);
    return { id, offset: await this.#storedSize(record) };
  }

  /**
   * Appends one request body. `range.start`, when given, must equal the stored offset
   * (distribution-spec: chunks in order, else 416). If the client goes away, what arrived is
   * kept and the upload stays resumable; the ClientAbortError is rethrown.
   */
  async append(repo: string, id: string, range: ChunkRange, body: BodySource): Promise<UploadState> {
    const record = await this.#record(repo, id);
    return this.#exclusive(repo, id, record, async (writer) => this.#keepAlive(repo, id, record, async () => {
      this.#checkRange(repo, id, writer.size, range);
      const start = writer.size;
      const t0 = performance.now();
      const offset = await this.#pumpBody(repo, id, writer, body);
      await writer.close();
      if (channels.uploadAppend.hasSubscribers) {
        channels.uploadAppend.publish({ repository: repo, uploadId: id, bytes: offset - start, offset, ms: performance.now() - t0 });
      }
      this.#checkLength(repo, id, range, offset - start, offset);
      return { id, offset };
    }));
  }

  /**
   * Finishes an upload: appends an optional last body, verifies the digest of everything
   * stored, and commits the data. A mismatch cancels the upload (those bytes never become a
   * blob) and throws DIGEST_INVALID. On success the upload record is gone and the caller
   * links the data under its digest.
   */
  async complete(
    repo: string, id: string, digest: Digest, range: ChunkRange, body: BodySource | undefined,
    adopt?: (data: CommittedData) => Promise<void>,
  ): Promise<CommittedData> {
    const record = await this.#record(repo, id);
    // The collector removes a stale upload by writing an intent and then re-reading this
    // record; we rewrite the record and then look for an intent. One of us sees the other
    // (gc/collector.ts, E), so an upload is never finished and removed at once.
    await this.#touch(repo, id, record);
    if (await objectExists(this.#o.driver, paths.gcUploadIntent(repo, id))) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { detail: { id } });
    return this.#complete(repo, id, record, digest, range, body, adopt);
  }

  /**
   * A monolithic upload (POST with `?digest=` and the whole blob): one request, so there is
   * nothing to resume and no upload record to write and delete. If it fails, its data is
   * deleted here; if the process dies, what it wrote is an orphan that garbage collection
   * finds (no record points at it).
   */
  async oneShot(repo: string, digest: Digest, length: number | undefined, body: BodySource): Promise<CommittedData> {
    const id = randomUUID();
    const record: UploadRecord = { startedAt: new Date().toISOString(), data: paths.blobData(id) };
    try {
      return await this.#complete(repo, id, record, digest, { start: 0, length }, body, undefined);
    } catch (err) {
      await this.#o.driver.delete(record.data).catch(() => undefined);
      await this.#o.hashPool.drop(id, this.#pins.get(id)).catch(() => undefined);
      this.#pins.delete(id);
      throw err;
    }
  }

  async #complete(
    repo: string, id: string, record: UploadRecord, digest: Digest, range: ChunkRange, body: BodySource | undefined,
    adopt: ((data: CommittedData) => Promise<void>) | undefined,
  ): Promise<CommittedData> {
    const t0 = performance.now();
    const committed = await this.#exclusive(repo, id, record, async (writer) => {
      if (body) {
        this.#checkRange(repo, id, writer.size, range);
        const start = writer.size;
        const offset = await this.#pumpBody(repo, id, writer, body);
        this.#checkLength(repo, id, range, offset - start, offset);
      }
      const size = writer.size;
      // Commit first: the data is then complete and readable (S3: the multipart upload is
      // completed), yet no digest points at it until the caller links it.
      await writer.commit();
      const actual = await this.#digestOf(id, record.data, size, digest.algorithm);
      if (actual !== digest.hex) {
        await this.#o.driver.delete(record.data).catch(() => undefined);
        await this.#forget(repo, id);
        throw new RegistryError('DIGEST_INVALID', { detail: { expected: digest.value, actual: `${digest.algorithm}:${actual}` } });
      }
      return { dataPath: record.data, size };
    });
    // The blob record goes in before the upload record goes out: data moving from an upload
    // to a blob is always named by one of them (gc/collector.ts, E).
    if (adopt) {
      try {
        await adopt(committed);
      } finally {
        await this.#forget(repo, id);
      }
    } else {
      await this.#forget(repo, id);
    }
    if (channels.uploadCommit.hasSubscribers) {
      channels.uploadCommit.publish({ repository: repo, uploadId: id, digest: digest.value, size: committed.size, ms: performance.now() - t0 });
    }
    return committed;
  }

  async cancel(repo: string, id: string): Promise<void> {
    const record = await this.#record(repo, id);
    if (this.#busy.has(id)) throw new RegistryError('BLOB_UPLOAD_INVALID', { message: 'upload is busy', detail: { id } });
    await this.#o.driver.delete(record.data).catch((err) => {
      if (!isPathNotFound(err)) throw err;
    });
    await this.#forget(repo, id);
  }

  /** Deletes the record and the worker's state; the data (now a blob's, or deleted) stays. */
  async #forget(repo: string, id: string): Promise<void> {
    const pin = this.#pins.get(id);
    this.#pins.delete(id);
    await this.#o.driver.delete(paths.upload(repo, id)).catch((err) => {
      if (!isPathNotFound(err)) throw err;
    });
    await this.#o.hashPool.drop(id, pin).catch(() => undefined);
  }

  async #record(repo: string, id: string): Promise<UploadRecord> {
    if (!UPLOAD_ID_RE.test(id)) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { detail: { id: id.slice(0, 100) } });
    try {
      return JSON.parse((await this.#o.driver.getContent(paths.upload(repo, id))).toString('utf8')) as UploadRecord;
    } catch (err) {
      if (isPathNotFound(err)) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { detail: { id } });
      throw err;
    }
  }

  /** Rewrites the record with a fresh touchedAt (activity the collector can see). */
  async #touch(repo: string, id: string, record: UploadRecord): Promise<void> {
    record.touchedAt = new Date().toISOString();
    await this.#o.driver.putContent(paths.upload(repo, id), Buffer.from(JSON.stringify(record)));
  }

  /**
   * Runs a request's work on an upload, refreshing the record's touchedAt first if it is
   * older than ACTIVITY_REFRESH_MS, and again that often while the work lasts (a long body).
   */
  async #keepAlive<T>(repo: string, id: string, record: UploadRecord, fn: () => Promise<T>): Promise<T> {
    const last = Date.parse(record.touchedAt ?? record.startedAt);
    if (!(Date.now() - last < ACTIVITY_REFRESH_MS)) await this.#touch(repo, id, record);
    let touching: Promise<void> | undefined;
    const timer = setInterval(() => {
      touching ??= this.#touch(repo, id, record).catch(() => undefined).finally(() => (touching = undefined));
    }, ACTIVITY_REFRESH_MS);
    timer.unref();
    try {
      return await fn();
    } finally {
      clearInterval(timer);
      await touching;
    }
  }

  async #storedSize(record: UploadRecord): Promise<number> {
    try {
      return (await this.#o.driver.stat(record.data)).size;
    } catch (err) {
      if (isPathNotFound(err)) return 0;
      throw err;
    }
  }

  #checkRange(repo: string, id: string, offset: number, range: ChunkRange): void {
    if (range.start !== undefined && range.start !== offset) {
      throw new UploadRangeError(repo, id, offset, `chunk starts at ${range.start}, upload is at ${offset}`);
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

  /** Runs `fn` with the upload's writer, one request per upload at a time. */
  async #exclusive<T>(repo: string, id: string, record: UploadRecord, fn: (writer: FileWriter) => Promise<T>): Promise<T> {
    if (this.#busy.has(id)) {
      // Another request of this upload is still writing: its offset is not settled, so no
      // chunk can be known to be in order.
      throw new UploadRangeError(repo, id, await this.#storedSize(record), 'another request is writing to this upload');
    }
    this.#busy.add(id);
    const run = async (): Promise<T> => {
      const writer = await this.#openWriter(record.data);
      try {
        return await fn(writer);
      } catch (err) {
        await writer.close().catch(() => undefined);
        throw err;
      }
    };
    try {
      // Waiting here holds no buffer: the front end keeps the socket paused meanwhile.
      return await (this.#admission ? this.#admission(run) : run());
    } finally {
      this.#busy.delete(id);
    }
  }

  async #openWriter(path: string): Promise<FileWriter> {
    try {
      return await this.#o.driver.writer(path, true);
    } catch (err) {
      // Nothing stored yet: open the real writer only when bytes arrive, so an empty PATCH
      // or PUT creates no object (and, on S3, no multipart upload).
      if (isPathNotFound(err)) return new DeferredWriter(this.#o.driver, path);
      throw err;
    }
  }

  async #pumpBody(repo: string, id: string, writer: FileWriter, body: BodySource): Promise<number> {
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
    });
    let bodyError: unknown;
    try {
      await body(w);
    } catch (err) {
      bodyError = err;
    }
    try {
      // Also after an abort: keep what arrived, so the stored offset is what the client sent.
      await w.flush();
    } finally {
      this.#rememberPin(id, w.pin, w.hashDirty);
    }
    if (bodyError !== undefined) {
      if (bodyError instanceof ClientAbortError || bodyError instanceof RegistryError) throw bodyError;
      throw bodyError;
    }
    return w.offset;
  }

  #rememberPin(id: string, pin: number | undefined, dirty: boolean): void {
    this.#pins.delete(id);
    if (dirty || pin === undefined) return;
    if (this.#pins.size >= MAX_PINS) this.#pins.delete(this.#pins.keys().next().value!);
    this.#pins.set(id, pin);
  }

  /**
   * The slow path (another instance or a restarted worker continues an upload): read back
   * what storage holds and feed it to a worker, in slab-sized private buffers that are moved,
   * not copied, into the worker.
   */
  async #rebuild(id: string, dataPath: string, offset: number): Promise<number> {
    const t0 = performance.now();
    const pin = await this.#rebuildFrom(id, dataPath, offset);
    if (channels.hashRebuild.hasSubscribers) channels.hashRebuild.publish({ uploadId: id, bytes: offset, ms: performance.now() - t0 });
    return pin;
  }

  async #rebuildFrom(id: string, dataPath: string, offset: number): Promise<number> {
    const chunkBytes = this.#o.slabs.slabBytes;
    let pin: number | undefined;
    let fed = 0;
    let buf = new Uint8Array(new ArrayBuffer(chunkBytes));
    let fill = 0;
    const send = async (): Promise<void> => {
      const r = await this.#o.hashPool.update(id, pin, { buffer: buf.buffer as ArrayBuffer, byteOffset: 0, length: fill }, fed, true);
      if (!r.ok) throw new Error('hash worker lost the state while rebuilding it');
      pin = r.threadId;
      fed += fill;
      fill = 0;
      buf = new Uint8Array(new ArrayBuffer(chunkBytes));
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
 * stores the empty blob.
 */
class DeferredWriter implements FileWriter {
  readonly #driver: StorageDriver;
  readonly #path: string;
  #real: FileWriter | undefined;
  #opening: Promise<FileWriter> | undefined;

  constructor(driver: StorageDriver, path: string) {
    this.#driver = driver;
    this.#path = path;
  }

  get size(): number {
    return this.#real?.size ?? 0;
  }

  async write(data: Uint8Array): Promise<void> {
    this.#real ??= await (this.#opening ??= this.#driver.writer(this.#path, false));
    await this.#real.write(data);
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
}
