import { checkPath, InvalidPathError } from '../driver.js';

/**
 * Where driver paths live in the bucket:
 *
 *   s3://<bucket>/<prefix>
 *   ├── blobs/data/<id>                   driver path /blobs/data/<id> (any path: key = prefix + path[1:])
 *   ├── repositories/...
 *   └── _s3/                              the driver's own keys; '/_s3' is not a driver path
 *       └── writers/
 *           ├── blobs/data/<id>.json      writer state of /blobs/data/<id> while it is written:
 *           │                             multipart upload id, parts (number, ETag, size),
 *           │                             size, tail length, generation (see writer.ts)
 *           └── blobs/data/<id>.tail.<g>  the bytes after the last full part, as of generation g
 *
 * The state key (path + '.json') and the tail keys (path + '.tail.' + digits) of different
 * paths never collide: a key ending in '.json' is a state, and the tail suffix is the last
 * '.tail.' followed by digits only. Keeping the writers' keys under one prefix keeps them out
 * of list(), and lets delete() find the writers under a directory with one listing.
 */
export const INTERNAL_SEGMENT = '_s3';
const WRITERS = `${INTERNAL_SEGMENT}/writers/`;

export class Layout {
  readonly prefix: string;

  constructor(prefix: string) {
    this.prefix = prefix;
  }

  /** checkPath, plus: the driver's own area is not addressable. */
  check(path: string): string {
    checkPath(path);
    if (path === `/${INTERNAL_SEGMENT}` || path.startsWith(`/${INTERNAL_SEGMENT}/`)) throw new InvalidPathError(path);
    return path;
  }

  /** For operations on objects: the root is a directory, never an object. */
  checkObject(path: string): string {
    if (this.check(path) === '/') throw new InvalidPathError(path);
    return path;
  }

  /** Key of an object path ('/a/b' → '<prefix>a/b'). */
  key(path: string): string {
    return this.prefix + path.slice(1);
  }

  /** Key prefix of everything below a directory path ('/' → '<prefix>', '/a' → '<prefix>a/'). */
  dirPrefix(path: string): string {
    return path === '/' ? this.prefix : `${this.prefix}${path.slice(1)}/`;
  }

  /** Driver path of a key below the prefix, or undefined for keys no driver path names. */
  pathOf(key: string): string | undefined {
    if (!key.startsWith(this.prefix)) return undefined;
    const path = `/${key.slice(this.prefix.length)}`;
    try {
      return this.check(path);
    } catch {
      return undefined;
    }
  }

  writerState(path: string): string {
    return `${this.prefix}${WRITERS}${path.slice(1)}.json`;
  }

  /** Common prefix of a path's tail keys, generation appended. */
  writerTailPrefix(path: string): string {
    return `${this.prefix}${WRITERS}${path.slice(1)}.tail.`;
  }

  writerTail(path: string, generation: number): string {
    return `${this.writerTailPrefix(path)}${generation}`;
  }

  /** Key prefix of the writers of every path below a directory path. */
  writersDirPrefix(path: string): string {
    return path === '/' ? `${this.prefix}${WRITERS}` : `${this.prefix}${WRITERS}${path.slice(1)}/`;
  }

  /** Key prefix covering a path's own writer keys (and those of siblings that extend its name: filter with isOwnWriterKey). */
  writerKeysPrefix(path: string): string {
    return `${this.prefix}${WRITERS}${path.slice(1)}.`;
  }

  /** True for `path`'s state key and its tail keys of any generation. */
  isOwnWriterKey(path: string, key: string): boolean {
    if (key === this.writerState(path)) return true;
    const tail = this.writerTailPrefix(path);
    return key.startsWith(tail) && /^\d+$/.test(key.slice(tail.length));
  }

  /** The driver path whose writer state `key` is, for keys in the writers area ending in '.json'. */
  pathOfWriterState(key: string): string | undefined {
    const area = `${this.prefix}${WRITERS}`;
    if (!key.startsWith(area) || !key.endsWith('.json')) return undefined;
    return `/${key.slice(area.length, -'.json'.length)}`;
  }

  /** Bucket-relative area of all writer keys, for listings of a directory's in-progress objects. */
  get writersArea(): string {
    return `${this.prefix}${WRITERS}`;
  }
}
