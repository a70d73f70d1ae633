import type { Logger } from 'pino';
import { MAX_TIMER_MS, type Config } from '../config.js';
import { channels, type GcRunMessage, type GcSweepReplayMessage } from '../diagnostics.js';
import { replaySweepNote } from './collector.js';
import { GcBusyError } from './lease.js';
import { runGarbageCollection, totals } from './runner.js';
import { mirrorsOf } from './mirror.js';
import type { StorageDriver } from '../storage/driver.js';
import { PrefixedDriver } from '../storage/prefixed.js';

/**
 * `gc.schedule`: `hoist serve` runs a collection that often (with ±10% jitter, so that
 * instances sharing a store don't all try at once; the lease lets one of them run and the
 * others skip). The first run comes one interval after start-up, not at start-up.
 */
export interface GcSchedule {
  /** Stops the timer; a running collection is asked to stop and awaited. */
  stop(): Promise<void>;
}

export function startGcSchedule(config: Readonly<Config>, driver: StorageDriver, log: Logger): GcSchedule | undefined {
  const g = config.gc;
  if (g.schedule <= 0) return undefined;
  const abort = new AbortController();
  let running: Promise<void> | undefined;
  let timer: NodeJS.Timeout | undefined;
  const glog = log.child({ component: 'gc' });

  const runOnce = async (): Promise<void> => {
    const t0 = Date.now();
    try {
      const run = await runGarbageCollection({
        driver,
        graceMs: g.grace,
        staleUploadAfterMs: g.staleUploadAfter,
        expiration: g.expiration,
        namespaces: config.namespaces.map((n) => n.name),
        mirrors: mirrorsOf(config),
        signal: abort.signal,
      });
      const t = totals(run);
      ran({ outcome: 'success', ms: Date.now() - t0, objects: t.objects, bytes: t.bytes });
      glog.info({
        elapsedMs: Date.now() - t0,
        freedBytes: t.bytes,
        removedObjects: t.objects,
        incompleteWrites: run.incompleteWrites,
        registries: run.registries.map(({ registry, report: r }) => ({
          registry: registry || '(default)', generation: r.generation, manifests: r.manifests, expiredTags: r.expiredTags,
          links: r.links, blobs: r.blobs, uploads: r.uploads, orphanData: r.orphanData, spared: r.spared, live: r.live,
        })),
      }, 'garbage collection done');
    } catch (err) {
      const outcome = err instanceof GcBusyError ? 'skipped' : abort.signal.aborted ? 'stopped' : 'failure';
      ran({ outcome, ms: Date.now() - t0, objects: 0, bytes: 0 });
      if (err instanceof GcBusyError) glog.info({ lease: err.lease }, 'garbage collection skipped: another collection is running');
      else if (abort.signal.aborted) glog.info('garbage collection stopped for shutdown');
      else glog.error({ err }, 'garbage collection failed');
    }
  };

  const arm = (): void => {
    const jitter = 1 + (Math.random() * 0.2 - 0.1);
    timer = setTimeout(() => {
      running = runOnce().finally(() => {
        running = undefined;
        if (!abort.signal.aborted) arm();
      });
    }, Math.min(MAX_TIMER_MS, Math.round(g.schedule * jitter))); // a longer timer fires at once (config.ts timerMs)
    timer.unref();
  };
  arm();
  glog.info({ everyMs: g.schedule, graceMs: g.grace, staleUploadAfterMs: g.staleUploadAfter }, 'garbage collection scheduled');

  return {
    async stop() {
      abort.abort(new Error('server shutting down'));
      clearTimeout(timer);
      await running;
    },
  };
}

/** Reports a run's end (metrics: hoist_gc_runs_total and friends). */
function ran(msg: GcRunMessage): void {
  if (channels.gcRun.hasSubscribers) channels.gcRun.publish(msg);
}

/**
 * How often every `hoist serve` looks for the sweep note of a collector that died (J in
 * gc/collector.ts). The next collection replays it too, but that may be hours away (or never,
 * without gc.schedule), and meanwhile a push answered 201 while the dead collector deleted its
 * batch answers 404. A minute keeps that window short for one stat per registry per minute.
 */
export const SWEEP_WATCH_MS = 60_000;

export interface SweepWatch {
  /** Stops the timer; a replay under way is awaited (a few store requests). */
  stop(): Promise<void>;
}

/**
 * Every `everyMs`, for the default registry and each configured namespace: if a sweep note is
 * there and the lease is free or expired, takes the lease, replays the note as a collection
 * does first, and releases the lease (gc/collector.ts replaySweepNote). A live lease is never
 * taken: its collector is mid-batch, or will replay the note itself once it is found dead.
 * Undefined on `memory:` storage without gc.schedule, where no collector can write a note
 * (`hoist gc` cannot reach this process's memory).
 */
export function startSweepWatch(config: Readonly<Config>, driver: StorageDriver, log: Logger, everyMs = SWEEP_WATCH_MS): SweepWatch | undefined {
  if (config.storage.startsWith('memory:') && config.gc.schedule <= 0) return undefined;
  const registries = [
    { name: '', driver },
    ...config.namespaces.map((n) => ({ name: n.name, driver: new PrefixedDriver(driver, `/namespaces/${n.name}`) as StorageDriver })),
  ];
  const glog = log.child({ component: 'gc' });
  let stopped = false;
  let running: Promise<void> | undefined;
  let timer: NodeJS.Timeout | undefined;

  const look = async (): Promise<void> => {
    for (const r of registries) {
      if (stopped) return;
      const registry = r.name || '(default)';
      try {
        const replayed = await replaySweepNote({ driver: r.driver });
        if (!replayed) continue;
        if (channels.gcSweepReplay.hasSubscribers) channels.gcSweepReplay.publish({ registry: r.name, restored: replayed.restored } satisfies GcSweepReplayMessage);
        glog.info({ registry, restored: replayed.restored }, 'replayed the sweep note of a garbage collector that died mid-batch');
      } catch (err) {
        if (err instanceof GcBusyError) glog.debug({ registry, lease: err.lease }, 'sweep note left alone: a collection holds the lease');
        // The server goes on; the next look, or the next collection, tries again.
        else glog.warn({ err, registry }, 'could not replay the sweep note of a garbage collector that died');
      }
    }
  };

  const arm = (): void => {
    timer = setTimeout(() => {
      running = look().finally(() => {
        running = undefined;
        if (!stopped) arm();
      });
    }, everyMs);
    timer.unref();
  };
  arm();

  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
  };
}
