/**
 * When tags expire. Two sources, the earlier wins:
 *
 * - the manifest's `quay.expires-after` label (Quay): the tag record's `expiresAt`, set by
 *   ManifestStore.put from the image config's labels, counted from the tag push;
 * - an expiration configured for the registry (zuul-registry's `expiration`): a tag expires
 *   that long after it was last pushed (`updatedAt`). It can be set for every registry of
 *   the process, per namespace (src/http/namespaces.ts: an isolated registry), and per
 *   repository or repository prefix (`ci/tmp` covers `ci/tmp` and `ci/tmp/x`, not `ci/tmpx`);
 *   the most specific setting wins, and 0 turns expiry off for what it covers.
 *
 * An expired tag disappears from the API at its time (ManifestStore hides it from tags/list
 * and from manifest requests by tag); the collector deletes its record and, if nothing else
 * refers to its manifest, the manifest and its blobs.
 */
export interface ExpirationSettings {
  /** Every registry (ms; 0 or absent: tags don't expire by age). */
  readonly default?: number;
  /** Namespace name → ms; overrides `default` in that namespace's registry. */
  readonly namespaces?: Readonly<Record<string, number>>;
  /** Repository name or prefix → ms, in every registry; overrides the two above. */
  readonly repositories?: Readonly<Record<string, number>>;
}

/** The fields of a tag record expiry looks at (manifests.ts TagRecord). */
export interface TagTimes {
  readonly updatedAt?: string;
  readonly expiresAt?: string;
}

export class ExpiryPolicy {
  readonly #settings: ExpirationSettings;
  readonly #registryDefault: number | undefined;
  /** Longest prefix first. */
  readonly #prefixes: Array<[string, number]>;

  /** `namespace`: which registry this policy is for (undefined: the default registry). */
  constructor(settings: ExpirationSettings = {}, namespace?: string) {
    this.#settings = settings;
    const ns = namespace === undefined ? undefined : settings.namespaces?.[namespace];
    this.#registryDefault = ns ?? settings.default;
    this.#prefixes = Object.entries(settings.repositories ?? {})
      .map(([p, ms]): [string, number] => [p.replace(/^\/+|\/+$/g, ''), ms])
      .sort((a, b) => b[0].length - a[0].length);
  }

  /** The same settings, for one namespace's registry. */
  forNamespace(namespace: string | undefined): ExpiryPolicy {
    return new ExpiryPolicy(this.#settings, namespace);
  }

  /** How long after a push a tag of `repo` lives; undefined: forever. */
  expirationFor(repo: string): number | undefined {
    for (const [prefix, ms] of this.#prefixes) {
      if (repo === prefix || repo.startsWith(`${prefix}/`)) return ms > 0 ? ms : undefined;
    }
    const ms = this.#registryDefault;
    return ms !== undefined && ms > 0 ? ms : undefined;
  }

  /** When the tag expires (epoch ms), or undefined if never. */
  tagExpiresAt(repo: string, tag: TagTimes): number | undefined {
    let at: number | undefined;
    if (tag.expiresAt !== undefined) {
      const label = Date.parse(tag.expiresAt);
      if (Number.isFinite(label)) at = label;
    }
    const ms = this.expirationFor(repo);
    if (ms !== undefined && tag.updatedAt !== undefined) {
      const pushed = Date.parse(tag.updatedAt);
      if (Number.isFinite(pushed)) at = Math.min(at ?? Infinity, pushed + ms);
    }
    return at;
  }

  isExpired(repo: string, tag: TagTimes, nowMs: number = Date.now()): boolean {
    const at = this.tagExpiresAt(repo, tag);
    return at !== undefined && at <= nowMs;
  }
}
