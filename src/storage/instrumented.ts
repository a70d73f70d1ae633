import { performance } from 'node:perf_hooks';
import type { Readable } from 'node:stream';
import { channels, type StorageRequestMessage } from '../diagnostics.js';
import {
  isPathNotFound, type FileInfo, type FileWriter, type IncompleteWrite, type ListOptions, type ListPage, type PutOptions, type StorageDriver,
  type WriterOptions,
} from './driver.js';

/**
 * A driver that reports every call it passes on to another one, on the
 * `hoist:storage:request` diagnostics channel: which operation, whether it answered (ok), found
 * nothing (not_found: PathNotFoundError, an answer rather than a failure) or failed, and how
 * long it took. Writers it opens report write, close, commit and cancel the same way; reader()
 * is timed until the stream is open, not while it is read.
 *
 * With nobody subscribed a call costs one `hasSubscribers` check. The server wraps its one
 * driver with this, below the namespaces' PrefixedDrivers, so every call is counted once.
 * The wrapped driver stays the caller's to close: close() passes through.
 */
export class InstrumentedDriver implements StorageDriver {
  readonly name: string;
  readonly #base: StorageDriver;
  readonly maxConcurrentWriters?: number;
  readonly local?: boolean;
  readonly readBuffers?: { readonly inUseBytes: number };
  readonly writeBuffers?: { readonly inUseBytes: number; readonly heldBytes: number };
  readonly redirectURL?: (path: string, expiresInSeconds: number) => Promise<string>;
  readonly listIncompleteWrites?: (idleSince: Date) => Promise<IncompleteWrite[]>;
  readonly abortIncompleteWrite?: (write: IncompleteWrite) => Promise<boolean>;
  readonly deleteObjects?: (paths: readonly string[]) => Promise<void>;
  readonly listPage?: (path: string, opts?: ListOptions) => Promise<ListPage>;

  constructor(base: StorageDriver) {
    this.#base = base;
    this.name = base.name;
    this.maxConcurrentWriters = base.maxConcurrentWriters;
    this.local = base.local;
    if (base.readBuffers) this.readBuffers = base.readBuffers;
    if (base.writeBuffers) this.writeBuffers = base.writeBuffers;
    // Optional methods only when the base has them: callers test for their presence.
    if (base.redirectURL) {
      const fn = base.redirectURL.bind(base);
      this.redirectURL = (path, expiresInSeconds) => this.#observe('redirectURL', () => fn(path, expiresInSeconds));
    }
    if (base.listIncompleteWrites) {
      const fn = base.listIncompleteWrites.bind(base);
      this.listIncompleteWrites = (idleSince) => this.#observe('listIncompleteWrites', () => fn(idleSince));
    }
    if (base.abortIncompleteWrite) {
      const fn = base.abortIncompleteWrite.bind(base);
      this.abortIncompleteWrite = (write) => this.#observe('abortIncompleteWrite', () => fn(write));
    }
    if (base.deleteObjects) {
      const fn = base.deleteObjects.bind(base);
      this.deleteObjects = (paths) => this.#observe('deleteObjects', () => fn(paths));
    }
    if (base.listPage) {
      const fn = base.listPage.bind(base);
      this.listPage = (path, opts) => this.#observe('listPage', () => fn(path, opts));
    }
  }

  getContent(path: string): Promise<Buffer> {
    return this.#observe('getContent', () => this.#base.getContent(path));
  }

  putContent(path: string, content: Uint8Array, opts?: PutOptions): Promise<boolean> {
    return this.#observe('putContent', () => this.#base.putContent(path, content, opts));
  }

  reader(path: string, offset?: number, length?: number): Promise<Readable> {
    return this.#observe('reader', () => this.#base.reader(path, offset, length));
  }

  async writer(path: string, append: boolean, opts?: WriterOptions): Promise<FileWriter> {
    return new InstrumentedWriter(await this.#observe('writer', () => this.#base.writer(path, append, opts)), this.name);
  }

  stat(path: string): Promise<FileInfo> {
    return this.#observe('stat', () => this.#base.stat(path));
  }

  list(path: string): Promise<string[]> {
    return this.#observe('list', () => this.#base.list(path));
  }

  move(source: string, dest: string): Promise<void> {
    return this.#observe('move', () => this.#base.move(source, dest));
  }

  delete(path: string): Promise<void> {
    return this.#observe('delete', () => this.#base.delete(path));
  }

  close(): Promise<void> {
    return this.#base.close();
  }

  toString(): string {
    return String(this.#base);
  }

  #observe<T>(op: string, fn: () => Promise<T>): Promise<T> {
    return observe(this.name, op, fn);
  }
}

class InstrumentedWriter implements FileWriter {
  readonly #base: FileWriter;
  readonly #driver: string;
  /** Only when the base has it: callers fall back to close() without it. */
  readonly abandon?: () => Promise<void>;
  /** Only when the base has it: callers fall back to write() without it. Counted as a write. */
  readonly writev?: (parts: readonly Uint8Array[]) => Promise<void>;

  constructor(base: FileWriter, driver: string) {
    this.#base = base;
    this.#driver = driver;
    if (base.abandon) {
      const fn = base.abandon.bind(base);
      this.abandon = () => observe(this.#driver, 'abandon', fn);
    }
    if (base.writev) {
      const fn = base.writev.bind(base);
      this.writev = (parts) => observe(this.#driver, 'write', () => fn(parts));
    }
  }

  get size(): number {
    return this.#base.size;
  }

  write(data: Uint8Array): Promise<void> {
    return observe(this.#driver, 'write', () => this.#base.write(data));
  }

  close(): Promise<void> {
    return observe(this.#driver, 'close', () => this.#base.close());
  }

  commit(): Promise<void> {
    return observe(this.#driver, 'commit', () => this.#base.commit());
  }

  cancel(): Promise<void> {
    return observe(this.#driver, 'cancel', () => this.#base.cancel());
  }
}

function observe<T>(driver: string, op: string, fn: () => Promise<T>): Promise<T> {
  const ch = channels.storageRequest;
  if (!ch.hasSubscribers) return fn();
  const t0 = performance.now();
  const report = (outcome: StorageRequestMessage['outcome']): void => {
    if (ch.hasSubscribers) ch.publish({ driver, op, outcome, ms: performance.now() - t0 } satisfies StorageRequestMessage);
  };
  let p: Promise<T>;
  try {
    p = fn();
  } catch (err) {
    report('error');
    return Promise.reject(err);
  }
  return p.then(
    (v) => {
      report('ok');
      return v;
    },
    (err: unknown) => {
      report(isPathNotFound(err) ? 'not_found' : 'error');
      throw err;
    },
  );
}
