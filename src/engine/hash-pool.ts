import { Piscina } from 'piscina';
import type { BytesRef, DigestResult, StateResult } from '../../workers/hash.js';
import { taskFile } from '../task-file.js';
import { Slots } from './slots.js';

export type { BytesRef } from '../../workers/hash.js';

/**
 * The hashing worker pool. Each upload's running SHA-256 lives in one worker (see
 * workers/hash.ts); this wrapper pins an upload's tasks to the thread that holds its state.
 *
 * piscina 5 lets a `loadBalancer` choose the worker for each task, and exposes a task's
 * `queueOptionsSymbol` value to it: we put the wanted thread id there. Tasks without a pin
 * (a new upload, an S3 part's SHA-256) go to the least busy worker. Ordering within an upload is the
 * caller's job: it sends an upload's next chunk only after the previous one was hashed.
 */
export interface HashPoolOptions {
  threads: number;
  /**
   * Tasks at the workers or in piscina's queue at most; the others wait here, in arrival
   * order (#tasks).
   */
  maxQueue: number;
  /** Updates moving a slab to the workers and back, at once (default: two per thread); see #slabUpdates. */
  maxInflightUpdates?: number;
}

export class HashPool {
  readonly #pool: Piscina;
  readonly #concurrency = 4;
  /**
   * Updates that move a slab to a worker and back (`giveBack`: uWS chunks copied into the
   * engine's slabs) run once fewer than `maxInflightUpdates` such are at the workers. Why: a
   * slab at a worker has left the main thread's external memory, and comes back into it with
   * the answer; V8 starts a full collection whenever external memory has grown 64 MiB past
   * where the last one left it. With 16 uWS pushes at once, each with a few 4 MiB slabs
   * queued at the workers, the slabs' coming and going alone set off 23-28 full mark-compacts
   * per GiB (0.4-0.6 CPU s of V8's helper threads); two updates a thread keep every worker
   * busy, and with them 8-12 (bench/HISTORY.md, "Sixteen pushes at once"). node:http's
   * chunks go one way, and are freed at the worker: they do not wait (measured, waiting
   * cost single pushes ~4%). Waiting, an upload keeps its slab, and the slab pool pauses
   * sockets: the usual backpressure.
   */
  readonly #slabUpdates: Slots;
  /**
   * Every task. piscina refuses a task past its maxQueue (TaskQueueAtLimit), and not every
   * task holds a slab: a commit's digest, a state rebuilt after a restart, an S3 part's
   * SHA-256. Found by probing: 400 finishes at once after a restart got 260 500s. So tasks
   * past the bound wait here instead, and piscina's queue never reaches its limit.
   */
  readonly #tasks: Slots;

  constructor(opts: HashPoolOptions) {
    const concurrency = this.#concurrency;
    this.#slabUpdates = new Slots(opts.maxInflightUpdates ?? 2 * opts.threads);
    this.#tasks = new Slots(opts.maxQueue);
    this.#pool = new Piscina({
      filename: taskFile('hash'),
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

  /**
   * Feeds bytes into an upload's running hash; `expectedOffset` 0 starts a new state. The
   * bytes are one range, or parts in order. With `transfer`, the private ArrayBuffers under
   * them are moved to the worker (no copy; they are unusable here afterwards), and
   * `giveBack`, one of them, comes back as the answer's `returned`. Shared memory is read
   * in place either way.
   */
  update(
    key: string, pin: number | undefined, bytes: BytesRef | readonly Uint8Array[], expectedOffset: number,
    transfer = false, giveBack?: ArrayBuffer,
  ): Promise<StateResult> {
    const parts = isParts(bytes) ? [...bytes] : [new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length)];
    let transferList: ArrayBuffer[] | undefined;
    if (transfer) {
      const moved = new Set<ArrayBuffer>();
      for (const p of parts) if (p.buffer instanceof ArrayBuffer) moved.add(p.buffer);
      transferList = [...moved];
    }
    const task = { key, expectedOffset, parts, giveBack: transfer ? giveBack : undefined, [Piscina.queueOptionsSymbol]: { threadId: pin } };
    const run = () => this.#run<StateResult>(task, { name: 'update', transferList });
    return task.giveBack !== undefined ? this.#slabUpdates.run(run) : run();
  }

  #run<T>(task: object, options: { name: string; transferList?: ArrayBuffer[] }): Promise<T> {
    return this.#tasks.run(() => this.#pool.run(task, options) as Promise<T>);
  }

  /** Updates moving a slab at the workers now, and waiting for a place there (tests). */
  get updates(): { inflight: number; waiting: number } {
    return { inflight: this.#slabUpdates.inflight, waiting: this.#slabUpdates.waiting };
  }

  /** Tasks at the workers or queued there, and waiting for a place (tests). */
  get tasks(): { inflight: number; waiting: number } {
    return { inflight: this.#tasks.inflight, waiting: this.#tasks.waiting };
  }

  digest(key: string, pin: number | undefined, expectedOffset: number, final: boolean): Promise<DigestResult> {
    return this.#run({ key, expectedOffset, final, [Piscina.queueOptionsSymbol]: { threadId: pin } }, { name: 'digest' });
  }

  /** Forgets an upload's state (cancel, or after a failed write made it diverge from storage). */
  async drop(key: string, pin: number | undefined): Promise<void> {
    if (pin === undefined) return;
    await this.#run({ key, [Piscina.queueOptionsSymbol]: { threadId: pin } }, { name: 'drop' });
  }

  /** One-shot digest off the main thread: an S3 part's signed SHA-256, a blob re-hash. */
  oneShot(bytes: BytesRef, algorithm: 'md5' | 'sha256' | 'sha512', encoding: 'hex' | 'base64'): Promise<string> {
    return this.#run({ buffer: bytes.buffer, byteOffset: bytes.byteOffset, length: bytes.length, algorithm, encoding }, { name: 'oneShot' });
  }

  get threads(): number {
    return this.#pool.threads.length;
  }

  /** Tasks waiting for a worker: in piscina's queue, and in this pool's lines before it. */
  get queueSize(): number {
    return this.#pool.queueSize + this.#tasks.waiting + this.#slabUpdates.waiting;
  }

  /** Workers running at least one task now (metrics read it at scrape time). */
  get busyThreads(): number {
    return this.#pool.threads.length - this.#pool.idleThreads;
  }

  async close(): Promise<void> {
    await this.#pool.close({ force: true });
  }
}

function isParts(bytes: BytesRef | readonly Uint8Array[]): bytes is readonly Uint8Array[] {
  return Array.isArray(bytes);
}
