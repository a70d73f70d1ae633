import { randomBytes } from 'node:crypto';
import type { Dirent, Stats } from 'node:fs';
import * as fs from 'node:fs/promises';
import { basename, dirname, join, resolve, sep } from 'node:path';
import { Readable } from 'node:stream';
import pLimit from 'p-limit';
import {
  checkLimit, checkPath, InvalidPathError, isPathSegment, PathNotFoundError, StorageUnavailableError, StorageUnwritableError, type FileInfo, type FileWriter,
  type IncompleteWrite, type ListedChild, type ListOptions, type ListPage, type PutOptions, type StorageDriver,
} from './driver.js';
import { FileReader, ReadBuffers } from './file-reader.js';

/**
 * Keeps each object in a file under the root directory; directories are real directories.
 *
 *   <rootDirectory>/
 *   ├── .probe-3f9a0c…               open()'s writability check, removed at once
 *   └── a/
 *       ├── b                         driver path /a/b
 *       └── .b.7c1e42….tmp            putContent('/a/b') before its rename
 *
 * Temp files start with '.', which no valid path segment does (checkPath), so they can never
 * collide with an object, and list() skips them like any other name outside the path syntax.
 * A process killed between writing one and renaming it leaves it behind: garbage collection
 * removes it (listIncompleteWrites).
 */
export interface FsDriverOptions {
  rootDirectory: string;
  /**
   * open() creates a missing root directory (default true: a server's first start). False for
   * a tool that only works on an existing store (`hoist gc`): a mistyped path then fails
   * instead of looking like an empty store.
   */
  createRoot?: boolean;
  /** A writer starts a background datasync after this many bytes (see FsFileWriter). */
  syncEveryBytes?: number;
}

export class FsDriver implements StorageDriver {
  readonly name = 'fs';
  readonly local = true;
  readonly rootDirectory: string;
  readonly #syncEveryBytes: number;
  /**
   * 1 MiB reads: blob GETs are large and sequential; 64 KiB (fs streams' default) costs a
   * syscall and a stream turn per 64 KiB and halved pull throughput. Up to 16 MiB of them
   * are kept for the next reads (see ReadBuffers for why they are recycled at all), and at
   * most 64 MiB are in use: two a pull, so 32 pulls at once read 1 MiB at a time, and
   * clients that stop reading cannot hold more (further reads go 64 KiB at a time).
   */
  readonly #readBuffers = new ReadBuffers(1024 * 1024, 16, 64 * 1024 * 1024);

  get readBuffers(): { readonly inUseBytes: number } {
    return this.#readBuffers;
  }

  constructor(opts: FsDriverOptions) {
    this.rootDirectory = resolve(opts.rootDirectory);
    this.#syncEveryBytes = opts.syncEveryBytes ?? SYNC_EVERY_BYTES_DEFAULT;
  }

  /**
   * Creates the root directory if needed (unless `createRoot` is false: then a missing root
   * fails) and proves it writable, so a bad root fails at start, not on the first push.
   */
  static async open(opts: FsDriverOptions): Promise<FsDriver> {
    const driver = new FsDriver(opts);
    const probe = join(driver.rootDirectory, `.probe-${randomBytes(6).toString('hex')}`);
    if (opts.createRoot === false) {
      const missing = await fs.stat(driver.rootDirectory).then(() => false, (err: unknown) => errno(err) === 'ENOENT');
      if (missing) throw new Error(`fs storage: root directory ${driver.rootDirectory} does not exist`);
    }
    try {
      await fs.mkdir(driver.rootDirectory, { recursive: true });
      // access(W_OK) says yes to root even on read-only mounts or foreign NFS; a real write can't lie.
      await fs.writeFile(probe, '');
      await fs.unlink(probe);
    } catch (err) {
      throw new Error(`fs storage: cannot write to root directory ${driver.rootDirectory}: ${(err as Error).message}`, { cause: err });
    }
    return driver;
  }

  async getContent(path: string): Promise<Buffer> {
    const file = this.#object(path);
    try {
      return await fs.readFile(file);
    } catch (err) {
      throw notFound(err, path);
    }
  }

  async putContent(path: string, content: Uint8Array, opts: PutOptions = {}): Promise<boolean> {
    try {
      return await this.#put(path, content, opts);
    } catch (err) {
      throw unwritable(err);
    }
  }

  async #put(path: string, content: Uint8Array, opts: PutOptions): Promise<boolean> {
    const file = this.#object(path);
    const temp = join(dirname(file), `.${basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
    let tempExists = false;
    try {
      const fh = await inDir(dirname(file), () => fs.open(temp, 'wx'));
      tempExists = true;
      try {
        await fh.writeFile(content);
        // Without it a crash soon after the rename can leave an empty file on ext4/xfs. A
        // transient object (an upload lock) skips it: it costs ~2.5 ms here, 15 times the rest.
        if (!opts.transient) await fh.sync();
      } finally {
        await fh.close();
      }
      if (!opts.ifNotExists) {
        await fs.rename(temp, file);
        tempExists = false;
        return true;
      }
      // link() fails with EEXIST if anything is at `file`: the existence check and the write
      // are one system call, so of many racing callers exactly one wins.
      try {
        await fs.link(temp, file);
        return true;
      } catch (err) {
        if (errno(err) === 'EEXIST') return false;
        throw err;
      }
    } finally {
      if (tempExists) await fs.unlink(temp).catch(() => {});
    }
  }

  async reader(path: string, offset = 0, length?: number): Promise<Readable> {
    const file = this.#object(path);
    checkRange(offset, length);
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(file, 'r');
    } catch (err) {
      throw notFound(err, path);
    }
    let stream: Readable | undefined;
    try {
      const st = await fh.stat();
      if (st.isDirectory()) throw new PathNotFoundError(path);
      if (offset < st.size && length !== 0) {
        // The stream owns the handle from here on and closes it when it ends or is destroyed.
        stream = new FileReader(fh, offset, length === undefined ? Infinity : offset + length, this.#readBuffers);
      }
    } finally {
      if (!stream) await fh.close();
    }
    return stream ?? Readable.from([], { objectMode: false });
  }

  async writer(path: string, append: boolean): Promise<FileWriter> {
    const file = this.#object(path);
    if (!append) {
      const fh = await inDir(dirname(file), () => fs.open(file, 'w')).catch((err: unknown) => {
        throw unwritable(err);
      });
      return new FsFileWriter(fh, 0, () => this.#remove(file), this.#syncEveryBytes);
    }
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(file, 'r+');
    } catch (err) {
      throw notFound(err, path);
    }
    try {
      return new FsFileWriter(fh, (await fh.stat()).size, () => this.#remove(file), this.#syncEveryBytes);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  async stat(path: string): Promise<FileInfo> {
    let st: Stats;
    try {
      st = await fs.stat(this.#file(path));
    } catch (err) {
      throw notFound(err, path);
    }
    const isDir = st.isDirectory();
    return { path, size: isDir ? 0 : st.size, modTime: st.mtime, isDir };
  }

  async list(path: string): Promise<string[]> {
    let names: string[];
    try {
      names = await fs.readdir(this.#file(path));
    } catch (err) {
      // A file where the root should be, or no root at all (open() made it: a volume that went
      // away, a directory moved), is no empty store: every write would fail.
      throw path === '/' && (errno(err) === 'ENOTDIR' || errno(err) === 'ENOENT') ? err : notFound(err, path);
    }
    const prefix = path === '/' ? '/' : `${path}/`;
    const children = names.map((name) => prefix + name).filter(isDriverPath).sort();
    // An empty directory is one delete() has not pruned yet (or is pruning): to callers it's gone.
    if (children.length === 0 && path !== '/') throw new PathNotFoundError(path);
    return children;
  }

  /**
   * A directory cannot be read from the middle: readdir() reads it whole (a few milliseconds
   * for 10,000 entries), and only the page's objects are stat()ed, and only with `details`.
   */
  async listPage(path: string, opts: ListOptions = {}): Promise<ListPage> {
    checkLimit(opts.limit);
    let entries: Dirent[];
    try {
      entries = await fs.readdir(this.#file(path), { withFileTypes: true });
    } catch (err) {
      const e = notFound(err, path);
      if (e instanceof PathNotFoundError) return { children: [], truncated: false };
      throw e;
    }
    const prefix = path === '/' ? '/' : `${path}/`;
    // Keys only until the page is cut: a directory of 10,000 tags is listed whole every time.
    const keys: string[] = [];
    for (const d of entries) {
      // Skips temp files and whatever no path can name (lost+found).
      if (!isPathSegment(d.name)) continue;
      const key = d.isDirectory() ? `${d.name}/` : d.name;
      if (opts.startAfter === undefined || key > opts.startAfter) keys.push(key);
    }
    // Paths are ASCII, so the default sort (UTF-16 code units) is the byte-wise order, and
    // faster than a comparator.
    keys.sort();
    const page = opts.limit === undefined || opts.limit >= keys.length ? keys : keys.slice(0, opts.limit);
    const child = (key: string): ListedChild => key.endsWith('/') ? { path: prefix + key.slice(0, -1), isDir: true } : { path: prefix + key, isDir: false };
    if (!opts.details) return { children: page.map(child), truncated: keys.length > page.length };
    const children = await Promise.all(page.map(async (key): Promise<ListedChild | undefined> => {
      const c = child(key);
      if (c.isDir) return c;
      try {
        const st = await fs.stat(this.#file(c.path));
        return { ...c, size: st.size, modTime: st.mtime };
      } catch (err) {
        // Deleted since the readdir: not a child any more.
        const e = notFound(err, c.path);
        if (e instanceof PathNotFoundError) return undefined;
        throw e;
      }
    }));
    return { children: children.filter((c): c is ListedChild => c !== undefined), truncated: keys.length > page.length };
  }

  async move(source: string, dest: string): Promise<void> {
    const from = this.#object(source);
    const to = this.#object(dest);
    try {
      // Checked first so that a missing source doesn't leave dest's parent directories behind.
      await fs.lstat(from);
    } catch (err) {
      throw notFound(err, source);
    }
    try {
      await inDir(dirname(to), () => fs.rename(from, to));
    } catch (err) {
      // ENOENT now means a concurrent move or delete took the source; other errors are about dest.
      throw errno(err) === 'ENOENT' ? new PathNotFoundError(source, { cause: err }) : unwritable(err);
    }
    await this.#prune(dirname(from));
  }

  async delete(path: string): Promise<void> {
    const target = this.#object(path);
    try {
      // unlink first: nearly every delete is of one file, and rm() lstat()s twice before it
      // unlinks (two of the ~40 file-system calls a small push makes per delete). A directory
      // (EISDIR on Linux, EPERM elsewhere) goes with everything in it.
      await fs.unlink(target).catch((err: unknown) => {
        const code = errno(err);
        if (code === 'EISDIR' || code === 'EPERM') return fs.rm(target, { recursive: true });
        throw err;
      });
    } catch (err) {
      throw notFound(err, path);
    }
    await this.#prune(dirname(target));
  }

  /**
   * Temp files whose writer died before its rename (putContent() killed mid-write) or before
   * it removed them (open()'s probe), idle since `idleSince` and for TEMP_MIN_IDLE_MS at
   * least. No path reaches them (list() skips them), so nothing else ever removes them. Walks
   * the whole tree: one readdir per directory, a stat per temp file only.
   */
  async listIncompleteWrites(idleSince: Date): Promise<IncompleteWrite[]> {
    const before = Math.min(idleSince.getTime(), Date.now() - TEMP_MIN_IDLE_MS);
    const found: IncompleteWrite[] = [];
    // Level by level, WALK_CONCURRENCY directories at a time: one after the other, 50,000
    // blob directories took 3 s here.
    const limit = pLimit(WALK_CONCURRENCY);
    let next: string[] = [];
    const visit = async (dir: string): Promise<void> => {
      let entries: Dirent[];
      try {
        entries = await fs.readdir(this.#file(dir), { withFileTypes: true });
      } catch (err) {
        // Pruned since its parent was read.
        const e = notFound(err, dir);
        if (e instanceof PathNotFoundError) return;
        throw e;
      }
      const prefix = dir === '/' ? '/' : `${dir}/`;
      for (const d of entries) {
        // Directories no path can name (lost+found) hold none of ours.
        if (d.isDirectory() && isPathSegment(d.name)) next.push(prefix + d.name);
        const m = d.isFile() ? TEMP_RE.exec(d.name) : null;
        if (!m) continue;
        let st: Stats;
        try {
          st = await fs.lstat(join(this.#file(dir), d.name));
        } catch (err) {
          if (errno(err) === 'ENOENT') continue;
          throw err;
        }
        if (st.mtimeMs >= before) continue;
        // A second name of its object (killed between putContent's link() and unlink()):
        // removing it frees nothing.
        const bytes = st.nlink > 1 ? 0 : st.size;
        found.push({ path: m[1] === undefined ? dir : prefix + m[1], kind: 'temp file', bytes, lastActivity: st.mtime, handle: prefix + d.name });
      }
    };
    for (let level = ['/']; level.length > 0; level = next) {
      next = [];
      await Promise.all(level.map((dir) => limit(() => visit(dir))));
    }
    return found;
  }

  async abortIncompleteWrite(write: IncompleteWrite): Promise<boolean> {
    const slash = write.handle.lastIndexOf('/');
    const name = write.handle.slice(slash + 1);
    if (!TEMP_RE.test(name)) throw new InvalidPathError(write.handle);
    await this.#remove(join(this.#file(write.handle.slice(0, slash) || '/'), name));
    return true;
  }

  async close(): Promise<void> {}

  /** checkPath rejects '..' and empty segments, so the joined path stays under the root. */
  #file(path: string): string {
    return join(this.rootDirectory, checkPath(path));
  }

  /** Like #file, for operations on objects: the root is a directory, never an object. */
  #object(path: string): string {
    if (checkPath(path) === '/') throw new InvalidPathError(path);
    return join(this.rootDirectory, path);
  }

  async #remove(file: string): Promise<void> {
    await fs.unlink(file).catch((err: unknown) => {
      if (errno(err) !== 'ENOENT') throw err;
    });
    await this.#prune(dirname(file));
  }

  /**
   * Removes `dir` and then its parents while they are empty, up to but not including the root,
   * so that deleted repositories and uploads leave no directories behind. Best effort: rmdir
   * fails (and we stop) when a concurrent writer has put something in the directory; a writer
   * whose directory we remove just before it creates its file recreates it (inDir).
   */
  async #prune(dir: string): Promise<void> {
    while (dir.startsWith(this.rootDirectory + sep)) {
      try {
        await fs.rmdir(dir);
      } catch {
        return;
      }
      dir = dirname(dir);
    }
  }
}

/** putContent()'s temp files (`.<name>.<hex>.tmp`, <name> captured) and open()'s probe. */
const TEMP_RE = /^\.(?:([A-Za-z0-9_][A-Za-z0-9._-]*)\.[0-9a-f]{12}\.tmp|probe-[0-9a-f]{12})$/;

/**
 * A temp file lives for one putContent() call: one write (a manifest at most, a few MiB), an
 * fsync, a rename. Idle this long, its writer is dead whatever bound the caller passes
 * (`hoist gc --stale-upload-after 0s` must not fail a live server's tag write).
 */
const TEMP_MIN_IDLE_MS = 10 * 60_000;
/** Directories read at once by listIncompleteWrites(). */
const WALK_CONCURRENCY = 16;

type WriterState = 'open' | 'writing' | 'closed' | 'committed' | 'cancelled';

/** Linux's limit on the buffers of one pwritev. */
const IOV_MAX = 1024;

/**
 * A long write flushes its bytes to disk as it goes: after every SYNC_EVERY_BYTES written
 * (FsDriver option syncEveryBytes, 64 MiB by default), a
 * datasync of the file starts in the background (one at a time per writer, at most
 * MAX_BACKGROUND_SYNCS in the whole process, so that the libuv threads they block leave
 * room for the writes). The page cache would otherwise hold the whole upload until commit:
 * with 24 GiB of memory the kernel starts writing back only at 2 GiB of dirty data
 * (vm.dirty_background_ratio), so a 1 GiB push left its disk idle until the commit's
 * fsync, and then waited for all of it. Now the disk writes while the network delivers,
 * and the commit finds little left to flush. (node has no
 * sync_file_range, which would start the writeback without waiting for it.)
 */
const SYNC_EVERY_BYTES_DEFAULT = 64 * 1024 * 1024;
const MAX_BACKGROUND_SYNCS = 2;
let backgroundSyncs = 0;

class FsFileWriter implements FileWriter {
  readonly #fh: fs.FileHandle;
  readonly #discard: () => Promise<void>;
  #size: number;
  #state: WriterState = 'open';
  /** Bytes written since the last background datasync started. */
  #unsynced = 0;
  #syncing: Promise<void> | undefined;
  /**
   * What a background datasync failed with, for commit() to report: after a failed
   * writeback Linux reports the error to one fsync of the file only, so the commit's own
   * fsync could succeed over lost bytes.
   */
  #syncError: unknown;
  /** The file's size when the last background datasync that succeeded started: on disk. */
  #durable: number;

  readonly #syncEveryBytes: number;

  constructor(fh: fs.FileHandle, size: number, discard: () => Promise<void>, syncEveryBytes: number) {
    this.#fh = fh;
    this.#size = size;
    // What an earlier writer left: the size an upload's status reports, judged as durable as
    // the rest of it.
    this.#durable = size;
    this.#discard = discard;
    this.#syncEveryBytes = syncEveryBytes;
  }

  get size(): number {
    return this.#size;
  }

  async write(data: Uint8Array): Promise<void> {
    this.#enter('write', 'writing');
    try {
      for (let done = 0; done < data.byteLength;) {
        // Positional writes, so the offset is ours and not the shared file position; `size`
        // advances with each partial write and so always matches the bytes on disk.
        const { bytesWritten } = await this.#fh.write(data, done, data.byteLength - done, this.#size);
        done += bytesWritten;
        this.#size += bytesWritten;
      }
      this.#wrote(data.byteLength);
    } catch (err) {
      throw unwritable(err);
    } finally {
      this.#state = 'open';
    }
  }

  /** One pwritev for up to IOV_MAX parts: a batch of socket chunks costs one system call, not one each. */
  async writev(parts: readonly Uint8Array[]): Promise<void> {
    this.#enter('write', 'writing');
    try {
      let rest = parts.filter((p) => p.byteLength > 0);
      while (rest.length > 0) {
        const { bytesWritten } = await this.#fh.writev(rest.slice(0, IOV_MAX), this.#size);
        if (bytesWritten === 0) throw new Error('pwritev wrote nothing');
        this.#size += bytesWritten;
        // A short write (a full disk, a signal) leaves the rest for the next round.
        let left = bytesWritten;
        let done = 0;
        while (done < rest.length && left >= rest[done]!.byteLength) left -= rest[done++]!.byteLength;
        rest = rest.slice(done);
        if (left > 0) rest[0] = rest[0]!.subarray(left);
        this.#wrote(bytesWritten);
      }
    } catch (err) {
      throw unwritable(err);
    } finally {
      this.#state = 'open';
    }
  }

  /**
   * No fsync here: close() ends every PATCH, and flushing each chunk to disk would make a
   * chunked push disk-bound. What reached the page cache survives a process crash, and after
   * a machine crash the file is merely shorter: the upload's offset is the file's size, so
   * the client is told the true offset (416 + Range) and resends from there. A background
   * datasync that failed is reported here too, not only by commit(), and the file is cut
   * back to what the last one that succeeded put on disk: the next request's writer is
   * another handle, whose fsync Linux would let succeed over the lost bytes (still readable
   * from the page cache, so a rebuilt hash would match them), and the client resends the
   * rest from the offset its status then reports.
   */
  async close(): Promise<void> {
    this.#enter('close', 'closed');
    try {
      await this.#syncing;
      await this.#throwIfSyncFailed();
    } finally {
      await this.#fh.close();
    }
  }

  /** After a failed background datasync: the file cut back to what is on disk (close() says why), and the error. */
  async #throwIfSyncFailed(): Promise<void> {
    if (this.#syncError === undefined) return;
    await this.#fh.truncate(this.#durable).catch(() => undefined);
    throw unwritable(this.#syncError);
  }

  /**
   * A committed object becomes a blob that manifests point at: it must be on disk first.
   * Most of it is already (the background datasyncs); the fsync writes the rest.
   */
  async commit(): Promise<void> {
    this.#enter('commit', 'committed');
    try {
      await this.#syncing;
      await this.#throwIfSyncFailed();
      await this.#fh.sync();
    } catch (err) {
      throw unwritable(err);
    } finally {
      await this.#fh.close();
    }
  }

  async cancel(): Promise<void> {
    this.#enter('cancel', 'cancelled');
    await this.#syncing;
    await this.#fh.close();
    await this.#discard();
  }

  /** Counts written bytes, and starts a background datasync when enough piled up (see SYNC_EVERY_BYTES_DEFAULT). */
  #wrote(bytes: number): void {
    this.#unsynced += bytes;
    if (this.#unsynced < this.#syncEveryBytes || this.#syncing !== undefined || backgroundSyncs >= MAX_BACKGROUND_SYNCS) return;
    this.#unsynced = 0;
    backgroundSyncs++;
    const target = this.#size;
    this.#syncing = this.#fh.datasync().then(
      () => {
        if (this.#syncError === undefined) this.#durable = target;
      },
      (err: unknown) => {
        this.#syncError ??= err;
      },
    ).finally(() => {
      backgroundSyncs--;
      this.#syncing = undefined;
    });
  }

  #enter(op: string, next: WriterState): void {
    if (this.#state === 'writing') throw new Error(`FileWriter.${op}(): a write() is still in progress; await it first`);
    if (this.#state !== 'open') throw new Error(`FileWriter.${op}(): the writer is already ${this.#state}`);
    this.#state = next;
  }

}

/**
 * Runs `create`, which makes an entry in `dir`, making `dir` first when it is missing.
 * Trying first saves a mkdir in the common case; retrying covers delete() pruning `dir`
 * between our mkdir and `create`.
 */
async function inDir<T>(dir: string, create: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await create();
    } catch (err) {
      if (errno(err) !== 'ENOENT' || attempt === 5) throw err;
    }
    await makeDir(dir);
  }
}

/**
 * mkdir -p, one level at a time. Node's `mkdir(dir, { recursive: true })` reports ENOENT where
 * a file system is read-only (EROFS), which reads as "not found" to our callers (a move's
 * source gone) instead of "cannot write" (unwritable(): 503).
 */
async function makeDir(dir: string): Promise<void> {
  try {
    await fs.mkdir(dir);
  } catch (err) {
    const code = errno(err);
    if (code === 'EEXIST') return;
    if (code !== 'ENOENT' || dirname(dir) === dir) throw err;
    await makeDir(dirname(dir));
    // ENOENT again: a delete() pruned the parent meanwhile; inDir's next attempt makes it again.
    await fs.mkdir(dir).catch((again: unknown) => {
      if (errno(again) !== 'EEXIST' && errno(again) !== 'ENOENT') throw again;
    });
  }
}

/** Skips our temp files and whatever else no driver path can name, such as a mount's lost+found. */
function isDriverPath(path: string): boolean {
  try {
    checkPath(path);
    return true;
  } catch {
    return false;
  }
}

function checkRange(offset: number, length: number | undefined): void {
  if (!Number.isSafeInteger(offset) || offset < 0) throw new RangeError(`invalid offset: ${offset}`);
  if (length !== undefined && (!Number.isSafeInteger(length) || length < 0)) throw new RangeError(`invalid length: ${length}`);
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

/**
 * A full or read-only file system: the write did not happen, and will once there is space (or
 * write access) again. StorageUnwritableError (a StorageUnavailableError), so the client gets 503
 * and tries again later, not a 500; an upload stays where its last write left it.
 */
const UNWRITABLE = new Set(['ENOSPC', 'EDQUOT', 'EROFS']);

/**
 * Out of file descriptors, the process's (EMFILE: idle connections hold them too) or the
 * system's (ENFILE): nothing could be opened, read or write, until some are closed, which
 * they are as connections and requests end. StorageUnavailableError, so the client gets
 * 503 and tries again; as a 500 UNKNOWN a client gives up on a store that is merely busy.
 */
const OUT_OF_DESCRIPTORS = new Set(['EMFILE', 'ENFILE']);

export function unwritable(err: unknown): unknown {
  const code = errno(err);
  return code !== undefined && UNWRITABLE.has(code) ? new StorageUnwritableError('fs storage cannot be written (full, or read-only)', { cause: err }) : unavailable(err);
}

function unavailable(err: unknown): unknown {
  const code = errno(err);
  return code !== undefined && OUT_OF_DESCRIPTORS.has(code) ? new StorageUnavailableError(`fs storage cannot open files (${code}: out of file descriptors)`, { cause: err }) : err;
}

/** ENOTDIR: a parent is a file; EISDIR: a directory where an object was asked for. Neither is an object at `path`. */
function notFound(err: unknown, path: string): unknown {
  const code = errno(err);
  return code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR' ? new PathNotFoundError(path, { cause: err }) : unavailable(err);
}
