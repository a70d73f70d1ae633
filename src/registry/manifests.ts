import { createHash } from 'node:crypto';
import { RegistryError } from '../errors.js';
import { isPathNotFound, type StorageDriver } from '../storage/driver.js';
import { WELL_KNOWN_BLOBS, type BlobStore } from './blobs.js';
import { EXPIRES_AFTER_LABEL, labelsOf, MAX_CONFIG_BYTES, parseExpiresAfter } from './labels.js';
import {
  artifactTypeOf, IMAGE_CONFIG_MEDIA_TYPES, isNonDistributable, parseManifest,
  type Descriptor, type ParsedManifest,
} from './manifest-schema.js';
import { paths } from './paths.js';
import { tryParseDigest, type Digest, type Reference } from './reference.js';

export { MANIFEST_MEDIA_TYPES } from './manifest-schema.js';

/** What paths.manifestRevision() holds. The bytes are a blob under the same digest. */
export interface ManifestRecord {
  readonly digest: string;
  readonly mediaType: string;
  readonly size: number;
  readonly createdAt: string;
  /** The manifest's `artifactType`, else its config's media type (what referrers report). */
  readonly artifactType?: string;
  /** Digest of the manifest's `subject`: this manifest is listed among its referrers. */
  readonly subject?: string;
  /** `config.Labels` of an image's config blob. */
  readonly labels?: Record<string, string>;
  /** From the `quay.expires-after` label, counted from the first push (ISO 8601). */
  readonly expiresAt?: string;
}

/** What paths.tag() holds: the one thing a tag is, a pointer to a manifest. */
export interface TagRecord {
  readonly digest: string;
  readonly updatedAt: string;
  /** From the manifest's `quay.expires-after` label, counted from this tag push (ISO 8601). */
  readonly expiresAt?: string;
}

export interface Manifest extends ManifestRecord {
  readonly bytes: Buffer;
}

export interface Page<T> {
  readonly items: T[];
  /** The `last` to ask for the next page, when there is one. */
  readonly next?: string;
}

/** One entry of a referrers list: an OCI descriptor of a manifest whose subject was asked for. */
export interface ReferrerDescriptor {
  readonly mediaType: string;
  readonly digest: string;
  readonly size: number;
  readonly artifactType?: string;
  readonly annotations?: Record<string, string>;
}

export interface ManifestStoreOptions {
  driver: StorageDriver;
  blobs: BlobStore;
  maxBytes: number;
  /**
   * Whether a tag has expired at `nowMs` (expiry.ts: its label's `expiresAt`, or a configured
   * expiration). An expired tag is gone to clients before the collector deletes its record.
   * Default: `expiresAt` alone.
   */
  tagExpired?: (repo: string, tag: TagRecord, nowMs: number) => boolean;
}

export interface PutManifestOptions {
  /**
   * The manifest comes from the upstream of a pull-through cache (src/proxy/): its config,
   * layers and children are fetched when a client asks for them, so they are not checked here
   * (nor are its labels read), and a tag is written even when it already names this manifest:
   * the tag's `updatedAt` is when the upstream last confirmed it.
   */
  readonly fromUpstream?: boolean;
}

/** Existence checks in flight for one manifest (an index may list dozens of platforms). */
const CHECK_CONCURRENCY = 8;
/** Tag records read at once for a tag list (expired tags are left out). */
const TAG_READ_CONCURRENCY = 32;

/**
 * Manifests by digest, tags pointing at them, and the referrers index, per repository.
 *
 * Consistency without locks: every write is one atomic putContent of a small object, and
 * objects are written in an order that keeps each reader's view whole:
 *
 *   1. the manifest's bytes, as a blob under its digest (content-addressed, so racing
 *      writers write the same thing);
 *   2. the revision record, with ifNotExists: from here on the manifest exists. Two pushes
 *      of the same bytes race here harmlessly, one creates it and both go on with it;
 *   3. the referrer entry under its subject (rewritten on every push, so a push that died
 *      between 2 and 3 is repaired by pushing again);
 *   4. the tag record: a single object naming a digest whose revision is already committed.
 *      Two clients pushing the same tag at once each replace the whole object, so the tag
 *      ends up naming one of the two manifests, never a mix and never a missing one.
 */
export class ManifestStore {
  readonly #o: ManifestStoreOptions;

  constructor(opts: ManifestStoreOptions) {
    this.#o = opts;
  }

  /**
   * Validates and stores a manifest exactly as pushed (the digest is of these bytes) with the
   * pushed media type, then points the tag at it. Pushing the same bytes again changes
   * nothing. Throws DIGEST_INVALID (bytes don't match a digest reference), MANIFEST_INVALID
   * (not a supported schema 2 manifest), MANIFEST_BLOB_UNKNOWN (a config or layer not in the
   * repository) or MANIFEST_UNKNOWN (an index child not in the repository).
   */
  async put(repo: string, reference: Reference, contentType: string | undefined, bytes: Buffer, opts: PutManifestOptions = {}): Promise<ManifestRecord> {
    if (bytes.length > this.#o.maxBytes) {
      throw new RegistryError('MANIFEST_INVALID', { message: 'manifest too large', detail: { size: bytes.length, limit: this.#o.maxBytes } });
    }
    const algorithm = reference.kind === 'digest' ? reference.digest.algorithm : 'sha256';
    const digest = tryParseDigest(`${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`)!;
    if (reference.kind === 'digest' && reference.digest.hex !== digest.hex) {
      throw new RegistryError('DIGEST_INVALID', { detail: { expected: reference.digest.value, actual: digest.value } });
    }
    const manifest = parseManifest(bytes, contentType);
    if (!opts.fromUpstream) await this.#checkReferences(repo, manifest);
    const labels = manifest.kind === 'manifest' && !opts.fromUpstream ? await this.#labels(repo, manifest.config) : undefined;
    const expiresAfterMs = parseExpiresAfter(labels?.[EXPIRES_AFTER_LABEL]);
    const artifactType = artifactTypeOf(manifest);
    const now = Date.now();

    await this.#o.blobs.putSmall(digest, bytes);
    const record: ManifestRecord = {
      digest: digest.value,
      mediaType: manifest.mediaType,
      size: bytes.length,
      createdAt: new Date(now).toISOString(),
      ...(artifactType !== undefined ? { artifactType } : {}),
      ...(manifest.subject ? { subject: manifest.subject.digest } : {}),
      ...(labels ? { labels } : {}),
      ...(expiresAfterMs !== undefined ? { expiresAt: new Date(now + expiresAfterMs).toISOString() } : {}),
    };
    const revision = paths.manifestRevision(repo, digest);
    const fresh = await this.#o.driver.putContent(revision, json(record), { ifNotExists: true });
    const stored = fresh ? record : ((await this.#revision(repo, digest)) ?? record);

    if (manifest.subject) {
      const subject = tryParseDigest(manifest.subject.digest)!;
      const entry: ReferrerDescriptor = {
        mediaType: manifest.mediaType,
        digest: digest.value,
        size: bytes.length,
        ...(artifactType !== undefined ? { artifactType } : {}),
        ...(manifest.annotations ? { annotations: manifest.annotations } : {}),
      };
      await this.#o.driver.putContent(paths.referrer(repo, subject, digest), json(entry));
    }

    if (reference.kind === 'tag') {
      // Re-pushing a tag that already names this manifest is a no-op: nothing is rewritten,
      // and its expiry is not pushed back.
      const current = await this.#tag(repo, reference.tag);
      // An expired tag is no tag: pushing it again makes a new one.
      if (current?.digest !== digest.value || this.#expired(repo, current, now) || opts.fromUpstream) {
        const tag: TagRecord = {
          digest: digest.value,
          updatedAt: new Date(now).toISOString(),
          ...(expiresAfterMs !== undefined ? { expiresAt: new Date(now + expiresAfterMs).toISOString() } : {}),
        };
        await this.#o.driver.putContent(paths.tag(repo, reference.tag), json(tag));
      }
    }
    return stored;
  }

  async stat(repo: string, reference: Reference): Promise<ManifestRecord> {
    const digest = await this.#resolve(repo, reference);
    const record = await this.#revision(repo, digest);
    if (!record) throw unknown(reference);
    return record;
  }

  async get(repo: string, reference: Reference): Promise<Manifest> {
    const record = await this.stat(repo, reference);
    const bytes = await this.#o.blobs.getSmall(tryParseDigest(record.digest)!);
    if (!bytes) throw unknown(reference);
    return { ...record, bytes };
  }

  /** The tag's record (for expiry), or undefined when the repository has no such tag. */
  tagRecord(repo: string, tag: string): Promise<TagRecord | undefined> {
    return this.#tag(repo, tag);
  }

  /**
   * By digest: removes the manifest from the repository, its entry among its subject's
   * referrers, and every tag pointing at it (a tag must not dangle). By tag: removes only
   * the tag. The referrer entry goes first, so a delete cut short never leaves an entry
   * naming a manifest that is gone.
   */
  async delete(repo: string, reference: Reference): Promise<void> {
    if (reference.kind === 'tag') {
      await this.#o.driver.delete(paths.tag(repo, reference.tag)).catch((err) => {
        if (isPathNotFound(err)) throw unknown(reference);
        throw err;
      });
      return;
    }
    const digest = reference.digest;
    const record = await this.#revision(repo, digest);
    if (!record) throw unknown(reference);
    const subject = record.subject === undefined ? undefined : tryParseDigest(record.subject);
    if (subject) await ignoreNotFound(this.#o.driver.delete(paths.referrer(repo, subject, digest)));
    try {
      await this.#o.driver.delete(paths.manifestRevision(repo, digest));
    } catch (err) {
      if (isPathNotFound(err)) throw unknown(reference);
      throw err;
    }
    for (const tag of await this.#tagNames(repo)) {
      const t = await this.#tag(repo, tag);
      if (t?.digest === digest.value) await ignoreNotFound(this.#o.driver.delete(paths.tag(repo, tag)));
    }
  }

  /**
   * Tags in lexical order, paginated by `n` and `last` (distribution-spec "Listing Tags").
   * Lexical means byte-wise here, as distribution sorts them: `V1` before `_x` before `latest`.
   */
  async tags(repo: string, n: number | undefined, last: string | undefined): Promise<Page<string>> {
    const names = await this.#tagNames(repo);
    const now = Date.now();
    // Each tag's record says whether it has expired: one small read per tag, many at once.
    const records = await mapLimit(names, TAG_READ_CONCURRENCY, (t) => this.#tag(repo, t));
    return paginate(names.filter((_, i) => records[i] !== undefined && !this.#expired(repo, records[i]!, now)), n, last);
  }

  #expired(repo: string, tag: TagRecord, nowMs: number): boolean {
    if (this.#o.tagExpired) return this.#o.tagExpired(repo, tag, nowMs);
    return tag.expiresAt !== undefined && Date.parse(tag.expiresAt) <= nowMs;
  }

  /**
   * Descriptors of the manifests whose `subject` is `subject` (distribution-spec v1.1
   * "Listing Referrers"), optionally only those of one artifact type. The subject itself
   * need not exist; no referrers is an empty list, never an error.
   */
  async referrers(repo: string, subject: Digest, artifactType?: string): Promise<ReferrerDescriptor[]> {
    let entries: string[];
    try {
      entries = await this.#o.driver.list(paths.referrers(repo, subject));
    } catch (err) {
      if (isPathNotFound(err)) return [];
      throw err;
    }
    const found = await mapLimit(entries, CHECK_CONCURRENCY, (path) => readJson<ReferrerDescriptor>(this.#o.driver, path));
    return found.filter((d): d is ReferrerDescriptor => d !== undefined && (artifactType === undefined || d.artifactType === artifactType));
  }

  /**
   * Every blob an image manifest names must be in the repository (pushed or mounted there),
   * and every child of an index must be a manifest in the repository. The well-known empty
   * layer and empty JSON config are always there (BlobStore.exists knows them); layers whose
   * bytes live elsewhere (`urls`) are not checked. The subject is not checked: referrers may
   * be pushed before what they refer to (distribution-spec "Pushing Manifests with Subject").
   */
  async #checkReferences(repo: string, m: ParsedManifest): Promise<void> {
    if (m.kind === 'manifest') {
      const blobs = [m.config, ...m.layers.filter((l) => !isNonDistributable(l))];
      const missing = await firstMissing(blobs, (d) => this.#o.blobs.exists(repo, tryParseDigest(d.digest)!));
      if (missing) {
        throw new RegistryError('MANIFEST_BLOB_UNKNOWN', { message: 'manifest references a blob unknown to the repository', detail: { digest: missing.digest } });
      }
      return;
    }
    const missing = await firstMissing(m.manifests, async (d) => (await this.#revision(repo, tryParseDigest(d.digest)!)) !== undefined);
    if (missing) {
      // MANIFEST_UNKNOWN (a missing child is a manifest, not a blob), but as a bad request.
      throw new RegistryError('MANIFEST_UNKNOWN', { status: 400, message: 'index references a manifest unknown to the repository', detail: { digest: missing.digest } });
    }
  }

  /** Labels of an image's config blob; undefined for artifacts and for configs too large to read. */
  async #labels(repo: string, config: Descriptor): Promise<Record<string, string> | undefined> {
    if (!IMAGE_CONFIG_MEDIA_TYPES.includes(config.mediaType)) return undefined;
    const digest = tryParseDigest(config.digest)!;
    const known = WELL_KNOWN_BLOBS.get(digest.value);
    if (known) return labelsOf(known);
    // The stored size, not the descriptor's: it is what getSmall() would read.
    let size: number;
    try {
      ({ size } = await this.#o.blobs.stat(repo, digest));
    } catch (err) {
      // Deleted since #checkReferences saw it.
      if (err instanceof RegistryError && err.code === 'BLOB_UNKNOWN') {
        throw new RegistryError('MANIFEST_BLOB_UNKNOWN', { message: 'manifest references a blob unknown to the repository', detail: { digest: digest.value } });
      }
      throw err;
    }
    if (size > MAX_CONFIG_BYTES) return undefined;
    const bytes = await this.#o.blobs.getSmall(digest);
    return bytes ? labelsOf(bytes) : undefined;
  }

  async #tagNames(repo: string): Promise<string[]> {
    try {
      return (await this.#o.driver.list(paths.tags(repo))).map(basename).sort(lexical);
    } catch (err) {
      if (isPathNotFound(err)) return [];
      throw err;
    }
  }

  async #resolve(repo: string, reference: Reference): Promise<Digest> {
    if (reference.kind === 'digest') return reference.digest;
    const found = await this.#tag(repo, reference.tag);
    const tag = found && !this.#expired(repo, found, Date.now()) ? found : undefined;
    const digest = tag && tryParseDigest(tag.digest);
    if (!digest) throw unknown(reference);
    return digest;
  }

  async #tag(repo: string, tag: string): Promise<TagRecord | undefined> {
    return readJson<TagRecord>(this.#o.driver, paths.tag(repo, tag));
  }

  async #revision(repo: string, digest: Digest): Promise<ManifestRecord | undefined> {
    return readJson<ManifestRecord>(this.#o.driver, paths.manifestRevision(repo, digest));
  }
}

function unknown(reference: Reference): RegistryError {
  return new RegistryError('MANIFEST_UNKNOWN', {
    detail: reference.kind === 'tag' ? { tag: reference.tag } : { digest: reference.digest.value },
  });
}

function json(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value));
}

async function ignoreNotFound(p: Promise<void>): Promise<void> {
  try {
    await p;
  } catch (err) {
    if (!isPathNotFound(err)) throw err;
  }
}

/** Runs `fn` over `items`, at most `limit` at a time; results in input order. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** The first descriptor (in manifest order) for which `exists` is false. Each digest is checked once. */
async function firstMissing(descriptors: readonly Descriptor[], exists: (d: Descriptor) => Promise<boolean>): Promise<Descriptor | undefined> {
  const unique = [...new Map(descriptors.map((d) => [d.digest, d])).values()];
  const present = await mapLimit(unique, CHECK_CONCURRENCY, exists);
  return unique.find((_, i) => !present[i]);
}

export function paginate(sorted: string[], n: number | undefined, last: string | undefined): Page<string> {
  let start = 0;
  if (last !== undefined) {
    start = sorted.findIndex((t) => lexical(t, last) > 0);
    if (start < 0) start = sorted.length;
  }
  if (n === undefined) return { items: sorted.slice(start) };
  const items = sorted.slice(start, start + n);
  const more = start + n < sorted.length;
  return more && items.length > 0 ? { items, next: items[items.length - 1]! } : { items };
}

/** Byte-wise order, as the spec's "lexical" means (not locale collation), as distribution sorts. */
export function lexical(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function basename(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

export async function readJson<T>(driver: StorageDriver, path: string): Promise<T | undefined> {
  try {
    return JSON.parse((await driver.getContent(path)).toString('utf8')) as T;
  } catch (err) {
    if (isPathNotFound(err)) return undefined;
    throw err;
  }
}
