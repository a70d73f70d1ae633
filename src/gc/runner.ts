import type { IncompleteWrite, StorageDriver } from '../storage/driver.js';
import { PrefixedDriver } from '../storage/prefixed.js';
import { ExpiryPolicy, type ExpirationSettings } from '../registry/expiry.js';
import { collectGarbage, type GcProgress, type GcReport, type Removed } from './collector.js';
import { basename, listOrEmpty } from './scan.js';
import { lockInForce } from '../engine/upload-lock.js';
import { mirrorGraceMs, MirrorExpiry, type MirrorGcSettings } from './mirror.js';

/**
 * One collection over a whole store: the default registry, then every namespace's registry
 * (src/storage/prefixed.ts: `/namespaces/<name>`), then the driver's abandoned writes (S3
 * multipart uploads no writer state knows, fs temp files), which belong to the store, not to
 * a registry.
 * Used by `hoist gc` and by `hoist serve`'s schedule.
 */
export interface GcRunOptions {
  /** The store's own driver (not a namespace's view). */
  driver: StorageDriver;
  graceMs: number;
  staleUploadAfterMs: number;
  expiration?: ExpirationSettings;
  /**
   * The configured namespaces: collected by their settings, even while still empty. Those
   * found under /namespaces but not configured are collected without a configured expiration.
   */
  namespaces?: readonly string[];
  /** Registries that are pull-through caches ('' the default one), collected by last pull (gc/mirror.ts). */
  mirrors?: ReadonlyMap<string, MirrorGcSettings>;
  dryRun?: boolean;
  owner?: string;
  concurrency?: number;
  signal?: AbortSignal;
  /** `registry` is '' for the default registry, else the namespace's name. */
  onProgress?: (registry: string, p: GcProgress | { phase: 'incomplete writes'; done: number; total: number }) => void;
}

export interface RegistryGcReport {
  /** '' for the default registry. */
  readonly registry: string;
  readonly report: GcReport;
}

export interface GcRunReport {
  readonly registries: RegistryGcReport[];
  /** Abandoned multipart uploads and staging objects (S3), temp files (fs). */
  readonly incompleteWrites: Removed;
  readonly elapsedMs: number;
  readonly dryRun: boolean;
}

export async function runGarbageCollection(o: GcRunOptions): Promise<GcRunReport> {
  const t0 = Date.now();
  const policy = new ExpiryPolicy(o.expiration ?? {});
  const found = (await listOrEmpty(o.driver, '/namespaces')).map(basename);
  const configuredNames = new Set(o.namespaces ?? []);
  const namespaces = [...new Set([...found, ...configuredNames])].sort();
  const registries: RegistryGcReport[] = [];
  /** Every registry's remaining uploads, by data path in the store's own paths: their lock's path. */
  const uploadLocks = new Map<string, string>();
  for (const name of ['', ...namespaces]) {
    const prefix = name === '' ? '' : `/namespaces/${name}`;
    const driver = name === '' ? o.driver : new PrefixedDriver(o.driver, prefix);
    // A namespace the configuration does not name (renamed, removed, or this instance's
    // configuration lags another's) has no settings here: the default expiration would apply
    // to tags its own settings kept (found by probing: a rename of a namespace whose tags
    // never expired, and one collection took its images for good). So only what nothing
    // refers to goes, and tags expire by their labels alone.
    const configured = name === '' || configuredNames.has(name);
    const expiry = configured ? policy.forNamespace(name === '' ? undefined : name) : new ExpiryPolicy();
    const mirror = o.mirrors?.get(name);
    const report = await collectGarbage({
      driver,
      graceMs: mirror ? mirrorGraceMs(mirror.ttlMs) : o.graceMs,
      staleUploadAfterMs: o.staleUploadAfterMs,
      dryRun: o.dryRun,
      expiry: mirror ? new MirrorExpiry(expiry, mirror.ttlMs) : expiry,
      owner: o.owner,
      concurrency: o.concurrency,
      signal: o.signal,
      onProgress: o.onProgress ? (p) => o.onProgress!(name, p) : undefined,
      onUploads: (locks) => {
        for (const [data, lock] of locks) uploadLocks.set(prefix + data, prefix + lock);
      },
    });
    registries.push({ registry: name, report });
  }
  const incompleteWrites: Removed = { count: 0, bytes: 0 };
  if (o.driver.listIncompleteWrites) {
    const writes: IncompleteWrite[] = await o.driver.listIncompleteWrites(new Date(Date.now() - o.staleUploadAfterMs));
    let done = 0;
    o.onProgress?.('', { phase: 'incomplete writes', done, total: writes.length });
    for (const w of writes) {
      o.signal?.throwIfAborted();
      // An upload's write that a request is still making (found by probing: a PATCH sending its
      // parts slower than one per staleUploadAfter had its multipart upload aborted, and was
      // answered 202 for bytes that were gone). Its lock says so; the driver looks at the
      // writer's state once more before it aborts, for a request that finished since.
      const lock = uploadLocks.get(w.path);
      if (lock !== undefined && (await lockInForce(o.driver, lock))) continue;
      if (!o.dryRun && !(await o.driver.abortIncompleteWrite!(w))) continue;
      incompleteWrites.count++;
      incompleteWrites.bytes += w.bytes;
      o.onProgress?.('', { phase: 'incomplete writes', done: ++done, total: writes.length });
    }
  }
  return { registries, incompleteWrites, elapsedMs: Date.now() - t0, dryRun: o.dryRun ?? false };
}

/** Totals over every registry, for one summary line. */
export function totals(run: GcRunReport): { bytes: number; objects: number } {
  let bytes = run.incompleteWrites.bytes;
  let objects = run.incompleteWrites.count;
  for (const { report: r } of run.registries) {
    bytes += r.blobs.bytes + r.uploads.bytes + r.orphanData.bytes;
    objects += r.blobs.count + r.uploads.count + r.uploadLocks + r.danglingRecords + r.orphanData.count + r.manifests + r.expiredTags + r.links + r.referrerEntries + r.markers;
  }
  return { bytes, objects };
}
