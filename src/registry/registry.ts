import { RegistryError } from '../errors.js';
import { isPathNotFound, type StorageDriver } from '../storage/driver.js';
import { createHash } from 'node:crypto';
import { BlobStore, type BlobDescriptor, type BlobRead, type ByteRange } from './blobs.js';
import { ExpiryPolicy } from './expiry.js';
import type { Mirror, MirrorFactory } from './mirror.js';
import { GcGuard } from '../gc/guard.js';
import { manifestRefs } from '../gc/mark.js';
import type { HashPool } from '../engine/hash-pool.js';
import { ManifestStore, lexical, paginate, type Manifest, type ManifestRecord, type Page, type ReferrerDescriptor } from './manifests.js';
import { paths, REPOSITORY_MARKERS } from './paths.js';
import { assertName, isValidName, parseDigest, parseReference, tryParseDigest, type Reference } from './reference.js';
import type { SlabPool } from '../engine/slab-pool.js';
import type { BodySource } from '../engine/upload-write.js';
import { UploadEngine, type ChunkRange, type UploadState } from '../engine/uploads.js';

export interface RegistryOptions {
  driver: StorageDriver;
  hashPool: HashPool;
  slabs: SlabPool;
  maxSessionBufferedBytes: number;
  maxBlobBytes: number;
  maxManifestBytes: number;
  /** When tags expire (labels always; configured expirations when given). */
  expiry?: ExpiryPolicy;
  /** A pull-through cache of another registry (src/proxy/): pulls go to it, pushes are refused. */
  mirror?: MirrorFactory;
}

/**
 * The registry core: one method per protocol operation, in the spec's words. Takes names,
 * references and digests as the client sent them and validates them here, so every front
 * end gets the same checks. Knows nothing of HTTP.
 */
export class Registry {
  readonly driver: StorageDriver;
  readonly #blobs: BlobStore;
  readonly #manifests: ManifestStore;
  readonly #uploads: UploadEngine;
  /** Online garbage collection's server side: touched markers and in-flight PUTs (gc/guard.ts). */
  readonly #guard: GcGuard;
  readonly #mirror: Mirror | undefined;

  constructor(opts: RegistryOptions) {
    this.driver = opts.driver;
    this.#blobs = new BlobStore(opts.driver);
    this.#guard = new GcGuard(opts.driver);
    const expiry = opts.expiry ?? new ExpiryPolicy();
    this.#manifests = new ManifestStore({
      driver: opts.driver,
      blobs: this.#blobs,
      maxBytes: opts.maxManifestBytes,
      tagExpired: (repo, tag, nowMs) => expiry.isExpired(repo, tag, nowMs),
    });
    this.#uploads = new UploadEngine({
      driver: opts.driver,
      hashPool: opts.hashPool,
      slabs: opts.slabs,
      maxSessionBufferedBytes: opts.maxSessionBufferedBytes,
      maxBlobBytes: opts.maxBlobBytes,
    });
    this.#mirror = opts.mirror?.({
      driver: opts.driver, blobs: this.#blobs, manifests: this.#manifests, uploads: this.#uploads, guard: this.#guard, maxManifestBytes: opts.maxManifestBytes,
    });
  }

  /** A mirror's content is the upstream's: pushes and deletes are refused (distribution's proxy mode). */
  #refuseOnMirror(repo: string): string {
    assertName(repo);
    if (this.#mirror) throw new RegistryError('UNSUPPORTED', { message: 'this registry is a pull-through cache: pushes and deletes are not supported' });
    return repo;
  }

  // --- uploads -------------------------------------------------------------------------

  /** Uploads with a request writing to them now (metrics). */
  get uploadsInProgress(): number {
    return this.#uploads.writing;
  }

  async startUpload(repo: string): Promise<UploadState> {
    return this.#uploads.start(this.#refuseOnMirror(repo));
  }

  async uploadStatus(repo: string, id: string): Promise<UploadState> {
    return this.#uploads.status(this.#refuseOnMirror(repo), id);
  }

  async appendUpload(repo: string, id: string, range: ChunkRange, body: BodySource): Promise<UploadState> {
    return this.#uploads.append(this.#refuseOnMirror(repo), id, range, body);
  }

  /** Finishes an upload (with an optional last chunk) as the blob `digest`. */
  async completeUpload(repo: string, id: string, digest: string, range: ChunkRange, body: BodySource | undefined): Promise<BlobDescriptor> {
    this.#refuseOnMirror(repo);
    const d = parseDigest(digest);
    let desc: BlobDescriptor | undefined;
    // Adopted before the upload record goes (gc/collector.ts, E); touched before the adopt looks for
    // an existing record to deduplicate onto (gc/collector.ts, A), as a registered operation, so that
    // a collection running meanwhile spares the blob whatever the clocks say (gc/collector.ts, C).
    await this.#uploads.complete(repo, id, d, range, body, async (data) => {
      desc = await this.#guard.op(async () => {
        await this.#guard.touch([d]);
        return this.#blobs.adopt(repo, d, data);
      });
    });
    return desc!;
  }

  async cancelUpload(repo: string, id: string): Promise<void> {
    return this.#uploads.cancel(this.#refuseOnMirror(repo), id);
  }

  /** Monolithic upload: POST with `?digest=` and the whole blob as the body. */
  async putBlob(repo: string, digest: string, length: number | undefined, body: BodySource): Promise<BlobDescriptor> {
    this.#refuseOnMirror(repo);
    const d = parseDigest(digest);
    const data = await this.#uploads.oneShot(repo, d, length, body);
    return this.#guard.op(async () => {
      await this.#guard.touch([d]);
      return this.#blobs.adopt(repo, d, data);
    });
  }

  /** Cross-repository mount; undefined when `from` cannot see the blob. */
  async mountBlob(repo: string, digest: string, from: string): Promise<BlobDescriptor | undefined> {
    this.#refuseOnMirror(repo);
    const d = parseDigest(digest);
    if (!isValidName(from)) return undefined;
    return this.#guard.op(async () => {
      await this.#guard.touch([d]);
      return this.#blobs.mount(repo, d, from);
    });
  }

  // --- blobs ---------------------------------------------------------------------------

  /**
   * HEAD: clients ask before they upload, and skip the upload if the blob is there, so a yes
   * must keep the blob for the grace period (gc/collector.ts, B): touch, then check (A). A no leaves a
   * marker the next collection removes (and the client's upload rewrites it anyway).
   */
  async statBlob(repo: string, digest: string): Promise<BlobDescriptor> {
    const d = parseDigest(digest);
    assertName(repo);
    if (this.#mirror) return this.#mirror.statBlob(repo, d);
    await this.#guard.touch([d]);
    return this.#blobs.stat(repo, d);
  }

  async readBlob(repo: string, digest: string, range?: ByteRange): Promise<BlobRead> {
    assertName(repo);
    const d = parseDigest(digest);
    if (this.#mirror) return this.#mirror.readBlob(repo, d, range);
    return this.#blobs.open(repo, d, range);
  }

  async deleteBlob(repo: string, digest: string): Promise<void> {
    return this.#blobs.unlink(this.#refuseOnMirror(repo), parseDigest(digest));
  }

  // --- manifests and tags ----------------------------------------------------------------

  /**
   * A registered operation (gc/guard.ts, gc/collector.ts C): touches the manifest's own digest and
   * everything it references before ManifestStore.put checks that they exist, and writes the
   * tag again if a collector was deleting it as expired at that moment (gc/collector.ts F).
   */
  async putManifest(repo: string, reference: string, contentType: string | undefined, bytes: Buffer): Promise<ManifestRecord> {
    this.#refuseOnMirror(repo);
    const ref = parseReference(reference);
    return this.#guard.op(async () => {
      await this.#guard.touch(referencedBy(ref, bytes));
      // Again after a collector deleted the tag under us; a third time only if a dead
      // collector's intent made us wait for nothing (gc/guard.ts gives up waiting after 30 s).
      for (let attempt = 1; ; attempt++) {
        const record = await this.#manifests.put(repo, ref, contentType, bytes);
        if (ref.kind !== 'tag' || attempt === 3 || !(await this.#guard.tagIntent(repo, ref.tag))) return record;
      }
    });
  }

  async getManifest(repo: string, reference: string): Promise<Manifest> {
    assertName(repo);
    const ref = readReference(reference);
    if (this.#mirror) return this.#mirror.getManifest(repo, ref);
    return this.#manifests.get(repo, ref);
  }

  /** HEAD: by digest, clients ask before pushing an index's children; a yes touches (as statBlob). */
  async statManifest(repo: string, reference: string): Promise<ManifestRecord> {
    assertName(repo);
    const ref = readReference(reference);
    if (this.#mirror) return this.#mirror.statManifest(repo, ref);
    if (ref.kind === 'digest') await this.#guard.touch([ref.digest]);
    return this.#manifests.stat(repo, ref);
  }

  async deleteManifest(repo: string, reference: string): Promise<void> {
    return this.#manifests.delete(this.#refuseOnMirror(repo), parseReference(reference));
  }

  /**
   * Manifests whose `subject` is `digest`, optionally of one `artifactType` only. Always a
   * list (empty when there are none), even for a repository that does not exist: the spec
   * forbids a 404 here, which clients read as "no referrers API".
   */
  listReferrers(repo: string, digest: string, artifactType: string | undefined): Promise<ReferrerDescriptor[]> {
    return this.#manifests.referrers(assertName(repo), parseDigest(digest), artifactType);
  }

  async listTags(repo: string, n: number | undefined, last: string | undefined): Promise<Page<string>> {
    assertName(repo);
    if (this.#mirror) return this.#mirror.listTags(repo, n, last);
    if (!(await this.#repositoryExists(repo))) throw new RegistryError('NAME_UNKNOWN', { detail: { name: repo } });
    return this.#manifests.tags(repo, n, last);
  }

  /** Repository names in lexical order (distribution-spec "Listing Repositories"). */
  async catalog(n: number | undefined, last: string | undefined): Promise<Page<string>> {
    const names: string[] = [];
    const walk = async (dir: string, prefix: string): Promise<void> => {
      let children: string[];
      try {
        children = await this.driver.list(dir);
      } catch (err) {
        if (isPathNotFound(err)) return;
        throw err;
      }
      const base = children.map((c) => c.slice(c.lastIndexOf('/') + 1));
      if (prefix && base.some((b) => (REPOSITORY_MARKERS as readonly string[]).includes(b))) names.push(prefix);
      for (const b of base) {
        if (!b.startsWith('_')) await walk(`${dir}/${b}`, prefix ? `${prefix}/${b}` : b);
      }
    };
    await walk(paths.repositoriesRoot(), '');
    return paginate(names.sort(lexical), n, last);
  }

  async #repositoryExists(repo: string): Promise<boolean> {
    try {
      const children = await this.driver.list(paths.repository(repo));
      return children.some((c) => (REPOSITORY_MARKERS as readonly string[]).includes(c.slice(c.lastIndexOf('/') + 1)));
    } catch (err) {
      if (isPathNotFound(err)) return false;
      throw err;
    }
  }
}

/**
 * What a manifest PUT vouches for: the manifest's own digest and its config, layers and
 * index children, read straight from the bytes (invalid bytes vouch for nothing: the store
 * refuses them). The subject is not: it need not exist.
 */
function referencedBy(reference: Reference, bytes: Buffer): string[] {
  const algorithm = reference.kind === 'digest' ? reference.digest.algorithm : 'sha256';
  const own = tryParseDigest(`${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`);
  const refs = manifestRefs(bytes);
  return [...(own ? [own.value] : []), ...(refs?.blobs ?? []), ...(refs?.children ?? [])];
}

/**
 * The reference of a read (GET, HEAD). No manifest can be stored under a reference that is
 * neither a valid tag nor a valid digest (writes refuse it with TAG_INVALID or
 * DIGEST_INVALID), so a read of one finds nothing: MANIFEST_UNKNOWN, as distribution answers
 * and the distribution-spec conformance suite expects of `GET|HEAD /v2/<name>/manifests/.INVALID_MANIFEST_NAME`.
 */
function readReference(reference: string): Reference {
  try {
    return parseReference(reference);
  } catch (err) {
    if (!(err instanceof RegistryError)) throw err;
    throw new RegistryError('MANIFEST_UNKNOWN', { detail: { reference: reference.slice(0, 200) } });
  }
}
