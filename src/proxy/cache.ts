import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { channels, type LimitRefusalMessage } from '../diagnostics.js';
import { RegistryError, TooManyRequestsError } from '../errors.js';
import { resolveRange, type BlobDescriptor, type BlobRead, type ByteRange } from '../registry/blobs.js';
import { lexical, MANIFEST_MEDIA_TYPES, paginate, type Manifest, type ManifestRecord, type Page } from '../registry/manifests.js';
import type { Mirror, MirrorCore } from '../registry/mirror.js';
import { tryParseDigest, type Digest, type Reference } from '../registry/reference.js';
import { pullRefreshMs } from '../gc/mirror.js';
import { BlobFlight, type FlightReader } from './blob-flight.js';
import { PullMarks } from './pull-marks.js';
import { isUpstreamDown, UpstreamUnavailableError, type UpstreamClient } from './upstream.js';

/** A blob fetch in the table: the repository it asks the upstream through, and its opening. */
interface FlightEntry {
  readonly repo: string;
  /** Resolves once the upstream's headers are in (undefined: the blob turned out to be stored). */
  readonly opening: Promise<BlobFlight | undefined>;
}

export interface PullThroughCacheOptions {
  readonly upstream: UpstreamClient;
  /** A tag the upstream confirmed longer ago than this is checked again (HEAD) when pulled. */
  readonly tagTtlMs: number;
  /** Content nobody pulled for this long is collected (gc/mirror.ts); sets how often pulls touch. */
  readonly ttlMs: number;
  /** Upstream blob fetches at once (proxy.maxBlobFetches); a pull needing one more gets 429. */
  readonly maxBlobFetches: number;
  /** The window an upstream blob body must progress in (blob-flight.ts), when the tests shorten it. */
  readonly progressWindowMs?: number;
  readonly log: Logger;
}

/**
 * A registry as a pull-through cache of one upstream registry (distribution's proxy mode,
 * Harbor's proxy-cache projects). The registry core hands it every pull (src/registry/mirror.ts):
 *
 *   manifest by digest   stored? serve it : fetch, check the digest, store, serve. Never
 *                        asked for again: content-addressed, it cannot change.
 *   manifest by tag      confirmed by the upstream within tagTtl? serve the cached one.
 *                        Else HEAD upstream: same digest → note the confirmation, serve the
 *                        cached one; other digest, or none cached → GET, store, serve. When
 *                        the upstream cannot be asked (refused, timed out, 5xx, 429), a
 *                        cached tag is served and a warning logged.
 *   blob                 linked in the repository? serve it. Stored for another repository?
 *                        the upstream must say this repository has it (HEAD), then link it.
 *                        Else one fetch per digest (blob-flight.ts), streamed to every client
 *                        asking meanwhile while it is hashed and stored. A fetch through
 *                        another repository that fails before a client got a byte is not
 *                        that client's answer: it asks again, as its own repository.
 *   tags/list            the upstream's, or the cached tags while it cannot be asked; either
 *                        way in lexical order, n at most, after last (as the core pages).
 *
 * Concurrent pulls of one missing manifest or blob ask the upstream once (per registry and
 * digest, or tag). Distinct blob fetches are bounded (maxBlobFetches): each holds an upstream
 * connection, a storage writer and bytes kept for late joiners, and pulls of a thousand
 * different digests at once started a thousand fetches (found by probing). A pull that would
 * start one more gets 429 with Retry-After, as the per-client limits answer (src/http/limits.ts);
 * one joining a fetch in progress costs nothing and is never refused. The other upstream
 * requests (manifests, blob HEADs, tag lists) are bounded by the UpstreamClient itself
 * (proxy.maxMetadataRequests, upstream.ts): 429 past them, or what the cache holds, as when
 * the upstream cannot be asked. Everything is stored through the core's own stores, under the GC guard,
 * as pushes are (gc/collector.ts, H).
 */
export class PullThroughCache implements Mirror {
  readonly #core: MirrorCore;
  readonly #o: PullThroughCacheOptions;
  readonly #up: UpstreamClient;
  readonly #log: Logger;
  readonly #pulls: PullMarks;
  /** Blob fetches by digest: opening (waiting for the upstream's headers), then running. */
  readonly #flights = new Map<string, FlightEntry>();
  readonly #running = new Set<BlobFlight>();
  /** Fetches started and not yet settled, opening ones included: what maxBlobFetches bounds. */
  #fetching = 0;
  /** Manifest fetches and tag checks in progress, by `m <repo> <digest>` / `t <repo> <tag>`. */
  readonly #manifestFetches = new Map<string, Promise<Manifest>>();
  #closed = false;

  constructor(core: MirrorCore, o: PullThroughCacheOptions) {
    this.#core = core;
    this.#o = o;
    this.#up = o.upstream;
    this.#log = o.log;
    this.#pulls = new PullMarks(core.guard, pullRefreshMs(o.ttlMs));
  }

  /** Upstream blob fetches in flight (metrics: hoist_proxy_blob_fetches). */
  get blobFetches(): number {
    return this.#fetching;
  }

  /** Stops fetches in progress (shutdown): their clients are cut off and nothing is stored. */
  close(): void {
    this.#closed = true;
    for (const f of this.#running) f.abort(new Error('server shutting down'));
  }

  // --- manifests -----------------------------------------------------------------------------

  async getManifest(repo: string, reference: Reference): Promise<Manifest> {
    return reference.kind === 'digest' ? this.#byDigest(repo, reference.digest) : this.#byTag(repo, reference.tag);
  }

  async statManifest(repo: string, reference: Reference): Promise<ManifestRecord> {
    const { bytes: _, ...record } = await this.getManifest(repo, reference);
    return record;
  }

  async #byDigest(repo: string, digest: Digest): Promise<Manifest> {
    await this.#touchIfHeld(digest, () => this.#core.manifests.exists(repo, digest));
    const cached = await this.#cachedManifest(repo, digest);
    if (cached) return cached;
    return this.#once(`m ${repo} ${digest.value}`, async () => {
      // Stored by a fetch that ended between our look and now?
      const stored = await this.#cachedManifest(repo, digest);
      if (stored) return stored;
      const m = await this.#up.getManifest(repo, digest.value, this.#core.maxManifestBytes);
      this.#checkDigest(repo, digest.value, m.bytes, digest.value);
      return this.#store(repo, { kind: 'digest', digest }, m.bytes, m.contentType);
    });
  }

  async #byTag(repo: string, tag: string): Promise<Manifest> {
    const fresh = await this.#freshTag(repo, tag);
    if (fresh) return fresh;
    return this.#once(`t ${repo} ${tag}`, async () => {
      const ref: Reference = { kind: 'tag', tag };
      // Confirmed by a check that ended between our look and now?
      const now = await this.#freshTag(repo, tag);
      if (now) return now;
      const record = await this.#core.manifests.tagRecord(repo, tag);
      const cachedDigest = record ? tryParseDigest(record.digest) : undefined;
      try {
        if (cachedDigest) {
          const head = await this.#up.headManifest(repo, tag);
          if (head.digest === cachedDigest.value) {
            const cached = await this.#cachedManifest(repo, cachedDigest);
            // Writing the tag again records the confirmation (its updatedAt).
            if (cached) return await this.#store(repo, ref, cached.bytes, cached.mediaType);
          }
        }
        const m = await this.#up.getManifest(repo, tag, this.#core.maxManifestBytes);
        if (m.digest !== undefined) this.#checkDigest(repo, tag, m.bytes, m.digest);
        return await this.#store(repo, ref, m.bytes, m.contentType);
      } catch (err) {
        if (cachedDigest && err instanceof RegistryError && err.code === 'MANIFEST_UNKNOWN') {
          // The upstream no longer has the tag: nor does the cache, or an outage would bring it
          // back (a tag deleted for its bad image, served again). The manifest stays by digest.
          await this.#core.manifests.delete(repo, ref).catch(() => undefined);
        }
        if (!isUpstreamDown(err) || !cachedDigest) throw err;
        const cached = await this.#cachedManifest(repo, cachedDigest);
        if (!cached) throw err;
        this.#log.warn(
          { repository: repo, tag, digest: cachedDigest.value, confirmedAt: record!.updatedAt, reason: (err as Error).message },
          'upstream unavailable: serving the cached tag',
        );
        await this.#pulls.pulled([cachedDigest]);
        return cached;
      }
    });
  }

  /** The tag's manifest, when the upstream confirmed the tag within tagTtl; else undefined. */
  async #freshTag(repo: string, tag: string): Promise<Manifest | undefined> {
    const record = await this.#core.manifests.tagRecord(repo, tag);
    if (!record || !(Date.now() - Date.parse(record.updatedAt) < this.#o.tagTtlMs)) return undefined;
    // MANIFEST_UNKNOWN here: the tag expired (gc.expiration), or its manifest was collected.
    const cached = await this.#core.manifests.get(repo, { kind: 'tag', tag }).catch((err: unknown) => {
      if (err instanceof RegistryError && err.code === 'MANIFEST_UNKNOWN') return undefined;
      throw err;
    });
    if (cached) await this.#pulls.pulled([tryParseDigest(cached.digest)!]);
    return cached;
  }

  /** The manifest as cached in `repo` (by digest: whatever the tags say), or undefined. */
  async #cachedManifest(repo: string, digest: Digest): Promise<Manifest | undefined> {
    try {
      return await this.#core.manifests.get(repo, { kind: 'digest', digest });
    } catch (err) {
      if (err instanceof RegistryError && err.code === 'MANIFEST_UNKNOWN') return undefined;
      throw err;
    }
  }

  /** Bytes the upstream sent for a manifest must be what it (or the reference) says they are. */
  #checkDigest(repo: string, reference: string, bytes: Buffer, expected: string): void {
    const d = tryParseDigest(expected);
    if (!d) throw new UpstreamUnavailableError(this.#up.remote, `sent an invalid manifest digest ${JSON.stringify(expected.slice(0, 100))}`);
    const actual = `${d.algorithm}:${createHash(d.algorithm).update(bytes).digest('hex')}`;
    if (actual === d.value) return;
    this.#log.warn({ repository: repo, reference, expected: d.value, actual }, 'upstream sent a manifest that does not match its digest: not stored');
    throw new UpstreamUnavailableError(this.#up.remote, `sent a manifest that does not match its digest ${d.value}`);
  }

  /**
   * Stores a manifest as the upstream sent it, as a registered operation that touched the
   * manifest's digest first, the way a push does (gc/guard.ts): a running collection spares
   * it. Its config and layers are not checked: clients fetch them next, and whatever is
   * missing then is fetched again.
   */
  async #store(repo: string, ref: Reference, bytes: Buffer, contentType: string | undefined): Promise<Manifest> {
    const own = tryParseDigest(`sha256:${createHash('sha256').update(bytes).digest('hex')}`)!;
    const digest = ref.kind === 'digest' ? ref.digest : own;
    // A Content-Type that names no manifest type (application/json) says nothing: the bytes' mediaType decides.
    const type = contentType?.split(';')[0]?.trim().toLowerCase();
    const declared = (MANIFEST_MEDIA_TYPES as readonly string[]).includes(type ?? '') ? type : undefined;
    const record = await this.#core.guard.op(async () => {
      await this.#core.guard.touch([digest]);
      const r = await this.#core.manifests.put(repo, ref, declared, bytes, { fromUpstream: true }).catch((err: unknown) => {
        // Not JSON, not a manifest, a Content-Type its bytes deny: the upstream's fault, which
        // clients retry (503), and a tag the cache holds is served instead; never the 400 that
        // tells a pushing client to mend its manifest.
        if (err instanceof RegistryError && (err.code === 'MANIFEST_INVALID' || err.code === 'DIGEST_INVALID')) {
          this.#log.warn({ repository: repo, reason: err.message }, 'upstream sent a manifest this registry cannot serve: not stored');
          throw new UpstreamUnavailableError(this.#up.remote, `sent a manifest this registry cannot serve (${err.message})`, err);
        }
        throw err;
      });
      // A collector may have deleted this (expired) tag as we wrote it: put it back (gc/guard.ts, duty 3).
      if (ref.kind === 'tag' && this.#core.guard.collecting) {
        await this.#core.guard.tagIntent(repo, ref.tag);
        await this.#core.manifests.repairTag(repo, ref.tag, r.digest);
      }
      return r;
    });
    this.#pulls.touched(digest);
    return { ...record, bytes };
  }

  /**
   * A pull's touch (pull-marks.ts) of content the repository holds, before the pull reads it.
   * Content it does not hold gets no marker: anyone may ask for any digest, and a marker for
   * each would stay until a collection (the core's statBlob answers no before any touch too).
   *
   * The look (`held`) reads nothing that is served, so the argument of gc/collector.ts H holds
   * as before: whatever this pull serves from storage it reads after this touch. A collection
   * that deletes the content between our look and our touch leaves the read finding it gone,
   * and the pull fetches it again, as when it was collected before the pull came; one that
   * deletes it after our touch re-reads the marker (A), sees our touch and puts it back.
   * What is not held is stored as a push stores it, inside op() after a touch (#store,
   * blob-flight.ts, #linkStored), so the fetch or link that makes it held marks it.
   */
  async #touchIfHeld(digest: Digest, held: () => Promise<boolean>): Promise<void> {
    if (this.#pulls.due(digest) && (await held())) await this.#pulls.pulled([digest]);
  }

  /** One fetch per key at a time; later callers share the first one's result. */
  #once(key: string, fetch: () => Promise<Manifest>): Promise<Manifest> {
    let p = this.#manifestFetches.get(key);
    if (!p) {
      p = fetch().finally(() => this.#manifestFetches.delete(key));
      this.#manifestFetches.set(key, p);
    }
    return p;
  }

  // --- blobs ---------------------------------------------------------------------------------

  async statBlob(repo: string, digest: Digest): Promise<BlobDescriptor> {
    await this.#touchIfHeld(digest, () => this.#core.blobs.linked(repo, digest));
    const local = await this.#localBlob(repo, digest);
    if (local) return local;
    // Only a fetch through this repository tells this repository's size (another's may fail).
    const entry = this.#flights.get(digest.value);
    const flight = entry?.repo === repo ? await entry.opening.catch(() => undefined) : undefined;
    if (flight && flight.size !== undefined) return { digest: digest.value, size: flight.size };
    // As a GET answers: a blob stored for another repository is served whatever its size (once
    // the upstream says this one has it, and then linked); one not stored is fetched only
    // within uploads.maxBlobBytes, and is SIZE_INVALID over it, to a HEAD too.
    const stored = (await this.#core.blobs.storedSize(digest)) !== undefined;
    const size = await this.#up.headBlob(repo, digest.value, stored ? 0 : this.#core.uploads.maxBlobBytes);
    return (stored ? await this.#linkStored(repo, digest) : undefined) ?? { digest: digest.value, size };
  }

  async readBlob(repo: string, digest: Digest, range: ByteRange | undefined): Promise<BlobRead> {
    await this.#touchIfHeld(digest, () => this.#core.blobs.linked(repo, digest));
    const stored = await this.#fromStore(repo, digest, range);
    if (stored) return stored;
    // No await between this look and starting a fetch: one fetch per digest.
    const entry = this.#flights.get(digest.value) ?? this.#startFlight(repo, digest);
    const read = await this.#fromFlight(repo, digest, range, entry);
    if (read) return read;
    // Another repository's fetch failed before this client got a byte of it. Its failure says
    // nothing of this repository (its upstream may answer 404 or 403 where this one has the
    // blob): ask again, as this repository, through its own fetch only. Pulls through failing
    // repositories kept starting the next fetch first, and a healthy repository's pull that
    // joined them one after another gave up (found by probing: 503 after 503). Its own fetch
    // may run beside another repository's; both store the same blob, as two pushes of it would.
    // The failed fetch is out of the table (it stored nothing).
    if (this.#flights.get(digest.value) === entry) this.#flights.delete(digest.value);
    const now = await this.#fromStore(repo, digest, range);
    if (now) return now;
    const running = this.#flights.get(digest.value);
    const own = running?.repo === repo ? running : this.#startFlight(repo, digest);
    // A fetch through this repository is this repository's answer: it never comes back empty.
    return (await this.#fromFlight(repo, digest, range, own))!;
  }

  /**
   * The blob through a fetch: ours, or one in progress that this pull joins. Undefined when
   * the fetch was another repository's and failed before any byte went to this client.
   */
  async #fromFlight(repo: string, digest: Digest, range: ByteRange | undefined, entry: FlightEntry): Promise<BlobRead | undefined> {
    const foreign = entry.repo !== repo;
    let flight: BlobFlight | undefined;
    try {
      flight = await entry.opening;
    } catch (err) {
      if (foreign) return undefined;
      throw err;
    }
    if (!flight) {
      // A fetch that ended between our look at storage and the start of ours stored it.
      const now = await this.#fromStore(repo, digest, range);
      if (now) return now;
      throw new RegistryError('BLOB_UNKNOWN', { detail: { digest: digest.value } });
    }
    if (foreign) {
      // Another repository's fetch: this one must have the blob upstream too, and is linked once it is stored.
      await this.#up.headBlob(repo, digest.value);
      void flight.settled.then((ok) => (ok ? this.#linkStored(repo, digest) : undefined)).catch(() => undefined);
    }
    const size = flight.size;
    if (size === undefined || size === 0) {
      // Nothing to stream before the digest is known good (no length to announce, or no bytes).
      if (!(await flight.settled)) {
        if (foreign) return undefined;
        throw flight.error;
      }
      if (foreign) await this.#linkStored(repo, digest);
      const now = await this.#openLocal(repo, digest, range);
      if (!now) throw new RegistryError('BLOB_UNKNOWN', { detail: { digest: digest.value } });
      return now;
    }
    const [start, end] = resolveRange(range, size);
    // The answer waits for its first bytes (blob-flight.ts, FlightReader.started): a fetch that
    // fails before them gets this client its error (503), not a connection cut with no status.
    let stream: FlightReader | undefined;
    try {
      stream = flight.reader(start, end);
      await stream.started;
    } catch (err) {
      stream?.destroy();
      if (foreign) return undefined;
      throw err;
    }
    return { descriptor: { digest: digest.value, size }, start, end, partial: range !== undefined, stream };
  }

  /**
   * The blob from storage: linked in `repo`, or stored for another repository and then, once
   * the upstream said `repo` has it (HEAD), linked. Undefined when it is not stored.
   */
  async #fromStore(repo: string, digest: Digest, range: ByteRange | undefined): Promise<BlobRead | undefined> {
    const local = await this.#openLocal(repo, digest, range);
    if (local || (await this.#core.blobs.storedSize(digest)) === undefined) return local;
    await this.#up.headBlob(repo, digest.value);
    return (await this.#linkStored(repo, digest)) ? this.#openLocal(repo, digest, range) : undefined;
  }

  /**
   * Starts the one fetch of a digest; resolves undefined when it turns out to be stored already.
   * Throws TOOMANYREQUESTS (synchronously: nothing is in the table then) at maxBlobFetches.
   */
  #startFlight(repo: string, digest: Digest): FlightEntry {
    if (this.#fetching >= this.#o.maxBlobFetches) {
      if (channels.limitRefusal.hasSubscribers) channels.limitRefusal.publish({ limit: 'blob_fetches' } satisfies LimitRefusalMessage);
      this.#log.debug({ repository: repo, digest: digest.value, fetching: this.#fetching }, 'blob fetch refused: proxy.maxBlobFetches in flight');
      throw new TooManyRequestsError(1, { message: 'too many blobs being fetched from the upstream; retry' });
    }
    this.#fetching++;
    const opening = (async () => {
      if (this.#closed) throw new RegistryError('UNAVAILABLE', { message: 'server shutting down' });
      // A fetch leaves the table only after it stored the blob: looked at after our entry went
      // in, storage shows what any fetch before ours stored.
      if ((await this.#core.blobs.storedSize(digest)) !== undefined) return undefined;
      const abort = new AbortController();
      const upstream = await this.#up.openBlob(repo, digest.value, abort.signal, this.#core.uploads.maxBlobBytes);
      const flight = new BlobFlight(
        { driver: this.#core.driver, blobs: this.#core.blobs, uploads: this.#core.uploads, guard: this.#core.guard, log: this.#log, remote: this.#up.remote, progressWindowMs: this.#o.progressWindowMs },
        repo, digest, upstream, abort,
      );
      this.#running.add(flight);
      return flight;
    })();
    const entry: FlightEntry = { repo, opening };
    this.#flights.set(digest.value, entry);
    // Out of the table once it is stored (or failed); from then on, pulls find it stored (or start anew).
    // Its slot is free again then too, once and only once whichever way it ended.
    const forget = (): void => {
      this.#fetching--;
      if (this.#flights.get(digest.value) === entry) this.#flights.delete(digest.value);
    };
    opening.then(
      (flight) => (flight ? flight.settled : Promise.resolve(false)).then((ok) => {
        if (flight) this.#running.delete(flight);
        if (ok) this.#pulls.touched(digest);
        forget();
      }),
      forget,
    );
    return entry;
  }

  async #localBlob(repo: string, digest: Digest): Promise<BlobDescriptor | undefined> {
    try {
      return await this.#core.blobs.stat(repo, digest);
    } catch (err) {
      if (err instanceof RegistryError && err.code === 'BLOB_UNKNOWN') return undefined;
      throw err;
    }
  }

  async #openLocal(repo: string, digest: Digest, range: ByteRange | undefined): Promise<BlobRead | undefined> {
    try {
      return await this.#core.blobs.open(repo, digest, range);
    } catch (err) {
      if (err instanceof RegistryError && err.code === 'BLOB_UNKNOWN') return undefined;
      throw err;
    }
  }

  /** Links a stored blob into `repo` (as a mount does: registered, touched first). */
  #linkStored(repo: string, digest: Digest): Promise<BlobDescriptor | undefined> {
    return this.#core.guard.op(async () => {
      await this.#core.guard.touch([digest]);
      return this.#core.blobs.linkStored(repo, digest);
    });
  }

  // --- tags ----------------------------------------------------------------------------------

  async listTags(repo: string, n: number | undefined, last: string | undefined): Promise<Page<string>> {
    let upstream: Page<string>;
    try {
      upstream = await this.#up.listTags(repo, n, last);
    } catch (err) {
      if (!isUpstreamDown(err)) throw err;
      this.#log.warn({ repository: repo, reason: (err as Error).message }, 'upstream unavailable: listing the cached tags');
      const page = await this.#core.manifests.tags(repo, n, last);
      if (page.items.length === 0 && last === undefined) throw err;
      return page;
    }
    // The page is ours to shape, as the cached listing's (manifests.ts tags): lexical order,
    // at most n, after `last`. Upstreams ignore n (docker-registry 2.8.2 sent all three tags,
    // unsorted, for n=1; a hostile one 200,000), or sort otherwise; what they send is at most
    // 16 MiB (upstream.ts listTags).
    const own = paginate([...new Set(upstream.items)].sort(lexical), n, last);
    // The upstream has more after its page: the client asks on from our page's last tag.
    if (own.next === undefined && upstream.next !== undefined && own.items.length > 0) return { items: own.items, next: own.items[own.items.length - 1]! };
    return own;
  }
}
