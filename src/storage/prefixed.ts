import type { Readable } from 'node:stream';
import {
  checkPath, InvalidPathError, isPathNotFound, listPage, PathNotFoundError, type FileInfo, type FileWriter, type ListOptions, type ListPage,
  type PutOptions, type StorageDriver, type WriterOptions,
} from './driver.js';

/**
 * A view of another driver under a fixed directory: every path `p` becomes `<prefix>p`, and
 * list() hands back paths without the prefix. Namespaces use it so that one process serves
 * several registries from one store, each with its own blobs, repositories and uploads,
 * and none can see another's (zuul-registry's namespaces):
 *
 *   /                       the default registry (blobs/, repositories/)
 *   └── namespaces
 *       └── <name>          one namespace's registry, laid out the same way
 *
 * The wrapped driver stays the caller's: close() here does nothing.
 */
export class PrefixedDriver implements StorageDriver {
  readonly name: string;
  readonly local?: boolean;
  readonly #base: StorageDriver;
  readonly #prefix: string;
  readonly redirectURL?: (path: string, expiresInSeconds: number) => Promise<string>;
  readonly deleteObjects?: (paths: readonly string[]) => Promise<void>;

  /** `prefix` is a driver path such as `/namespaces/team-a` (not '/'). */
  constructor(base: StorageDriver, prefix: string) {
    checkPath(prefix);
    if (prefix === '/') throw new InvalidPathError(prefix);
    this.#base = base;
    this.#prefix = prefix;
    this.name = base.name;
    this.local = base.local;
    // Only when the base can: callers test for the method's presence (BlobStore.open).
    if (base.redirectURL) {
      const redirect = base.redirectURL.bind(base);
      this.redirectURL = (path, expiresInSeconds) => redirect(this.#to(path), expiresInSeconds);
    }
    if (base.deleteObjects) {
      const deleteObjects = base.deleteObjects.bind(base);
      this.deleteObjects = (paths) => deleteObjects(paths.map((p) => this.#object(p)));
    }
  }

  getContent(path: string): Promise<Buffer> {
    return this.#call(path, () => this.#base.getContent(this.#object(path)));
  }

  putContent(path: string, content: Uint8Array, opts?: PutOptions): Promise<boolean> {
    return this.#call(path, () => this.#base.putContent(this.#object(path), content, opts));
  }

  reader(path: string, offset?: number, length?: number): Promise<Readable> {
    return this.#call(path, () => this.#base.reader(this.#object(path), offset, length));
  }

  writer(path: string, append: boolean, opts?: WriterOptions): Promise<FileWriter> {
    return this.#call(path, () => this.#base.writer(this.#object(path), append, opts));
  }

  stat(path: string): Promise<FileInfo> {
    return this.#call(path, async () => {
      try {
        const info = await this.#base.stat(this.#to(path));
        return { path, size: info.size, modTime: info.modTime, isDir: info.isDir };
      } catch (err) {
        // Our root exists even while the base has nothing under the prefix yet.
        if (path === '/' && isPathNotFound(err)) return { path, size: 0, modTime: new Date(0), isDir: true };
        throw err;
      }
    });
  }

  list(path: string): Promise<string[]> {
    return this.#call(path, async () => {
      try {
        return (await this.#base.list(this.#to(path))).map((p) => p.slice(this.#prefix.length));
      } catch (err) {
        if (path === '/' && isPathNotFound(err)) return [];
        throw err;
      }
    });
  }

  listPage(path: string, opts?: ListOptions): Promise<ListPage> {
    return this.#call(path, async () => {
      const page = await listPage(this.#base, this.#to(path), opts);
      return { children: page.children.map((c) => ({ ...c, path: c.path.slice(this.#prefix.length) })), truncated: page.truncated };
    });
  }

  move(source: string, dest: string): Promise<void> {
    return this.#call(source, () => this.#base.move(this.#object(source), this.#object(dest)));
  }

  delete(path: string): Promise<void> {
    return this.#call(path, () => this.#base.delete(this.#object(path)));
  }

  async close(): Promise<void> {
    // The base driver belongs to whoever created it.
  }

  /**
   * Runs a base call for `path`: invalid paths reject (never throw synchronously), and a
   * PathNotFoundError names the path the caller gave, not the prefixed one.
   */
  async #call<T>(path: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (isPathNotFound(err) && err.path.startsWith(this.#prefix)) {
        throw new PathNotFoundError(err.path.slice(this.#prefix.length) || path, { cause: err });
      }
      throw err;
    }
  }

  /** An object's path: the root is a directory, never an object. */
  #object(path: string): string {
    if (path === '/') throw new InvalidPathError(path);
    return this.#to(path);
  }

  #to(path: string): string {
    checkPath(path);
    return path === '/' ? this.#prefix : this.#prefix + path;
  }
}
