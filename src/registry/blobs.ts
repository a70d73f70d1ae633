import { createHash, randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { RangeNotSatisfiableError, RegistryError } from '../errors.js';
import { InvalidPathError, isPathNotFound, objectExists, type StorageDriver } from '../storage/driver.js';
import { paths } from './paths.js';
import type { Digest } from './reference.js';
import { removeStale } from './takeover.js';
import type { CommittedData } from '../engine/uploads.js';

/** What paths.blobRecord() holds: where a digest's bytes are. */
export interface BlobRecord {
  data: string;
  size: number;
}

export interface BlobDescriptor {
  readonly digest: string;
  readonly size: number;
}

/** A blob a repository can serve, and where its bytes are (BlobStore.locate). */
export interface BlobLocation extends BlobDescriptor {
  /** The data object; undefined for the well-known blobs, whose bytes are in the code. */
  readonly data?: string;
  /** Its bytes, when locate() was asked to read blobs this small. */
  readonly bytes?: Buffer;
}

/** A byte range as RFC 9110 asks for it: `bytes=a-b`, `bytes=a-` or `bytes=-n`. */
export type ByteRange = { start: number; end?: number } | { suffix: number };

export interface BlobRead {
  readonly descriptor: BlobDescriptor;
  /** Set when the store serves the bytes itself (S3 presigned URL): answer with a redirect. */
  readonly redirect?: string;
  /** First and last byte served (inclusive); the whole blob when no range was asked. */
  readonly start: number;
  readonly end: number;
  readonly partial: boolean;
  readonly stream: Readable;
}

/** Presigned blob URLs stay valid long enough for a slow pull to start, and no longer. */
const REDIRECT_EXPIRY_SECONDS = 20 * 60;

/**
 * Blobs that clients reference without ever pushing them, and that must therefore always
 * resolve: docker's empty layer (a gzipped empty tar; distribution `gzippedEmptyTar`) and
 * the OCI empty JSON descriptor `{}` (image-spec "Guidance for an Empty Descriptor").
 */
const WELL_KNOWN_BYTES = [
  Buffer.from([31, 139, 8, 0, 0, 9, 110, 136, 0, 255, 98, 24, 5, 163, 96, 20, 140, 88, 0, 8, 0, 0, 255, 255, 46, 175, 181, 239, 0, 4, 0, 0]),
  Buffer.from('{}'),
];
export const WELL_KNOWN_BLOBS: ReadonlyMap<string, Buffer> = new Map(
  WELL_KNOWN_BYTES.map((b) => [`sha256:${createHash('sha256').update(b).digest('hex')}`, b]),
);

/**
 * Content-addressed blobs and which repositories may serve them. A blob's bytes are stored
 * once for the whole registry (deduplicated by digest); a repository sees a blob only
 * through its link, written when the blob was pushed or mounted into it.
 */
export class BlobStore {
  readonly #driver: StorageDriver;

  constructor(driver: StorageDriver) {
    this.#driver = driver;
  }

  /**
   * Makes committed upload data the content of `digest` and links it into `repo`. The blob
   * record is created atomically, so a blob becomes visible whole or not at all; when the
   * digest already has content, ours is a duplicate and is deleted. A record whose data is
   * gone is no content: ours replaces it (#install).
   */
  async adopt(repo: string, digest: Digest, data: CommittedData): Promise<BlobDescriptor> {
    // (The caller touched the digest first, so a collection sweeping the record we find
    // concurrently puts it back: gc/collector.ts, A.)
    const installed = await this.#install(digest, { data: data.dataPath, size: data.size });
    await this.#link(repo, digest);
    // A duplicate goes only once the link is in: an upload whose link failed is kept for the
    // client's retry (UploadEngine.#complete), which needs its data still there.
    if (!installed) await this.#driver.delete(data.dataPath).catch(() => undefined);
    return { digest: digest.value, size: data.size };
  }

  /** Whether the record of `digest` names `dataPath`; true too when the store cannot say. */
  async namesData(digest: Digest, dataPath: string): Promise<boolean> {
    try {
      const found = await this.#readRecord(digest);
      return found !== undefined && (found.record === undefined || found.record.data === dataPath);
    } catch {
      return true;
    }
  }

  /** Stores small content (a manifest's bytes) under its digest, unlinked. */
  async putSmall(digest: Digest, bytes: Uint8Array): Promise<void> {
    if (await this.#liveRecord(digest)) return;
    const dataPath = paths.blobData(randomUUID());
    await this.#driver.putContent(dataPath, bytes);
    if (!(await this.#install(digest, { data: dataPath, size: bytes.length }))) await this.#driver.delete(dataPath).catch(() => undefined);
  }

  /**
   * Makes `record` the record of `digest`, unless the digest has content already: then
   * resolves false and the caller's data is a duplicate. Never overwrites a record: one whose
   * data is gone (issue 10 left such records) is removed first, by the one server that claims
   * its removal (registry/takeover.ts), so that of two pushes replacing it at once neither
   * deletes the other's new record; then ours is created if absent, as always.
   */
  async #install(digest: Digest, record: BlobRecord): Promise<boolean> {
    const path = paths.blobRecord(digest);
    const bytes = Buffer.from(JSON.stringify(record));
    for (let attempt = 1; ; attempt++) {
      if (await this.#driver.putContent(path, bytes, { ifNotExists: true })) return true;
      const found = await this.#readRecord(digest);
      if (found) {
        if (found.record?.data === record.data) return true;
        if (found.record && (await this.#hasData(found.record))) return false;
        // No content behind it: take its place.
        if ((await removeStale(this.#driver, path, found.raw)) === 'busy') await sleep(Math.min(200, 10 * attempt));
      }
      // Otherwise the record vanished between the two calls (a collection removed it): try
      // again to take its place, never overwriting a record someone else wrote meanwhile.
      if (attempt >= 50) throw new Error(`blob record of ${digest.value} keeps changing`);
    }
  }

  /** Reads small content stored under its digest (no repository check). */
  async getSmall(digest: Digest): Promise<Buffer | undefined> {
    const record = (await this.#readRecord(digest))?.record;
    if (!record) return undefined;
    try {
      const bytes = await this.#driver.getContent(record.data);
      return bytes.length === record.size ? bytes : undefined;
    } catch (err) {
      if (isPathNotFound(err)) return undefined;
      throw err;
    }
  }

  /**
   * The blob as `repo` sees it and where its bytes are, or undefined when it is not linked
   * there or its record names no data. The one existence check: stat(), exists() and
   * manifest pushes all come here, so whatever it costs is counted once: the link, the
   * record, and the data (a stat; or, for a blob of at most `readUpTo` bytes, reading them,
   * as a push does for a config's labels).
   */
  async locate(repo: string, digest: Digest, opts: { readUpTo?: number } = {}): Promise<BlobLocation | undefined> {
    const known = WELL_KNOWN_BLOBS.get(digest.value);
    if (known) return { digest: digest.value, size: known.length, ...(opts.readUpTo !== undefined ? { bytes: known } : {}) };
    if (!(await this.#linked(repo, digest))) return undefined;
    const record = (await this.#readRecord(digest))?.record;
    if (!record) return undefined;
    if (opts.readUpTo !== undefined && record.size <= opts.readUpTo) {
      // `readUpTo`: the caller wants the bytes of a small blob (a config's labels). Reading
      // them proves the data is there, as the stat below would: one request, not two.
      const bytes = await this.readLocated({ digest: digest.value, size: record.size, data: record.data }).catch((err: unknown) => {
        if (err instanceof InvalidPathError) return undefined;
        throw err;
      });
      return bytes?.length === record.size ? { digest: digest.value, size: record.size, data: record.data, bytes } : undefined;
    }
    // A record whose data is gone is no blob (#liveRecord): the check counts that stat too.
    return (await this.#hasData(record)) ? { digest: digest.value, size: record.size, data: record.data } : undefined;
  }

  /** The blob as `repo` sees it; BLOB_UNKNOWN when it is not linked there. */
  async stat(repo: string, digest: Digest): Promise<BlobDescriptor> {
    const found = await this.locate(repo, digest);
    if (!found) throw new RegistryError('BLOB_UNKNOWN', { detail: { digest: digest.value } });
    return { digest: found.digest, size: found.size };
  }

  /**
   * Whether `repo` links the blob (or it is built in): one existence check (a HEAD on S3),
   * where stat() and exists() also read the record and look for its data. Says nothing of the
   * data; a cheap first look.
   */
  async linked(repo: string, digest: Digest): Promise<boolean> {
    return WELL_KNOWN_BLOBS.has(digest.value) || objectExists(this.#driver, paths.layerLink(repo, digest));
  }

  async exists(repo: string, digest: Digest): Promise<boolean> {
    return (await this.locate(repo, digest)) !== undefined;
  }

  /** The bytes of a blob locate() found (small ones: a config); undefined when they are gone since. */
  async readLocated(found: BlobLocation): Promise<Buffer | undefined> {
    if (found.data === undefined) return WELL_KNOWN_BLOBS.get(found.digest);
    try {
      return await this.#driver.getContent(found.data);
    } catch (err) {
      if (isPathNotFound(err)) return undefined;
      throw err;
    }
  }

  async open(repo: string, digest: Digest, range?: ByteRange): Promise<BlobRead> {
    const known = WELL_KNOWN_BLOBS.get(digest.value);
    let record: BlobRecord | undefined;
    if (!known) {
      record = (await this.#linked(repo, digest)) ? await this.#liveRecord(digest) : undefined;
      if (!record) throw new RegistryError('BLOB_UNKNOWN', { detail: { digest: digest.value } });
    }
    const size = known ? known.length : record!.size;
    if (record && this.#driver.redirectURL) {
      // The client fetches from the store directly, Range and all; nothing streams through us.
      const redirect = await this.#driver.redirectURL(record.data, REDIRECT_EXPIRY_SECONDS);
      return { descriptor: { digest: digest.value, size }, redirect, start: 0, end: size - 1, partial: false, stream: Readable.from([]) };
    }
    const [start, end] = resolveRange(range, size);
    const length = end - start + 1;
    let stream: Readable;
    if (known) stream = Readable.from([known.subarray(start, end + 1)]);
    else if (length === 0) stream = Readable.from([]);
    else {
      try {
        stream = await this.#driver.reader(record!.data, start, length);
      } catch (err) {
        if (isPathNotFound(err)) throw new RegistryError('BLOB_UNKNOWN', { detail: { digest: digest.value }, cause: err });
        throw err;
      }
    }
    // A 0-byte blob has no partial content: a satisfiable range on it (bytes=-N) selects all
    // of it, and no Content-Range can say "no bytes", so it is served whole, with 200.
    return { descriptor: { digest: digest.value, size }, start, end, partial: range !== undefined && size > 0, stream };
  }

  /**
   * Cross-repository mount: links a blob `from` can see into `repo` without moving bytes.
   * Returns undefined when `from` cannot see it (the client then uploads normally).
   */
  async mount(repo: string, digest: Digest, from: string): Promise<BlobDescriptor | undefined> {
    let desc: BlobDescriptor;
    try {
      desc = await this.stat(from, digest);
    } catch (err) {
      if (err instanceof RegistryError && err.code === 'BLOB_UNKNOWN') return undefined;
      throw err;
    }
    if (!WELL_KNOWN_BLOBS.has(digest.value)) await this.#link(repo, digest);
    return desc;
  }

  /** The size of a blob stored for any repository, or undefined (no repository check; a record without its data is none). */
  async storedSize(digest: Digest): Promise<number | undefined> {
    return (await this.#liveRecord(digest))?.size;
  }

  /**
   * Links a blob that is stored (for whichever repository) into `repo`; undefined when it is
   * not stored. A pull-through cache (src/proxy/) uses it once the upstream said `repo` has it.
   */
  async linkStored(repo: string, digest: Digest): Promise<BlobDescriptor | undefined> {
    const record = await this.#liveRecord(digest);
    if (!record) return undefined;
    await this.#link(repo, digest);
    return { digest: digest.value, size: record.size };
  }

  /**
   * Removes the repository's link; the bytes stay until garbage collection finds them
   * unreferenced. A well-known blob cannot be removed: it exists in every repository
   * whatever is deleted, so a 202 would be followed by a 200 for the same HEAD (the
   * distribution-spec conformance suite checks that a deleted blob is gone). 405 UNSUPPORTED
   * is the spec's answer for a blob deletion the registry does not do. `beforeDelete` is given
   * the link's path first (gc/guard.ts duty 4).
   */
  async unlink(repo: string, digest: Digest, beforeDelete?: (paths: string[]) => Promise<void>): Promise<void> {
    if (WELL_KNOWN_BLOBS.has(digest.value)) {
      throw new RegistryError('UNSUPPORTED', { message: 'this blob is built in and exists in every repository: it cannot be deleted', detail: { digest: digest.value } });
    }
    const link = paths.layerLink(repo, digest);
    await beforeDelete?.([link]);
    try {
      await this.#driver.delete(link);
    } catch (err) {
      if (isPathNotFound(err)) throw new RegistryError('BLOB_UNKNOWN', { detail: { digest: digest.value } });
      throw err;
    }
  }

  async #link(repo: string, digest: Digest): Promise<void> {
    await this.#driver.putContent(paths.layerLink(repo, digest), Buffer.from(digest.value));
  }

  async #linked(repo: string, digest: Digest): Promise<boolean> {
    try {
      await this.#driver.stat(paths.layerLink(repo, digest));
      return true;
    } catch (err) {
      if (isPathNotFound(err)) return false;
      throw err;
    }
  }

  /**
   * The record of `digest`, if its data is there with the recorded size. One whose data is
   * gone or has another size (issue 10: a DELETE racing a PUT deleted the data a new record
   * named) names no content: HEAD and GET answer BLOB_UNKNOWN, a manifest referring to it
   * MANIFEST_BLOB_UNKNOWN, a mount is refused, and the next push of the bytes replaces it.
   */
  async #liveRecord(digest: Digest): Promise<BlobRecord | undefined> {
    const record = (await this.#readRecord(digest))?.record;
    return record && (await this.#hasData(record)) ? record : undefined;
  }

  async #hasData(record: BlobRecord): Promise<boolean> {
    try {
      const info = await this.#driver.stat(record.data);
      return !info.isDir && info.size === record.size;
    } catch (err) {
      // A record naming no valid path names no content either.
      if (isPathNotFound(err) || err instanceof InvalidPathError) return false;
      throw err;
    }
  }

  /** The record as stored, and parsed (undefined when it is not a record we can use). */
  async #readRecord(digest: Digest): Promise<{ raw: Buffer; record: BlobRecord | undefined } | undefined> {
    let raw: Buffer;
    try {
      raw = await this.#driver.getContent(paths.blobRecord(digest));
    } catch (err) {
      if (isPathNotFound(err)) return undefined;
      throw err;
    }
    return { raw, record: parseBlobRecord(raw) };
  }
}

/** A blob record, if `raw` is one: {"data": "/blobs/data/<id>", "size": n}. */
export function parseBlobRecord(raw: Buffer): BlobRecord | undefined {
  try {
    const r = JSON.parse(raw.toString('utf8')) as { data?: unknown; size?: unknown };
    return typeof r.data === 'string' && typeof r.size === 'number' ? { data: r.data, size: r.size } : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Resolves a requested range against the blob size: inclusive [start, end]. A suffix longer
 * than the blob selects all of it (RFC 9110 §14.1.2), on a 0-byte blob too: [0, -1].
 */
export function resolveRange(range: ByteRange | undefined, size: number): [number, number] {
  if (!range) return [0, size - 1];
  if ('suffix' in range) {
    if (range.suffix === 0) throw new RangeNotSatisfiableError(size);
    return [Math.max(0, size - range.suffix), size - 1];
  }
  if (range.start >= size) throw new RangeNotSatisfiableError(size);
  const end = range.end === undefined ? size - 1 : Math.min(range.end, size - 1);
  if (end < range.start) throw new RangeNotSatisfiableError(size);
  return [range.start, end];
}

