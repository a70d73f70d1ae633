import { RegistryError } from '../errors.js';
import { isPathNotFound, type StorageDriver } from '../storage/driver.js';
import { BlobStore, type BlobDescriptor, type BlobRead, type ByteRange } from './blobs.js';
import type { HashPool } from './hash-pool.js';
import { ManifestStore, lexical, paginate, type Manifest, type ManifestRecord, type Page, type ReferrerDescriptor } from './manifests.js';
import { paths, REPOSITORY_MARKERS } from './paths.js';
import { assertName, isValidName, parseDigest, parseReference } from './reference.js';
import type { SlabPool } from './slab-pool.js';
import type { BodySource } from './upload-write.js';
import { UploadEngine, type ChunkRange, type UploadState } from './uploads.js';

export interface RegistryOptions {
  driver: StorageDriver;
  hashPool: HashPool;
  slabs: SlabPool;
  maxSessionBufferedBytes: number;
  maxBlobBytes: number;
  maxManifestBytes: number;
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

  constructor(opts: RegistryOptions) {
    this.driver = opts.driver;
    this.#blobs = new BlobStore(opts.driver);
    this.#manifests = new ManifestStore({ driver: opts.driver, blobs: this.#blobs, maxBytes: opts.maxManifestBytes });
    this.#uploads = new UploadEngine({
      driver: opts.driver,
      hashPool: opts.hashPool,
      slabs: opts.slabs,
      maxSessionBufferedBytes: opts.maxSessionBufferedBytes,
      maxBlobBytes: opts.maxBlobBytes,
    });
  }

  // --- uploads -------------------------------------------------------------------------

  startUpload(repo: string): Promise<UploadState> {
    return this.#uploads.start(assertName(repo));
  }

  uploadStatus(repo: string, id: string): Promise<UploadState> {
    return this.#uploads.status(assertName(repo), id);
  }

  appendUpload(repo: string, id: string, range: ChunkRange, body: BodySource): Promise<UploadState> {
    return this.#uploads.append(assertName(repo), id, range, body);
  }

  /** Finishes an upload (with an optional last chunk) as the blob `digest`. */
  async completeUpload(repo: string, id: string, digest: string, range: ChunkRange, body: BodySource | undefined): Promise<BlobDescriptor> {
    assertName(repo);
    const d = parseDigest(digest);
    const data = await this.#uploads.complete(repo, id, d, range, body);
    return this.#blobs.adopt(repo, d, data);
  }

  cancelUpload(repo: string, id: string): Promise<void> {
    return this.#uploads.cancel(assertName(repo), id);
  }

  /** Monolithic upload: POST with `?digest=` and the whole blob as the body. */
  async putBlob(repo: string, digest: string, length: number | undefined, body: BodySource): Promise<BlobDescriptor> {
    assertName(repo);
    const d = parseDigest(digest);
    const data = await this.#uploads.oneShot(repo, d, length, body);
    return this.#blobs.adopt(repo, d, data);
  }

  /** Cross-repository mount; undefined when `from` cannot see the blob. */
  async mountBlob(repo: string, digest: string, from: string): Promise<BlobDescriptor | undefined> {
    assertName(repo);
    const d = parseDigest(digest);
    if (!isValidName(from)) return undefined;
    return this.#blobs.mount(repo, d, from);
  }

  // --- blobs ---------------------------------------------------------------------------

  statBlob(repo: string, digest: string): Promise<BlobDescriptor> {
    return this.#blobs.stat(assertName(repo), parseDigest(digest));
  }

  readBlob(repo: string, digest: string, range?: ByteRange): Promise<BlobRead> {
    return this.#blobs.open(assertName(repo), parseDigest(digest), range);
  }

  deleteBlob(repo: string, digest: string): Promise<void> {
    return this.#blobs.unlink(assertName(repo), parseDigest(digest));
  }

  // --- manifests and tags ----------------------------------------------------------------

  putManifest(repo: string, reference: string, contentType: string | undefined, bytes: Buffer): Promise<ManifestRecord> {
    return this.#manifests.put(assertName(repo), parseReference(reference), contentType, bytes);
  }

  getManifest(repo: string, reference: string): Promise<Manifest> {
    return this.#manifests.get(assertName(repo), parseReference(reference));
  }

  statManifest(repo: string, reference: string): Promise<ManifestRecord> {
    return this.#manifests.stat(assertName(repo), parseReference(reference));
  }

  deleteManifest(repo: string, reference: string): Promise<void> {
    return this.#manifests.delete(assertName(repo), parseReference(reference));
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
