import {
  AbortMultipartUploadCommand, CopyObjectCommand, DeleteObjectsCommand, GetObjectCommand, HeadBucketCommand,
  ListMultipartUploadsCommand, ListObjectsV2Command, ListPartsCommand, type ListObjectsV2CommandOutput, S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { Readable } from 'node:stream';
import { channels, type S3RequestMessage } from '../../diagnostics.js';
import { ReadBuffers } from '../file-reader.js';
import {
  checkLimit, compareKeys, PathNotFoundError, type FileInfo, type FileWriter, type IncompleteWrite, type ListedChild,
  type ListOptions, type ListPage, type StorageDriver, type WriterOptions,
} from '../driver.js';
import { storeNow } from './clock.js';
import { deadlineSettings, reportUnavailable } from './deadlines.js';
import {
  errorName, explainBucketError, isConditionalConflict, isInvalidRange, isNoSuchKey, isNoSuchUpload, isPreconditionFailed,
} from './errors.js';
import { INTERNAL_SEGMENT, Layout } from './layout.js';
import { pageMarkers } from './pages.js';
import { PartBufferPool } from './part-buffers.js';
import { rangeFetch } from './range-fetch.js';
import { RangedReader, ReadAhead, type RangedReadOptions } from './reader.js';
import { SmallRequests } from './small-requests.js';

import { TailCache } from './tail-cache.js';
import type { S3Location } from './url.js';
import {
  copySource, discardWriter, loadWriterState, S3FileWriter, type PayloadHashFunction, type WriterContext, type WriterState,
} from './writer.js';

export type { BytesView, PayloadHashFunction } from './writer.js';

export interface S3DriverOptions extends S3Location {
  /**
   * The SHA-256 (hex) parts, tails and large objects are signed with (writer.ts
   * signedPayload). The server passes its hashing pool (HashPool.oneShot(bytes, 'sha256',
   * 'hex')) so no part is hashed on the main thread; without one, node:crypto hashes here.
   */
  payloadHash?: PayloadHashFunction;
  /** Attempts per request, the first included (deadlines.ts: backoff with jitter, within 2 x timeout). */
  maxAttempts?: number;
  /** Keep-alive sockets per endpoint. */
  maxSockets?: number;
  /** How long a write() waits for a free part buffer before it fails (part-buffers.ts). */
  bufferWaitTimeoutMs?: number;
  /** Extra client settings (tests: credentials). */
  clientConfig?: S3ClientConfig;
  /** Reads fetch ranges of this size ahead of the client (reader.ts). */
  readWindowBytes?: number;
  /** Windows one read fetches ahead of the one it streams. */
  readWindowsAhead?: number;
}

/** putContent above this size gets its payload hash from the pool; below, hashing it here is faster than a round trip. */
const INLINE_HASH_MAX_BYTES = 1024 * 1024;
const DELETE_BATCH = 1000;
/** Keys of one DeleteObjects that failed and are deleted again one by one; more failed, and the store is in trouble: the call fails. */
const MAX_DELETE_RETRIES = 16;
const READ_WINDOW_BYTES = 16 * 1024 * 1024;
const READ_WINDOWS_AHEAD = 3;
/** Blob reads from an http:// store land in recycled chunks of this size (plain-get.ts)... */
const READ_CHUNK_BYTES = 256 * 1024;
/** ...of which this many are kept while idle (16 MiB)... */
const READ_CHUNKS_IDLE = 64;
/** ...and at most this many bytes of them are in use (file-reader.ts, ReadBuffers: clients that stop reading hold theirs). */
const READ_CHUNKS_MAX_IN_USE_BYTES = 64 * 1024 * 1024;
/** Uploads whose last state this instance remembers (tail-cache.ts); their buffers are bounded by the pool. */
const MAX_HELD_TAILS = 4096;

/**
 * Stores objects in an S3 bucket under a key prefix: driver path `/a/b` is key
 * `<prefix>a/b`, directories are key prefixes. Writers are multipart uploads whose state
 * lives in the bucket next to the data (layout.ts, writer.ts), so any instance serving the
 * same bucket can continue an upload. Only this directory imports @aws-sdk (STYLE.md).
 */
export class S3Driver implements StorageDriver {
  readonly name = 's3';
  readonly bucket: string;
  readonly prefix: string;
  readonly partSizeBytes: number;
  readonly #client: S3Client;
  /** HeadObject, GetObject, PutObject and DeleteObject of small objects, off the SDK's stack (small-requests.ts). */
  readonly #small: SmallRequests;
  readonly #layout: Layout;
  readonly #writers: WriterContext;
  readonly #tails: TailCache;
  readonly #readAhead: ReadAhead;
  readonly #read: Omit<RangedReadOptions, 'key' | 'offset' | 'length' | 'budget'>;
  readonly #endpoint: string | undefined;
  /**
   * A presigned GetObject URL for `path`, valid `expiresInSeconds`, so a blob GET can
   * answer 307 and let the client fetch from S3 directly. Present only with `redirect=true`.
   */
  readonly redirectURL?: (path: string, expiresInSeconds: number) => Promise<string>;

  readonly maxConcurrentWriters: number;
  /** The part buffers writers hold (part-buffers.ts), for metrics. */
  readonly writeBuffers: { readonly inUseBytes: number; readonly heldBytes: number };

  constructor(opts: S3DriverOptions) {
    this.bucket = opts.bucket;
    this.prefix = opts.prefix;
    this.partSizeBytes = opts.partSizeBytes;
    this.#endpoint = opts.endpoint;
    this.#layout = new Layout(opts.prefix);
    const maxSockets = opts.maxSockets ?? 64;
    const maxAttempts = opts.maxAttempts ?? 5;
    const httpAgent = new HttpAgent({ keepAlive: true, maxSockets });
    const httpsAgent = new HttpsAgent({ keepAlive: true, maxSockets });
    const deadlines = deadlineSettings({ timeoutMs: opts.timeoutMs, maxAttempts });
    this.#client = new S3Client({
      region: opts.region,
      endpoint: opts.endpoint,
      forcePathStyle: opts.forcePathStyle,
      // The SDK's default (WHEN_SUPPORTED) adds CRC32 checksums to every upload, and with
      // streamed bodies uses aws-chunked encoding that radosgw refuses (411). Parts carry
      // a signed SHA-256 from the hashing pool instead (writer.ts signedPayload).
      requestChecksumCalculation: opts.sdkChecksums ? 'WHEN_SUPPORTED' : 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      // Timeouts, 503 SlowDown, 500s and connection resets are retried with backoff, within
      // a time budget (deadlines.ts); bodies are Buffers, so a retry can resend them.
      maxAttempts,
      retryStrategy: deadlines.retryStrategy,
      requestHandler: {
        httpAgent,
        httpsAgent,
        connectionTimeout: deadlines.connectionTimeout,
        // Inactivity on the socket, not the whole request: a slow 16 MiB part is fine.
        socketTimeout: deadlines.socketTimeout,
      },
      ...opts.clientConfig,
    });
    reportUnavailable(this.#client);
    this.#small = new SmallRequests({
      client: this.#client, bucket: this.bucket, httpAgent, httpsAgent,
      connectTimeoutMs: deadlines.connectionTimeout, timeoutMs: deadlines.socketTimeout, retry: deadlines.retryStrategy,
      viaSdk: opts.sdkChecksums,
    });
    // Each command once, around the SDK's retries (they run in a later step): its name,
    // attempts and outcome, for metrics (src/metrics/). Costs nothing without subscribers.
    this.#client.middlewareStack.add(
      (next, context) => async (args) => {
        const ch = channels.s3Request;
        if (!ch.hasSubscribers) return next(args);
        const t0 = performance.now();
        const operation = (context.commandName ?? 'Unknown').replace(/Command$/, '');
        try {
          const out = await next(args);
          // getSignedUrl runs the stack too, and signs without sending anything.
          if ((out.output as { presigned?: unknown }).presigned !== undefined) return out;
          const attempts = (out.output as { $metadata?: { attempts?: number } }).$metadata?.attempts ?? 1;
          ch.publish({ operation, attempts, error: undefined, ms: performance.now() - t0 } satisfies S3RequestMessage);
          return out;
        } catch (err) {
          const attempts = (err as { $metadata?: { attempts?: number } }).$metadata?.attempts ?? 1;
          ch.publish({ operation, attempts, error: errorName(err), ms: performance.now() - t0 } satisfies S3RequestMessage);
          throw err;
        }
      },
      { step: 'initialize', name: 'hoistRequestMetrics' },
    );
    this.#readAhead = new ReadAhead(opts.maxReadAheadBytes);
    const readBuffers = new ReadBuffers(READ_CHUNK_BYTES, READ_CHUNKS_IDLE, READ_CHUNKS_MAX_IN_USE_BYTES);
    this.#read = {
      fetch: rangeFetch({ client: this.#client, bucket: this.bucket, httpAgent, httpsAgent, timeoutMs: opts.timeoutMs, buffers: readBuffers }),
      buffers: readBuffers,
      windowBytes: opts.readWindowBytes ?? READ_WINDOW_BYTES,
      windowsAhead: opts.readWindowsAhead ?? READ_WINDOWS_AHEAD,
      maxAttempts,
      retryForMs: 2 * opts.timeoutMs,
      retry: deadlines.retryStrategy,
    };
    // Kept once all are free: one upload's share, the part it fills and those in flight.
    const buffers = new PartBufferPool(opts.partSizeBytes, opts.maxBufferedBytes, 1 + opts.maxPartsInFlight);
    this.writeBuffers = buffers;
    this.#tails = new TailCache(buffers, MAX_HELD_TAILS);
    // Half the buffers may be parts being filled, one per writer; the other half carry parts
    // in flight, which free themselves by finishing on the network alone.
    this.maxConcurrentWriters = Math.max(1, Math.floor(buffers.maxBuffers / 2));
    const payloadHash = opts.payloadHash ?? (async (b) => createHash('sha256').update(new Uint8Array(b.buffer, b.byteOffset, b.length)).digest('hex'));
    this.#writers = {
      client: this.#client,
      small: this.#small,
      bucket: this.bucket,
      layout: this.#layout,
      buffers,
      tails: this.#tails,
      payloadHash,
      maxPartsInFlight: opts.maxPartsInFlight,
      bufferWaitTimeoutMs: opts.bufferWaitTimeoutMs ?? 30_000,
      listKeys: (prefix) => this.#listKeys(prefix),
      deleteKeys: (keys) => this.#deleteKeys(keys),
    };
    if (opts.redirect) {
      this.redirectURL = (path, expiresInSeconds) => {
        const key = this.#layout.key(this.#layout.checkObject(path));
        return getSignedUrl(this.#client, new GetObjectCommand({ Bucket: this.bucket, Key: key }), { expiresIn: expiresInSeconds, signingDate: storeNow(this.#client) });
      };
    }
  }

  /**
   * Opens the driver and proves at once that the bucket exists and the credentials work
   * (HeadBucket), so a bad configuration stops start-up with a sentence, not the first push
   * with a 500.
   */
  static async open(opts: S3DriverOptions): Promise<S3Driver> {
    const driver = new S3Driver(opts);
    try {
      await driver.#client.send(new HeadBucketCommand({ Bucket: driver.bucket }));
    } catch (err) {
      driver.#client.destroy();
      throw new Error(`s3 storage: ${explainBucketError(err, opts.bucket, opts.endpoint)}`, { cause: err });
    }
    return driver;
  }

  async getContent(path: string): Promise<Buffer> {
    const key = this.#key(path);
    try {
      return (await this.#small.get(key)).body;
    } catch (err) {
      throw notFound(err, path);
    }
  }

  async putContent(path: string, content: Uint8Array, opts: { ifNotExists?: boolean } = {}): Promise<boolean> {
    const key = this.#key(path);
    const body = Buffer.from(content.buffer, content.byteOffset, content.byteLength);
    if (!opts.ifNotExists && content.byteLength > this.partSizeBytes) {
      // One-shot upload of something large: lib-storage cuts it into parts, sends them in
      // parallel, and falls back to a single PutObject when it turns out small.
      await new Upload({
        client: this.#client,
        params: { Bucket: this.bucket, Key: key, Body: body },
        partSize: this.partSizeBytes,
        queueSize: this.#writers.maxPartsInFlight,
      }).done();
      return true;
    }
    // Small bodies (records, manifests) are hashed where they are signed (small-requests.ts).
    const sha256 = content.byteLength <= INLINE_HASH_MAX_BYTES
      ? undefined
      : await this.#writers.payloadHash({ buffer: content.buffer, byteOffset: content.byteOffset, length: content.byteLength });
    for (let attempt = 1; ; attempt++) {
      try {
        await this.#small.put(key, body, { sha256, ifNotExists: opts.ifNotExists });
        return true;
      } catch (err) {
        if (opts.ifNotExists && isPreconditionFailed(err)) return false;
        // A racing conditional write to the same key is still in progress: ask again.
        if (opts.ifNotExists && isConditionalConflict(err) && attempt < 5) continue;
        throw err;
      }
    }
  }

  async reader(path: string, offset = 0, length?: number): Promise<Readable> {
    const key = this.#key(path);
    checkRange(offset, length);
    if (length === 0) {
      await this.#head(path, key);
      return Readable.from([], { objectMode: false });
    }
    try {
      // To the end: the object's size says where that is (callers mostly know the length).
      let n = length;
      if (n === undefined) {
        const info = await this.stat(path);
        if (info.isDir) throw new PathNotFoundError(path);
        n = Math.max(0, info.size - offset);
      }
      if (n === 0) return Readable.from([], { objectMode: false });
      return await RangedReader.open({ key, offset, length: n, budget: this.#readAhead, ...this.#read });
    } catch (err) {
      // 416: the object exists, and the offset is at or past its end (or it is empty).
      if (isInvalidRange(err)) return Readable.from([], { objectMode: false });
      throw notFound(err, path);
    }
  }

  async writer(path: string, append: boolean, opts: WriterOptions = {}): Promise<FileWriter> {
    this.#layout.checkObject(path);
    return S3FileWriter.open(this.#writers, path, append, opts.sizeHintBytes, opts.absent === true);
  }

  async stat(path: string): Promise<FileInfo> {
    this.#layout.check(path);
    if (path === '/') return { path, size: 0, modTime: new Date(0), isDir: true };
    const key = this.#layout.key(path);
    const out = await this.#small.headIfAny(key);
    if (out) return { path, size: out.size, modTime: out.modTime, isDir: false };
    // Not an object: a directory (of objects, or of uploads in progress), or an upload in
    // progress, whose size is what its writers closed with (the upload status needs it).
    const [child, writerChild, writer] = await Promise.all([
      this.#firstKey(this.#layout.dirPrefix(path)),
      this.#firstKey(this.#layout.writersDirPrefix(path)),
      loadWriterState(this.#writers, path),
    ]);
    const dir = child ?? writerChild;
    if (dir) return { path, size: 0, modTime: dir.modTime, isDir: true };
    if (writer) return { path, size: writer.state.size, modTime: writer.modTime, isDir: false };
    throw new PathNotFoundError(path);
  }

  async list(path: string): Promise<string[]> {
    this.#layout.check(path);
    const base = path === '/' ? '/' : `${path}/`;
    const children = new Set<string>();
    const [objects, writers] = await Promise.all([
      this.#listChildren(this.#layout.dirPrefix(path)),
      this.#listChildren(this.#layout.writersDirPrefix(path)),
    ]);
    for (const name of [...objects.files, ...objects.dirs]) {
      if (path === '/' && name === INTERNAL_SEGMENT) continue;
      children.add(base + name);
    }
    // Uploads in progress exist for stat(); list them too, as fs lists a file being written.
    // Their tails are not paths.
    for (const name of writers.files) {
      if (name.endsWith('.json')) children.add(base + name.slice(0, -'.json'.length));
    }
    for (const name of writers.dirs) children.add(base + name);
    const valid = [...children].filter((p) => this.#layout.pathOf(this.#layout.key(p)) !== undefined).sort();
    if (valid.length === 0 && path !== '/') throw new PathNotFoundError(path);
    return valid;
  }

  /**
   * ListObjectsV2 with a delimiter, StartAfter and MaxKeys: one request per 1,000 children,
   * each with its size and LastModified. Objects being written (multipart uploads, whose
   * writer states list() also reports) are left out.
   */
  async listPage(path: string, opts: ListOptions = {}): Promise<ListPage> {
    this.#layout.check(path);
    checkLimit(opts.limit);
    const prefix = this.#layout.dirPrefix(path);
    const base = path === '/' ? '/' : `${path}/`;
    const limit = opts.limit ?? Infinity;
    const children: ListedChild[] = [];
    let token: string | undefined;
    let truncated = false;
    const nextPage = pageMarkers(`listing of ${prefix}`);
    do {
      const out = await this.#client.send(new ListObjectsV2Command({
        Bucket: this.bucket, Prefix: prefix, Delimiter: '/', MaxKeys: Math.min(1000, limit - children.length),
        ...(token ? { ContinuationToken: token } : opts.startAfter !== undefined ? { StartAfter: prefix + opts.startAfter } : {}),
      }));
      // Objects and common prefixes come as two lists, each in key order: merge them.
      const found: Array<{ key: string; child: ListedChild }> = [];
      for (const c of out.Contents ?? []) {
        if (!c.Key || c.Key.length <= prefix.length) continue;
        const name = c.Key.slice(prefix.length);
        found.push({ key: name, child: { path: base + name, isDir: false, ...(opts.details ? { size: c.Size ?? 0, modTime: c.LastModified ?? new Date(0) } : {}) } });
      }
      for (const p of out.CommonPrefixes ?? []) {
        if (!p.Prefix) continue;
        const name = p.Prefix.slice(prefix.length, -1);
        if (path === '/' && name === INTERNAL_SEGMENT) continue;
        found.push({ key: `${name}/`, child: { path: base + name, isDir: true } });
      }
      found.sort((a, b) => compareKeys(a.key, b.key));
      for (const f of found) if (this.#layout.pathOf(this.#layout.key(f.child.path)) !== undefined) children.push(f.child);
      truncated = out.IsTruncated === true;
      token = nextPage(truncated ? out.NextContinuationToken : undefined);
    } while (token && children.length < limit);
    return { children, truncated };
  }

  /** Server-side copy, then delete: S3 has no rename. The core moves only small objects. */
  async move(source: string, dest: string): Promise<void> {
    const from = this.#key(source);
    const to = this.#key(dest);
    try {
      await this.#client.send(new CopyObjectCommand({ Bucket: this.bucket, Key: to, CopySource: copySource(this.bucket, from) }));
    } catch (err) {
      throw notFound(err, source);
    }
    await this.#small.delete(from);
  }

  /**
   * Deletes the object at `path`, everything below it, and the uploads in progress there
   * (their multipart uploads are aborted: the registry cancels an upload by deleting its data).
   */
  async delete(path: string): Promise<void> {
    const key = this.#key(path);
    const l = this.#layout;
    const [exists, below, writersBelow, ownWriterKeys] = await Promise.all([
      this.#small.headIfAny(key).then((head) => head !== undefined),
      this.#listKeys(l.dirPrefix(path)),
      this.#listKeys(l.writersDirPrefix(path)),
      this.#listKeys(l.writerKeysPrefix(path)).then((keys) => keys.filter((k) => l.isOwnWriterKey(path, k))),
    ]);
    const writerKeys = [...writersBelow, ...ownWriterKeys];
    if (!exists && below.length === 0 && writerKeys.length === 0) throw new PathNotFoundError(path);
    // Abort first: a state must not go while its multipart upload lives on unreferenced.
    for (const stateKey of writerKeys) {
      const writerPath = l.pathOfWriterState(stateKey);
      if (writerPath) await discardWriter(this.#writers, writerPath);
    }
    await this.#deleteKeys([...(exists ? [key] : []), ...below, ...writerKeys]);
  }

  async close(): Promise<void> {
    this.#tails.clear();
    this.#client.destroy();
  }

  // --- abandoned writes (garbage collection) ---------------------------------------------

  /**
   * Multipart uploads under the prefix that no writer state records, and staged pieces that
   * their state does not name, idle since before `idleSince`. A multipart
   * upload's activity is its newest part (ListParts), so an upload still receiving parts
   * is never listed, however long ago it began. A writer in the middle of close() writes
   * its new piece, then its state: the piece is new, so it is not idle.
   */
  async listIncompleteWrites(idleSince: Date): Promise<IncompleteWrite[]> {
    const found: IncompleteWrite[] = [];
    const states = new Map<string, Promise<WriterState | undefined>>();
    const stateOf = (path: string): Promise<WriterState | undefined> => {
      let p = states.get(path);
      if (!p) states.set(path, (p = loadWriterState(this.#writers, path).then((s) => s?.state)));
      return p;
    };
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    const nextPage = pageMarkers(`listing of the multipart uploads under ${this.prefix}`);
    do {
      const out = await this.#client.send(new ListMultipartUploadsCommand({
        Bucket: this.bucket, Prefix: this.prefix, KeyMarker: keyMarker, UploadIdMarker: uploadIdMarker,
      }));
      for (const u of out.Uploads ?? []) {
        const path = u.Key ? this.#layout.pathOf(u.Key) : undefined;
        if (!path || !u.UploadId || (u.Initiated && u.Initiated >= idleSince)) continue;
        if ((await stateOf(path))?.uploadId === u.UploadId) continue;
        const parts = await this.#listParts(u.Key!, u.UploadId);
        let last = u.Initiated ?? new Date(0);
        for (const part of parts) if (part.lastModified > last) last = part.lastModified;
        if (last >= idleSince) continue;
        found.push({
          path, kind: 'multipart upload', bytes: parts.reduce((n, part) => n + part.size, 0), lastActivity: last,
          handle: JSON.stringify({ key: u.Key, uploadId: u.UploadId }),
        });
      }
      keyMarker = out.IsTruncated ? out.NextKeyMarker : undefined;
      uploadIdMarker = out.IsTruncated ? out.NextUploadIdMarker : undefined;
      if (keyMarker !== undefined) nextPage(`${keyMarker}\n${uploadIdMarker ?? ''}`);
    } while (keyMarker);
    const area = this.#layout.writersArea;
    for (const o of await this.#listObjects(area)) {
      const m = /^(.*)\.tail\.(\d+)$/.exec(o.key.slice(area.length));
      if (!m || o.lastModified >= idleSince) continue;
      const path = `/${m[1]!}`;
      const state = await stateOf(path);
      if (state?.pieces.some((p) => p.n === Number(m[2]))) continue;
      found.push({ path, kind: 'staging object', bytes: o.size, lastActivity: o.lastModified, handle: JSON.stringify({ key: o.key }) });
    }
    return found;
  }

  async abortIncompleteWrite(write: IncompleteWrite): Promise<boolean> {
    const h = JSON.parse(write.handle) as { key: string; uploadId?: string };
    if (!h.key.startsWith(this.prefix)) throw new Error(`not this driver's write: ${write.handle}`);
    // A writer that closed since the listing may have recorded it: then it is not abandoned.
    const state = (await loadWriterState(this.#writers, write.path))?.state;
    if (h.uploadId ? state?.uploadId === h.uploadId : state?.pieces.some((p) => h.key.endsWith(`.tail.${p.n}`))) return false;
    if (h.uploadId) {
      try {
        await this.#client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: h.key, UploadId: h.uploadId }));
      } catch (err) {
        if (!isNoSuchUpload(err)) throw err;
      }
      return true;
    }
    await this.#small.delete(h.key);
    return true;
  }

  async deleteObjects(paths: readonly string[]): Promise<void> {
    if (paths.length === 0) return;
    await this.#deleteKeys(paths.map((p) => this.#key(p)));
  }

  async #listParts(key: string, uploadId: string): Promise<Array<{ size: number; lastModified: Date }>> {
    const parts: Array<{ size: number; lastModified: Date }> = [];
    let marker: string | undefined;
    const nextPage = pageMarkers(`ListParts of ${key}`);
    do {
      const out = await this.#client.send(new ListPartsCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId, PartNumberMarker: marker }));
      for (const p of out.Parts ?? []) parts.push({ size: p.Size ?? 0, lastModified: p.LastModified ?? new Date(0) });
      marker = nextPage(out.IsTruncated ? out.NextPartNumberMarker : undefined);
    } while (marker);
    return parts;
  }

  async #listObjects(prefix: string): Promise<Array<{ key: string; size: number; lastModified: Date }>> {
    const objects: Array<{ key: string; size: number; lastModified: Date }> = [];
    for await (const out of this.#objectPages(prefix)) {
      for (const c of out.Contents ?? []) if (c.Key) objects.push({ key: c.Key, size: c.Size ?? 0, lastModified: c.LastModified ?? new Date(0) });
    }
    return objects;
  }

  /** Every page of a ListObjectsV2 under `prefix`, in order; a page marker given twice fails it (pages.ts). */
  async *#objectPages(prefix: string, delimiter?: string): AsyncGenerator<ListObjectsV2CommandOutput> {
    let token: string | undefined;
    const nextPage = pageMarkers(`listing of ${prefix}`);
    do {
      const out = await this.#client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, Delimiter: delimiter, ContinuationToken: token }));
      yield out;
      token = nextPage(out.IsTruncated ? out.NextContinuationToken : undefined);
    } while (token);
  }

  #key(path: string): string {
    return this.#layout.key(this.#layout.checkObject(path));
  }

  async #head(path: string, key: string): Promise<void> {
    try {
      await this.#small.head(key);
    } catch (err) {
      throw notFound(err, path);
    }
  }

  async #firstKey(prefix: string): Promise<{ modTime: Date } | undefined> {
    const out = await this.#client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, MaxKeys: 1 }));
    const first = out.Contents?.[0];
    return first ? { modTime: first.LastModified ?? new Date(0) } : undefined;
  }

  /** Names of the direct children under a key prefix (objects and "directories"). */
  async #listChildren(prefix: string): Promise<{ files: string[]; dirs: string[] }> {
    const files: string[] = [];
    const dirs: string[] = [];
    for await (const out of this.#objectPages(prefix, '/')) {
      for (const c of out.Contents ?? []) if (c.Key && c.Key.length > prefix.length) files.push(c.Key.slice(prefix.length));
      for (const p of out.CommonPrefixes ?? []) if (p.Prefix) dirs.push(p.Prefix.slice(prefix.length, -1));
    }
    return { files, dirs };
  }

  async #listKeys(prefix: string): Promise<string[]> {
    return (await this.#listObjects(prefix)).map((o) => o.key);
  }


  async #deleteKeys(keys: string[]): Promise<void> {
    if (keys.length === 1) {
      await this.#small.delete(keys[0]!);
      return;
    }
    for (let i = 0; i < keys.length; i += DELETE_BATCH) {
      const batch = keys.slice(i, i + DELETE_BATCH);
      const out = await this.#client.send(new DeleteObjectsCommand({
        Bucket: this.bucket,
        Delete: { Objects: batch.map((Key) => ({ Key })), Quiet: true },
      }));
      const failed = (out.Errors ?? []).filter((e) => e.Code !== 'NoSuchKey');
      // A key the batch could not delete is deleted again on its own, with the small
      // requests' retries: radosgw answers a batch's key with UnknownError now and then
      // (seen in CI for a touched marker a server rewrote at that moment), and one such key
      // failed a whole collection.
      if (failed.length > MAX_DELETE_RETRIES) {
        throw new Error(`S3 DeleteObjects failed for ${failed.length} keys, e.g. ${failed[0]!.Key}: ${failed[0]!.Code} ${failed[0]!.Message}`);
      }
      for (const e of failed) if (e.Key !== undefined) await this.#small.delete(e.Key);
    }
  }

  /** The chunks blob reads over plain HTTP hold (plain-get.ts), for metrics. */
  get readBuffers(): { readonly inUseBytes: number } {
    return this.#read.buffers;
  }

  /** Bytes blob reads hold ahead of their clients right now (reader.ts), for tests and metrics. */
  get readAheadBytesInUse(): number {
    return this.#readAhead.usedBytes;
  }

  /** For messages: where this driver stores. */
  toString(): string {
    return `s3://${this.bucket}/${this.prefix}${this.#endpoint ? ` at ${this.#endpoint}` : ''}`;
  }
}

function notFound(err: unknown, path: string): unknown {
  return isNoSuchKey(err) ? new PathNotFoundError(path, { cause: err }) : err;
}

function checkRange(offset: number, length: number | undefined): void {
  if (!Number.isSafeInteger(offset) || offset < 0) throw new RangeError(`invalid offset: ${offset}`);
  if (length !== undefined && (!Number.isSafeInteger(length) || length < 0)) throw new RangeError(`invalid length: ${length}`);
}
