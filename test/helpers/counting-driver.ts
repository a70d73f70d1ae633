import type { Readable } from 'node:stream';
import type { FileInfo, FileWriter, ListOptions, ListPage, PutOptions, StorageDriver, WriterOptions } from '../../src/storage/driver.js';
import { MemoryDriver } from '../../src/storage/memory.js';

/** One call a CountingDriver saw. */
export interface DriverCall {
  readonly op: 'getContent' | 'putContent' | 'reader' | 'writer' | 'stat' | 'list' | 'listPage' | 'move' | 'delete' | 'deleteObjects';
  /** For deleteObjects, the first of its paths. */
  readonly path: string;
}

/**
 * A driver that records every call it passes to the driver it wraps (a MemoryDriver by
 * default): what the core asks of storage, for tests that bound it.
 *
 *   const d = new CountingDriver();
 *   const { calls } = await d.during(() => store.tags('repo', 10, undefined));
 *
 * The wrapped driver's batch delete is passed on (and counted, one call a batch) only when
 * asked for (`batchDeletes`): without it the core deletes object by object, as the tests
 * that bound its calls expect. The GC bench (bench/macro/gc-scale.ts) asks for it.
 */
export class CountingDriver implements StorageDriver {
  readonly name: string;
  readonly inner: StorageDriver;
  readonly calls: DriverCall[] = [];
  readonly deleteObjects?: (paths: readonly string[]) => Promise<void>;

  constructor(inner: StorageDriver = new MemoryDriver(), opts: { batchDeletes?: boolean } = {}) {
    this.inner = inner;
    this.name = inner.name;
    const batch = inner.deleteObjects?.bind(inner);
    if (opts.batchDeletes && batch) {
      this.deleteObjects = (paths) => {
        this.#note('deleteObjects', paths[0] ?? '');
        return batch(paths);
      };
    }
  }

  /** The calls made while `fn` ran. */
  async during<T>(fn: () => Promise<T>): Promise<{ result: T; calls: DriverCall[] }> {
    const from = this.calls.length;
    const result = await fn();
    return { result, calls: this.calls.slice(from) };
  }

  #note(op: DriverCall['op'], path: string): void {
    this.calls.push({ op, path });
  }

  getContent(path: string): Promise<Buffer> {
    this.#note('getContent', path);
    return this.inner.getContent(path);
  }

  putContent(path: string, content: Uint8Array, opts?: PutOptions): Promise<boolean> {
    this.#note('putContent', path);
    return this.inner.putContent(path, content, opts);
  }

  reader(path: string, offset?: number, length?: number): Promise<Readable> {
    this.#note('reader', path);
    return this.inner.reader(path, offset, length);
  }

  writer(path: string, append: boolean, opts?: WriterOptions): Promise<FileWriter> {
    this.#note('writer', path);
    return this.inner.writer(path, append, opts);
  }

  stat(path: string): Promise<FileInfo> {
    this.#note('stat', path);
    return this.inner.stat(path);
  }

  list(path: string): Promise<string[]> {
    this.#note('list', path);
    return this.inner.list(path);
  }

  listPage(path: string, opts?: ListOptions): Promise<ListPage> {
    this.#note('listPage', path);
    return this.inner.listPage!(path, opts);
  }

  move(source: string, dest: string): Promise<void> {
    this.#note('move', source);
    return this.inner.move(source, dest);
  }

  delete(path: string): Promise<void> {
    this.#note('delete', path);
    return this.inner.delete(path);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
