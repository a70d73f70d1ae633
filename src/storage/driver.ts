import type { Readable } from 'node:stream';

/**
 * The storage driver interface, modelled on distribution's storagedriver.go: small reads and
 * writes, a reader at an offset, a resumable writer, stat, list, move, delete.
 *
 * Paths are '/'-separated, start with '/', and contain only the characters the registry core
 * builds them from (see src/registry/paths.ts); drivers reject anything else with
 * InvalidPathError so no path can leave the driver's root.
 *
 * Drivers throw PathNotFoundError for missing paths and let other errors through; the core
 * turns them into OCI errors.
 */
export interface StorageDriver {
  /** Short name for logs: 'fs', 'memory', 's3'. */
  readonly name: string;

  /** Reads a whole (small) object. Throws PathNotFoundError. */
  getContent(path: string): Promise<Buffer>;

  /**
   * Stores a small object atomically: readers see the old content or the new, never a mix.
   * With `ifNotExists`, does nothing and returns false when the path already exists
   * (the check and the write are one atomic step). With `transient`, the object need not
   * survive a crash of the machine (a lock, whose holder dies with it): the driver may skip
   * what makes a write durable (fs: the fsync), never what makes it atomic.
   */
  putContent(path: string, content: Uint8Array, opts?: PutOptions): Promise<boolean>;

  /**
   * Streams the object from `offset` (default 0), at most `length` bytes (default: to the end).
   * Throws PathNotFoundError; an offset past the end yields an empty stream.
   */
  reader(path: string, offset?: number, length?: number): Promise<Readable>;

  /**
   * Opens a writer. With `append` false any existing object is truncated; with `append` true
   * writing continues at the object's current size (what an earlier writer closed with).
   * The object is not guaranteed readable at `path` until commit(): fs and memory serve
   * what was written so far, S3 (multipart parts) does not and throws PathNotFoundError. The
   * core relies on nothing more: when it cannot read back an unfinished upload, it verifies
   * the digest by reading the committed object instead.
   *
   * `opts.sizeHintBytes` is what the caller expects to write in this session, when it knows
   * (a chunk's declared length). A driver that cuts an object into parts (S3) may size a new
   * object's parts after it, so that chunks of that size fill whole parts and need no
   * staging; the others ignore it. A hint is no promise: any number of bytes may follow.
   */
  writer(path: string, append: boolean, opts?: WriterOptions): Promise<FileWriter>;

  /** Size and modification time of an object, or that a directory (prefix) exists. Throws PathNotFoundError. */
  stat(path: string): Promise<FileInfo>;

  /** Direct children of a directory (prefix), as full paths, sorted. Throws PathNotFoundError if there are none. */
  list(path: string): Promise<string[]>;

  /**
   * One page of a directory's direct children, for listings whose cost must follow the page,
   * not the directory (tags/list, _catalog): S3 serves it with one ListObjectsV2 per 1,000
   * children, fs reads the directory once and stats only the page's objects, and only with
   * `details`.
   *
   * Children come in key order: the byte-wise order of their keys, a key being an object's
   * name, or a directory's name with '/' appended. That is the order S3 lists in; note that
   * it puts a directory `a` after an object or directory `a-b` ('-' and '.' sort before '/').
   * Only children whose key sorts after `startAfter` are listed (to page on, pass the last
   * child's key: `childKey()`), and at most `limit` of them (at least 1; default: all).
   * `truncated` is true when more children may follow the page (the next page may be empty).
   * A directory that does not exist gives an empty page, where list() throws. A name that is
   * both an object and a directory (S3 and memory allow it) is listed twice, once as each.
   * Whether an object that a writer has not committed yet is listed depends on the driver
   * (fs and memory: yes; S3: no). Throws InvalidPathError, and RangeError for a bad `limit`.
   *
   * Optional so that wrappers and test drivers need not have it: callers use the listPage()
   * function below, which falls back to list() and stat() (every child, every time). Every
   * driver of this directory has it.
   */
  listPage?(path: string, opts?: ListOptions): Promise<ListPage>;

  /** Moves an object, replacing any object at `dest`. Throws PathNotFoundError for a missing source. */
  move(source: string, dest: string): Promise<void>;

  /** Deletes an object or everything under a directory (prefix). Throws PathNotFoundError if nothing was there. */
  delete(path: string): Promise<void>;

  /**
   * How many writers may hold buffers at the same time. A driver that must gather a whole
   * part in memory before sending it (S3) sets this, so that the core admits no more uploads
   * at once than its buffers can serve: the others wait with their sockets paused, holding
   * nothing, instead of holding half-filled buffers that each wait for the other's bytes.
   * Undefined: no limit (fs, memory).
   */
  readonly maxConcurrentWriters?: number;

  /**
   * Optional: the bytes of the buffers blob reads hold now (fs and S3 read into shared
   * buffers of bounded total size: file-reader.ts, ReadBuffers), for metrics. Undefined for
   * a driver that reads into fresh memory (memory).
   */
  readonly readBuffers?: { readonly inUseBytes: number };

  /**
   * Optional: the bytes of the buffers writes hold (S3: its part buffers, in use, and in use
   * or kept free), for metrics. Undefined for a driver that writes straight from the
   * caller's bytes (fs, memory).
   */
  readonly writeBuffers?: { readonly inUseBytes: number; readonly heldBytes: number };

  /** Releases connections, file handles, timers. */
  close(): Promise<void>;

  /**
   * True when nothing a process asked of this storage can take effect after that process has
   * died: a local file system, where every write is a system call, done or not. Locks and
   * leases that name a dead process on this host are then taken over at once (a server
   * restarted after a crash continues its uploads), where otherwise their expiry and the
   * allowed clock skew are waited out, since a request to a remote store (S3) may still be in
   * flight after its sender died. Undefined: no.
   */
  readonly local?: boolean;

  /**
   * Optional: a URL from which a client can GET the object at `path` directly, without the
   * registry in between (S3: a presigned GetObject URL), valid for `expiresInSeconds`. A blob
   * GET may answer with a 307 redirect to it. Drivers that cannot, or are not configured to,
   * leave it undefined; callers then stream through reader(). Does not check that the
   * object exists: the caller knows it from the blob record. Throws InvalidPathError.
   */
  redirectURL?(path: string, expiresInSeconds: number): Promise<string>;

  /**
   * Optional: storage the driver holds for writes that nobody can finish any more and that
   * no path reaches, idle (no byte stored) since before `idleSince`. S3: multipart uploads
   * that no writer state records (a process died mid-PATCH, before its first close()) and
   * staging tails of no current generation. Writes a writer state does record are not listed:
   * they belong to a path (list() shows it), and delete(path) removes them. fs: temp files
   * of writes killed before their rename. Garbage collection aborts what this lists
   * (gc/runner.ts). Drivers with nothing of the kind (memory) leave both methods undefined.
   */
  listIncompleteWrites?(idleSince: Date): Promise<IncompleteWrite[]>;

  /**
   * Optional: releases what listIncompleteWrites() found (gone already is fine); false when it
   * turned out to be in use after all (a writer recorded it since) and was left.
   */
  abortIncompleteWrite?(write: IncompleteWrite): Promise<boolean>;

  /**
   * Optional: deletes many objects at once; missing ones are ignored. Objects only: no
   * directories, and no uploads in progress (delete() handles those). Resolves when every
   * one is gone. S3: DeleteObjects, a thousand keys a request, where delete() needs a HEAD
   * and three listings per path. Garbage collection uses it when present.
   */
  deleteObjects?(paths: readonly string[]): Promise<void>;
}

export interface PutOptions {
  readonly ifNotExists?: boolean;
  readonly transient?: boolean;
}

export interface WriterOptions {
  /** Bytes the caller expects to write in this session (see StorageDriver.writer). */
  readonly sizeHintBytes?: number;
  /**
   * With `append` false: the caller has just found nothing at `path` (an append writer threw
   * PathNotFoundError) and nobody else writes there meanwhile (it holds the upload's lock),
   * so there is nothing to remove first. S3 then skips looking for an earlier writer's state
   * and deleting an object: two requests on every upload's first bytes.
   */
  readonly absent?: boolean;
}

/** An abandoned write, as listIncompleteWrites() reports it. */
export interface IncompleteWrite {
  /** The path it was writing (which need not exist). */
  readonly path: string;
  /** For reports: 'multipart upload', 'staging object', 'temp file'. */
  readonly kind: string;
  /** Bytes it holds in storage. */
  readonly bytes: number;
  readonly lastActivity: Date;
  /** The driver's own handle (opaque to callers). */
  readonly handle: string;
}

export interface ListOptions {
  /** A child's key (its name, '/' appended for a directory): list only children whose key sorts after it. */
  readonly startAfter?: string;
  /** At most this many children (at least 1); default: all. */
  readonly limit?: number;
  /**
   * Also each object's size and modification time, as stat() gives them: free on S3 (the
   * listing has them), one stat per child of the page on fs.
   */
  readonly details?: boolean;
}

export interface ListedChild {
  /** Full path, as list() gives it. */
  readonly path: string;
  readonly isDir: boolean;
  /** With `details`, for objects. */
  readonly size?: number;
  /** With `details`, for objects. */
  readonly modTime?: Date;
}

export interface ListPage {
  /** In key order. */
  readonly children: ListedChild[];
  /** More children may follow the page. */
  readonly truncated: boolean;
}

/** A child's key in listPage() order: its name, with '/' appended for a directory. */
export function childKey(child: Pick<ListedChild, 'path' | 'isDir'>): string {
  const name = child.path.slice(child.path.lastIndexOf('/') + 1);
  return child.isDir ? `${name}/` : name;
}

/** Byte-wise order of keys (JavaScript compares UTF-16 units; paths are ASCII, so it is the same). */
export function compareKeys(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * `driver.listPage()`, or for a driver without one the same page made from list() and stat():
 * correct, at the cost of the whole directory.
 */
export async function listPage(driver: StorageDriver, path: string, opts: ListOptions = {}): Promise<ListPage> {
  if (driver.listPage) return driver.listPage(path, opts);
  checkLimit(opts.limit);
  let paths: string[];
  try {
    paths = await driver.list(path);
  } catch (err) {
    if (isPathNotFound(err)) return { children: [], truncated: false };
    throw err;
  }
  const infos = await Promise.all(paths.map((p) => driver.stat(p).catch((err: unknown) => {
    if (isPathNotFound(err)) return undefined;
    throw err;
  })));
  const keyed = infos
    .filter((i): i is FileInfo => i !== undefined)
    .map((i) => ({ key: childKey(i), info: i }))
    .filter((k) => opts.startAfter === undefined || compareKeys(k.key, opts.startAfter) > 0)
    .sort((a, b) => compareKeys(a.key, b.key));
  const page = keyed.slice(0, opts.limit ?? keyed.length).map(({ info: i }): ListedChild =>
    i.isDir || !opts.details ? { path: i.path, isDir: i.isDir } : { path: i.path, isDir: false, size: i.size, modTime: i.modTime });
  return { children: page, truncated: keyed.length > page.length };
}

/** Checks listPage()'s `limit`: a positive integer, or absent. */
export function checkLimit(limit: number | undefined): void {
  if (limit !== undefined && (!Number.isSafeInteger(limit) || limit < 1)) throw new RangeError(`invalid limit: ${limit}`);
}

export interface FileInfo {
  readonly path: string;
  readonly size: number;
  readonly modTime: Date;
  readonly isDir: boolean;
}

/**
 * A resumable writer (distribution's FileWriter).
 *
 * Ownership: write() may keep a reference to `data` until its promise settles; the caller
 * must not change the bytes before then. Calls must not overlap: await each write() before
 * the next.
 */
export interface FileWriter {
  /** Bytes written so far, including what earlier writers of this path stored. */
  readonly size: number;
  write(data: Uint8Array): Promise<void>;
  /**
   * Optional: writes `parts` in order, as write() would one after another, in as few system
   * calls as the driver can (fs: pwritev). Same ownership rule: the parts are kept until the
   * promise settles. Callers fall back to write() when a driver leaves it undefined.
   */
  writev?(parts: readonly Uint8Array[]): Promise<void>;
  /** Makes everything written durable and releases resources; a later writer(path, true) continues. */
  close(): Promise<void>;
  /** Finishes the object: afterwards it is readable at the path. No further writes. */
  commit(): Promise<void>;
  /** Discards everything written, including by earlier writers of this path. */
  cancel(): Promise<void>;
  /**
   * Releases the writer's resources and records nothing: the path stays as the last close()
   * of an earlier writer left it. For a caller that lost the right to write (its upload lock
   * ran out, engine/upload-lock.ts): a close() could then overwrite what the next writer
   * stored. Optional: a driver whose close() records nothing beyond what write() stored
   * (fs, memory) leaves it out, and callers close() instead.
   */
  abandon?(): Promise<void>;
}

export class PathNotFoundError extends Error {
  override readonly name = 'PathNotFoundError';
  readonly path: string;
  constructor(path: string, opts?: { cause?: unknown }) {
    super(`path not found: ${path}`, opts);
    this.path = path;
  }
}

export class InvalidPathError extends Error {
  override readonly name = 'InvalidPathError';
  readonly path: string;
  constructor(path: string) {
    super(`invalid path: ${JSON.stringify(path).slice(0, 300)}`);
    this.path = path;
  }
}

/** Paths the core builds: '/'-rooted, segments of [A-Za-z0-9._-], no '.' or '..' segments. */
const SEGMENT_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;

/** Whether `name` can be one segment of a path (checkPath): what a listing may return as a child. */
export function isPathSegment(name: string): boolean {
  return SEGMENT_RE.test(name);
}

/**
 * The store did not answer within the driver's deadlines, or kept failing after the retries
 * that are safe: the operation did not happen, or did and is repeated harmlessly on the next
 * try. Nothing already stored is lost: an upload stays where its last successful write left
 * it. The registry answers 503 UNAVAILABLE; `cause` is the driver's last error.
 */
export class StorageUnavailableError extends Error {
  override readonly name: string = 'StorageUnavailableError';
}

/**
 * The store takes no writes (full, or read-only) but may still serve reads: what only
 * writes for its own bookkeeping, such as a blob HEAD's garbage-collection marker, may go
 * on without them (registry.ts).
 */
export class StorageUnwritableError extends StorageUnavailableError {
  override readonly name: string = 'StorageUnwritableError';
}

export function checkPath(path: string): string {
  if (path === '/') return path;
  if (!path.startsWith('/') || path.endsWith('/') || path.length > 4096) throw new InvalidPathError(path);
  for (const seg of path.slice(1).split('/')) {
    if (!SEGMENT_RE.test(seg)) throw new InvalidPathError(path);
  }
  return path;
}

export function isPathNotFound(err: unknown): err is PathNotFoundError {
  return err instanceof PathNotFoundError;
}

/**
 * Whether an object exists, as cheaply as the driver can say: a zero-length read, which the
 * S3 driver answers with one HEAD (its stat() also looks for directories and uploads in
 * progress, and reading an object costs a GET).
 */
export async function objectExists(driver: StorageDriver, path: string): Promise<boolean> {
  try {
    (await driver.reader(path, 0, 0)).destroy();
    return true;
  } catch (err) {
    if (isPathNotFound(err)) return false;
    throw err;
  }
}

/** The object's bytes, or undefined when there is none. */
export async function readOrUndefined(driver: StorageDriver, path: string): Promise<Buffer | undefined> {
  try {
    return await driver.getContent(path);
  } catch (err) {
    if (isPathNotFound(err)) return undefined;
    throw err;
  }
}

/** The object's size and date, or undefined when there is none. */
export async function statOrUndefined(driver: StorageDriver, path: string): Promise<FileInfo | undefined> {
  try {
    return await driver.stat(path);
  } catch (err) {
    if (isPathNotFound(err)) return undefined;
    throw err;
  }
}

/**
 * Deletes one object (not a directory, not an upload in progress), the cheapest way the driver
 * has: deleteObjects() is one request on S3, where delete() also looks for what lies below
 * the path and for writers of it. Nothing there is fine.
 */
export async function deleteObject(driver: StorageDriver, path: string): Promise<void> {
  try {
    if (driver.deleteObjects) await driver.deleteObjects([path]);
    else await driver.delete(path);
  } catch (err) {
    if (!isPathNotFound(err)) throw err;
  }
}
