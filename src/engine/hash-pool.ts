import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import type { BytesRef, DigestResult, StateResult } from '../../workers/hash.js';

export type { BytesRef } from '../../workers/hash.js';

/**
 * The hashing worker pool. Each upload's running SHA-256 lives in one worker (see
 * workers/hash.ts); this wrapper pins an upload's tasks to the thread that holds its state.
 *
 * piscina 5 lets a `loadBalancer` choose the worker for each task, and exposes a task's
 * `queueOptionsSymbol` value to it: we put the wanted thread id there. Tasks without a pin
 * (a new upload, a part MD5) go to the least busy worker. Ordering within an upload is the
 * caller's job: it sends an upload's next chunk only after the previous one was hashed.
 */
export interface HashPoolOptions {
  threads: number;
  /** Upper bound on queued tasks; the upload engine's buffer bound keeps it far below this. */
  maxQueue: number;
}

export class HashPool {
  readonly #pool: Piscina;
  readonly #concurrency = 4;

  constructor(opts: HashPoolOptions) {
    const concurrency = this.#concurrency;
    this.#pool = new Piscina({
      filename: workerFile(),
      minThreads: opts.threads,
      maxThreads: opts.threads,
      // Workers hold running hash states: never retire one for being idle.
      idleTimeout: Infinity,
      maxQueue: opts.maxQueue,
      concurrentTasksPerWorker: concurrency,
      loadBalancer: (task, workers) => {
        const pin = (task[Piscina.queueOptionsSymbol as keyof typeof task] as { threadId?: number } | null)?.threadId;
        if (pin !== undefined) {
          const pinned = workers.find((w) => w.id === pin);
          // A pinned task goes to its worker even when that one is busy: its state is there.
          if (pinned) return pinned;
        }
        let best: (typeof workers)[number] | null = null;
        for (const w of workers) {
          if (w.currentUsage < concurrency && (best === null || w.currentUsage < best.currentUsage)) best = w;
        }
        return best;
      },
    });
  }

  /** Feeds bytes into an upload's running hash; `expectedOffset` 0 starts a new state. */
  update(key: string, pin: number | undefined, bytes: BytesRef, expectedOffset: number, transfer = false): Promise<StateResult> {
    const task = { key, expectedOffset, buffer: bytes.buffer, byteOffset: bytes.byteOffset, length: bytes.length, [Piscina.queueOptionsSymbol]: { threadId: pin } };
    // A SharedArrayBuffer is shared, not copied; a private ArrayBuffer (rebuilds) is moved.
    const transferList = transfer && bytes.buffer instanceof ArrayBuffer ? [bytes.buffer] : undefined;
    return this.#pool.run(task, { name: 'update', transferList });
  }

  digest(key: string, pin: number | undefined, expectedOffset: number, final: boolean): Promise<DigestResult> {
    return this.#pool.run({ key, expectedOffset, final, [Piscina.queueOptionsSymbol]: { threadId: pin } }, { name: 'digest' });
  }

  /** Forgets an upload's state (cancel, or after a failed write made it diverge from storage). */
  async drop(key: string, pin: number | undefined): Promise<void> {
    if (pin === undefined) return;
    await this.#pool.run({ key, [Piscina.queueOptionsSymbol]: { threadId: pin } }, { name: 'drop' });
  }

  /** One-shot digest off the main thread: a storage part's Content-MD5, a blob re-hash. */
  oneShot(bytes: BytesRef, algorithm: 'md5' | 'sha256' | 'sha512', encoding: 'hex' | 'base64'): Promise<string> {
    return this.#pool.run({ buffer: bytes.buffer, byteOffset: bytes.byteOffset, length: bytes.length, algorithm, encoding }, { name: 'oneShot' });
  }

  get threads(): number {
    return this.#pool.threads.length;
  }

  get queueSize(): number {
    return this.#pool.queueSize;
  }

  /** Workers running at least one task now (metrics read it at scrape time). */
  get busyThreads(): number {
    return this.#pool.threads.length - this.#pool.idleThreads;
  }

  async close(): Promise<void> {
    await this.#pool.close({ force: true });
  }
}

/**
 * The compiled task file. Under vitest this module runs from src/*.ts, where the worker
 * has not been compiled next to it; the test set-up builds dist/ first, so use that.
 */
function workerFile(): string {
  const here = new URL(import.meta.url);
  const compiled = fileURLToPath(new URL('../../workers/hash.js', here));
  if (existsSync(compiled)) return compiled;
  return fileURLToPath(new URL('../../dist/workers/hash.js', here));
}
