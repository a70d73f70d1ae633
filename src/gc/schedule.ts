import type { Logger } from 'pino';
import { MAX_TIMER_MS, type Config } from '../config.js';
import { channels, type GcRunMessage } from '../diagnostics.js';
import { GcBusyError } from './lease.js';
import { runGarbageCollection, totals } from './runner.js';
import { mirrorsOf } from './mirror.js';
import type { StorageDriver } from '../storage/driver.js';

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
