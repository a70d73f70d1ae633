import { RegistryError } from '../errors.js';
import { childKey, listPage, StorageUnwritableError, type ListedChild, type ListPage, type StorageDriver } from '../storage/driver.js';
import { createHash } from 'node:crypto';
import { BlobStore, type BlobDescriptor, type BlobRead, type ByteRange } from './blobs.js';
import { ExpiryPolicy } from './expiry.js';
import type { Mirror, MirrorFactory } from './mirror.js';
import { GcGuard, type GcGuardOptions } from '../gc/guard.js';
import { manifestRefs } from '../gc/mark.js';
import type { HashPool } from '../engine/hash-pool.js';
import { ManifestStore, lexical, type Manifest, type ManifestRecord, type Page, type ReferrerDescriptor } from './manifests.js';
import { paths, REPOSITORY_MARKERS } from './paths.js';
import { assertName, isValidName, parseDigest, parseReference, parseTags, tagsOf, tryParseDigest, type Digest, type Reference } from './reference.js';
import type { SlabPool } from '../engine/slab-pool.js';
import type { BodySource } from '../engine/upload-write.js';
import type { UploadLockOptions } from '../engine/upload-lock.js';
import { UnclaimedDataError, UploadEngine, type ChunkRange, type UploadState } from '../engine/uploads.js';

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
  /** How the server takes part in online garbage collection (gc/guard.ts): how often it looks at the lease. */
  gc?: GcGuardOptions;
  /** The per-upload storage lock: its timing, and who hears of a lock its release could not delete. */
  uploadLock?: UploadLockOptions;
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
  /** Online garbage collection's server side: presence, epochs, touched markers (gc/guard.ts). */
  readonly #guard: GcGuard;
  readonly #mirror: Mirror | undefined;

  constructor(opts: RegistryOptions) {
    this.driver = opts.driver;
    this.#blobs = new BlobStore(opts.driver);
    this.#guard = new GcGuard(opts.driver, opts.gc);
    const expiry = opts.expiry ?? new ExpiryPolicy();
    this.#manifests = new ManifestStore({
      driver: opts.driver,
      blobs: this.#blobs,
      maxBytes: opts.maxManifestBytes,
      expiry,
    });
    this.#uploads = new UploadEngine({
      driver: opts.driver,
      hashPool: opts.hashPool,
      slabs: opts.slabs,
      maxSessionBufferedBytes: opts.maxSessionBufferedBytes,
      maxBlobBytes: opts.maxBlobBytes,
      lock: opts.uploadLock,
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
    // Adopted once the upload record is gone (uploads.ts, gc/collector.ts E); touched before the
    // adopt looks for an existing record to deduplicate onto (gc/collector.ts, A), as a registered
    // operation, so that a collection running meanwhile spares the blob whatever the clocks say,
    // and no later one lists anything before it ends (gc/collector.ts, C).
    await this.#uploads.complete(repo, id, d, range, body, async (data) => {
      try {
        desc = await this.#guard.op(async () => {
          await this.#guard.touch([d]);
          return this.#blobs.adopt(repo, d, data);
        });
      } catch (err) {
        // The upload may keep its data for a retry only while no record names it (uploads.ts).
        throw (await this.#blobs.namesData(d, data.dataPath)) ? err : new UnclaimedDataError(err);
      }
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

  /**
   * Cross-repository mount; undefined when `from` cannot see the blob, or when `digest` or
   * `from` cannot name one: distribution-spec "Mounting a blob from another repository" has a
   * registry that cannot mount open an upload session instead (202), as distribution does
   * for a mount parameter it cannot read.
   */
  async mountBlob(repo: string, digest: string, from: string): Promise<BlobDescriptor | undefined> {
    this.#refuseOnMirror(repo);
    assertName(repo);
    const d = tryParseDigest(digest);
    if (d === undefined || !isValidName(from)) return undefined;
    // No touch for a blob `from` does not link (as statBlob).
    if (!(await this.#blobs.linked(from, d))) return undefined;
    return this.#guard.op(async () => {
      await this.#guard.touch([d]);
      return this.#blobs.mount(repo, d, from);
    });
  }

  // --- blobs ---------------------------------------------------------------------------

  /**
   * HEAD: clients ask before they upload, and skip the upload if the blob is there, so a yes
   * must keep the blob for the grace period (gc/collector.ts, B): touch, then check (A). A
   * digest the repository does not link is answered no before any touch: anyone who may pull
   * can ask for any digest, and each marker written for one would stay until a collection.
   */
  async statBlob(repo: string, digest: string): Promise<BlobDescriptor> {
    const d = parseDigest(digest);
    assertName(repo);
    if (this.#mirror) return this.#mirror.statBlob(repo, d);
    if (!(await this.#blobs.linked(repo, d))) throw new RegistryError('BLOB_UNKNOWN', { detail: { digest: d.value } });
    await this.#markAsked(d);
    return this.#blobs.stat(repo, d);
  }

  /**
   * A HEAD's touch. A store that takes no writes (full, read-only) still answers what it holds:
   * without the marker the worst case is the one a lost marker has (gc/guard.ts touch), a
   * client that skipped the upload and then gets MANIFEST_BLOB_UNKNOWN from its manifest PUT.
   */
  async #markAsked(d: Digest): Promise<void> {
    try {
      await this.#guard.touch([d]);
    } catch (err) {
      if (!(err instanceof StorageUnwritableError)) throw err;
    }
  }

  async readBlob(repo: string, digest: string, range?: ByteRange): Promise<BlobRead> {
    assertName(repo);
    const d = parseDigest(digest);
    if (this.#mirror) return this.#mirror.readBlob(repo, d, range);
    return this.#blobs.open(repo, d, range);
  }

  async deleteBlob(repo: string, digest: string): Promise<void> {
    return this.#blobs.unlink(this.#refuseOnMirror(repo), parseDigest(digest), (p) => this.#guard.deleting(p));
  }

  // --- manifests and tags ----------------------------------------------------------------

  /**
   * An operation of garbage collection's current epoch (gc/guard.ts, gc/collector.ts C). While
   * no collection runs that is all: the collector that starts waits for it to finish. While
   * one runs, it touches the manifest's own digest and everything it references before
   * ManifestStore.put checks that they exist (A), and afterwards puts the tag back if the
   * collector was deleting it as expired at that moment (F). An untagged manifest pushed
   * again is touched, so that it is kept for the grace period as a new one is (B).
   * `extraTags` (a PUT's `?tag=`, checked by parseTags) point at the manifest too; the
   * result names every tag the PUT set.
   */
  async putManifest(repo: string, reference: string, contentType: string | undefined, bytes: Buffer, extraTags: readonly string[] = []): Promise<ManifestRecord & { tags: string[] }> {
    this.#refuseOnMirror(repo);
    const ref = parseReference(reference);
    const tags = parseTags(extraTags);
    const allTags = tagsOf(ref, tags);
    return this.#guard.op(async () => {
      const collecting = this.#guard.collecting;
      if (collecting) await this.#guard.touch(referencedBy(ref, bytes));
      // A reference found missing is looked for again while a collection runs: the collector
      // may be putting it back (gc/guard.ts recheck). put() writes nothing before its checks.
      const record = await this.#guard.recheck(() => this.#manifests.put(repo, ref, contentType, bytes, {
        onExisting: async (d) => {
          if (ref.kind === 'digest' && !collecting) await this.#guard.touch([d]);
        },
        tags,
      }), isMissingReference);
      if (collecting) {
        for (const tag of allTags) {
          await this.#guard.tagIntent(repo, tag);
          await this.#manifests.repairTag(repo, tag, record.digest);
        }
      }
      return { ...record, tags: allTags };
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
    if (ref.kind === 'digest') {
      // As statBlob: no marker for a manifest the repository does not hold.
      if (!(await this.#manifests.exists(repo, ref.digest))) throw new RegistryError('MANIFEST_UNKNOWN', { detail: { digest: ref.digest.value } });
      await this.#markAsked(ref.digest);
    }
    return this.#manifests.stat(repo, ref);
  }

  async deleteManifest(repo: string, reference: string): Promise<void> {
    return this.#manifests.delete(this.#refuseOnMirror(repo), parseReference(reference), (p) => this.#guard.deleting(p));
  }

  /**
   * Manifests whose `subject` is `digest`, optionally of one `artifactType` only. Always a
   * list (empty when there are none), even for a repository that does not exist: the spec
   * forbids a 404 here, which clients read as "no referrers API".
   */
  listReferrers(repo: string, digest: string, artifactType: string | undefined, last?: string): Promise<Page<ReferrerDescriptor>> {
    return this.#manifests.referrers(assertName(repo), parseDigest(digest), artifactType, last);
  }

  /** Stops taking part in garbage collection (gc/guard.ts); call after the last request. */
  close(): Promise<void> {
    return this.#guard.close();
  }

  async listTags(repo: string, n: number | undefined, last: string | undefined): Promise<Page<string>> {
    assertName(repo);
    if (this.#mirror) return this.#mirror.listTags(repo, n, last);
    const page = await this.#manifests.tags(repo, n, last);
    // An empty list is a repository without (live) tags, or none at all: only then ask which.
    if (page.items.length === 0 && !(await this.#repositoryExists(repo))) throw new RegistryError('NAME_UNKNOWN', { detail: { name: repo } });
    return page;
  }

  /**
   * Repository names in lexical order (distribution-spec "Listing Repositories"), `n` at a
   * time after `last`. A page costs the store about n listings, whatever the catalog's size:
   * the walk (repositoryNames) starts at `last` and stops one name past the page. A page
   * holds at most MAX_CATALOG_PAGE names, asked for with `n` or not, and says where the next
   * starts: the whole catalog of a large store in one answer would be one request that costs
   * the store a listing per repository and holds every name (distribution's
   * `catalog.maxentries`, 1,000 by default, does the same).
   */
  async catalog(n: number | undefined, last: string | undefined): Promise<Page<string>> {
    if (n === 0) return { items: [] };
    const size = Math.min(n ?? MAX_CATALOG_PAGE, MAX_CATALOG_PAGE);
    const items: string[] = [];
    let more = false;
    for await (const name of repositoryNames(this.driver, last)) {
      if (items.length === size) {
        more = true;
        break;
      }
      items.push(name);
    }
    return more ? { items, next: items[items.length - 1]! } : { items };
  }

  /** A directory with `_layers`, `_manifests` or `_uploads` in it: one listing, starting at the markers. */
  async #repositoryExists(repo: string): Promise<boolean> {
    return isRepository(this.driver, paths.repository(repo));
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

/** Children listed per request while walking the catalog. */
const CATALOG_PAGE = 1000;

/** The most repository names one catalog page holds. */
export const MAX_CATALOG_PAGE = 1000;

/**
 * Repository checks (one listing each) sent ahead of the walk: on S3 each is a request of a
 * few milliseconds, and one after another they made a page of 1,000 names take seconds. A
 * walk stopped early (a small `n`) has wasted at most this many.
 */
const CHECKS_AHEAD = 16;

/**
 * Whether the directory is a repository: it holds `_layers`, `_manifests` or `_uploads`.
 * Names cannot start with '_', so the first child after '_' in key order is one of those
 * if the directory has any.
 */
async function isRepository(driver: StorageDriver, dir: string): Promise<boolean> {
  const { children } = await listPage(driver, dir, { startAfter: '_', limit: 1 });
  return children.length > 0 && isMarker(children[0]!);
}

function isMarker(c: ListedChild): boolean {
  const name = c.path.slice(c.path.lastIndexOf('/') + 1);
  return (REPOSITORY_MARKERS as readonly string[]).includes(name);
}

/**
 * Every repository name after `after`, in lexical (byte-wise) order, found by walking
 * /repositories lazily: the caller stops the walk when it has a page, and a walk that starts
 * at `after` lists nothing before it.
 *
 * Listings come in key order (StorageDriver.listPage), where a directory sorts as its name
 * plus '/'. That is lexical order for every name but a directory's own: `a` sorts before
 * `a-b` and `a.b` but lists after them (as `a/`), while `a/x` does sort after both. So when
 * the walk meets a name with '-' or '.' in it, it first looks whether each prefix before one
 * of them (`a` of `a-b`) is a repository and names it there; the prefix's own entry, met
 * later, then only leads into its subtree.
 */
export async function* repositoryNames(driver: StorageDriver, after: string | undefined): AsyncGenerator<string> {
  yield* namesBelow(driver, paths.repositoriesRoot(), '', after);
}

async function* namesBelow(driver: StorageDriver, dir: string, prefix: string, after: string | undefined, first?: Promise<ListPage>): AsyncGenerator<string> {
  // Where `after` falls in this directory: past every child whose key is at most its first
  // component here (a child `c` keyed `c/` holds `c/...`, which may follow `after`).
  const within = after !== undefined && after.startsWith(prefix) ? after.slice(prefix.length) : undefined;
  let startAfter = within?.split('/')[0];
  const named = new Set<string>();
  const later = (name: string): boolean => after === undefined || lexical(name, after) > 0;
  let next = first;
  for (;;) {
    const page = await (next ?? listPage(driver, dir, { ...(startAfter !== undefined ? { startAfter } : {}), limit: CATALOG_PAGE }));
    next = undefined;
    // The page's steps in order: a name, named if its directory is a repository, and then
    // the subtree below it to walk.
    const steps: Array<{ name: string | undefined; path: string; below: string | undefined }> = [];
    for (const child of page.children) {
      const name = child.path.slice(child.path.lastIndexOf('/') + 1);
      if (!child.isDir || name.startsWith('_')) continue;
      for (let i = 1; i < name.length; i++) {
        if (name[i] !== '-' && name[i] !== '.') continue;
        const p = name.slice(0, i);
        if (named.has(p)) continue;
        named.add(p);
        if (later(prefix + p)) steps.push({ name: prefix + p, path: `${dir}/${p}`, below: undefined });
      }
      const full = prefix + name;
      const fresh = !named.has(name);
      named.add(name);
      // Everything below starts with `full/`: all of it precedes `after` when `after` is
      // past `full/` without being inside it.
      const below = `${full}/`;
      const descend = after === undefined || after.startsWith(below) || lexical(after, below) < 0;
      const step = { name: fresh && later(full) ? full : undefined, path: child.path, below: descend ? below : undefined };
      if (step.name !== undefined || step.below !== undefined) steps.push(step);
    }
    // Each step's requests are sent up to CHECKS_AHEAD steps before its turn: the listing a
    // walk below starts with, which also tells whether the directory is a repository (its
    // markers sort among its children), or else the one-key listing that tells it.
    const sent: Array<{ listing: Promise<ListPage> | undefined; check: Promise<boolean> | undefined }> = [];
    for (let i = 0; i < steps.length; i++) {
      while (sent.length < steps.length && sent.length <= i + CHECKS_AHEAD) {
        const s = steps[sent.length]!;
        // A walk below that starts after `after`'s component needs its own first listing.
        const listing = s.below !== undefined && !(after?.startsWith(s.below) ?? false) ? listPage(driver, s.path, { limit: CATALOG_PAGE }) : undefined;
        const check = s.name === undefined ? undefined
          : listing ? listing.then((l) => markedIn(l) ?? isRepository(driver, s.path)) : isRepository(driver, s.path);
        // Awaited in their turn; a walk stopped before then must not leave them unhandled.
        listing?.catch(() => undefined);
        check?.catch(() => undefined);
        sent.push({ listing, check });
      }
      const step = steps[i]!;
      const { listing, check } = sent[i]!;
      if (check && (await check)) yield step.name!;
      if (step.below !== undefined) yield* namesBelow(driver, step.path, step.below, after, listing);
    }
    if (!page.truncated || page.children.length === 0) return;
    startAfter = childKey(page.children[page.children.length - 1]!);
  }
}

/**
 * Whether a directory's first listing page shows it is a repository: a marker among its
 * children, or none in a listing that went past where they sort (undefined: it cannot tell).
 */
function markedIn(page: ListPage): boolean | undefined {
  if (page.children.some(isMarker)) return true;
  const last = page.children[page.children.length - 1];
  return !page.truncated || (last !== undefined && childKey(last) > '_uploads/') ? false : undefined;
}

/** ManifestStore.put's answer for a config, layer or index child that is not in the repository. */
function isMissingReference(err: unknown): boolean {
  return err instanceof RegistryError && (err.code === 'MANIFEST_BLOB_UNKNOWN' || err.code === 'MANIFEST_UNKNOWN');
}
