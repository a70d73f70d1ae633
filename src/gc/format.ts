import type { GcRunReport } from './runner.js';
import { totals } from './runner.js';

/** `hoist gc`'s output: one line per registry, one for the store, one total. */
export function formatRun(run: GcRunReport): string {
  const verb = run.dryRun ? 'would remove' : 'removed';
  const lines: string[] = [];
  for (const { registry, report: r } of run.registries) {
    const parts = [
      count(r.expiredTags, 'expired tag'),
      count(r.manifests, 'manifest'),
      count(r.referrerEntries, 'referrer entry', 'referrer entries'),
      count(r.links, 'layer link'),
      `${count(r.blobs.count, 'blob')} (${formatBytes(r.blobs.bytes)})`,
      `${count(r.uploads.count, 'stale upload')} (${formatBytes(r.uploads.bytes)})`,
      `${count(r.orphanData.count, 'orphaned data object')} (${formatBytes(r.orphanData.bytes)})`,
      count(r.markers, 'touched marker'),
      // Only when there are any: they are left by servers that died (engine/upload-lock.ts).
      ...(r.uploadLocks > 0 ? [count(r.uploadLocks, 'stale upload lock')] : []),
      ...(r.danglingRecords > 0 ? [count(r.danglingRecords, 'blob record without data', 'blob records without data')] : []),
    ];
    lines.push(`${registry ? `namespace ${registry}` : 'default registry'}: ${verb} ${parts.join(', ')}`);
    const kept = `  kept ${count(r.live.manifests, 'live manifest')} and ${count(r.live.blobs, 'blob')} in ${count(r.repositories, 'repository', 'repositories')}`;
    lines.push(r.spared > 0 ? `${kept}; spared ${r.spared} touched while collecting` : kept);
    if (r.unreadableManifests.length > 0) {
      lines.push(`  warning: ${count(r.unreadableManifests.length, 'live manifest')} could not be read (what they reference was kept only if something else uses it): ${r.unreadableManifests.slice(0, 5).join(', ')}${r.unreadableManifests.length > 5 ? ', ...' : ''}`);
    }
  }
  lines.push(`store: ${run.dryRun ? 'would abort' : 'aborted'} ${count(run.incompleteWrites.count, 'abandoned write')} (${formatBytes(run.incompleteWrites.bytes)})`);
  const t = totals(run);
  lines.push(`${run.dryRun ? 'would free' : 'freed'} ${formatBytes(t.bytes)} in ${count(t.objects, 'object')}; took ${formatDuration(run.elapsedMs)}`);
  return `${lines.join('\n')}\n`;
}

function count(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

export function formatDuration(ms: number): string {
  if (ms === 0) return '0s';
  if (ms < 1000) return `${ms}ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)}s`;
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)}m${Math.round((ms % 60_000) / 1000)}s`;
  return `${(ms / 3_600_000).toFixed(ms % 3_600_000 === 0 ? 0 : 1)}h`;
}

/**
 * A progress line rewritten in place on a terminal (at most 10 times a second); nothing
 * when the stream is not a TTY, so logs and pipes get only the report.
 */
export class ProgressLine {
  readonly #stream: NodeJS.WriteStream;
  #last = 0;
  #shown = false;

  constructor(stream: NodeJS.WriteStream) {
    this.#stream = stream;
  }

  update(text: string): void {
    if (!this.#stream.isTTY) return;
    const now = Date.now();
    if (now - this.#last < 100) return;
    this.#last = now;
    const width = Math.max(20, (this.#stream.columns ?? 80) - 1);
    this.#stream.write(`\r\x1b[K${text.slice(0, width)}`);
    this.#shown = true;
  }

  clear(): void {
    if (this.#shown) this.#stream.write('\r\x1b[K');
    this.#shown = false;
  }
}
