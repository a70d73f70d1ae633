import {
  AbortMultipartUploadCommand, CompleteMultipartUploadCommand, CreateMultipartUploadCommand, DeleteObjectCommand,
  GetObjectCommand, HeadObjectCommand, PutObjectCommand, UploadPartCommand, UploadPartCopyCommand, type S3Client,
} from '@aws-sdk/client-s3';
import type { Readable } from 'node:stream';
import { PathNotFoundError, type FileWriter } from '../driver.js';
import { isNoSuchKey, isNoSuchUpload } from './errors.js';
import type { Layout } from './layout.js';
import type { PartBuffer, PartBufferPool } from './part-buffers.js';

/** A byte range of a buffer, as the hashing pool takes it (no copy for a SharedArrayBuffer). */
export interface BytesView {
  buffer: SharedArrayBuffer | ArrayBuffer;
  byteOffset: number;
  length: number;
}

/** Base64 MD5 of the bytes, for Content-MD5; the server computes it in its hashing workers. */
export type Md5Function = (bytes: BytesView) => Promise<string>;

/** S3 allows parts numbered 1 to 10,000 (AWS "Amazon S3 multipart upload limits"). */
export const MAX_PARTS = 10_000;

export interface PartRecord {
  partNumber: number;
  /** As UploadPart returned it, quotes included; CompleteMultipartUpload wants it back. */
  etag: string;
  /** Base64 MD5 of the part ('' for parts copied from an existing object). */
  md5: string;
  size: number;
}

/**
 * What a writer leaves in the bucket at close() (layout.ts: `_s3/writers/<path>.json`), so
 * that any instance can continue the upload. Parts 1..n are all `partSizeBytes` long; the
 * `tailBytes` after them are in the tail object of this `generation`, and become the start
 * of part n+1. `uploadId` is null until the first part is full.
 */
export interface WriterState {
  version: 1;
  uploadId: string | null;
  partSizeBytes: number;
  parts: PartRecord[];
  size: number;
  tailBytes: number;
  generation: number;
}

/** What the driver lends its writers. */
export interface WriterContext {
  readonly client: S3Client;
  readonly bucket: string;
  readonly layout: Layout;
  readonly buffers: PartBufferPool;
  readonly md5: Md5Function;
  readonly maxPartsInFlight: number;
  readonly bufferWaitTimeoutMs: number;
  /** Every key under a prefix. */
  readonly listKeys: (prefix: string) => Promise<string[]>;
  /** Deletes keys, ignoring missing ones. */
  readonly deleteKeys: (keys: string[]) => Promise<void>;
}

export async function loadWriterState(ctx: WriterContext, path: string): Promise<{ state: WriterState; modTime: Date } | undefined> {
  try {
    const out = await ctx.client.send(new GetObjectCommand({ Bucket: ctx.bucket, Key: ctx.layout.writerState(path) }));
    const state = JSON.parse(await out.Body!.transformToString('utf8')) as WriterState;
    if (state.version !== 1) throw new Error(`S3 writer state of ${path}: unknown version ${String(state.version)}`);
    return { state, modTime: out.LastModified ?? new Date() };
  } catch (err) {
    if (isNoSuchKey(err)) return undefined;
    throw err;
  }
}

/**
 * Removes a path's in-progress upload: aborts its multipart upload (parts are stored, and
 * billed, until then), then deletes its state and tails. Returns whether there was one.
 */
export async function discardWriter(ctx: WriterContext, path: string, known?: WriterState): Promise<boolean> {
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

/** Deletes the state and every tail generation (a close that failed halfway can leave one behind). */
async function removeStaging(ctx: WriterContext, path: string): Promise<void> {
  const l = ctx.layout;
  const keys = new Set((await ctx.listKeys(l.writerKeysPrefix(path))).filter((k) => l.isOwnWriterKey(path, k)));
  keys.add(l.writerState(path));
  await ctx.deleteKeys([...keys]);
}

type State = 'open' | 'writing' | 'closed' | 'committed' | 'cancelled';

/**
 * The S3 FileWriter: one writer path is one multipart upload, resumable across writer
 * sessions and instances (distribution driver/s3-aws writer, without its re-upload cycle).
 *
 * Bytes are copied into part buffers of exactly `partSizeBytes` (the driver-wide pool,
 * part-buffers.ts) however the caller chunks them. A full buffer becomes the next part at
 * once and uploads while write() goes on; write() waits only when this writer has
 * `maxPartsInFlight` parts uploading or the pool has no buffer. So every part but the last
 * has the same size, which R2 requires and S3's 5 MiB minimum is met.
 *
 * close() keeps what did not fill a part as a small tail object and records the parts in the
 * state object; the next writer(path, true) loads the tail into its first buffer. Nothing
 * already stored is downloaded, copied or re-uploaded. The multipart upload is created with
 * the first full part; an upload smaller than one part is a single PutObject at commit().
 *
 * Failures: a part that fails (after the SDK's retries) fails the writer: write/close/commit
 * reject, and the state stays as the last successful close() left it, so the upload resumes
 * from there (parts uploaded since get the same numbers again, which replaces them).
 *
 * An empty writer leaves no trace: writer(path, false) removes what was at the path, and a
 * close() with no new bytes writes nothing, so the path stays absent until bytes arrive.
 */
export class S3FileWriter implements FileWriter {
  readonly #ctx: WriterContext;
  readonly #path: string;
  readonly #key: string;
  readonly #partSize: number;
  #state: State = 'open';
  #uploadId: string | null = null;
  #creating: Promise<string> | undefined;
  readonly #parts = new Map<number, PartRecord>();
  #nextPart = 1;
  #size = 0;
  #buf: PartBuffer | undefined;
  #fill = 0;
  readonly #inflight = new Set<Promise<void>>();
  #error: unknown;
  /** What the stored state says (generation 0: there is none). */
  #persisted = { size: 0, tailBytes: 0, generation: 0 };
  #persistedUploadId: string | null = null;
  /** A tail may have been written by this writer: clean up by listing. */
  #staged = false;

  private constructor(ctx: WriterContext, path: string, partSize: number) {
    this.#ctx = ctx;
    this.#path = path;
    this.#key = ctx.layout.key(path);
    this.#partSize = partSize;
  }

  /** Opens a writer; see StorageDriver.writer. `path` must be checked already. */
  static async open(ctx: WriterContext, path: string, append: boolean): Promise<S3FileWriter> {
    const key = ctx.layout.key(path);
    if (!append) {
      // Truncate: the old content goes now, so stat() and a later append see the new writer.
      await Promise.all([
        discardWriter(ctx, path),
        ctx.client.send(new DeleteObjectCommand({ Bucket: ctx.bucket, Key: key })),
      ]);
      return new S3FileWriter(ctx, path, ctx.buffers.partSizeBytes);
    }
    const [loaded, objectSize] = await Promise.all([loadWriterState(ctx, path), headSize(ctx, key)]);
    if (objectSize !== undefined) {
      // A committed object wins over a state: both exist only when a commit stopped between
      // completing the object and removing the state, which is then stale.
      if (loaded) await discardWriter(ctx, path, loaded.state);
      const w = new S3FileWriter(ctx, path, ctx.buffers.partSizeBytes);
      await w.#adopt(objectSize);
      return w;
    }
    if (!loaded) throw new PathNotFoundError(path);
    const { state } = loaded;
    if (state.partSizeBytes > ctx.buffers.partSizeBytes) {
      throw new Error(`S3 upload ${path} was started with ${state.partSizeBytes}-byte parts; this driver's parts are ${ctx.buffers.partSizeBytes} bytes (set partSize back to continue it)`);
    }
    const w = new S3FileWriter(ctx, path, state.partSizeBytes);
    w.#uploadId = state.uploadId;
    for (const p of state.parts) w.#parts.set(p.partNumber, p);
    w.#nextPart = state.parts.length + 1;
    w.#size = state.size;
    w.#persisted = { size: state.size, tailBytes: state.tailBytes, generation: state.generation };
    w.#persistedUploadId = state.uploadId;
    if (state.tailBytes > 0) {
      w.#buf = await ctx.buffers.acquire(ctx.bufferWaitTimeoutMs);
      try {
        const out = await ctx.client.send(new GetObjectCommand({ Bucket: ctx.bucket, Key: ctx.layout.writerTail(path, state.generation) }));
        w.#fill = await readInto(out.Body as Readable, w.#buf.bytes.subarray(0, state.tailBytes));
        if (w.#fill !== state.tailBytes) throw new Error(`S3 upload ${path}: tail object has ${w.#fill} bytes, state says ${state.tailBytes}`);
      } catch (err) {
        w.#releaseBuffer();
        throw err;
      }
    }
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
        this.#buf ??= await this.#ctx.buffers.acquire(this.#ctx.bufferWaitTimeoutMs);
        const n = Math.min(this.#partSize - this.#fill, data.byteLength - pos);
        this.#buf.bytes.set(data.subarray(pos, pos + n), this.#fill);
        this.#fill += n;
        pos += n;
        this.#size += n;
        if (this.#fill === this.#partSize) {
          while (this.#inflight.size >= this.#ctx.maxPartsInFlight) await Promise.race(this.#inflight);
          this.#throwIfFailed();
          this.#startPart();
        }
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
      // An empty PATCH changes nothing stored: no part, no tail, no new state.
      if (this.#size !== this.#persisted.size) await this.#persist();
    } catch (err) {
      await this.#abortUnrecorded();
      throw err;
    } finally {
      this.#releaseBuffer();
    }
  }

  async commit(): Promise<void> {
    this.#enter('commit', 'committed');
    const c = this.#ctx;
    try {
      await this.#settle();
      this.#throwIfFailed();
      if (this.#parts.size === 0 && this.#creating === undefined && this.#uploadId === null) {
        // Less than one part in all: a single PutObject (an empty blob is a 0-byte object).
        const length = this.#fill;
        const body = this.#buf ? Buffer.from(this.#buf.buffer, 0, length) : Buffer.alloc(0);
        // radosgw 16 answers BadDigest to the (correct) MD5 of an empty body: send none then.
        const md5 = length > 0 ? await c.md5({ buffer: this.#buf!.buffer, byteOffset: 0, length }) : undefined;
        await c.client.send(new PutObjectCommand({ Bucket: c.bucket, Key: this.#key, Body: body, ContentLength: length, ContentMD5: md5 }));
      } else {
        // The empty final chunk never becomes a part: a non-final part must be full, and an
        // empty last part would be refused (EntityTooSmall) or be a wasted request.
        if (this.#fill > 0) {
          this.#checkPartNumber();
          const rec = await this.#uploadPart(this.#nextPart, this.#buf!, this.#fill);
          this.#parts.set(rec.partNumber, rec);
        }
        const uploadId = await this.#ensureUpload();
        const parts = [...this.#parts.values()].sort((a, b) => a.partNumber - b.partNumber);
        // radosgw answers with an empty ETag here; nothing below relies on it.
        await c.client.send(new CompleteMultipartUploadCommand({
          Bucket: c.bucket,
          Key: this.#key,
          UploadId: uploadId,
          MultipartUpload: { Parts: parts.map((p) => ({ PartNumber: p.partNumber, ETag: p.etag })) },
        }));
      }
      this.#releaseBuffer();
      if (this.#persisted.generation > 0 || this.#staged) await removeStaging(c, this.#path);
    } catch (err) {
      this.#error ??= err;
      await this.#abortUnrecorded();
      throw err;
    } finally {
      this.#releaseBuffer();
    }
  }

  async cancel(): Promise<void> {
    this.#enter('cancel', 'cancelled');
    try {
      await this.#settle();
      const uploadId = this.#uploadId ?? (await this.#creating?.catch(() => undefined));
      if (uploadId) await abortUpload(this.#ctx, this.#key, uploadId);
      if (this.#persisted.generation > 0 || this.#staged) await removeStaging(this.#ctx, this.#path);
    } finally {
      this.#releaseBuffer();
    }
  }

  /**
   * Records nothing (FileWriter.abandon): parts in flight finish, the buffer goes back to the
   * pool, and a multipart upload that this writer created and no state names is aborted. The
   * stored state stays as the last close() left it.
   */
  async abandon(): Promise<void> {
    this.#enter('abandon', 'cancelled');
    try {
      await this.#settle();
      await this.#abortUnrecorded();
    } finally {
      this.#releaseBuffer();
    }
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
      let next = 0;
      const copyParts = async (): Promise<void> => {
        while (next < fullParts) {
          const partNumber = ++next;
          const first = (partNumber - 1) * this.#partSize;
          const uploadId = await this.#ensureUpload();
          const out = await c.client.send(new UploadPartCopyCommand({
            Bucket: c.bucket,
            Key: this.#key,
            UploadId: uploadId,
            PartNumber: partNumber,
            CopySource: copySource(c.bucket, this.#key),
            CopySourceRange: `bytes=${first}-${first + this.#partSize - 1}`,
          }));
          const etag = out.CopyPartResult?.ETag;
          if (!etag) throw new Error(`UploadPartCopy of ${this.#path} part ${partNumber} returned no ETag`);
          this.#parts.set(partNumber, { partNumber, etag, md5: '', size: this.#partSize });
        }
      };
      await Promise.all(Array.from({ length: Math.min(fullParts, c.maxPartsInFlight) }, copyParts));
      this.#nextPart = fullParts + 1;
      const rest = objectSize - fullParts * this.#partSize;
      if (rest > 0) {
        this.#buf = await c.buffers.acquire(c.bufferWaitTimeoutMs);
        const out = await c.client.send(new GetObjectCommand({ Bucket: c.bucket, Key: this.#key, Range: `bytes=${objectSize - rest}-${objectSize - 1}` }));
        this.#fill = await readInto(out.Body as Readable, this.#buf.bytes.subarray(0, rest));
        if (this.#fill !== rest) throw new Error(`S3 object ${this.#path} changed while being opened for append`);
      }
      this.#size = objectSize;
      await this.#persist();
      await c.client.send(new DeleteObjectCommand({ Bucket: c.bucket, Key: this.#key }));
    } catch (err) {
      const uploadId = this.#uploadId ?? (await this.#creating?.catch(() => undefined));
      if (uploadId) await abortUpload(c, this.#key, uploadId).catch(() => undefined);
      this.#releaseBuffer();
      throw err;
    }
  }

  /** Sends the full buffer as the next part; it returns to the pool when the part is stored. */
  #startPart(): void {
    this.#checkPartNumber();
    const buf = this.#buf!;
    const length = this.#fill;
    const partNumber = this.#nextPart++;
    this.#buf = undefined;
    this.#fill = 0;
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
    // The MD5 is computed by a worker straight from the shared buffer while the multipart
    // upload is being created (first part) or not at all (later parts): no waiting in line.
    const [uploadId, md5] = await Promise.all([this.#ensureUpload(), c.md5({ buffer: buf.buffer, byteOffset: 0, length })]);
    const out = await c.client.send(new UploadPartCommand({
      Bucket: c.bucket,
      Key: this.#key,
      UploadId: uploadId,
      PartNumber: partNumber,
      Body: Buffer.from(buf.buffer, 0, length),
      ContentLength: length,
      ContentMD5: md5,
    }));
    if (!out.ETag) throw new Error(`UploadPart ${partNumber} of ${this.#path} returned no ETag`);
    return { partNumber, etag: out.ETag, md5, size: length };
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
   * Stores the tail (a new generation, so the old state and tail stay valid until the new
   * state is written), then the state, then deletes the old tail. A failure anywhere leaves
   * the previous state usable.
   */
  async #persist(): Promise<void> {
    const c = this.#ctx;
    const generation = this.#persisted.generation + 1;
    const tailBytes = this.#fill;
    if (tailBytes > 0) {
      const buf = this.#buf!;
      this.#staged = true;
      const md5 = await c.md5({ buffer: buf.buffer, byteOffset: 0, length: tailBytes });
      await c.client.send(new PutObjectCommand({
        Bucket: c.bucket,
        Key: c.layout.writerTail(this.#path, generation),
        Body: Buffer.from(buf.buffer, 0, tailBytes),
        ContentLength: tailBytes,
        ContentMD5: md5,
      }));
    }
    const state: WriterState = {
      version: 1,
      uploadId: this.#uploadId,
      partSizeBytes: this.#partSize,
      parts: [...this.#parts.values()].sort((a, b) => a.partNumber - b.partNumber),
      size: this.#size,
      tailBytes,
      generation,
    };
    await c.client.send(new PutObjectCommand({
      Bucket: c.bucket,
      Key: c.layout.writerState(this.#path),
      Body: Buffer.from(JSON.stringify(state)),
      ContentType: 'application/json',
    }));
    const old = this.#persisted;
    this.#persisted = { size: this.#size, tailBytes, generation };
    this.#persistedUploadId = this.#uploadId;
    if (old.tailBytes > 0) {
      // Best effort: a leftover tail is found by listing at commit or cancel.
      this.#staged = true;
      await c.client.send(new DeleteObjectCommand({ Bucket: c.bucket, Key: c.layout.writerTail(this.#path, old.generation) })).catch(() => undefined);
    }
  }

  /**
   * After a failure: a multipart upload this writer created but no state records would be
   * stored (and billed) until a lifecycle rule removes it, since no later writer can find it.
   */
  async #abortUnrecorded(): Promise<void> {
    const uploadId = this.#uploadId ?? (await this.#creating?.catch(() => undefined));
    if (!uploadId || uploadId === this.#persistedUploadId) return;
    await abortUpload(this.#ctx, this.#key, uploadId).catch(() => undefined);
  }

  #checkPartNumber(): void {
    if (this.#nextPart > MAX_PARTS) {
      throw new Error(`S3 upload ${this.#path} exceeds ${MAX_PARTS} parts of ${this.#partSize} bytes; raise partSize`);
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
  }

  #enter(op: string, next: State): void {
    if (this.#state === 'writing') throw new Error(`FileWriter.${op}(): a write() is still in progress; await it first`);
    if (this.#state !== 'open') throw new Error(`FileWriter.${op}(): the writer is already ${this.#state}`);
    this.#state = next;
  }
}

async function headSize(ctx: WriterContext, key: string): Promise<number | undefined> {
  try {
    const out = await ctx.client.send(new HeadObjectCommand({ Bucket: ctx.bucket, Key: key }));
    return out.ContentLength ?? 0;
  } catch (err) {
    if (isNoSuchKey(err)) return undefined;
    throw err;
  }
}

/** Reads a stream into `into`; returns the bytes read (more than fit is an error). */
async function readInto(body: Readable, into: Uint8Array): Promise<number> {
  let n = 0;
  for await (const chunk of body as AsyncIterable<Uint8Array>) {
    if (n + chunk.byteLength > into.byteLength) {
      body.destroy();
      return n + chunk.byteLength;
    }
    into.set(chunk, n);
    n += chunk.byteLength;
  }
  return n;
}

/** CopySource is `bucket/key`, URL-encoded (keys here are [A-Za-z0-9._/-], but be exact). */
export function copySource(bucket: string, key: string): string {
  return `${bucket}/${key.split('/').map(encodeURIComponent).join('/')}`;
}
