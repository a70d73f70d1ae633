import type { LimitFunction } from 'p-limit';
import { WELL_KNOWN_BLOBS } from '../registry/blobs.js';
import type { RepositoryScan } from './scan.js';
import { tryParseDigest } from '../registry/reference.js';

/**
 * Marking: what is live, starting from roots and following references.
 *
 *   root (repository, manifest)          a tag that has not expired; also, from the sweep,
 *                                        a manifest touched lately ("late marks", gc/collector.ts)
 *   manifest M live in repository R  →   M's bytes (its revision in R; for revisions written
 *                                        before 2026-12, a blob under M's digest)
 *                                        M's config and layers: blobs, and R's links to them
 *                                        M's index children: manifests live in R
 *                                        manifests in R whose subject is M (referrers)
 *
 * A manifest's `subject` is not followed: a signature keeps nothing alive, it lives while
 * what it signs lives. Blobs are shared between repositories (one record per digest), so a
 * blob is live if any live manifest anywhere refers to it; a layer link is live only if a
 * live manifest in its own repository refers to it.
 */

/** What a manifest refers to, by digest. */
export interface ManifestRefs {
  /** Config and layers (blobs). */
  readonly blobs: string[];
  /** Index children (manifests). */
  readonly children: string[];
  readonly subject?: string;
}

/**
 * References of a stored manifest, read straight from its JSON: `config`, `layers`,
 * `manifests`, `subject`. Tolerant: whatever the schema checks let in is followed, anything
 * that is not a digest is skipped. Undefined when the bytes are not a JSON object.
 */
export function manifestRefs(bytes: Uint8Array): ManifestRefs | undefined {
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
  } catch {
    return undefined;
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) return undefined;
  const m = doc as { config?: unknown; layers?: unknown; manifests?: unknown; subject?: unknown };
  const digestOf = (d: unknown): string | undefined => {
    const text = (d as { digest?: unknown } | null)?.digest;
    return typeof text === 'string' ? tryParseDigest(text)?.value : undefined;
  };
  const list = (v: unknown): string[] => (Array.isArray(v) ? v.map(digestOf).filter((d): d is string => d !== undefined) : []);
  const config = digestOf(m.config);
  const subject = digestOf(m.subject);
  return {
    blobs: [...(config ? [config] : []), ...list(m.layers)],
    children: list(m.manifests),
    ...(subject ? { subject } : {}),
  };
}

/** The references of manifest `digest` as stored in repository `repo`; undefined when it is not there or not readable. */
export type ManifestLoader = (repo: string, digest: string) => Promise<ManifestRefs | undefined>;

export class Marker {
  /** Repository → manifests live there. */
  readonly manifests = new Map<string, Set<string>>();
  /** Repository → blobs whose links there are live. */
  readonly links = new Map<string, Set<string>>();
  /** Blobs live anywhere (including manifests' own bytes). */
  readonly blobs = new Set<string>();
  /** Live manifests whose bytes could not be read or parsed: what they refer to is unknown. */
  readonly unreadable = new Set<string>();
  readonly #repos: ReadonlyMap<string, RepositoryScan>;
  readonly #load: ManifestLoader;
  readonly #limit: LimitFunction;
  /** Manifests read, by digest: the same bytes wherever they are stored. */
  readonly #found = new Map<string, Promise<ManifestRefs>>();
  /** Reads in flight or failed, by repository and digest: a manifest missing from one repository may be in another. */
  readonly #tried = new Map<string, Promise<ManifestRefs | undefined>>();

  constructor(repos: ReadonlyMap<string, RepositoryScan>, load: ManifestLoader, limit: LimitFunction) {
    this.#repos = repos;
    this.#load = load;
    this.#limit = limit;
    for (const d of WELL_KNOWN_BLOBS.keys()) this.blobs.add(d);
  }

  isLive(repo: string, manifest: string): boolean {
    return this.manifests.get(repo)?.has(manifest) ?? false;
  }

  /** The references of a manifest of `repo` (cached: bytes are read once per digest, as long as some repository has them). */
  refs(repo: string, digest: string): Promise<ManifestRefs | undefined> {
    const found = this.#found.get(digest);
    if (found) return found;
    const key = `${repo}\u0000${digest}`;
    let p = this.#tried.get(key);
    if (!p) {
      p = this.#limit(() => this.#load(repo, digest));
      this.#tried.set(key, p);
      void p.then((refs) => {
        if (refs) this.#found.set(digest, Promise.resolve(refs));
      }, () => undefined);
    }
    return p;
  }

  /** Marks `roots` and everything reachable from them; returns how many manifests became live. */
  async mark(roots: Iterable<readonly [repo: string, manifest: string]>): Promise<number> {
    let frontier = [...roots];
    let added = 0;
    while (frontier.length > 0) {
      const fresh = frontier.filter(([repo, d]) => {
        let set = this.manifests.get(repo);
        if (!set) this.manifests.set(repo, (set = new Set()));
        if (set.has(d)) return false;
        set.add(d);
        return true;
      });
      added += fresh.length;
      const next: Array<[string, string]> = [];
      await Promise.all(fresh.map(async ([repo, d]) => {
        this.blobs.add(d);
        for (const r of this.#repos.get(repo)?.referrers.get(d) ?? []) next.push([repo, r]);
        const refs = await this.refs(repo, d);
        if (!refs) {
          this.unreadable.add(d);
          return;
        }
        let links = this.links.get(repo);
        if (!links) this.links.set(repo, (links = new Set()));
        for (const b of refs.blobs) {
          this.blobs.add(b);
          links.add(b);
        }
        for (const c of refs.children) next.push([repo, c]);
      }));
      frontier = next;
    }
    return added;
  }
}
