import { createHash } from 'node:crypto';
import { RegistryError } from '../errors.js';
import { isPathNotFound, listPage, objectExists, readOrUndefined, type ListedChild, type ListPage, type StorageDriver } from '../storage/driver.js';
import { recyclerOf } from '../storage/file-reader.js';
import type { BlobLocation, BlobStore } from './blobs.js';
import { ExpiryPolicy } from './expiry.js';
import { EXPIRES_AFTER_LABEL, labelsOf, MAX_CONFIG_BYTES, parseExpiresAfter } from './labels.js';
import {
  artifactTypeOf, IMAGE_CONFIG_MEDIA_TYPES, isNonDistributable, parseManifest,
  type Descriptor, type ParsedManifest,
} from './manifest-schema.js';
import { LARGE_MANIFEST_BYTES, ParseLane } from './parse-lane.js';
import { paths } from './paths.js';
import { tagsOf, tryParseDigest, type Digest, type Reference } from './reference.js';

export { MANIFEST_MEDIA_TYPES } from './manifest-schema.js';

/**
 * What paths.manifestRevision() holds: this record as one line of JSON, a newline, and the
 * manifest's bytes as pushed (encodeRevision). Revisions written before 2026-12 hold the
 * record alone; their bytes are a blob under the same digest.
 */
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

/**
 * What paths.tag() holds: the one thing a tag is, a pointer to a manifest. Written whenever
 * its updatedAt changes (a push of another manifest, or of an expired tag; under a configured
 * expiration every push), so the object's modification time is its updatedAt, to within the
 * clocks' difference.
 */
export interface TagRecord {
  readonly digest: string;
  /** When the tag was last pushed; a configured expiration counts from it (expiry.ts). */
  readonly updatedAt: string;
  /** From the manifest's `quay.expires-after` label, counted from the push that pointed the tag here (ISO 8601). */
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
   * When tags expire (expiry.ts: a label's `expiresAt`, a configured expiration). An expired
   * tag is gone to clients before the collector deletes its record. Default: labels only.
   */
  expiry?: ExpiryPolicy;
}


export interface PutManifestOptions {
  /**
   * The manifest comes from the upstream of a pull-through cache (src/proxy/): its config,
   * layers and children are fetched when a client asks for them, so they are not checked here
   * (nor are its labels read), and a tag is written even when it already names this manifest:
   * the tag's `updatedAt` is when the upstream last confirmed it.
   */
  readonly fromUpstream?: boolean;
  /**
   * Called when the manifest was stored already (this push wrote no revision), before the
   * tag is written. The registry uses it to keep an untagged manifest pushed again for the
   * grace period, as the first push did (gc/guard.ts).
   */
  readonly onExisting?: (digest: Digest) => Promise<void>;
  /**
   * Tags to point at the manifest besides a tag reference, valid and each once (a PUT by
   * digest with `?tag=`: reference.ts parseTags). They name the manifest by the reference's
   * digest, so a tag can name a manifest pushed by its sha512 digest.
   */
  readonly tags?: readonly string[];
}

/** Existence checks in flight for one manifest (an index may list dozens of platforms). */
const CHECK_CONCURRENCY = 8;
/** Tag records read at once for a tag list, a delete by digest. */
const TAG_READ_CONCURRENCY = 32;
/** Tags written at once for one manifest PUT with `?tag=`. */
const TAG_WRITE_CONCURRENCY = 8;
/**
 * Referrer entries asked for per listPage() (S3's most per listing; what is read of them goes
 * in runs of at most a page, so the batch bounds names, not bytes: a batch of 64 made a subject
 * of 5,000 entries 79 listings, 0.9 s on S3 with every entry already read), and the JSON a
 * referrers page holds before it ends (referrers()).
 */
const REFERRERS_BATCH = 1000;
const REFERRERS_PAGE_BYTES = 1024 * 1024;
/** Referrer entries kept read (ReferrerEntries): this many stored bytes in all, none larger than the second. */
const REFERRER_CACHE_BYTES = 4 * 1024 * 1024;
const REFERRER_CACHE_MAX_ENTRY_BYTES = 64 * 1024;
/** Children asked for per listPage() by a tag list of all tags. */
const LIST_PAGE = 1000;
/**
 * A tag list decides a configured expiration from the tag object's modification time, which
 * is its record's updatedAt to within the clocks' difference (the server's, which dates the
 * record; the store's, which dates the object). Within this much of the boundary it reads
 * the record instead, so the list and a manifest request by tag agree.
 */
const EXPIRY_BOUNDARY_MS = 5 * 60_000;

/**
 * Manifests by digest, tags pointing at them, and the referrers index, per repository.
 *
 * Consistency without locks: every write is one atomic putContent of a small object, and
 * objects are written in an order that keeps each reader's view whole:
 *
 *   1. the revision: the manifest's record and bytes in one object, written with
 *      ifNotExists: from here on the manifest exists. Two pushes of the same bytes race here
 *      harmlessly, one creates it and both go on with it;
 *   2. the referrer entry under its subject (rewritten on every push, so a push that died
 *      between 1 and 2 is repaired by pushing again);
 *   3. for a tag whose manifest carries a label expiry, the tag's entry in the expiring
 *      index, so that a tag list never misses an expiry (tags());
 *   4. the tag record: a single object naming a digest whose revision is already committed.
 *      Two clients pushing the same tag at once each replace the whole object, so the tag
 *      ends up naming one of the two manifests, never a mix and never a missing one.
 *
 * What a push costs the store (an image of a config and one layer, pushed by tag; docker-
 * registry 2.8 makes 8 requests on S3, 9 for a new manifest): per blob BlobStore.locate(),
 * the link, the record and the data (3 requests on S3; for the config, its bytes, read for
 * the labels, in place of the data's stat); the revision's conditional write (1); the tag,
 * written (1), but for a known manifest with a label expiry read first and written when it
 * changes (2) or when a configured expiration restarts. Without a label: 8 for every push.
 * Online garbage collection adds nothing while no collection runs (gc/guard.ts).
 */
export class ManifestStore {
  readonly #o: ManifestStoreOptions;
  readonly #expiry: ExpiryPolicy;
  readonly #lane = new ParseLane();
  readonly #entries = new ReferrerEntries(REFERRER_CACHE_BYTES, REFERRER_CACHE_MAX_ENTRY_BYTES);

  constructor(opts: ManifestStoreOptions) {
    this.#o = opts;
    this.#expiry = opts.expiry ?? new ExpiryPolicy();
  }

  /**
   * Validates and stores a manifest exactly as pushed (the digest is of these bytes) with the
   * pushed media type, then points the tag at it. Pushing the same bytes again changes
   * nothing. Returns the manifest's record as this push made it (for a manifest stored
   * already, the stored one differs in its times only). Throws DIGEST_INVALID (bytes don't match a digest reference), MANIFEST_INVALID
   * (not a supported schema 2 manifest), MANIFEST_BLOB_UNKNOWN (a config or layer not in the
   * repository) or MANIFEST_UNKNOWN (an index child not in the repository).
   */
  async put(repo: string, reference: Reference, contentType: string | undefined, bytes: Buffer, opts: PutManifestOptions = {}): Promise<ManifestRecord> {
    if (bytes.length > this.#o.maxBytes) {
      throw new RegistryError('MANIFEST_INVALID', { message: 'manifest too large', detail: { size: bytes.length, limit: this.#o.maxBytes }, status: 413 });
    }
    const algorithm = reference.kind === 'digest' ? reference.digest.algorithm : 'sha256';
    const digest = tryParseDigest(`${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`)!;
    if (reference.kind === 'digest' && reference.digest.hex !== digest.hex) {
      throw new RegistryError('DIGEST_INVALID', { detail: { expected: reference.digest.value, actual: digest.value } });
    }
    const manifest = bytes.length < LARGE_MANIFEST_BYTES ? parseManifest(bytes, contentType) : await this.#lane.run(() => parseManifest(bytes, contentType));
    // Every reference is checked on every push, stored manifest or not (a blob may have been
    // deleted from the repository since), but an upstream's; the config is read meanwhile.
    const config = opts.fromUpstream ? undefined : await this.#checkReferences(repo, manifest);
    const labels = manifest.kind === 'manifest' && !opts.fromUpstream ? labelsOfConfig(manifest.config, config) : undefined;
    const expiresAfterMs = parseExpiresAfter(labels?.[EXPIRES_AFTER_LABEL]);
    const artifactType = artifactTypeOf(manifest);
    const now = Date.now();
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
    // Written unless it is there: a manifest pushed again (same bytes, same config, same
    // labels) keeps the record of its first push, and costs that one conditional write, not
    // a read first.
    const revision = encodeRevision(record, bytes);
    const created = await this.#o.driver.putContent(paths.manifestRevision(repo, digest), revision, { ifNotExists: true });
    if (!created) await opts.onExisting?.(digest);

    let referrer: { path: string; bytes: Buffer } | undefined;
    if (manifest.subject) {
      const subject = tryParseDigest(manifest.subject.digest)!;
      const artifactType = artifactTypeOf(manifest);
      const entry: ReferrerDescriptor = {
        mediaType: manifest.mediaType,
        digest: digest.value,
        size: bytes.length,
        ...(artifactType !== undefined ? { artifactType } : {}),
        ...(manifest.annotations ? { annotations: manifest.annotations } : {}),
      };
      referrer = { path: paths.referrer(repo, subject, digest), bytes: json(entry) };
      await this.#o.driver.putContent(referrer.path, referrer.bytes);
    }

    // A manifest that was not stored cannot be what a live tag names already: its tags are
    // written without a look (as a cache's always are).
    const tags = tagsOf(reference, opts.tags);
    await mapLimit(tags, TAG_WRITE_CONCURRENCY, (tag) => this.#pointTag(repo, tag, digest, expiresAfterMs, created || (opts.fromUpstream ?? false)));
    // A delete by digest of this manifest that ran since the revision's write took the
    // manifest, and its entry and tags, before these were written: they would name nothing
    // (found by probing: 55 races of 90 on fs for the entry, where the push's touch of a
    // known manifest widens the gap; tags too). This push then comes after that delete: the
    // manifest goes back, and the entry and tags are written again after it, since the
    // delete's last look (delete()) may have removed the entry meanwhile (found by probing
    // too). A delete that comes after this look untags what it finds. One request more,
    // for manifests with a subject only (the other races are left as distribution leaves
    // them, README).
    if (referrer && !(await this.exists(repo, digest))) {
      await this.#o.driver.putContent(paths.manifestRevision(repo, digest), revision, { ifNotExists: true });
      await this.#o.driver.putContent(referrer.path, referrer.bytes);
      await mapLimit(tags, TAG_WRITE_CONCURRENCY, (tag) => this.#pointTag(repo, tag, digest, expiresAfterMs, true));
    }
    return record;
  }

  /**
   * Points `tag` at `digest`. An expired tag is no tag: pushing it again makes a new one.
   * Pushing a live tag that already names this manifest again keeps its label expiry (Quay
   * counts `quay.expires-after` from the push that set the tag) and restarts a configured
   * expiration (zuul-registry's `expiration` counts from the last push: it rewrites the tag
   * on every push), so the record is rewritten with this push's updatedAt and its expiresAt
   * as it was, or, with no expiration configured, left alone.
   *
   * `always`: written without reading it first (a tag of a manifest stored just now; a
   * cache's tag, whose updatedAt is when the upstream last confirmed it). A tag whose
   * manifest has no label expiry is written without a look too: the record is the same
   * whatever the tag named, and the write costs one store request where the look would cost
   * one more.
   */
  async #pointTag(repo: string, tag: string, digest: Digest, expiresAfterMs: number | undefined, always = false): Promise<void> {
    const now = Date.now();
    let expiresAt = expiresAfterMs === undefined ? undefined : new Date(now + expiresAfterMs).toISOString();
    if (!always && expiresAfterMs !== undefined) {
      const current = await this.#tag(repo, tag);
      if (current?.digest === digest.value && !this.#expiry.isExpired(repo, current, now)) {
        if (this.#expiry.expirationFor(repo) === undefined) return;
        expiresAt = current.expiresAt;
      }
    }
    const record: TagRecord = {
      digest: digest.value,
      updatedAt: new Date(now).toISOString(),
      ...(expiresAt !== undefined ? { expiresAt } : {}),
    };
    // The index entry first: a tag with a label expiry is never without one (tags()).
    if (record.expiresAt !== undefined) await this.#o.driver.putContent(paths.tagExpiring(repo, tag), Buffer.from(record.expiresAt));
    await this.#o.driver.putContent(paths.tag(repo, tag), json(record));
  }

  /**
   * After a push of `tag` that ran while a collection did (gc/guard.ts, gc/collector.ts F):
   * puts back what the collector removed under the push. A tag that is gone is written
   * again (the collector deleted it as expired just as it was pushed); a tag that still
   * names `digest` with a label expiry gets its expiring-index entry back if the collector
   * tidied it away. A tag another push moved meanwhile is left alone. Returns whether it
   * wrote anything.
   */
  async repairTag(repo: string, tag: string, digest: string): Promise<boolean> {
    const current = await this.#tag(repo, tag);
    if (current === undefined) {
      const d = tryParseDigest(digest)!;
      const found = await this.#revision(repo, d);
      if (!found) return false;
      await this.#pointTag(repo, tag, d, parseExpiresAfter(found.record.labels?.[EXPIRES_AFTER_LABEL]));
      return true;
    }
    if (current.digest !== digest || current.expiresAt === undefined) return false;
    if (await objectExists(this.#o.driver, paths.tagExpiring(repo, tag))) return false;
    await this.#o.driver.putContent(paths.tagExpiring(repo, tag), Buffer.from(current.expiresAt));
    return true;
  }

  /** Whether the repository holds the manifest `digest`: one existence check, no read. */
  exists(repo: string, digest: Digest): Promise<boolean> {
    return objectExists(this.#o.driver, paths.manifestRevision(repo, digest));
  }

  async stat(repo: string, reference: Reference): Promise<ManifestRecord> {
    const found = await this.#record(repo, await this.#resolve(repo, reference));
    if (!found) throw unknown(reference);
    return found;
  }

  async get(repo: string, reference: Reference): Promise<Manifest> {
    const digest = await this.#resolve(repo, reference);
    const found = await this.#revision(repo, digest);
    // A revision of the old layout names bytes stored as a blob.
    const bytes = found?.bytes ?? (found ? await this.#o.blobs.getSmall(digest) : undefined);
    if (!found || !bytes) throw unknown(reference);
    return { ...found.record, bytes };
  }

  /** The tag's record (for expiry), or undefined when the repository has no such tag. */
  tagRecord(repo: string, tag: string): Promise<TagRecord | undefined> {
    return this.#tag(repo, tag);
  }

  /**
   * By digest: removes the manifest from the repository, its entry among its subject's
   * referrers, and every tag pointing at it (a tag must not dangle). By tag: removes only
   * the tag (its expiring-index entry, if any, is tidied by the next collection). The
   * referrer entry goes first, so a delete cut short never leaves an entry naming a manifest
   * that is gone; tags it leaves, a retry removes. `beforeDelete` is given the paths of the manifest and its referrer entry
   * once the manifest is found, before either is deleted (gc/guard.ts duty 4).
   */
  async delete(repo: string, reference: Reference, beforeDelete?: (paths: string[]) => Promise<void>): Promise<void> {
    if (reference.kind === 'tag') {
      // An expired tag is gone to clients (GET and HEAD answer 404): so it is to DELETE. Its
      // record is the collector's to remove.
      await this.#resolve(repo, reference);
      await this.#o.driver.delete(paths.tag(repo, reference.tag)).catch((err) => {
        if (isPathNotFound(err)) throw unknown(reference);
        throw err;
      });
      return;
    }
    const digest = reference.digest;
    const found = await this.#revision(repo, digest);
    if (!found) {
      // A delete cut short between the manifest and its tags (a server killed, found by
      // probing) left tags that list but answer 404: the client's retry removes them. (The
      // tags cannot go first: a push of the same manifest meanwhile finds it still there,
      // writes its tag, and the manifest then goes under it, found by probing too.)
      if ((await this.#untag(repo, digest)) > 0) return;
      throw unknown(reference);
    }
    const subject = found.record.subject === undefined ? undefined : tryParseDigest(found.record.subject);
    const entry = subject ? paths.referrer(repo, subject, digest) : undefined;
    await beforeDelete?.([paths.manifestRevision(repo, digest), ...(entry ? [entry] : [])]);
    if (entry) await ignoreNotFound(this.#o.driver.delete(entry));
    try {
      await this.#o.driver.delete(paths.manifestRevision(repo, digest));
    } catch (err) {
      if (isPathNotFound(err)) throw unknown(reference);
      throw err;
    }
    await this.#untag(repo, digest);
    // A push of this manifest that found it still stored writes its entry after that look:
    // if it did so since the entry went, the entry goes again, unless the manifest is back
    // (pushed again since; its entry is then its own). Found by probing: in about one race
    // in six a referrer was listed whose manifest was gone. And a push that puts the manifest
    // back between this look and the entry's delete (put()) wrote the entry before: it goes
    // back as it was. Costs two to four requests, and only deletes of manifests with a subject.
    if (entry && !(await this.exists(repo, digest))) {
      const written = await readOrUndefined(this.#o.driver, entry);
      if (written === undefined) return;
      await ignoreNotFound(this.#o.driver.delete(entry));
      if (await this.exists(repo, digest)) await this.#o.driver.putContent(entry, written);
    }
  }

  /**
   * Deletes the tags naming `digest`; returns how many. Which tags name it, only their records
   * say: every one is read (as distribution does).
   */
  async #untag(repo: string, digest: Digest): Promise<number> {
    const names = (await listPage(this.#o.driver, paths.tags(repo))).children.filter((c) => !c.isDir).map((c) => basename(c.path));
    let removed = 0;
    await mapLimit(names, TAG_READ_CONCURRENCY, async (tag) => {
      const t = await this.#tag(repo, tag);
      if (t?.digest === digest.value) {
        await ignoreNotFound(this.#o.driver.delete(paths.tag(repo, tag)));
        removed++;
      }
    });
    return removed;
  }

  /**
   * Tags in lexical order, paginated by `n` and `last` (distribution-spec "Listing Tags"),
   * expired tags left out. Lexical means byte-wise here, as distribution sorts them: `V1`
   * before `_x` before `latest`.
   *
   * A page of n costs the store about n: one listPage() of n + 1 tags (S3: one request per
   * 1,000, with each object's modification time), one of the expiring index over the same
   * range, and a read of the records that index names, the only tags whose expiry the
   * listing cannot see. A configured expiration counts from the tag's push, which is its
   * object's modification time (TagRecord); near the boundary the record is read instead.
   * A page with expired tags in it reads on, a whole listing page at a time, until it has n
   * live ones or the tags run out: listing only the n still wanted made each pass cost as
   * much as a full one (fs reads and sorts the whole directory for a page; S3 makes two
   * requests), so that a page of 2 over 3,000 expired tags took 1,500 passes, 10 s on fs
   * (found by probing: with `gc.schedule` off expired tags stay until `hoist gc` runs).
   *
   * The page's `next` is set when a live tag follows it, or when what was listed and read
   * for the page cannot tell (the rest of the listing, or a record not read): the spec lets
   * the last page be empty, and telling would cost reading on through every expired tag.
   */
  async tags(repo: string, n: number | undefined, last: string | undefined): Promise<Page<string>> {
    if (n === 0) return { items: [] };
    const now = Date.now();
    const configuredMs = this.#expiry.expirationFor(repo);
    const items: string[] = [];
    const full = (): boolean => n !== undefined && items.length >= n;
    let after = last;
    for (let pass = 0; ; pass++) {
      // One more than the page, to see whether a next one starts; after a pass that found
      // expired tags, whole listing pages.
      const limit = n === undefined ? undefined : pass === 0 ? n + 1 : Math.max(n + 1, LIST_PAGE);
      // The index is listed from the same place at the same time: usually one page of it
      // covers the tags' page (it has an entry only for tags with a label expiry).
      const [page, index] = await Promise.all([
        listPage(this.#o.driver, paths.tags(repo), {
          ...(after !== undefined ? { startAfter: after } : {}),
          ...(limit !== undefined ? { limit } : {}),
          details: configuredMs !== undefined,
        }),
        listPage(this.#o.driver, paths.tagsExpiring(repo), { ...(after !== undefined ? { startAfter: after } : {}), limit: LIST_PAGE }),
      ]);
      if (page.children.length === 0) return { items };
      const tags = page.children.filter((c) => !c.isDir);
      const names = tags.map((c) => basename(c.path));
      const end = basename(page.children[page.children.length - 1]!.path);
      const labelled = await this.#expiringBetween(repo, end, index);
      // Tags whose record must be read to know whether they have expired, and those read.
      const uncertain = (i: number): boolean => labelled.has(names[i]!) || (configuredMs !== undefined && nearBoundary(tags[i]!, configuredMs, now));
      const records = new Map<number, TagRecord | undefined>();
      const expired = (i: number): boolean => {
        // Gone since the listing: it is not a tag any more.
        if (records.has(i)) return records.get(i) === undefined || this.#expiry.isExpired(repo, records.get(i)!, now);
        const t = tags[i]!.modTime;
        return configuredMs !== undefined && t !== undefined && t.getTime() + configuredMs <= now;
      };
      let i = 0;
      while (i < tags.length && !full()) {
        // Records are read a window at a time, the tags still wanted (and the one after
        // them) but at least TAG_READ_CONCURRENCY: a page over a long listing reads no
        // further than it keeps, give or take a window.
        const to = n === undefined ? tags.length : Math.min(tags.length, i + Math.max(n + 1 - items.length, TAG_READ_CONCURRENCY));
        const unread = Array.from({ length: to - i }, (_, k) => i + k).filter(uncertain);
        for (const [j, record] of await mapLimit(unread, TAG_READ_CONCURRENCY, async (j) => [j, await this.#tag(repo, names[j]!)] as const)) records.set(j, record);
        for (; i < to && !full(); i++) if (!expired(i)) items.push(names[i]!);
      }
      if (full()) {
        // Known without another request: a live tag among the rest of what was read.
        for (; i < tags.length && !(uncertain(i) && !records.has(i)); i++) {
          if (!expired(i)) return { items, next: items[items.length - 1]! };
        }
        return i < tags.length || page.truncated ? { items, next: items[items.length - 1]! } : { items };
      }
      if (!page.truncated) return { items };
      after = end;
    }
  }

  /**
   * Tags up to `end` with an entry in the expiring index (their records carry, or carried, a
   * label expiry), from `first`, the index's page that starts where the tags' page does, on.
   */
  async #expiringBetween(repo: string, end: string, first: ListPage): Promise<Set<string>> {
    const found = new Set<string>();
    for (let page = first; ;) {
      for (const c of page.children) {
        const tag = basename(c.path);
        if (lexical(tag, end) > 0) return found;
        if (!c.isDir) found.add(tag);
      }
      if (!page.truncated || page.children.length === 0) return found;
      const startAfter = basename(page.children[page.children.length - 1]!.path);
      page = await listPage(this.#o.driver, paths.tagsExpiring(repo), { startAfter, limit: LIST_PAGE });
    }
  }

  /**
   * Descriptors of the manifests whose `subject` is `subject` (distribution-spec v1.1
   * "Listing Referrers"), optionally only those of one artifact type. The subject itself
   * need not exist; no referrers is an empty list, never an error.
   */
  async referrers(repo: string, subject: Digest, artifactType?: string, last?: string): Promise<Page<ReferrerDescriptor>> {
    // A page ends once its entries pass REFERRERS_PAGE_BYTES (with at least one, so that a
    // client always gets on): the spec asks for a Link header rather than a response larger
    // than a client takes (manifests are read up to 4 MiB), and every entry can carry up to
    // a manifest's size of annotations. Entries are read in runs of at most that many stored
    // bytes (the listing gives their sizes), or one entry, so a request holds about two pages
    // at most: reading a whole listing batch at once held up to 64 entries of 4 MiB each, and
    // a few such requests at once took the process past its heap (found by probing).
    const items: ReferrerDescriptor[] = [];
    let bytes = 0;
    let after = last;
    for (;;) {
      const page = await listPage(this.#o.driver, paths.referrers(repo, subject), { ...(after !== undefined ? { startAfter: after } : {}), limit: REFERRERS_BATCH, details: true });
      const entries = page.children.filter((c) => !c.isDir);
      for (let from = 0; from < entries.length;) {
        let to = from + 1;
        for (let run = entries[from]!.size ?? 0; to < entries.length && run + (entries[to]!.size ?? REFERRERS_PAGE_BYTES) <= REFERRERS_PAGE_BYTES; to++) {
          run += entries[to]!.size ?? REFERRERS_PAGE_BYTES;
        }
        const found = await mapLimit(entries.slice(from, to), CHECK_CONCURRENCY, (c) => this.#entries.read(c, () => readJson<ReferrerDescriptor>(this.#o.driver, c.path)));
        for (let i = 0; i < found.length; i++) {
          const d = found[i];
          if (d !== undefined && (artifactType === undefined || d.artifactType === artifactType)) {
            // Bytes, not UTF-16 units: annotations of `€` made pages of 3 MB (found by probing).
            const size = Buffer.byteLength(JSON.stringify(d)) + 1;
            if (items.length > 0 && bytes + size > REFERRERS_PAGE_BYTES) return { items, next: after! };
            items.push(d);
            bytes += size;
          }
          after = basename(entries[from + i]!.path);
        }
        from = to;
      }
      if (!page.truncated || page.children.length === 0) return { items };
      after = basename(page.children[page.children.length - 1]!.path);
    }
  }

  /**
   * Every blob an image manifest names must be in the repository (pushed or mounted there),
   * with the size its descriptor gives, and every child of an index must be a manifest in the
   * repository, of the size its descriptor gives. The well-known empty layer and empty JSON config are always there
   * (BlobStore.locate knows them); layers whose bytes live elsewhere (`urls`) are not checked.
   * The subject is not checked: referrers may be pushed before what they refer to
   * (distribution-spec "Pushing Manifests with Subject").
   * Returns an image's config as found, with its bytes when its labels are to be read.
   */
  async #checkReferences(repo: string, m: ParsedManifest): Promise<BlobLocation | undefined> {
    if (m.kind === 'manifest') {
      const blobs = [m.config, ...m.layers.filter((l) => !isNonDistributable(l))];
      const found = new Map<string, BlobLocation | undefined>();
      const readConfig = IMAGE_CONFIG_MEDIA_TYPES.includes(m.config.mediaType);
      const missing = await firstMissing(blobs, async (d) => {
        const labelled = readConfig && d.digest === m.config.digest;
        const at = await this.#o.blobs.locate(repo, tryParseDigest(d.digest)!, labelled ? { readUpTo: MAX_CONFIG_BYTES } : {});
        found.set(d.digest, at);
        return at !== undefined;
      });
      if (missing) {
        throw new RegistryError('MANIFEST_BLOB_UNKNOWN', { message: 'manifest references a blob unknown to the repository', detail: { digest: missing.digest } });
      }
      // A descriptor's size is what a client reads before the bytes, to allot and to stop a
      // pull that runs long (image-spec: content of another length is not to be trusted). The
      // stored size came with the lookup above, so a wrong one costs nothing to refuse.
      const wrong = blobs.find((d) => found.get(d.digest)!.size !== d.size);
      if (wrong) {
        throw new RegistryError('MANIFEST_INVALID', {
          message: 'a descriptor\'s size differs from the blob\'s',
          detail: { digest: wrong.digest, size: wrong.size, stored: found.get(wrong.digest)!.size },
        });
      }
      return found.get(m.config.digest);
    }
    const sizes = new Map<string, number>();
    const missing = await firstMissing(m.manifests, async (d) => {
      const child = await this.#record(repo, tryParseDigest(d.digest)!);
      if (child) sizes.set(d.digest, child.size);
      return child !== undefined;
    });
    if (missing) {
      // MANIFEST_UNKNOWN (a missing child is a manifest, not a blob), but as a bad request.
      throw new RegistryError('MANIFEST_UNKNOWN', { status: 400, message: 'index references a manifest unknown to the repository', detail: { digest: missing.digest } });
    }
    // As for blobs above: a client reads a child's size before its bytes (containerd stops a
    // pull that runs short with "unexpected EOF").
    const wrong = m.manifests.find((d) => sizes.get(d.digest) !== d.size);
    if (wrong) {
      throw new RegistryError('MANIFEST_INVALID', {
        message: 'a descriptor\'s size differs from the manifest\'s',
        detail: { digest: wrong.digest, size: wrong.size, stored: sizes.get(wrong.digest) },
      });
    }
    return undefined;
  }

  async #resolve(repo: string, reference: Reference): Promise<Digest> {
    if (reference.kind === 'digest') return reference.digest;
    const found = await this.#tag(repo, reference.tag);
    const tag = found && !this.#expiry.isExpired(repo, found, Date.now()) ? found : undefined;
    const digest = tag && tryParseDigest(tag.digest);
    if (!digest) throw unknown(reference);
    return digest;
  }

  async #tag(repo: string, tag: string): Promise<TagRecord | undefined> {
    return readJson<TagRecord>(this.#o.driver, paths.tag(repo, tag));
  }

  /**
   * A revision's record without its bytes: its first RECORD_READ_BYTES, where the record line
   * ends, or the whole object when the line is longer (labels). An index push checks each
   * child's size, and a manifest HEAD answers, with this: reading the revisions whole held up
   * to 4 MiB a child, and 32 pushes at once of a 3 KB index of 4 MiB children grew the process
   * by 800 MiB (found by probing). One request either way.
   */
  async #record(repo: string, digest: Digest): Promise<ManifestRecord | undefined> {
    let head: Buffer;
    try {
      head = await readPrefix(this.#o.driver, paths.manifestRevision(repo, digest), RECORD_READ_BYTES);
    } catch (err) {
      if (isPathNotFound(err)) return undefined;
      throw err;
    }
    const nl = head.indexOf(NEWLINE);
    if (nl >= 0) return JSON.parse(head.subarray(0, nl).toString('utf8')) as ManifestRecord;
    // No line break in a revision read whole: the old layout, a record alone.
    if (head.length < RECORD_READ_BYTES) return decodeRevision(head).record;
    return (await this.#revision(repo, digest))?.record;
  }

  async #revision(repo: string, digest: Digest): Promise<Revision | undefined> {
    try {
      return decodeRevision(await this.#o.driver.getContent(paths.manifestRevision(repo, digest)));
    } catch (err) {
      if (isPathNotFound(err)) return undefined;
      throw err;
    }
  }
}

/** A stored revision: the record, and the bytes unless the revision predates keeping them there. */
export interface Revision {
  readonly record: ManifestRecord;
  readonly bytes?: Buffer;
}

const NEWLINE = 0x0a;
/** What #record() reads of a revision: a record line is ~300 bytes, more with labels. */
const RECORD_READ_BYTES = 16 * 1024;

/**
 * The object's first `n` bytes (fewer when it is shorter); PathNotFoundError when it is
 * absent. The reader's chunks are copied (into the result) and given back: drivers read into recycled buffers
 * (1 MiB on fs), and one dropped at every manifest HEAD would be a fresh one at the next.
 */
async function readPrefix(driver: StorageDriver, path: string, n: number): Promise<Buffer> {
  const stream = await driver.reader(path, 0, n);
  const chunks: Uint8Array[] = [];
  for await (const chunk of stream) chunks.push(chunk as Uint8Array);
  const head = Buffer.concat(chunks);
  const recycle = recyclerOf(stream);
  if (recycle) for (const chunk of chunks) recycle(chunk);
  return head;
}

/** What paths.manifestRevision() holds: the record as one line of JSON (JSON.stringify writes no newline), then the bytes. */
export function encodeRevision(record: ManifestRecord, bytes: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from(`${JSON.stringify(record)}\n`), bytes]);
}

/** Reads either layout of a revision; throws on one that is not JSON where the record should be. */
export function decodeRevision(stored: Buffer): Revision {
  const nl = stored.indexOf(NEWLINE);
  if (nl < 0) return { record: JSON.parse(stored.toString('utf8')) as ManifestRecord };
  return { record: JSON.parse(stored.subarray(0, nl).toString('utf8')) as ManifestRecord, bytes: stored.subarray(nl + 1) };
}

/** Labels of an image's config, read by #checkReferences; none for artifacts and for configs too large to read. */
function labelsOfConfig(config: Descriptor, found: BlobLocation | undefined): Record<string, string> | undefined {
  if (!IMAGE_CONFIG_MEDIA_TYPES.includes(config.mediaType) || !found?.bytes) return undefined;
  return labelsOf(found.bytes);
}

/**
 * Whether a configured expiration's boundary, counted from the listed modification time, is
 * too close to `nowMs` to trust that time for the record's updatedAt (EXPIRY_BOUNDARY_MS).
 */
function nearBoundary(c: ListedChild, expirationMs: number, nowMs: number): boolean {
  if (c.modTime === undefined) return true;
  return Math.abs(c.modTime.getTime() + expirationMs - nowMs) < EXPIRY_BOUNDARY_MS;
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

/**
 * The first of `descriptors` (in order) that `exists` says is not there; each digest is
 * checked once. Checks CHECK_CONCURRENCY at a time, in order, and starts no more once one is
 * missing: an index of 20,000 children that do not exist cost 20,000 store requests before
 * its 400 (found by probing). Every descriptor before the one reported was checked, so the
 * answer is the same either way.
 */
async function firstMissing(descriptors: readonly Descriptor[], exists: (d: Descriptor) => Promise<boolean>): Promise<Descriptor | undefined> {
  const unique = [...new Map(descriptors.map((d) => [d.digest, d])).values()];
  let next = 0;
  let first: number | undefined;
  const worker = async (): Promise<void> => {
    while (first === undefined && next < unique.length) {
      const i = next++;
      if (!(await exists(unique[i]!))) first = Math.min(first ?? i, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(CHECK_CONCURRENCY, unique.length) }, worker));
  return first === undefined ? undefined : unique[first];
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

/**
 * Referrer entries as read before, by path. A request for the referrers of one subject reads
 * every entry under it, whatever its artifactType filter: the type is in the entry, not in
 * its name. Policy engines ask the same subjects over and over, and a subject of 5,000 entries
 * cost 5,000 object reads on S3 (1.6 s on fs) each time, even for a filter that matched none
 * (found by probing). An entry's path names its manifest, and its content is that manifest's
 * descriptor, which no write changes (a push writes the same again), so an entry the listing
 * shows may be answered from here; one gone from the listing is not asked for. Bounded by
 * its entries' stored sizes, oldest use first out; large entries (annotations) are not kept.
 */
class ReferrerEntries {
  readonly #kept = new Map<string, { readonly d: ReferrerDescriptor; readonly bytes: number }>();
  readonly #maxBytes: number;
  readonly #maxEntryBytes: number;
  #bytes = 0;

  constructor(maxBytes: number, maxEntryBytes: number) {
    this.#maxBytes = maxBytes;
    this.#maxEntryBytes = maxEntryBytes;
  }

  async read(entry: { readonly path: string; readonly size?: number }, load: () => Promise<ReferrerDescriptor | undefined>): Promise<ReferrerDescriptor | undefined> {
    const hit = this.#kept.get(entry.path);
    if (hit !== undefined) {
      // Map order is the eviction order: a use moves the entry to the back.
      this.#kept.delete(entry.path);
      this.#kept.set(entry.path, hit);
      return hit.d;
    }
    const d = await load();
    const bytes = entry.size ?? Infinity;
    if (d === undefined || bytes > this.#maxEntryBytes || this.#kept.has(entry.path)) return d;
    this.#kept.set(entry.path, { d, bytes });
    this.#bytes += bytes;
    for (const [path, old] of this.#kept) {
      if (this.#bytes <= this.#maxBytes) break;
      this.#kept.delete(path);
      this.#bytes -= old.bytes;
    }
    return d;
  }
}

export async function readJson<T>(driver: StorageDriver, path: string): Promise<T | undefined> {
  try {
    return JSON.parse((await driver.getContent(path)).toString('utf8')) as T;
  } catch (err) {
    if (isPathNotFound(err)) return undefined;
    throw err;
  }
}
