import { Readable } from 'node:stream';
import {
  checkLimit, checkPath, compareKeys, InvalidPathError, PathNotFoundError, type FileInfo, type FileWriter, type ListedChild,
  type ListOptions, type ListPage, type PutOptions, type StorageDriver,
} from './driver.js';

interface MemoryObject {
  /** Capacity grows by doubling under a writer; only the first `size` bytes are content. */
  bytes: Buffer;
  size: number;
  modTime: Date;
}

/**
 * Keeps objects in a Map keyed by path, for tests and `--storage memory:`. Directories are
 * implicit: a path is a directory while some object's path starts with it plus '/', as in S3.
 * Every operation runs to completion synchronously, which makes each one atomic.
 * Content is copied in and out, so callers can't change stored bytes behind the driver's back.
 */
export class MemoryDriver implements StorageDriver {
  readonly name = 'memory';
  readonly #objects = new Map<string, MemoryObject>();

  async getContent(path: string): Promise<Buffer> {
    const obj = this.#get(path);
    return Buffer.from(obj.bytes.subarray(0, obj.size));
  }

  async putContent(path: string, content: Uint8Array, opts: PutOptions = {}): Promise<boolean> {
    checkObjectPath(path);
    if (opts.ifNotExists && this.#objects.has(path)) return false;
    this.#objects.set(path, { bytes: Buffer.from(content), size: content.byteLength, modTime: new Date() });
    return true;
  }

  async reader(path: string, offset = 0, length?: number): Promise<Readable> {
    const obj = this.#get(path);
    checkRange(offset, length);
    const end = length === undefined ? obj.size : Math.min(obj.size, offset + length);
    const chunks = offset < end ? [Buffer.from(obj.bytes.subarray(offset, end))] : [];
    return Readable.from(chunks, { objectMode: false });
  }

  async writer(path: string, append: boolean): Promise<FileWriter> {
    checkObjectPath(path);
    let obj = this.#objects.get(path);
    if (append) {
      if (!obj) throw new PathNotFoundError(path);
    } else {
      obj = { bytes: Buffer.alloc(0), size: 0, modTime: new Date() };
      this.#objects.set(path, obj);
    }
    const target = obj;
    return new MemoryFileWriter(target, () => {
      // A later writer(path, false) or putContent may have replaced the object; leave theirs be.
      if (this.#objects.get(path) === target) this.#objects.delete(path);
    });
  }

  async stat(path: string): Promise<FileInfo> {
    checkPath(path);
    const obj = this.#objects.get(path);
    if (obj) return { path, size: obj.size, modTime: obj.modTime, isDir: false };
    let modTime: Date | undefined;
    for (const [, child] of this.#under(path)) {
      if (!modTime || child.modTime > modTime) modTime = child.modTime;
    }
    if (!modTime && path !== '/') throw new PathNotFoundError(path);
    return { path, size: 0, modTime: modTime ?? new Date(0), isDir: true };
  }

  async list(path: string): Promise<string[]> {
    checkPath(path);
    const prefixLength = path === '/' ? 1 : path.length + 1;
    const children = new Set<string>();
    for (const [key] of this.#under(path)) {
      const slash = key.indexOf('/', prefixLength);
      children.add(slash === -1 ? key : key.slice(0, slash));
    }
    if (children.size === 0 && path !== '/') throw new PathNotFoundError(path);
    return [...children].sort();
  }

  async listPage(path: string, opts: ListOptions = {}): Promise<ListPage> {
    checkPath(path);
    checkLimit(opts.limit);
    const prefixLength = path === '/' ? 1 : path.length + 1;
    const children = new Map<string, ListedChild>();
    for (const [key, obj] of this.#under(path)) {
      const slash = key.indexOf('/', prefixLength);
      const child: ListedChild = slash === -1
        ? { path: key, isDir: false, ...(opts.details ? { size: obj.size, modTime: obj.modTime } : {}) }
        : { path: key.slice(0, slash), isDir: true };
      const k = `${child.path.slice(prefixLength)}${child.isDir ? '/' : ''}`;
      if (opts.startAfter === undefined || compareKeys(k, opts.startAfter) > 0) children.set(k, child);
    }
    const sorted = [...children.keys()].sort(compareKeys);
    const page = sorted.slice(0, opts.limit ?? sorted.length);
    return { children: page.map((k) => children.get(k)!), truncated: sorted.length > page.length };
  }

  async move(source: string, dest: string): Promise<void> {
    checkObjectPath(source);
    checkObjectPath(dest);
    const obj = this.#get(source);
    this.#objects.delete(source);
    this.#objects.set(dest, obj);
  }

  async delete(path: string): Promise<void> {
    checkObjectPath(path);
    let found = this.#objects.delete(path);
    // Deleting the entry just visited is safe while iterating a Map.
    for (const [key] of this.#under(path)) {
      this.#objects.delete(key);
      found = true;
    }
    if (!found) throw new PathNotFoundError(path);
  }

  async close(): Promise<void> {}

  #get(path: string): MemoryObject {
    checkObjectPath(path);
    const obj = this.#objects.get(path);
    if (!obj) throw new PathNotFoundError(path);
    return obj;
  }

  /** Objects strictly below directory `path`: '/a' covers '/a/b' but not '/ab'. */
  *#under(path: string): Generator<[string, MemoryObject]> {
    const prefix = path === '/' ? '/' : `${path}/`;
    for (const entry of this.#objects) {
      if (entry[0].startsWith(prefix)) yield entry;
    }
  }
}

class MemoryFileWriter implements FileWriter {
  readonly #obj: MemoryObject;
  readonly #discard: () => void;
  #state: 'open' | 'closed' | 'committed' | 'cancelled' = 'open';

  constructor(obj: MemoryObject, discard: () => void) {
    this.#obj = obj;
    this.#discard = discard;
  }

  get size(): number {
    return this.#obj.size;
  }

  async write(data: Uint8Array): Promise<void> {
    this.#check('write');
    const obj = this.#obj;
    const end = obj.size + data.byteLength;
    if (end > obj.bytes.length) {
      const grown = Buffer.alloc(Math.max(end, obj.bytes.length * 2));
      grown.set(obj.bytes.subarray(0, obj.size));
      obj.bytes = grown;
    }
    obj.bytes.set(data, obj.size);
    obj.size = end;
    obj.modTime = new Date();
  }

  async close(): Promise<void> {
    this.#check('close');
    this.#state = 'closed';
  }

  async commit(): Promise<void> {
    this.#check('commit');
    this.#state = 'committed';
  }

  async cancel(): Promise<void> {
    this.#check('cancel');
    this.#state = 'cancelled';
    this.#discard();
  }

  #check(op: string): void {
    if (this.#state !== 'open') throw new Error(`FileWriter.${op}(): the writer is already ${this.#state}`);
  }
}

function checkObjectPath(path: string): void {
  // The root is a directory, never an object.
  if (checkPath(path) === '/') throw new InvalidPathError(path);
}

function checkRange(offset: number, length: number | undefined): void {
  if (!Number.isSafeInteger(offset) || offset < 0) throw new RangeError(`invalid offset: ${offset}`);
  if (length !== undefined && (!Number.isSafeInteger(length) || length < 0)) throw new RangeError(`invalid length: ${length}`);
}
