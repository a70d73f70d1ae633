import type { GcGuard } from '../gc/guard.js';
import type { Digest } from '../registry/reference.js';

/** Digests whose last touch this process remembers; forgetting one costs one extra write. */
const MAX_REMEMBERED = 100_000;

/**
 * "Last pull" for the collector (gc/mirror.ts): a pull touches the digest it serves (its
 * touched marker, gc/guard.ts), before it reads the content, as a blob HEAD does; but only
 * when this process has not touched it for `refreshMs`, so a layer a fleet pulls a thousand
 * times an hour costs one small write, not a thousand. The collector's grace for a cache
 * covers that lag (gc/mirror.ts mirrorGraceMs), so skipping a touch never lets a pull read
 * content a collection is deleting: its marker is fresh anyway.
 */
export class PullMarks {
  readonly #guard: GcGuard;
  readonly #refreshMs: number;
  /** Digest → when this process last touched it; oldest first. */
  readonly #last = new Map<string, number>();

  constructor(guard: GcGuard, refreshMs: number) {
    this.#guard = guard;
    this.#refreshMs = refreshMs;
  }

  /** Whether a pull of `digest` would write its marker now (this process has not lately). */
  due(digest: Digest, now = Date.now()): boolean {
    return !(now - (this.#last.get(digest.value) ?? -Infinity) < this.#refreshMs);
  }

  async pulled(digests: readonly Digest[]): Promise<void> {
    const now = Date.now();
    const due = digests.filter((d) => this.due(d, now));
    if (due.length === 0) return;
    await this.#guard.touch(due);
    for (const d of due) this.touched(d, now);
  }

  /** Records a touch made elsewhere (storing fetched content touches what it stores). */
  touched(digest: Digest, at = Date.now()): void {
    this.#last.delete(digest.value);
    if (this.#last.size >= MAX_REMEMBERED) this.#last.delete(this.#last.keys().next().value!);
    this.#last.set(digest.value, at);
  }
}
