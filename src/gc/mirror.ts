import type { Config } from '../config.js';
import { ExpiryPolicy, type TagTimes } from '../registry/expiry.js';

/**
 * Collecting a pull-through cache (src/proxy/; gc/collector.ts, H): by last pull, not by tags.
 *
 * A cache's content is whatever clients pulled, so it goes once nobody pulled it for
 * `proxy.ttl`. No new sweep is needed, only two settings of the ordinary collection:
 *
 *   - tags expire `ttl` after the upstream last confirmed them. The cache writes a tag (its
 *     `updatedAt`) when it fetches it and whenever a pull finds it older than `tagTtl` and
 *     the upstream confirms it, so a tag nobody pulls expires between `ttl - tagTtl` and
 *     `ttl` after its last pull. Expired tags are no roots, as everywhere;
 *   - the grace period is `ttl` (plus the refresh below), in place of gc.grace: a pull
 *     touches what it serves (the manifest's or blob's touched marker, as a HEAD does), so
 *     anything pulled within `ttl` is fresh, and a fresh manifest keeps everything it refers
 *     to (late marks). gc.grace is for pushes, which a cache refuses: what the cache stores
 *     itself is stored as a registered operation and is spared by C, not by the grace.
 *
 * A pull rewrites a marker only when the one this process wrote last is older than
 * pullRefreshMs(ttl), so a hot layer costs one small write an hour, not one per pull; the
 * grace covers that lag.
 */
export interface MirrorGcSettings {
  readonly ttlMs: number;
}

/** How stale a touched marker may get while its content is being pulled. */
export function pullRefreshMs(ttlMs: number): number {
  return Math.min(3_600_000, Math.floor(ttlMs / 10));
}

/** The grace period of a cache's collection. */
export function mirrorGraceMs(ttlMs: number): number {
  return ttlMs + pullRefreshMs(ttlMs);
}

/** A cache's tag expiry: the configured one, but never later than `ttl` after the tag's `updatedAt`. */
export class MirrorExpiry extends ExpiryPolicy {
  readonly #base: ExpiryPolicy;
  readonly #ttlMs: number;

  constructor(base: ExpiryPolicy, ttlMs: number) {
    super();
    this.#base = base;
    this.#ttlMs = ttlMs;
  }

  override forNamespace(namespace: string | undefined): ExpiryPolicy {
    return new MirrorExpiry(this.#base.forNamespace(namespace), this.#ttlMs);
  }

  override expirationFor(repo: string): number | undefined {
    return Math.min(this.#base.expirationFor(repo) ?? Infinity, this.#ttlMs);
  }

  override tagExpiresAt(repo: string, tag: TagTimes): number | undefined {
    const configured = this.#base.tagExpiresAt(repo, tag);
    const confirmed = tag.updatedAt === undefined ? NaN : Date.parse(tag.updatedAt);
    if (!Number.isFinite(confirmed)) return configured;
    return Math.min(configured ?? Infinity, confirmed + this.#ttlMs);
  }
}

/** Which registries of a configuration are caches: '' for the default registry, else the namespace's name. */
export function mirrorsOf(config: Readonly<Config>): Map<string, MirrorGcSettings> {
  const out = new Map<string, MirrorGcSettings>();
  if (config.proxy) out.set('', { ttlMs: config.proxy.ttl });
  for (const n of config.namespaces) if (n.proxy) out.set(n.name, { ttlMs: n.proxy.ttl });
  return out;
}
