import {
  AbortMultipartUploadCommand, CompleteMultipartUploadCommand, CreateMultipartUploadCommand,
  GetObjectCommand, ListPartsCommand, UploadPartCommand, UploadPartCopyCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import { copyInto } from '../buffer-pool.js';
import { PathNotFoundError, StorageUnavailableError, type FileWriter } from '../driver.js';
import { errorCode, httpStatus, isNoSuchKey, isNoSuchUpload } from './errors.js';
import type { Layout } from './layout.js';
import { pageMarkers } from './pages.js';
import { PartBufferWaitError, type PartBuffer, type PartBufferPool } from './part-buffers.js';
import type { SmallRequests } from './small-requests.js';
import type { TailCache } from './tail-cache.js';
import { MIN_PART_BYTES } from './url.js';

/** A byte range of a buffer, as the hashing pool takes it (no copy for a SharedArrayBuffer). */
export interface BytesView {
  buffer: SharedArrayBuffer | ArrayBuffer;
  byteOffset: number;
  length: number;
}

/**
 * Hex SHA-256 of the bytes: a part's signed payload hash (signedPayload()). The server
 * computes it in its hashing workers, off the main thread.
 */
export type PayloadHashFunction = (bytes: BytesView) => Promise<string>;

/**
 * Sends `command` with `sha256` (hex) as its x-amz-content-sha256: SigV4 signs it, and the
 * store hashes the body it received and refuses it when they differ (AWS, radosgw and MinIO
 * answer XAmzContentSHA256Mismatch). So every part is checked end to end, as Content-MD5
 * checked it, and more strongly; and SHA-256 costs the hashing workers less than half of
 * MD5 (SHA-NI: ~1.35 GiB/s a core here, MD5 ~0.6; README, "S3 push, where the CPU goes").
 * Without it the SDK would hash the whole body itself, on the main thread, before sending.
 * `undefined` (an empty body) leaves that to the SDK.
 */
export function signedPayload<C extends { middlewareStack: { add: (...args: never[]) => unknown } }>(command: C, sha256: string | undefined): C {
  if (sha256 === undefined) return command;
  const stack = command.middlewareStack as unknown as {
    add(mw: (next: (args: { request: unknown }) => Promise<unknown>) => (args: { request: unknown }) => Promise<unknown>, opts: { step: 'build'; name: string }): void;
  };
  stack.add((next) => (args) => {
    const headers = (args.request as { headers?: Record<string, string> }).headers;
    if (headers) headers['x-amz-content-sha256'] = sha256;
    return next(args);
  }, { step: 'build', name: 'hoistSignedPayload' });
  return command;
}

/** S3 allows parts numbered 1 to 10,000 (AWS "Amazon S3 multipart upload limits"). */
export const MAX_PARTS = 10_000;

/**
 * Pieces a pending tail may be staged in. Past this, close() stages the whole tail again as
 * one piece: that bounds the state's size and what the rare path reads back, at the cost of
 * re-sending tails only for chunks smaller than partSize / MAX_PIECES (256 KiB with 16 MiB
 * parts; the registry advertises OCI-Chunk-Min-Length 1 MiB).
 */
const MAX_PIECES = 64;
/** Pieces read back at once on the rare path. */
const PIECE_READS = 8;

export interface PartRecord {
  partNumber: number;
  /** As UploadPart returned it, quotes included; CompleteMultipartUpload wants it back. */
  etag: string;
  size: number;
}

/** A staging object holding some of the bytes after the last part (layout.ts: `<path>.tail.<n>`). */
export interface PieceRecord {
  n: number;
  bytes: number;
}

/**
 * What a writer leaves in the bucket at close() (layout.ts: `_s3/writers/<path>.json`), so
 * that any instance can continue the upload. Parts 1..k are all `partSizeBytes` long; the
 * bytes after them are the `pieces`, in order, and become the start of part k+1. `uploadId`
 * is null until the first part is full.
 */
export interface WriterState {
  version: 2;
  uploadId: string | null;
  partSizeBytes: number;
  parts: PartRecord[];
  size: number;
  pieces: PieceRecord[];
  /** Number of the next piece: a piece key is written once, so a stale piece never passes for a live one. */
  nextPiece: number;
  /** New with every state written, so that its ETag names that one write (tail-cache.ts). */
  writeId: string;
}

/** The state before pieces: one tail object per generation, rewritten whole by every close(). */
interface WriterStateV1 {
  version: 1;
  uploadId: string | null;
  partSizeBytes: number;
  parts: PartRecord[];
  size: number;
  tailBytes: number;
  generation: number;
}

/** A v1 state is a v2 state whose one piece is its tail (same key, `.tail.<generation>`). */
function upgrade(s: WriterState | WriterStateV1, path: string): WriterState {
  if (s.version === 2) {
    // Read, not trusted: a state missing a field would fail later with a TypeError.
    const count = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0;
    if (!Array.isArray(s.parts) || !Array.isArray(s.pieces) || !count(s.size) || !count(s.partSizeBytes) || !count(s.nextPiece) ||
      !s.pieces.every((p) => count(p?.n) && count(p?.bytes))) {
      throw new Error(`S3 writer state of ${path}: malformed version 2 state`);
    }
    return s;
  }
  if (s.version === 1) {
    return {
      version: 2, uploadId: s.uploadId, partSizeBytes: s.partSizeBytes, parts: s.parts, size: s.size,
      pieces: s.tailBytes > 0 ? [{ n: s.generation, bytes: s.tailBytes }] : [], nextPiece: s.generation + 1, writeId: '',
    };
  }
  throw new Error(`S3 writer state of ${path}: unknown version ${String((s as { version?: unknown }).version)}`);
}

/** What the driver lends its writers. */
export interface WriterContext {
  readonly client: S3Client;
  /** Small object requests (state, pieces, HEADs, deletes), off the SDK's stack. */
  readonly small: SmallRequests;
  readonly bucket: string;
  readonly layout: Layout;
  readonly buffers: PartBufferPool;
  readonly tails: TailCache;
  readonly payloadHash: PayloadHashFunction;
  readonly maxPartsInFlight: number;
  readonly bufferWaitTimeoutMs: number;
  /** Every key under a prefix. */
  readonly listKeys: (prefix: string) => Promise<string[]>;
  /** Deletes keys, ignoring missing ones. */
  readonly deleteKeys: (keys: string[]) => Promise<void>;
}

export interface LoadedState {
  state: WriterState;
  modTime: Date;
  /** The state object's ETag, quotes included. */
  etag: string;
}

/**
 * The writer state of `path`, or undefined when there is none. With `unlessEtag`, resolves
 * with 'unchanged' when the stored state still has that ETag, without transferring it.
 */
export async function loadWriterState(ctx: WriterContext, path: string): Promise<LoadedState | undefined>;
export async function loadWriterState(ctx: WriterContext, path: string, unlessEtag: string | undefined): Promise<LoadedState | 'unchanged' | undefined>;
export async function loadWriterState(ctx: WriterContext, path: string, unlessEtag?: string): Promise<LoadedState | 'unchanged' | undefined> {
  try {
    const out = await ctx.small.get(ctx.layout.writerState(path), { ifNoneMatch: unlessEtag });
    const state = upgrade(JSON.parse(out.body.toString('utf8')) as WriterState | WriterStateV1, path);
    return { state, modTime: out.modTime, etag: out.etag };
  } catch (err) {
    if (unlessEtag !== undefined && httpStatus(err) === 304) return 'unchanged';
    if (isNoSuchKey(err)) return undefined;
    throw err;
  }
}

/**
 * Removes a path's in-progress upload: aborts its multipart upload (parts are stored, and
 * billed, until then), then deletes its state and staged pieces. Returns whether there was one.
 */
export async function discardWriter(ctx: WriterContext, path: string, known?: WriterState): Promise<boolean> {
  ctx.tails.drop(path);
  const state = known ?? (await loadWriterState(ctx, path))?.state;
  if (!state) return false;
  if (state.uploadId) await abortUpload(ctx, ctx.layout.key(path), state.uploadId);
  await removeStaging(ctx, path);
  return true;
}

async function abortUpload(ctx: WriterContext, key: string, uploadId: string): Promise<void> {
  try {
    await ctx.client.send(new AbortMultipartUploadCommand({ Bucket: ctx.bucket, Key: key, UploadId: uploadId }));
  } catch (err) {
    if (!isNoSuchUpload(err)) throw err;
  }
}

/** Deletes the state and every piece (a close that failed halfway can leave pieces no state names). */
async function removeStaging(ctx: WriterContext, path: string): Promise<void> {
  const l = ctx.layout;
  const keys = new Set((await ctx.listKeys(l.writerKeysPrefix(path))).filter((k) => l.isOwnWriterKey(path, k)));
  keys.add(l.writerState(path));
  await ctx.deleteKeys([...keys]);
}

/**
 * The part size of a new upload whose first session announces `hintBytes`: a chunk of
 * 5 MiB or more that fits a part buffer becomes the part size, so that every chunk of that
 * size is exactly one part and nothing is staged; a larger chunk gets the largest part size
 * that divides it and fits a buffer. Otherwise the driver's part size. Every upload keeps
 * the part size it started with (R2 wants all parts but the last equally long), and holds at
 * most MAX_PARTS parts of it.
 */
export function partSizeFor(bufferBytes: number, hintBytes: number | undefined): number {
  if (hintBytes === undefined || !Number.isSafeInteger(hintBytes) || hintBytes < MIN_PART_BYTES) return bufferBytes;
  if (hintBytes <= bufferBytes) return hintBytes;
  // A size no part size can store in MAX_PARTS parts fails later whatever this says; and the
  // search stops at MAX_PARTS parts (found by probing: a Content-Range announcing 10^15
  // bytes held the event loop for 6 s in this loop).
  if (hintBytes > MAX_PARTS * bufferBytes) return bufferBytes;
  for (let k = Math.ceil(hintBytes / bufferBytes); k <= MAX_PARTS && hintBytes / k >= MIN_PART_BYTES; k++) {
    if (hintBytes % k === 0) return hintBytes / k;
  }
  return bufferBytes;
}

/**
 * A part buffer for a writer: a free one, else the buffer of a held tail (tail-cache.ts),
 * else the next one returned to the pool, in line with the other writers. A wait that
 * times out (the buffers' holders are stuck, e.g. on a store that stopped answering) is
 * StorageUnavailableError: the client gets 503 and tries again later.
 */
async function acquireBuffer(ctx: WriterContext): Promise<PartBuffer> {
  if (ctx.buffers.waiting === 0) {
    const free = ctx.buffers.tryAcquire() ?? (ctx.tails.evictOne() ? ctx.buffers.tryAcquire() : undefined);
    if (free) return free;
  } else {
    // Writers are already waiting: free one buffer for the line, and join it.
    ctx.tails.evictOne();
  }
  try {
    return await ctx.buffers.acquire(ctx.bufferWaitTimeoutMs);
  } catch (err) {
    if (err instanceof PartBufferWaitError) throw new StorageUnavailableError(err.message, { cause: err });
    throw err;
  }
}

type State = 'open' | 'writing' | 'closed' | 'committed' | 'cancelled';

/**
 * The S3 FileWriter: one writer path is one multipart upload, resumable across writer
 * sessions and instances (distribution driver/s3-aws writer, without its re-upload cycle).
 *
 * Bytes are copied into part buffers of the upload's part size (buffers from the driver-wide
 * pool, part-buffers.ts) however the caller chunks them. A full buffer becomes the next part
 * at once and uploads while write() goes on; write() waits only when this writer has
 * `maxPartsInFlight` parts uploading or the pool has no buffer. So every part but the last
 * has the same size, which R2 requires, and S3's 5 MiB minimum is met. The part size is the
 * driver's, or follows the first chunk's announced size (partSizeFor).
 *
 * close() stages only what this session added after the last full part, as one new piece
 * (a small object), and records parts and pieces in the state object. Each byte that does
 * not fill a part is so sent to the store twice: once staged, once in its part. The pending
 * tail stays in memory on this instance (tail-cache.ts), and the next writer(path, true)
 * here continues from it once the store confirms the state is still the one written here; a
 * writer elsewhere (or after a restart) reads the pieces back, the only path that reads
 * staged bytes. Nothing is downloaded, copied or re-uploaded otherwise. The multipart upload
 * is created with the first full part; an upload of at most one part is a single PutObject
 * at commit().
 *
 * Failures: a part that fails (after the driver's retries) fails the writer: write/close/
 * commit reject, and the state stays as the last successful close() left it, so the upload
 * resumes from there (parts uploaded since get the same numbers again, which replaces them;
 * any the resumed upload does not reach again are found at commit() and left out).
 *
 * An empty writer leaves no trace: writer(path, false) removes what was at the path, and a
 * close() with no new bytes writes nothing, so the path stays absent until bytes arrive.
 */
export class S3FileWriter implements FileWriter {
  readonly #ctx: WriterContext;
  readonly #path: string;
  readonly #key: string;
  readonly #partSize: number;
  /** Bytes the caller announced for this session (StorageDriver.writer's sizeHintBytes). */
  readonly #sessionHint: number | undefined;
  #state: State = 'open';
  #uploadId: string | null = null;
  #creating: Promise<string> | undefined;
  readonly #parts = new Map<number, PartRecord>();
  #nextPart = 1;
  #size = 0;
  /** Size when this session began. */
  #sessionStart = 0;
  #buf: PartBuffer | undefined;
  #fill = 0;
  /** The first `#staged` bytes of the buffer are the pieces `#pieces`, stored already. */
  #staged = 0;
  #pieces: PieceRecord[] = [];
  #nextPiece = 1;
  /** Pieces that went into parts during this session: deleted once a new state no longer names them. */
  #obsolete: number[] = [];
  readonly #inflight = new Set<Promise<void>>();
  #error: unknown;
  /** The stored state as this writer knows it (undefined: there is none yet). */
  #persisted: { state: WriterState; etag: string } | undefined;
  /** This writer stored pieces that a state may not name: clean up by listing. */
  #wroteStaging = false;
  /** The multipart upload named by the last state this writer sent, stored or not (its answer may have been lost). */
  #stateSent: string | undefined;

  private constructor(ctx: WriterContext, path: string, partSize: number, sessionHint: number | undefined) {
    this.#ctx = ctx;
    this.#path = path;
    this.#key = ctx.layout.key(path);
    this.#partSize = partSize;
    this.#sessionHint = sessionHint;
  }

  /** Opens a writer; see StorageDriver.writer. `path` must be checked already. */
  static async open(ctx: WriterContext, path: string, append: boolean, sizeHintBytes?: number, absent = false): Promise<S3FileWriter> {
    const key = ctx.layout.key(path);
    if (!append) {
      // Truncate: the old content goes now, so stat() and a later append see the new writer.
      // Unless the caller knows there is none (WriterOptions.absent).
      if (!absent) {
        await Promise.all([
          discardWriter(ctx, path),
          ctx.small.delete(key),
        ]);
      }
      return new S3FileWriter(ctx, path, partSizeFor(ctx.buffers.partSizeBytes, sizeHintBytes), sizeHintBytes);
    }
    const held = ctx.tails.take(path);
    const releaseHeld = (): void => {
      if (held?.buf) ctx.buffers.release(held.buf);
    };
    let loaded: LoadedState | 'unchanged' | undefined;
    let objectSize: number | undefined;
    try {
      // A held tail is only as good as the state it came with: ask whether that is still the
      // stored one (304 costs no transfer). In parallel: has the object been committed?
      [loaded, objectSize] = await Promise.all([loadWriterState(ctx, path, held?.etag), ctx.small.headIfAny(key).then((head) => head?.size)]);
    } catch (err) {
      releaseHeld();
      throw err;
    }
    if (objectSize !== undefined) {
      // A committed object wins over a state: both exist only when a commit stopped between
      // completing the object and removing the state, which is then stale.
      releaseHeld();
      const stale = loaded === 'unchanged' ? held!.state : loaded?.state;
      if (stale) await discardWriter(ctx, path, stale);
      const w = new S3FileWriter(ctx, path, ctx.buffers.partSizeBytes, sizeHintBytes);
      await w.#adopt(objectSize);
      return w;
    }
    if (!loaded) {
      releaseHeld();
      throw new PathNotFoundError(path);
    }
    let state: WriterState;
    let etag: string;
    let buf: PartBuffer | undefined;
    if (loaded === 'unchanged') {
      ({ state, etag, buf } = held!);
    } else {
      // Another instance wrote since (or nothing was held here): the held bytes are stale.
      releaseHeld();
      ({ state, etag } = loaded);
    }
    if (state.partSizeBytes > ctx.buffers.partSizeBytes) {
      if (buf) ctx.buffers.release(buf);
      // 503: an instance with larger part buffers (the configuration the upload started
      // under, during a rolling change) can continue it.
      throw new StorageUnavailableError(`S3 upload ${path} was started with ${state.partSizeBytes}-byte parts; this driver's parts are ${ctx.buffers.partSizeBytes} bytes (set partSize back to continue it)`);
    }
    const w = new S3FileWriter(ctx, path, state.partSizeBytes, sizeHintBytes);
    w.#uploadId = state.uploadId;
    for (const p of state.parts) w.#parts.set(p.partNumber, p);
    w.#nextPart = state.parts.length + 1;
    w.#size = w.#sessionStart = state.size;
    w.#pieces = state.pieces;
    w.#nextPiece = state.nextPiece;
    w.#persisted = { state, etag };
    const tailBytes = state.pieces.reduce((n, p) => n + p.bytes, 0);
    if (tailBytes !== state.size - state.parts.length * state.partSizeBytes || tailBytes >= state.partSizeBytes) {
      if (buf) ctx.buffers.release(buf);
      throw new Error(`S3 upload ${path}: inconsistent writer state (${state.size} bytes, ${state.parts.length} parts, ${tailBytes} bytes staged)`);
    }
    w.#buf = buf;
    w.#fill = w.#staged = buf ? tailBytes : 0;
    if (tailBytes > 0 && !buf) await w.#readPieces(tailBytes);
    return w;
  }

  get size(): number {
    return this.#size;
  }

  async write(data: Uint8Array): Promise<void> {
    this.#enter('write', 'writing');
    try {
      this.#throwIfFailed();
      let pos = 0;
      while (pos < data.byteLength) {
        if (this.#fill === this.#partSize) await this.#sendFullBuffer();
        this.#buf ??= await acquireBuffer(this.#ctx);
        const n = Math.min(this.#partSize - this.#fill, data.byteLength - pos);
        copyInto(this.#buf.bytes, data.subarray(pos, pos + n), this.#fill);
        this.#fill += n;
        pos += n;
        this.#size += n;
        if (this.#fill === this.#partSize && !this.#mayBeWholeObject()) await this.#sendFullBuffer();
      }
    } catch (err) {
      // Some of `data` may be in the buffer already: this writer's size no longer matches
      // what the caller believes was written, so it must not be closed with it.
      this.#fail(err);
      throw err;
    } finally {
      if (this.#state === 'writing') this.#state = 'open';
    }
  }

  async close(): Promise<void> {
    this.#enter('close', 'closed');
    try {
      await this.#settle();
      this.#throwIfFailed();
      if (this.#fill === this.#partSize) {
        await this.#sendFullBuffer();
        await this.#settle();
        this.#throwIfFailed();
      }
      // An empty PATCH changes nothing stored: no part, no piece, no new state.
      if (this.#size !== this.#sessionStart) await this.#persist();
      if (this.#persisted) {
        // The next PATCH on this instance continues from here (tail-cache.ts).
        this.#ctx.tails.put(this.#path, { ...this.#persisted, buf: this.#fill > 0 ? this.#buf : undefined });
        if (this.#fill > 0) this.#buf = undefined;
      }
    } catch (err) {
      this.#ctx.tails.drop(this.#path);
      await this.#abortUnrecorded(err);
      throw err;
    } finally {
      this.#releaseBuffer();
    }
  }

  async commit(): Promise<void> {
    this.#enter('commit', 'committed');
    const c = this.#ctx;
    c.tails.drop(this.#path);
    try {
      await this.#settle();
      this.#throwIfFailed();
      if (this.#parts.size === 0 && this.#creating === undefined && this.#uploadId === null) {
        // At most one part in all: a single PutObject.
        await this.#putBufferAsObject();
      } else {
        const uploadId = await this.#ensureUpload();
        // Parts the store holds that no record names (an instance died after UploadPart and
        // before its close recorded it; a writer that lost its upload lock): radosgw refuses
        // to complete an upload with parts its completion does not list (InvalidPart), so
        // the upload is put together again without them.
        const unrecorded = await this.#unrecordedParts(uploadId);
        if (unrecorded.length > 0) {
          await this.#completeWithout(uploadId, unrecorded);
          await this.#checkStored();
          this.#releaseBuffer();
          if (this.#persisted || this.#wroteStaging) await removeStaging(c, this.#path);
          return;
        }
        // The empty final chunk never becomes a part: a non-final part must be full, and an
        // empty last part would be refused (EntityTooSmall) or be a wasted request.
        if (this.#fill > 0) {
          this.#checkPartNumber();
          const rec = await this.#uploadPart(this.#nextPart, this.#buf!, this.#fill);
          this.#parts.set(rec.partNumber, rec);
        }
        const parts = [...this.#parts.values()].sort((a, b) => a.partNumber - b.partNumber);
        try {
          // radosgw answers with an empty ETag here; nothing below relies on it.
          await c.client.send(new CompleteMultipartUploadCommand({
            Bucket: c.bucket,
            Key: this.#key,
            UploadId: uploadId,
            MultipartUpload: { Parts: parts.map((p) => ({ PartNumber: p.partNumber, ETag: p.etag })) },
          }));
        } catch (err) {
          // The recorded parts were checked against ListParts above, so a part the store
          // refuses is the final one this commit sent, acknowledged with an ETag that is not
          // its own (an answer altered on the way): the next commit sends it again. The
          // client is told to try again, not that the registry failed (a 500 before).
          if (errorCode(err) === 'InvalidPart') {
            throw new StorageUnavailableError(`S3 upload ${this.#path}: the store refused the final part's ETag at CompleteMultipartUpload`, { cause: err });
          }
          // A retry of a Complete whose answer was lost finds the upload gone: if the object
          // is there, whole, the first try did it.
          if (!isNoSuchUpload(err) || (await c.small.headIfAny(this.#key))?.size !== this.#size) throw err;
        }
      }
      await this.#checkStored();
      this.#releaseBuffer();
      if (this.#persisted || this.#wroteStaging) await removeStaging(c, this.#path);
    } catch (err) {
      this.#error ??= err;
      await this.#abortUnrecorded(err);
      throw err;
    } finally {
      this.#releaseBuffer();
    }
  }

  async cancel(): Promise<void> {
    this.#enter('cancel', 'cancelled');
    this.#ctx.tails.drop(this.#path);
    try {
      await this.#settle();
      const uploadId = this.#uploadId ?? (await this.#creating?.catch(() => undefined));
      if (uploadId) await abortUpload(this.#ctx, this.#key, uploadId);
      if (this.#persisted || this.#wroteStaging) await removeStaging(this.#ctx, this.#path);
    } finally {
      this.#releaseBuffer();
    }
  }

  /**
   * Records nothing (FileWriter.abandon): parts in flight finish, the buffer goes back to the
   * pool, and a multipart upload that this writer created and no state names is aborted. The
   * stored state stays as the last close() left it; a later writer here reads its pieces back.
   */
  async abandon(): Promise<void> {
    this.#enter('abandon', 'cancelled');
    this.#ctx.tails.drop(this.#path);
    try {
      await this.#settle();
      await this.#abortUnrecorded(this.#error);
    } finally {
      this.#releaseBuffer();
    }
  }

  /**
   * The rare path: this instance does not hold the pending tail (another one wrote it, or
   * this one restarted or needed the buffer), so its pieces are read back into a buffer.
   */
  async #readPieces(tailBytes: number): Promise<void> {
    const c = this.#ctx;
    this.#buf = await acquireBuffer(c);
    try {
      const at: number[] = [];
      let offset = 0;
      for (const p of this.#pieces) {
        at.push(offset);
        offset += p.bytes;
      }
      let next = 0;
      const reader = async (): Promise<void> => {
        for (let i = next++; i < this.#pieces.length; i = next++) {
          const p = this.#pieces[i]!;
          const out = await c.client.send(new GetObjectCommand({ Bucket: c.bucket, Key: c.layout.writerTail(this.#path, p.n) }));
          const n = await readInto(out.Body as Readable, this.#buf!.bytes.subarray(at[i]!, at[i]! + p.bytes));
          if (n !== p.bytes) throw new Error(`S3 upload ${this.#path}: piece ${p.n} has ${n} bytes, the state says ${p.bytes}`);
        }
      };
      await Promise.all(Array.from({ length: Math.min(PIECE_READS, this.#pieces.length) }, reader));
      this.#fill = this.#staged = tailBytes;
    } catch (err) {
      this.#releaseBuffer();
      throw err;
    }
  }

  /**
   * Parts 1..count of a new multipart upload of this key, copied inside the store
   * (UploadPartCopy) from the object now at the key, maxPartsInFlight at a time.
   */
  async #copyParts(count: number): Promise<void> {
    const c = this.#ctx;
    let next = 0;
    const copyParts = async (): Promise<void> => {
      while (next < count) {
        const partNumber = ++next;
        const first = (partNumber - 1) * this.#partSize;
        const out = await c.client.send(new UploadPartCopyCommand({
          Bucket: c.bucket,
          Key: this.#key,
          UploadId: await this.#ensureUpload(),
          PartNumber: partNumber,
          CopySource: copySource(c.bucket, this.#key),
          CopySourceRange: `bytes=${first}-${first + this.#partSize - 1}`,
        }));
        const etag = out.CopyPartResult?.ETag;
        if (!etag) throw new Error(`UploadPartCopy of ${this.#path} part ${partNumber} returned no ETag`);
        this.#parts.set(partNumber, { partNumber, etag, size: this.#partSize });
      }
    };
    await Promise.all(Array.from({ length: Math.min(count, c.maxPartsInFlight) }, copyParts));
  }

  /**
   * writer(path, true) on a committed object: its whole parts become parts of a new multipart
   * upload by server-side copy (UploadPartCopy), the rest is read into the buffer, and the
   * state takes the object's place. The registry never does this (it appends only to
   * uploads in progress); it keeps the driver's contract.
   */
  async #adopt(objectSize: number): Promise<void> {
    const c = this.#ctx;
    const fullParts = Math.floor(objectSize / this.#partSize);
    if (fullParts >= MAX_PARTS) throw new Error(`S3 object ${this.#path} is too large to append to`);
    try {
      await this.#copyParts(fullParts);
      this.#nextPart = fullParts + 1;
      const rest = objectSize - fullParts * this.#partSize;
      if (rest > 0) {
        this.#buf = await acquireBuffer(c);
        const out = await c.client.send(new GetObjectCommand({ Bucket: c.bucket, Key: this.#key, Range: `bytes=${objectSize - rest}-${objectSize - 1}` }));
        this.#fill = await readInto(out.Body as Readable, this.#buf.bytes.subarray(0, rest));
        if (this.#fill !== rest) throw new Error(`S3 object ${this.#path} changed while being opened for append`);
      }
      this.#size = this.#sessionStart = objectSize;
      await this.#persist();
      await c.small.delete(this.#key);
    } catch (err) {
      const uploadId = this.#uploadId ?? (await this.#creating?.catch(() => undefined));
      if (uploadId) await abortUpload(c, this.#key, uploadId).catch(() => undefined);
      this.#releaseBuffer();
      throw err;
    }
  }

  /**
   * A full buffer that is all the object has so far, and all this session announced: it
   * waits for close() or commit(), so that an object of exactly one part (a monolithic
   * push whose size became the part size) is one PutObject, not create + part + complete.
   */
  #mayBeWholeObject(): boolean {
    return this.#nextPart === 1 && this.#uploadId === null && this.#creating === undefined &&
      this.#sessionHint !== undefined && this.#size - this.#sessionStart === this.#sessionHint;
  }

  /** Sends the full buffer as the next part, once this writer has room for one more in flight. */
  async #sendFullBuffer(): Promise<void> {
    while (this.#inflight.size >= this.#ctx.maxPartsInFlight) await Promise.race(this.#inflight);
    this.#throwIfFailed();
    this.#checkPartNumber();
    const buf = this.#buf!;
    const length = this.#fill;
    const partNumber = this.#nextPart++;
    this.#buf = undefined;
    this.#fill = 0;
    // The staged pieces are in this part now: the next state names none of them.
    this.#obsolete.push(...this.#pieces.map((p) => p.n));
    this.#pieces = [];
    this.#staged = 0;
    const done: Promise<void> = this.#uploadPart(partNumber, buf, length)
      .then((rec) => {
        this.#parts.set(partNumber, rec);
      }, (err: unknown) => this.#fail(err))
      .finally(() => {
        this.#ctx.buffers.release(buf);
        this.#inflight.delete(done);
      });
    this.#inflight.add(done);
  }

  async #uploadPart(partNumber: number, buf: PartBuffer, length: number): Promise<PartRecord> {
    const c = this.#ctx;
    // The SHA-256 is computed by a worker straight from the shared buffer while the multipart
    // upload is being created (first part) or not at all (later parts): no waiting in line.
    const [uploadId, sha256] = await Promise.all([this.#ensureUpload(), c.payloadHash({ buffer: buf.buffer, byteOffset: 0, length })]);
    let out;
    try {
      out = await c.client.send(signedPayload(new UploadPartCommand({
        Bucket: c.bucket,
        Key: this.#key,
        UploadId: uploadId,
        PartNumber: partNumber,
        Body: Buffer.from(buf.buffer, 0, length),
        ContentLength: length,
      }), sha256));
    } catch (err) {
      // The multipart upload was aborted under us (the upload cancelled, or collected as
      // stale): the data is gone, which the registry answers BLOB_UPLOAD_UNKNOWN, not 500.
      if (isNoSuchUpload(err)) throw new PathNotFoundError(this.#path);
      throw err;
    }
    if (!out.ETag) throw new Error(`UploadPart ${partNumber} of ${this.#path} returned no ETag`);
    return { partNumber, etag: out.ETag, size: length };
  }

  /**
   * The parts the store holds for the upload beyond this writer's records, by number and
   * ETag; the next part number does not count when the final part will replace it. A
   * recorded part whose ETag the store no longer has was replaced by another writer: its
   * bytes are not this upload's, and the commit fails. An upload that is gone (a lost
   * Complete answer, tried again) has none: the Complete below sorts that out.
   */
  async #unrecordedParts(uploadId: string): Promise<{ partNumber: number; etag: string }[]> {
    const c = this.#ctx;
    const unquote = (etag: string | undefined): string => (etag ?? '').replace(/"/g, '');
    const extra: { partNumber: number; etag: string }[] = [];
    let marker: string | undefined;
    const nextPage = pageMarkers(`ListParts of ${this.#key}`);
    try {
      do {
        const out = await c.client.send(new ListPartsCommand({ Bucket: c.bucket, Key: this.#key, UploadId: uploadId, PartNumberMarker: marker }));
        for (const p of out.Parts ?? []) {
          const recorded = this.#parts.get(p.PartNumber!);
          if (recorded) {
            if (unquote(recorded.etag) !== unquote(p.ETag)) {
              // The upload's bytes are not known any more, and no retry will make them so:
              // BLOB_UPLOAD_UNKNOWN tells the client to start it again (a 500 came back at
              // every retry of the PUT, found by probing).
              throw new PathNotFoundError(this.#path, { cause: new Error(`S3 upload ${this.#path}: part ${p.PartNumber} in the store is not the one recorded (another writer replaced it)`) });
            }
          } else {
            extra.push({ partNumber: p.PartNumber!, etag: p.ETag ?? '' });
          }
        }
        marker = nextPage(out.IsTruncated ? String(out.NextPartNumberMarker ?? '') || undefined : undefined);
      } while (marker !== undefined);
    } catch (err) {
      if (isNoSuchUpload(err)) return [];
      throw err;
    }
    // Only the next part, which the final part replaces: nothing to put together again.
    if (extra.length === 1 && extra[0]!.partNumber === this.#nextPart && this.#fill > 0) return [];
    return extra;
  }

  /**
   * The rare path of commit(), when the upload holds parts it does not record: the store
   * has the recorded parts' bytes and nothing else does, so the upload is completed with
   * every part it holds, then the object is made again from its first `recorded` parts by
   * server-side copy (UploadPartCopy, no bytes through this process) and the final part from
   * the buffer. Costs one copy of the blob in the store. Should this instance die between
   * the two, the path holds an object with foreign bytes after this upload's: an upload
   * continued there adopts it (open()), and the registry's digest check refuses the result.
   */
  async #completeWithout(uploadId: string, unrecorded: { partNumber: number; etag: string }[]): Promise<void> {
    const c = this.#ctx;
    const recorded = [...this.#parts.values()].sort((a, b) => a.partNumber - b.partNumber);
    const length = this.#fill;
    if (recorded.length === 0) {
      // Nothing of this upload's is in the store: its bytes are all in the buffer.
      await abortUpload(c, this.#key, uploadId);
      this.#uploadId = null;
      await this.#putBufferAsObject();
      return;
    }
    const all = [...recorded.map((p) => ({ PartNumber: p.partNumber, ETag: p.etag })), ...unrecorded.map((p) => ({ PartNumber: p.partNumber, ETag: p.etag }))]
      .sort((a, b) => a.PartNumber - b.PartNumber);
    await c.client.send(new CompleteMultipartUploadCommand({ Bucket: c.bucket, Key: this.#key, UploadId: uploadId, MultipartUpload: { Parts: all } }));
    // A new upload of the same key: the recorded parts copied from the object just made.
    this.#uploadId = null;
    this.#creating = undefined;
    this.#parts.clear();
    const copied = recorded.length;
    await this.#copyParts(copied);
    if (length > 0) this.#parts.set(copied + 1, await this.#uploadPart(copied + 1, this.#buf!, length));
    const parts = [...this.#parts.values()].sort((a, b) => a.partNumber - b.partNumber);
    await c.client.send(new CompleteMultipartUploadCommand({
      Bucket: c.bucket,
      Key: this.#key,
      UploadId: await this.#ensureUpload(),
      MultipartUpload: { Parts: parts.map((p) => ({ PartNumber: p.partNumber, ETag: p.etag })) },
    }));
  }

  /**
   * The store said the object is made: a HEAD shows it is there, and as long as the upload.
   * Until the client has its 201 the upload can still be finished again; after it, a blob
   * record names the object. A store that answered 200 without applying the write (found by
   * probing through a lying proxy: Hoist answered 201 and the blob was 404 at once) is told
   * apart here, as docker-registry tells it apart by a stat of the upload after its commit.
   * 503: the client tries the PUT again, and the writer's state, still stored, completes the
   * upload anew.
   */
  async #checkStored(): Promise<void> {
    const size = (await this.#ctx.small.headIfAny(this.#key))?.size;
    if (size !== this.#size) {
      throw new StorageUnavailableError(`S3 upload ${this.#path}: the store acknowledged an object of ${this.#size} bytes, and holds ${size === undefined ? 'none' : `${size} bytes`}`);
    }
  }

  /** Stores what the buffer holds as the whole object, one signed PutObject (an empty blob is a 0-byte object). */
  async #putBufferAsObject(): Promise<void> {
    const c = this.#ctx;
    const length = this.#fill;
    const body = this.#buf ? Buffer.from(this.#buf.buffer, 0, length) : Buffer.alloc(0);
    const sha256 = length > 0 ? await c.payloadHash({ buffer: this.#buf!.buffer, byteOffset: 0, length }) : undefined;
    await c.small.put(this.#key, body, { sha256 });
  }

  #ensureUpload(): Promise<string> {
    if (this.#uploadId) return Promise.resolve(this.#uploadId);
    const c = this.#ctx;
    this.#creating ??= c.client.send(new CreateMultipartUploadCommand({ Bucket: c.bucket, Key: this.#key })).then((out) => {
      if (!out.UploadId) throw new Error(`CreateMultipartUpload of ${this.#path} returned no UploadId`);
      this.#uploadId = out.UploadId;
      return out.UploadId;
    });
    return this.#creating;
  }

  /**
   * Stages what this session added after the last full part as one new piece, then writes
   * the state naming the parts and the pieces, then deletes the pieces that went into parts.
   * Until the new state is written, the old state and everything it names stay valid, so a
   * failure anywhere leaves the previous state usable.
   */
  async #persist(): Promise<void> {
    const c = this.#ctx;
    let pieces = this.#pieces;
    const dropped = [...this.#obsolete];
    const fresh = this.#fill - this.#staged;
    if (fresh > 0) {
      let from = this.#staged;
      if (pieces.length >= MAX_PIECES) {
        // Too many small pieces: stage the whole tail again as one.
        dropped.push(...pieces.map((p) => p.n));
        pieces = [];
        from = 0;
      }
      const n = this.#nextPiece++;
      const buf = this.#buf!;
      this.#wroteStaging = true;
      const sha256 = await c.payloadHash({ buffer: buf.buffer, byteOffset: from, length: this.#fill - from });
      await c.small.put(c.layout.writerTail(this.#path, n), Buffer.from(buf.buffer, from, this.#fill - from), { sha256 });
      pieces = [...pieces, { n, bytes: this.#fill - from }];
    }
    const state: WriterState = {
      version: 2,
      uploadId: this.#uploadId,
      partSizeBytes: this.#partSize,
      parts: [...this.#parts.values()].sort((a, b) => a.partNumber - b.partNumber),
      size: this.#size,
      pieces,
      nextPiece: this.#nextPiece,
      writeId: randomUUID(),
    };
    this.#stateSent = state.uploadId ?? undefined;
    const out = await c.small.put(c.layout.writerState(this.#path), Buffer.from(JSON.stringify(state)), { contentType: 'application/json' });
    this.#persisted = { state, etag: out.etag };
    this.#pieces = pieces;
    this.#staged = this.#fill;
    this.#obsolete = [];
    this.#sessionStart = this.#size;
    if (dropped.length > 0) {
      // Best effort: a leftover piece is found by listing at commit or cancel, or by GC.
      this.#wroteStaging = true;
      await c.deleteKeys(dropped.map((n) => c.layout.writerTail(this.#path, n))).catch(() => undefined);
    }
  }

  /**
   * After a failure: a multipart upload this writer created but no state records would be
   * stored (and billed) until a lifecycle rule removes it, since no later writer can find it.
   * When the store is not answering, that request would only hold the client's error up: it
   * goes on in the background then (garbage collection aborts what it misses).
   */
  async #abortUnrecorded(cause: unknown): Promise<void> {
    const uploadId = this.#uploadId ?? (await this.#creating?.catch(() => undefined));
    if (!uploadId || uploadId === this.#persisted?.state.uploadId) return;
    const aborting = (async () => {
      // A state naming it was sent and failed: the store may have stored it and lost only its
      // answer (a reset, a 500 after the write). Aborting then would leave a state that names
      // a multipart upload gone: the upload could never be finished. So look first, and keep
      // it unless the stored state surely names another (or none).
      if (this.#stateSent === uploadId && !(await this.#surelyUnrecorded(uploadId))) return;
      await abortUpload(this.#ctx, this.#key, uploadId);
    })().catch(() => undefined);
    if (!(cause instanceof StorageUnavailableError)) await aborting;
  }

  /** Whether the stored state names another multipart upload than `uploadId`, or there is none; false when the store cannot say. */
  async #surelyUnrecorded(uploadId: string): Promise<boolean> {
    try {
      return (await loadWriterState(this.#ctx, this.#path))?.state.uploadId !== uploadId;
    } catch {
      return false;
    }
  }

  #checkPartNumber(): void {
    if (this.#nextPart > MAX_PARTS) {
      throw new Error(`S3 upload ${this.#path} exceeds ${MAX_PARTS} parts of ${this.#partSize} bytes` +
        (this.#partSize < this.#ctx.buffers.partSizeBytes ? ' (its part size followed its first chunk: push larger chunks)' : '; raise partSize'));
    }
  }

  /** Waits for every part in flight; their failures are in #error. */
  async #settle(): Promise<void> {
    while (this.#inflight.size > 0) await Promise.all([...this.#inflight]);
  }

  #fail(err: unknown): void {
    this.#error ??= err;
  }

  #throwIfFailed(): void {
    if (this.#error !== undefined) throw this.#error;
  }

  #releaseBuffer(): void {
    if (this.#buf) this.#ctx.buffers.release(this.#buf);
    this.#buf = undefined;
    this.#fill = 0;
    this.#staged = 0;
  }

  #enter(op: string, next: State): void {
    if (this.#state === 'writing') throw new Error(`FileWriter.${op}(): a write() is still in progress; await it first`);
    if (this.#state !== 'open') throw new Error(`FileWriter.${op}(): the writer is already ${this.#state}`);
    this.#state = next;
  }
}

/** Reads a stream into `into` (a part buffer's memory); returns the bytes read (more than fit is an error). */
async function readInto(body: Readable, into: Buffer): Promise<number> {
  let n = 0;
  for await (const chunk of body as AsyncIterable<Uint8Array>) {
    if (n + chunk.byteLength > into.byteLength) {
      body.destroy();
      return n + chunk.byteLength;
    }
    copyInto(into, chunk, n);
    n += chunk.byteLength;
  }
  return n;
}

/** CopySource is `bucket/key`, URL-encoded (keys here are [A-Za-z0-9._/-], but be exact). */
export function copySource(bucket: string, key: string): string {
  return `${bucket}/${key.split('/').map(encodeURIComponent).join('/')}`;
}
