import { createHash } from 'node:crypto';
import { RegistryError } from '../errors.js';
import { isPathNotFound, type StorageDriver } from '../storage/driver.js';
import type { BlobStore } from './blobs.js';
import { paths } from './paths.js';
import { tryParseDigest, type Digest, type Reference } from './reference.js';

/** What paths.manifestRevision() holds. The bytes are a blob under the same digest. */
export interface ManifestRecord {
  readonly digest: string;
  readonly mediaType: string;
  readonly size: number;
  readonly createdAt: string;
}

interface TagRecord {
  digest: string;
  updatedAt: string;
}

export interface Manifest extends ManifestRecord {
  readonly bytes: Buffer;
}

export interface Page<T> {
  readonly items: T[];
  /** The `last` to ask for the next page, when there is one. */
  readonly next?: string;
}

/** Media types a manifest can be pushed as (image-spec, and Docker's schema 2). */
export const MANIFEST_MEDIA_TYPES = [
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
] as const;

export interface ManifestStoreOptions {
  driver: StorageDriver;
  blobs: BlobStore;
  maxBytes: number;
}

/** Manifests by digest, and tags pointing at them, per repository. */
export class ManifestStore {
  readonly #o: ManifestStoreOptions;

  constructor(opts: ManifestStoreOptions) {
    this.#o = opts;
  }

  /**
   * Stores a manifest exactly as pushed (the digest is of these bytes) with the pushed media
   * type, then points the tag at it. Pushing the same bytes again changes nothing.
   */
  async put(repo: string, reference: Reference, contentType: string | undefined, bytes: Buffer): Promise<ManifestRecord> {
    if (bytes.length > this.#o.maxBytes) {
      throw new RegistryError('MANIFEST_INVALID', { message: 'manifest too large', detail: { size: bytes.length, limit: this.#o.maxBytes } });
    }
    const algorithm = reference.kind === 'digest' ? reference.digest.algorithm : 'sha256';
    const digest = tryParseDigest(`${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`)!;
    if (reference.kind === 'digest' && reference.digest.hex !== digest.hex) {
      throw new RegistryError('DIGEST_INVALID', { detail: { expected: reference.digest.value, actual: digest.value } });
    }
    const mediaType = mediaTypeOf(contentType, bytes);
    await this.#o.blobs.putSmall(digest, bytes);
    const record: ManifestRecord = { digest: digest.value, mediaType, size: bytes.length, createdAt: new Date().toISOString() };
    const revision = paths.manifestRevision(repo, digest);
    const fresh = await this.#o.driver.putContent(revision, Buffer.from(JSON.stringify(record)), { ifNotExists: true });
    const stored = fresh ? record : ((await this.#revision(repo, digest)) ?? record);
    if (reference.kind === 'tag') {
      const tag: TagRecord = { digest: digest.value, updatedAt: new Date().toISOString() };
      await this.#o.driver.putContent(paths.tag(repo, reference.tag), Buffer.from(JSON.stringify(tag)));
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

  /**
   * By digest: removes the manifest from the repository, and every tag pointing at it (a
   * tag must not dangle). By tag: removes only the tag.
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
    try {
      await this.#o.driver.delete(paths.manifestRevision(repo, digest));
    } catch (err) {
      if (isPathNotFound(err)) throw unknown(reference);
      throw err;
    }
    for (const tag of await this.#tagNames(repo)) {
      const t = await this.#tag(repo, tag);
      if (t?.digest === digest.value) await this.#o.driver.delete(paths.tag(repo, tag)).catch(() => undefined);
    }
  }

  /** Tags in lexical order, paginated by `n` and `last` (distribution-spec "Listing Tags"). */
  async tags(repo: string, n: number | undefined, last: string | undefined): Promise<Page<string>> {
    const names = await this.#tagNames(repo);
    return paginate(names, n, last);
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
    const tag = await this.#tag(repo, reference.tag);
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

/**
 * The media type a manifest is served with: the pushed Content-Type, else the document's own
 * `mediaType` field (OCI allows omitting the header's parameters; clients always send one).
 */
function mediaTypeOf(contentType: string | undefined, bytes: Buffer): string {
  const header = contentType?.split(';')[0]?.trim().toLowerCase();
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new RegistryError('MANIFEST_INVALID', { message: 'manifest is not valid JSON' });
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    throw new RegistryError('MANIFEST_INVALID', { message: 'manifest must be a JSON object' });
  }
  const field = (doc as { mediaType?: unknown }).mediaType;
  const mediaType = header && header !== 'application/octet-stream' ? header : typeof field === 'string' ? field : undefined;
  if (!mediaType) throw new RegistryError('MANIFEST_INVALID', { message: 'manifest media type unknown: set Content-Type' });
  if ((doc as { schemaVersion?: unknown }).schemaVersion === 1 || mediaType.includes('distribution.manifest.v1')) {
    throw new RegistryError('MANIFEST_INVALID', { message: 'schema 1 manifests are not supported (deprecated)' });
  }
  return mediaType;
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

/** Byte-wise order, as the spec's "lexical" means (not locale collation). */
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
