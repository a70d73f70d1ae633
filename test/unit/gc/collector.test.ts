import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes, randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { RegistryError } from '../../../src/errors.js';
import { collectGarbage } from '../../../src/gc/collector.js';
import { GcGuard } from '../../../src/gc/guard.js';
import { ClockSkewError, GcBusyError, Lease, MAX_CLOCK_SKEW_MS, readLease } from '../../../src/gc/lease.js';
import { HashPool } from '../../../src/engine/hash-pool.js';
import { UploadLocks } from '../../../src/engine/upload-lock.js';
import { MEDIA_TYPES } from '../../../src/registry/manifest-schema.js';
import { paths } from '../../../src/registry/paths.js';
import { parseDigest } from '../../../src/registry/reference.js';
import { isPathNotFound, type FileInfo, type ListOptions, type ListPage, type StorageDriver } from '../../../src/storage/driver.js';
import { MemoryDriver } from '../../../src/storage/memory.js';
import { FsDriver } from '../../../src/storage/fs.js';
import { processIdentity } from '../../../src/process-identity.js';
import { BY_DIGEST, GcFixture, sha256 } from '../../helpers/gc.js';
import { bodyOf } from '../../helpers/uploads.js';

/**
 * The sweep's safety protocol (src/gc/collector.ts, "Why nothing referenced is lost"), with
 * the races made to happen: a driver that runs a client's request at the exact moment the
 * collector is about to delete something, so the interleavings the argument covers are
 * exercised, not hoped for.
 */

type HookedOp = 'delete' | 'put' | 'read';

/** A memory driver that runs a hook (once) just before a matching delete, write or reader(). */
class HookedDriver extends MemoryDriver {
  readonly #before: Array<{ op: HookedOp; match: (path: string) => boolean; fn: () => Promise<void> }> = [];

  beforeDelete(match: (path: string) => boolean, fn: () => Promise<void>): void {
    this.#before.push({ op: 'delete', match, fn });
  }

  beforePut(match: (path: string) => boolean, fn: () => Promise<void>): void {
    this.#before.push({ op: 'put', match, fn });
  }

  beforeRead(match: (path: string) => boolean, fn: () => Promise<void>): void {
    this.#before.push({ op: 'read', match, fn });
  }

  override async delete(path: string): Promise<void> {
    await this.#run('delete', path);
    return super.delete(path);
  }

  override async putContent(path: string, content: Uint8Array, opts?: { ifNotExists?: boolean }): Promise<boolean> {
    await this.#run('put', path);
    return super.putContent(path, content, opts);
  }

  override async reader(path: string, offset?: number, length?: number): Promise<Readable> {
    await this.#run('read', path);
    return super.reader(path, offset, length);
  }

  async #run(op: HookedOp, path: string): Promise<void> {
    const i = this.#before.findIndex((h) => h.op === op && h.match(path));
    if (i < 0) return;
    const [hook] = this.#before.splice(i, 1);
    await hook!.fn();
  }
}

/** A memory driver whose stat() and detailed listings report chosen objects as older than they are, by `ms`. */
class BackdatedDriver extends MemoryDriver {
  readonly #ageMs = new Map<string, number>();

  backdate(path: string, ms: number): void {
    this.#ageMs.set(path, ms);
  }

  override async stat(path: string): Promise<FileInfo> {
    const info = await super.stat(path);
    const ms = this.#ageMs.get(path);
    return ms === undefined ? info : { ...info, modTime: new Date(info.modTime.getTime() - ms) };
  }

  override async listPage(path: string, opts?: ListOptions): Promise<ListPage> {
    const page = await super.listPage(path, opts);
    const children = page.children.map((c) => {
      const ms = this.#ageMs.get(c.path);
      return ms === undefined || !c.modTime ? c : { ...c, modTime: new Date(c.modTime.getTime() - ms) };
    });
    return { ...page, children };
  }
}

async function exists(driver: StorageDriver, path: string): Promise<boolean> {
  try {
    await driver.stat(path);
    return true;
  } catch (err) {
    if (isPathNotFound(err)) return false;
    throw err;
  }
}

/** Resolves once every server presence has acknowledged collection `gen` (gc/guard.ts duty 1). */
async function acknowledged(driver: StorageDriver, gen: number): Promise<void> {
  for (;;) {
    const presences = await driver.list(paths.gcServersDir()).catch(() => []);
    const acks = await Promise.all(presences.map(async (p) => (JSON.parse((await driver.getContent(p)).toString('utf8')) as { ack?: number }).ack));
    if (acks.every((a) => a !== undefined && a >= gen)) return;
    await sleep(5);
  }
}

/** A manifest of one 300-byte layer, its config the well-known `{}`: the layer's is its repository's only link. */
function oneLayerManifest(layer: string): Buffer {
  return Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: MEDIA_TYPES.ociManifest,
    config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: sha256(Buffer.from('{}')), size: 2 },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layer, size: 300 }],
  }));
}

let pool: HashPool;
beforeAll(() => {
  pool = new HashPool({ threads: 1, maxQueue: 100 });
});
afterAll(async () => {
  await pool.close();
});

describe('online safety', () => {
  let d: HookedDriver;
  let t: GcFixture;
  beforeEach(() => {
    d = new HookedDriver();
    t = new GcFixture(d, pool);
  });

  it('a blob HEAD just before its link is deleted puts the link back, and the blob survives the sweep', async () => {
    const img = await t.pushImage('a', BY_DIGEST, { layerCount: 1 });
    const layer = img.layers[0]!;
    let head: unknown;
    d.beforeDelete((p) => p === paths.layerLink('a', parseDigest(layer)), async () => {
      head = await t.registry.statBlob('a', layer);
    });
    const r = await t.gc();
    expect(head).toMatchObject({ digest: layer });
    expect(r.spared).toBeGreaterThanOrEqual(1);
    expect(await t.linked('a', layer)).toBe(true);
    expect(await t.blobStored(layer)).toBe(true);
    // The client that got the 200 can reference it.
    const config = await t.pushBlob('a', Buffer.from('{}x'));
    await t.registry.putManifest('a', 'v1', MEDIA_TYPES.ociManifest, Buffer.from(JSON.stringify({
      schemaVersion: 2, mediaType: MEDIA_TYPES.ociManifest,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config, size: 3 },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layer, size: 300 }],
    })));
    expect(await t.blobStored(layer)).toBe(true);
  });

  it('an upload of the same content committed while its record is deleted is put back (the dedupe path)', async () => {
    const img = await t.pushImage('a', BY_DIGEST, { layerCount: 1 });
    await t.registry.deleteManifest('a', img.digest);
    const layer = img.layers[0]!;
    const bytes = await readBlob(t, img.repo, layer);
    d.beforeDelete((p) => p === paths.blobRecord(parseDigest(layer)), async () => {
      // A client pushes the same bytes again (monolithic POST ?digest=): it finds the record,
      // drops its own copy and links the existing one.
      await t.registry.putBlob('b', layer, bytes.length, bodyOf(bytes));
    });
    const r = await t.gc();
    expect(r.spared).toBeGreaterThanOrEqual(1);
    expect(await t.blobStored(layer)).toBe(true);
    expect(sha256(await readBlob(t, 'b', layer))).toBe(layer);
  });

  // A collector killed (kill -9, a lost machine) between deleting a batch and re-reading the
  // markers of what it deleted never puts back what was vouched for meanwhile: a push that
  // deduplicated onto the record (201), or a manifest PUT that checked the link, was told
  // the blob is there, and it was gone for good. The next collection replays the batch.
  it('a collector killed after deleting a record a push just deduplicated onto: the next collection puts it back', async () => {
    const img = await t.pushImage('a', BY_DIGEST, { layerCount: 1 });
    await t.registry.deleteManifest('a', img.digest);
    const layer = img.layers[0]!;
    const bytes = await readBlob(t, img.repo, layer);
    const record = paths.blobRecord(parseDigest(layer));
    d.beforeDelete((p) => p === record, async () => {
      await t.registry.putBlob('b', layer, bytes.length, bodyOf(bytes));
      await d.delete(record);
      throw new Error('killed');
    });
    await expect(t.gc()).rejects.toThrow('killed');
    // The push is within the grace period of the next collection, which must find it whole.
    await t.gc({ graceMs: 60_000 });
    expect(await t.blobStored(layer)).toBe(true);
    expect(sha256(await readBlob(t, 'b', layer))).toBe(layer);
  });

  it('a collector killed after deleting a link a manifest PUT just checked: the next collection puts it back', async () => {
    // The layer's is the repository's only link (the config is the well-known `{}`), so the
    // PUT's check is the one the kill falls after.
    const layer = await t.pushBlob('a', randomBytes(300));
    const manifest = oneLayerManifest(layer);
    const link = paths.layerLink('a', parseDigest(layer));
    d.beforeDelete((p) => p === link, async () => {
      await t.registry.putManifest('a', 'v1', MEDIA_TYPES.ociManifest, manifest);
      await d.delete(link);
      throw new Error('killed');
    });
    await expect(t.gc()).rejects.toThrow('killed');
    await t.gc({ graceMs: 60_000 });
    expect(await t.linked('a', layer)).toBe(true);
    expect(sha256(await readBlob(t, 'a', layer))).toBe(layer);
  });

  it('a collector killed after deleting a revision a manifest PUT just pushed again: the next collection puts it back', async () => {
    const img = await t.pushImage('m', BY_DIGEST);
    const revision = paths.manifestRevision('m', parseDigest(img.digest));
    d.beforeDelete((p) => p === revision, async () => {
      await t.registry.putManifest('m', 'v1', MEDIA_TYPES.ociManifest, img.bytes);
      await d.delete(revision);
      throw new Error('killed');
    });
    await expect(t.gc()).rejects.toThrow('killed');
    await t.gc({ graceMs: 60_000 });
    expect((await t.registry.getManifest('m', 'v1')).digest).toBe(img.digest);
    expect(await t.imageStored(img)).toBe(true);
  });

  // The note outlives the put-backs it was kept for when the collector is killed between the
  // two; a client's delete before the next collection must stand all the same.
  /** Runs a collection that is killed (kill -9) right after it deleted `path` (J). */
  async function collectionKilledAfterDeleting(path: string): Promise<void> {
    d.beforeDelete((p) => p === path, async () => {
      await d.delete(path);
      throw new Error('killed');
    });
    await expect(t.gc()).rejects.toThrow('killed');
  }

  it('a collector killed after putting back a revision, before removing its note: a client delete in between stays', async () => {
    const img = await t.pushImage('m', BY_DIGEST);
    const revision = paths.manifestRevision('m', parseDigest(img.digest));
    d.beforeDelete((p) => p === revision, async () => {
      // Pushed again by digest while the collector deletes it: it is put back (A).
      await t.registry.putManifest('m', img.digest, MEDIA_TYPES.ociManifest, img.bytes);
    });
    d.beforeDelete((p) => p === paths.gcSweeping(), async () => {
      throw new Error('killed');
    });
    await expect(t.gc()).rejects.toThrow('killed');
    expect((await t.registry.getManifest('m', img.digest)).digest).toBe(img.digest);
    await t.registry.deleteManifest('m', img.digest);
    await t.gc({ graceMs: 60_000 });
    await expect(t.registry.getManifest('m', img.digest)).rejects.toMatchObject({ code: 'MANIFEST_UNKNOWN' });
    expect(await d.list(paths.gcDeletedDir()).catch(() => [])).toEqual([]);
  });

  it('a collector killed after deleting a revision: pushed again and deleted by a client before the next collection, it stays deleted', async () => {
    const img = await t.pushImage('m', BY_DIGEST);
    const revision = paths.manifestRevision('m', parseDigest(img.digest));
    await collectionKilledAfterDeleting(revision);
    await t.registry.putManifest('m', img.digest, MEDIA_TYPES.ociManifest, img.bytes);
    await t.registry.deleteManifest('m', img.digest);
    await t.gc({ graceMs: 60_000 });
    await expect(t.registry.getManifest('m', img.digest)).rejects.toMatchObject({ code: 'MANIFEST_UNKNOWN' });
  });

  it('a collector killed after deleting a revision nobody vouched for: the next collection does not bring it back', async () => {
    const img = await t.pushImage('m', BY_DIGEST);
    const revision = paths.manifestRevision('m', parseDigest(img.digest));
    await collectionKilledAfterDeleting(revision);
    expect(await exists(d, paths.gcSweeping())).toBe(true);
    const r = await t.gc({ graceMs: 60_000 });
    expect(r.spared).toBe(0);
    expect(await exists(d, revision)).toBe(false);
    expect(await exists(d, paths.gcSweeping())).toBe(false);
  });

  it('a collector killed after putting back a link a manifest PUT checked: a client blob delete before the next collection stays', async () => {
    const layer = await t.pushBlob('a', randomBytes(300));
    const manifest = oneLayerManifest(layer);
    const link = paths.layerLink('a', parseDigest(layer));
    d.beforeDelete((p) => p === link, async () => {
      await t.registry.putManifest('a', 'v1', MEDIA_TYPES.ociManifest, manifest);
    });
    d.beforeDelete((p) => p === paths.gcSweeping(), async () => {
      throw new Error('killed');
    });
    await expect(t.gc()).rejects.toThrow('killed');
    expect(await t.linked('a', layer)).toBe(true);
    await t.registry.deleteBlob('a', layer);
    await t.gc({ graceMs: 60_000 });
    expect(await t.linked('a', layer)).toBe(false);
  });

  it('a client deletes a manifest the collector is deleting and a push has just vouched for: it is not put back', async () => {
    const img = await t.pushImage('m', BY_DIGEST);
    const revision = paths.manifestRevision('m', parseDigest(img.digest));
    d.beforeDelete((p) => p === revision, async () => {
      await t.registry.putManifest('m', img.digest, MEDIA_TYPES.ociManifest, img.bytes);
      await t.registry.deleteManifest('m', img.digest);
    });
    await t.gc();
    expect(await exists(d, revision)).toBe(false);
    expect(await d.list(paths.gcDeletedDir()).catch(() => [])).toHaveLength(1);
    await t.gc();
    expect(await d.list(paths.gcDeletedDir()).catch(() => [])).toEqual([]);
  });

  // A note this version did not write (a hand edit, a foreign tool): entries that are not
  // objects failed every collection until someone removed the note by hand.
  it('a sweep note with entries that are not objects: the collection puts back the rest and runs', async () => {
    const layer = await t.pushBlob('a', randomBytes(300));
    const link = paths.layerLink('a', parseDigest(layer));
    await d.delete(link);
    const good = { path: link, raw: Buffer.from(layer).toString('base64') };
    await d.putContent(paths.gcSweeping(), Buffer.from(JSON.stringify({ entries: [null, 7, 'x', [], good] })));
    await t.gc({ graceMs: 60_000 });
    expect(await t.linked('a', layer)).toBe(true);
    await expect(d.stat(paths.gcSweeping())).rejects.toSatisfy(isPathNotFound);
  });

  it('a blob HEAD after its link is gone answers unknown and touches nothing: the blob goes with this collection', async () => {
    const img = await t.pushImage('a', BY_DIGEST, { layerCount: 1 });
    const layer = img.layers[0]!;
    let head: unknown;
    d.beforeDelete((p) => p === paths.blobRecord(parseDigest(layer)), async () => {
      head = await t.registry.statBlob('a', layer).catch((e: unknown) => e);
    });
    const first = await t.gc();
    // Links go before blobs: the client is told to upload, and a no vouches for nothing (it
    // used to touch, which kept the blob one collection longer for no one).
    expect(head).toBeInstanceOf(RegistryError);
    expect(first.spared).toBe(0);
    expect(await t.blobStored(layer)).toBe(false);
  });

  it('an index pushed while its child is being deleted keeps the child and the child\'s blobs', async () => {
    const child = await t.pushImage('m', BY_DIGEST);
    let pushed: Awaited<ReturnType<GcFixture['pushIndex']>> | undefined;
    d.beforeDelete((p) => p === paths.manifestRevision('m', parseDigest(child.digest)), async () => {
      pushed = await t.pushIndex('m', 'latest', [child]);
    });
    const r = await t.gc();
    expect(pushed).toBeDefined();
    expect(r.spared).toBeGreaterThanOrEqual(1);
    expect(r.manifests).toBe(0);
    expect(await t.imageStored(child)).toBe(true);
    expect(await t.manifestStored('m', pushed!.digest)).toBe(true);
    // Everything the tag reaches is there.
    expect((await t.registry.getManifest('m', 'latest')).digest).toBe(pushed!.digest);
  });

  it('decides an index before its child: tagging an old index mid-sweep keeps its old child', async () => {
    const child = await t.pushImage('n', BY_DIGEST);
    const idx = await t.pushIndex('n', BY_DIGEST, [child]);
    d.beforeDelete((p) => p === paths.manifestRevision('n', parseDigest(idx.digest)), async () => {
      await t.registry.putManifest('n', 'revived', MEDIA_TYPES.ociIndex, idx.bytes);
    });
    const r = await t.gc();
    expect(r.manifests).toBe(0);
    expect(await t.manifestStored('n', idx.digest)).toBe(true);
    expect(await t.imageStored(child)).toBe(true);
  });

  it('a manifest PUT that checked its blobs before the collection began is waited for (the server acknowledges after it)', async () => {
    const blobs = await t.pushImage('w', BY_DIGEST, { layerCount: 1 });
    await t.registry.deleteManifest('w', blobs.digest);
    // A PUT started (no collection ran) and checked its references, then stalls before writing its tag.
    const guard = new GcGuard(d);
    let release!: () => void;
    const stalled = new Promise<void>((resolve) => (release = resolve));
    const put = guard.op(async () => {
      await stalled;
      await t.registry.putManifest('w', 'v1', MEDIA_TYPES.ociManifest, blobs.bytes);
    });
    let finished = false;
    const gc = t.gc().then((r) => {
      finished = true;
      return r;
    });
    // Once the lease is written the collector is waiting for the server's acknowledgement,
    // which the stalled PUT holds back: it cannot finish, however long it is given.
    while ((await readLease(d))?.gen !== 1) await sleep(5);
    await sleep(50);
    expect(finished).toBe(false);
    release();
    await put;
    const r = await gc;
    expect(r.manifests).toBe(0);
    expect(await t.imageStored(blobs)).toBe(true);
  });

  it('a PUT during the collection tags its touches with the collection, which spares them whatever the grace', async () => {
    const img = await t.pushImage('x', BY_DIGEST, { layerCount: 1 });
    await t.registry.deleteManifest('x', img.digest);
    const other = await t.pushImage('y', BY_DIGEST, { layerCount: 1 });
    // Once the collector has listed and marked (it is deleting another manifest now), the
    // PUT comes; its blobs' links and records are unmarked, and were touched before the grace.
    d.beforeDelete((p) => p === paths.manifestRevision('y', parseDigest(other.digest)), async () => {
      await t.registry.putManifest('x', 'late', MEDIA_TYPES.ociManifest, img.bytes);
    });
    const r = await t.gc();
    expect(r.manifests).toBe(1);
    expect(r.spared).toBe(0);
    expect(await t.imageStored(img)).toBe(true);
    expect((await t.registry.getManifest('x', 'late')).digest).toBe(img.digest);
  });

  it('an expired tag pushed again while the collector deletes it survives', async () => {
    const img = await t.pushImage('e', 'v1', { labels: { 'quay.expires-after': '1s' } });
    await sleep(1100);
    d.beforePut((p) => p === paths.gcTagIntent('e', 'v1'), async () => {
      // The client's push lands just as the collector is about to delete the tag.
      await t.registry.putManifest('e', 'v1', MEDIA_TYPES.ociManifest, img.bytes);
    });
    const r = await t.gc();
    expect(r.expiredTags).toBe(0);
    expect((await t.registry.listTags('e', undefined, undefined)).items).toEqual(['v1']);
    expect(await t.imageStored(img)).toBe(true);
  });

  it('a tag pushed again between the collector\'s re-read and its delete is put back, however late the push looks for the intent', async () => {
    const img = await t.pushImage('f', 'v1', { labels: { 'quay.expires-after': '1s' } });
    await sleep(1100);
    let push: Promise<unknown> | undefined;
    d.beforeDelete((p) => p === paths.tag('f', 'v1'), async () => {
      // The collector read the expired tag, unchanged, and is about to delete it: the push
      // lands now, and looks for the intent only after the collector is done with it.
      const intent = paths.gcTagIntent('f', 'v1');
      d.beforeRead((p) => p === intent, async () => {
        while (await exists(d, intent)) await sleep(2);
      });
      const before = (await d.getContent(paths.tag('f', 'v1'))).toString();
      push = t.registry.putManifest('f', 'v1', MEDIA_TYPES.ociManifest, img.bytes);
      while ((await d.getContent(paths.tag('f', 'v1'))).toString() === before) await sleep(2);
    });
    const r = await t.gc();
    await push;
    expect(r.expiredTags).toBe(1);
    expect((await t.registry.listTags('f', undefined, undefined)).items).toEqual(['v1']);
    expect(await exists(d, paths.tagExpiring('f', 'v1'))).toBe(true);
    expect(await t.imageStored(img)).toBe(true);
  });

  it('tidies the expiring index, and a push meanwhile keeps its entry', async () => {
    const labels = { 'quay.expires-after': '1h' };
    const keep = await t.pushImage('x', 'keep', { labels });
    await t.pushImage('x', 'gone', { labels });
    await t.pushImage('x', 'moved', { labels });
    await t.pushImage('x', 'back', { labels });
    await t.registry.deleteManifest('x', 'gone');
    await t.registry.deleteManifest('x', 'back');
    await t.pushImage('x', 'moved');
    // `back` is pushed again just as the collector removes its stale entry.
    let push: Promise<unknown> | undefined;
    d.beforeDelete((p) => p === paths.tagExpiring('x', 'back'), async () => {
      push = t.registry.putManifest('x', 'back', MEDIA_TYPES.ociManifest, keep.bytes);
      while (!(await exists(d, paths.tag('x', 'back')))) await sleep(2);
    });
    await t.gc();
    await push;
    const entries = (await d.list(paths.tagsExpiring('x'))).map((p) => p.slice(p.lastIndexOf('/') + 1));
    expect(entries).toEqual(['back', 'keep']);
    expect((await t.registry.listTags('x', undefined, undefined)).items).toEqual(['back', 'keep', 'moved']);
  });

  it('a tag PUT that finds the collector\'s intent waits for it and writes the tag again', async () => {
    const img = await t.pushImage('i', BY_DIGEST);
    const lease = await Lease.acquire(d, { ttlMs: 60_000 });
    try {
      // As a collector does before anything else: wait for the server to know of it.
      await acknowledged(d, lease.gen);
      const intent = paths.gcTagIntent('i', 'v1');
      await d.putContent(intent, Buffer.from('{}'));
      // The PUT has written the tag and found the intent: it waits for the collector now.
      const reader = d.reader.bind(d);
      const found = new Promise<void>((resolve) => {
        d.reader = async (path, offset, length) => {
          const r = await reader(path, offset, length);
          if (path === intent) resolve();
          return r;
        };
      });
      const put = t.registry.putManifest('i', 'v1', MEDIA_TYPES.ociManifest, img.bytes);
      await found;
      // The collector deletes the tag, then its intent.
      await d.delete(paths.tag('i', 'v1')).catch(() => undefined);
      await d.delete(intent);
      await put;
      expect((await t.registry.getManifest('i', 'v1')).digest).toBe(img.digest);
    } finally {
      await lease.release();
    }
  });
});

describe('leases', () => {
  it('lets one collection run at a time and hands over when it is done', async () => {
    const d = new MemoryDriver();
    const t = new GcFixture(d, pool);
    const lease = await Lease.acquire(d, { ttlMs: 60_000 });
    await expect(t.gc()).rejects.toBeInstanceOf(GcBusyError);
    await lease.release();
    const r = await t.gc();
    expect(r.generation).toBe(lease.gen + 1);
    expect(await readLease(d)).toBeUndefined();
  });

  it('of two collections started together, one runs', async () => {
    const d = new MemoryDriver();
    const run = () => collectGarbage({ driver: d, graceMs: 0, staleUploadAfterMs: 60_000 });
    const results = await Promise.allSettled([run(), run()]);
    expect(results.filter((r) => r.status === 'fulfilled').length).toBe(1);
    expect(results.filter((r) => r.status === 'rejected' && r.reason instanceof GcBusyError).length).toBe(1);
  });

  // Found by probing (2026-12-03): the second read no lease (the first had not written it
  // yet) and listed the first's claim, so it claimed the next generation and both collections
  // ran, until the first found its lease overwritten.
  it('of two collectors whose steps interleave, the second is busy, not a second holder', async () => {
    const d = new HookedDriver();
    let second: unknown;
    d.beforePut((p) => p === paths.gcLease(), async () => {
      second = await Lease.acquire(d, { ttlMs: 60_000 }).catch((e: unknown) => e);
    });
    const first = await Lease.acquire(d, { ttlMs: 60_000 });
    expect(second).toBeInstanceOf(GcBusyError);
    expect((await readLease(d))?.gen).toBe(first.gen);
    await first.release();
    // Released, its claim is done: the next starts at once, with the next generation.
    const next = await Lease.acquire(d, { ttlMs: 60_000 });
    expect(next.gen).toBe(first.gen + 1);
    await next.release();
  });

  // Found by probing: the store took the claim, its answer was lost, and the SDK's retry of
  // the create-if-absent found it there: the collector took its own claim for another's,
  // and every collection was refused as "starting" for the lease's TTL.
  it('a claim whose answer was lost, and whose retry finds it, is the collector\'s own', async () => {
    class LostAnswer extends MemoryDriver {
      override async putContent(path: string, content: Uint8Array, opts?: { ifNotExists?: boolean }): Promise<boolean> {
        if (!path.startsWith(paths.gcGenerationsDir()) || !opts?.ifNotExists) return super.putContent(path, content, opts);
        await super.putContent(path, content, opts);
        return super.putContent(path, content, opts);
      }
    }
    const d = new LostAnswer();
    const lease = await Lease.acquire(d, { ttlMs: 60_000 });
    expect((await readLease(d))?.gen).toBe(lease.gen);
    await lease.release();
    // Another collector's claim still makes it busy.
    await d.putContent(paths.gcGeneration(lease.gen + 1), Buffer.from(JSON.stringify({ owner: 'other:1', at: new Date().toISOString(), token: 'theirs' })));
    await expect(Lease.acquire(d, { ttlMs: 60_000 })).rejects.toBeInstanceOf(GcBusyError);
  });

  // Found by probing: a collector 12 minutes ahead of the store took every server's presence
  // for silent and swept a push in flight; one 6 minutes behind wrote heartbeats another
  // collector took for a dead one's, and two collections ran at once.
  it.each([['ahead of', -12 * 60_000], ['behind', 6 * 60_000]])('a collector whose clock is minutes %s the store\'s refuses to collect, and leaves the next free to', async (_, storeMinusHostMs) => {
    class SkewedStore extends MemoryDriver {
      shiftMs = storeMinusHostMs;
      override async stat(path: string): Promise<FileInfo> {
        const info = await super.stat(path);
        return { ...info, modTime: new Date(info.modTime.getTime() + this.shiftMs) };
      }
    }
    const d = new SkewedStore();
    const running = new Date().toISOString();
    const err = await Lease.acquire(d, { ttlMs: 300_000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ClockSkewError);
    expect((err as Error).message).toMatch(new RegExp(`clock is ${Math.abs(storeMinusHostMs) / 1000} s ${_} the storage's`));
    expect(await readLease(d)).toBeUndefined();
    // Within the bound, it collects; its refused claim held nobody up.
    d.shiftMs = Math.sign(storeMinusHostMs) * (MAX_CLOCK_SKEW_MS - 5_000);
    const lease = await Lease.acquire(d, { ttlMs: 300_000 });
    expect(lease.gen).toBe(2);
    await lease.release();
    // A running collection's lease is never replaced by a skewed collector's.
    await d.putContent(paths.gcLease(), Buffer.from(JSON.stringify({ gen: 7, state: 'running', owner: 'slow:1', startedAt: running, heartbeatAt: new Date(Date.now() - 400_000).toISOString() })));
    d.shiftMs = storeMinusHostMs;
    await expect(Lease.acquire(d, { ttlMs: 300_000 })).rejects.toBeInstanceOf(ClockSkewError);
    expect((await readLease(d))?.owner).toBe('slow:1');
  });

  // Found by probing: a collector a day ahead, refused, whose "done" write failed, left a
  // claim dated a day ahead, and every collection was "starting" until then.
  it('judges a claim\'s age by the store\'s clock too, and the next lease takes every older claim away', async () => {
    const d = new MemoryDriver();
    await d.putContent(paths.gcGeneration(1), Buffer.from(JSON.stringify({ owner: 'ahead:1', at: new Date(Date.now() + 86_400_000).toISOString(), token: 't' })));
    await d.putContent(paths.gcGeneration(2), Buffer.from(JSON.stringify({ owner: 'ahead:1', at: new Date(Date.now() + 86_400_000).toISOString(), token: 't' })));
    await expect(Lease.acquire(d, { ttlMs: 200 })).rejects.toBeInstanceOf(GcBusyError);
    await sleep(300);
    const lease = await Lease.acquire(d, { ttlMs: 200 });
    expect(lease.gen).toBe(3);
    await lease.release();
    expect((await d.list(paths.gcGenerationsDir())).map((p) => p.slice(p.lastIndexOf('/') + 1))).toEqual(['3']);
  });

  // Found by probing: a server 90 s or 10 min behind had a PATCH's upload removed under it
  // and blobs it had just vouched for swept; its touches and locks are dated by its clock.
  // Each server measures its skew at its presence writes (skewMs; guard.test.ts).
  it.each([['behind', 10 * 60_000], ['ahead of', -60_000]])('refuses to collect beside a server whose clock is minutes %s the store\'s', async (_, skewMs) => {
    const d = new MemoryDriver();
    const t = new GcFixture(d, pool);
    await t.pushImage('x', 'v1');
    await t.registry.deleteManifest('x', 'v1');
    const now = new Date().toISOString();
    const presence = (skew: number) => Buffer.from(JSON.stringify({ id: 'skewed', owner: 'skewed:1', startedAt: now, heartbeatAt: now, skewMs: skew, ack: 99 }));
    await d.putContent(paths.gcServer('skewed'), presence(skewMs));
    const before = (await d.list('/')).length;
    const err = await t.gc().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ClockSkewError);
    expect((err as Error).message).toMatch(new RegExp(`server skewed:1 is ${Math.abs(skewMs) / 1000} s ${_} the storage's`));
    expect(await readLease(d)).toBeUndefined();
    expect((await d.list('/')).length).toBe(before);
    // Within the bound: it collects.
    await d.putContent(paths.gcServer('skewed'), presence(Math.sign(skewMs) * (MAX_CLOCK_SKEW_MS - 1000)));
    expect((await t.gc()).manifests).toBe(1);
  });

  it('takes over a lease whose collector stopped renewing it', async () => {
    const d = new MemoryDriver();
    const t = new GcFixture(d, pool);
    const old = new Date(Date.now() - 120_000).toISOString();
    await d.putContent(paths.gcLease(), Buffer.from(JSON.stringify({ gen: 4, state: 'running', owner: 'dead:1', startedAt: old, heartbeatAt: old })));
    const r = await t.gc({ leaseTtlMs: 60_000 });
    expect(r.generation).toBe(5);
  });

  it('on fs, takes over at once the fresh lease of a collector of this host that is gone (a killed `hoist gc`), but not a live one\'s', async () => {
    const root = await mkdtemp(join(tmpdir(), 'hoist-lease-'));
    try {
      const d = await FsDriver.open({ rootDirectory: root });
      const child = spawn(process.execPath, ['-e', '']);
      await once(child, 'exit');
      const now = new Date().toISOString();
      const lease = (pid: number) => Buffer.from(JSON.stringify({ gen: 4, state: 'running', owner: `here:${pid}`, startedAt: now, heartbeatAt: now, ...processIdentity(), pid }));
      await d.putContent(paths.gcLease(), lease(process.ppid));
      await expect(Lease.acquire(d, { ttlMs: 300_000 })).rejects.toBeInstanceOf(GcBusyError);
      await d.putContent(paths.gcLease(), lease(child.pid!));
      const taken = await Lease.acquire(d, { ttlMs: 300_000 });
      expect(taken.gen).toBe(5);
      await taken.release();
      // Not on storage a dead process may still have requests in flight to (memory stands in for S3).
      const m = new MemoryDriver();
      await m.putContent(paths.gcLease(), lease(child.pid!));
      await expect(Lease.acquire(m, { ttlMs: 300_000 })).rejects.toBeInstanceOf(GcBusyError);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});

describe('uploads and orphaned data', () => {
  let t: GcFixture;
  let d: MemoryDriver;
  beforeEach(() => {
    d = new MemoryDriver();
    t = new GcFixture(d, pool);
  });

  it('removes an upload idle past staleUploadAfter, its record and data, and keeps an active one', async () => {
    const { id } = await t.registry.startUpload('u');
    await t.registry.appendUpload('u', id, {}, bodyOf(randomBytes(5000)));
    let r = await t.gc({ staleUploadAfterMs: 60_000 });
    expect(r.uploads.count).toBe(0);
    expect(await exists(d, paths.blobData(id))).toBe(true);
    await sleep(5);
    r = await t.gc({ staleUploadAfterMs: 1 });
    expect(r.uploads).toEqual({ count: 1, bytes: 5000 });
    expect(await exists(d, paths.blobData(id))).toBe(false);
    expect(await exists(d, paths.upload('u', id))).toBe(false);
    await expect(t.registry.uploadStatus('u', id)).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
  });

  // Found by probing (S3, three instances, staleUploadAfter 0s): a PUT whose commit took a
  // second (its hash rebuilt from storage) had touched the record before the collection began,
  // saw no intent, and was answered 201 while the collector removed the upload's data as
  // stale: the blob record named deleted data. A PUT streaming a slow body was cut the same way.
  it('an upload whose lock a request holds is in use, however long ago its record was touched; released or dead, it goes', async () => {
    const { id } = await t.registry.startUpload('u');
    await t.registry.appendUpload('u', id, {}, bodyOf(randomBytes(4000)));
    await sleep(5);
    const lockPath = paths.uploadLock('u', id);
    const held = await new UploadLocks(d).acquire(lockPath);
    expect(held).toBeDefined();
    let r = await t.gc({ staleUploadAfterMs: 1 });
    expect(r.uploads.count).toBe(0);
    expect(await exists(d, paths.blobData(id))).toBe(true);
    expect(await exists(d, paths.upload('u', id))).toBe(true);
    await held!.release();
    // A lock whose holder died: past its expiry and the skew allowed (30 s each), it keeps nothing.
    const dead = { token: 'dead0000dead0000dead0000dead0000', expiresAt: new Date(Date.now() - 61_000).toISOString() };
    await d.putContent(lockPath, Buffer.from(JSON.stringify(dead)));
    await sleep(5);
    r = await t.gc({ staleUploadAfterMs: 1 });
    expect(r.uploads).toEqual({ count: 1, bytes: 4000 });
    expect(await exists(d, paths.blobData(id))).toBe(false);
  });

  // Found by probing with kill -9: the blob record went in before the upload record went out,
  // and a server killed between the two left an upload whose data a blob record named. A
  // cancel, a PATCH, a PUT retried with its body, or a sweep of that upload then deleted or
  // grew the data under every repository that had the blob. Now the upload record goes first.
  it('a server killed as its PUT records the blob leaves no upload behind whose data the blob record names', async () => {
    const data = randomBytes(5000);
    const digest = sha256(data);
    const recordPath = paths.blobRecord(parseDigest(digest));
    let dead = false;
    const dying = new Proxy(d, {
      get(target, prop, receiver) {
        const v = Reflect.get(target, prop, receiver) as unknown;
        if (typeof v !== 'function') return v;
        const fn = (v as (...a: unknown[]) => Promise<unknown>).bind(target);
        if (!['putContent', 'delete', 'deleteObjects', 'writer', 'move'].includes(String(prop))) return fn;
        return async (...args: unknown[]) => {
          if (dead) throw new Error('the process was killed');
          const result = await fn(...args);
          if (prop === 'putContent' && args[0] === recordPath) dead = true;
          return result;
        };
      },
    }) as StorageDriver;
    const killed = new GcFixture(dying, pool);
    const { id } = await killed.registry.startUpload('u');
    await killed.registry.appendUpload('u', id, {}, bodyOf(data));
    await expect(killed.registry.completeUpload('u', id, digest, {}, undefined)).rejects.toThrow();
    expect(dead).toBe(true);
    await killed.close().catch(() => undefined);
    // Its presence, which a collector would wait 10 minutes for, goes as a crashed server's does.
    for (const p of await d.list(paths.gcServersDir()).catch(() => [])) await d.delete(p);

    // Restarted: the upload is gone, not resumable over the blob's data.
    const t2 = new GcFixture(d, pool);
    await expect(t2.registry.uploadStatus('u', id)).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
    // The killed server's lock runs out (60 s); a collection that sweeps stale uploads then leaves the blob's data.
    await d.delete(paths.uploadLock('u', id)).catch(() => undefined);
    await sleep(5);
    await t2.gc({ staleUploadAfterMs: 1 });
    await t2.pushBlob('v', data);
    expect(Buffer.compare(await readBlob(t2, 'v', digest), data)).toBe(0);
    await t2.close();
  });

  it('an upload finished while the collector holds its intent fails cleanly; one finished first is kept', async () => {
    const data = randomBytes(3000);
    const a = await t.registry.startUpload('u');
    await t.registry.appendUpload('u', a.id, {}, bodyOf(data));
    await d.putContent(paths.gcUploadIntent('u', a.id), Buffer.from('{}'));
    await expect(t.registry.completeUpload('u', a.id, sha256(data), {}, undefined)).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });

    // The other order: the finish touches the record, the collector's re-read sees it and backs off.
    const b = await t.registry.startUpload('u');
    await t.registry.appendUpload('u', b.id, {}, bodyOf(data));
    await sleep(5);
    const r = await t.gc({ staleUploadAfterMs: 1, driver: withHookOnPut(d, paths.gcUploadIntent('u', b.id), async () => {
      await t.registry.completeUpload('u', b.id, sha256(data), {}, undefined);
    }) });
    expect(r.uploads.count).toBe(1); // upload a (its intent was ours to clean up)
    expect(await t.blobStored(sha256(data))).toBe(true);
    expect(await exists(d, paths.gcUploadIntent('u', b.id))).toBe(false);
  });

  it('removes the locks a dead server left on uploads that are gone, and never a lock of an upload that has a record', async () => {
    // Ages are set, not waited for: the locks are two minutes old and the live upload's record
    // is fresh by a minute's margin, so no collection, however slow, judges either otherwise.
    const aged = new BackdatedDriver();
    const ta = new GcFixture(aged, pool);
    const live = await ta.registry.startUpload('u');
    const gone = randomUUID();
    const lock = (expiresAtMs: number): Buffer => Buffer.from(JSON.stringify({ token: 'dead0000dead0000dead0000dead0000', expiresAt: new Date(expiresAtMs).toISOString() }));
    const marker = paths.takeoverMarker(paths.uploadLock('u', gone), 'ab12', 1);
    await aged.putContent(paths.uploadLock('u', live.id), lock(Date.now()));
    await aged.putContent(paths.uploadLock('u', gone), lock(Date.now()));
    await aged.putContent(marker, Buffer.from('{"at":"2026-01-01T00:00:00Z"}'));
    let r = await ta.gc({ staleUploadAfterMs: 0 });
    expect(r.uploadLocks).toBe(0); // within their lease (engine/upload-lock.ts), whatever staleUploadAfter says
    // Their server died two minutes ago: its lock's lease ran out, and the marker's too.
    await aged.putContent(paths.uploadLock('u', gone), lock(Date.now() - 120_000));
    for (const p of [paths.uploadLock('u', live.id), paths.uploadLock('u', gone), marker]) aged.backdate(p, 120_000);
    // The live upload is in use (its record fresh), its lock left by a server that died.
    r = await ta.gc({ staleUploadAfterMs: 60_000 });
    expect(r.uploads.count).toBe(0);
    expect(r.uploadLocks).toBe(2);
    expect(await exists(aged, paths.uploadLock('u', gone))).toBe(false);
    expect(await exists(aged, marker)).toBe(false);
    expect((await aged.list(paths.uploads('u'))).map((p) => p.slice(p.lastIndexOf('/') + 1)).sort()).toEqual([live.id, `${live.id}.lock`]);
    // Its next request takes the lock over (engine/upload-lock.ts), not the collector.
    expect(await exists(aged, paths.uploadLock('u', live.id))).toBe(true);
  });

  it('removes a finished upload\'s marker a day after its commit, and never while a record of the upload is there', async () => {
    const aged = new BackdatedDriver();
    const ta = new GcFixture(aged, pool);
    const data = randomBytes(3000);
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) {
      const { id } = await ta.registry.startUpload('u');
      await ta.registry.appendUpload('u', id, {}, bodyOf(data));
      await ta.registry.completeUpload('u', id, sha256(data), {}, undefined);
      ids.push(id);
    }
    const [a, b] = ids as [string, string];
    // A write of b's record that the store applied after the commit (test/gc/issue-late-upload-record-write.test.ts).
    await aged.putContent(paths.upload('u', b), Buffer.from(JSON.stringify({ startedAt: new Date().toISOString(), data: paths.blobData(b) })));
    await ta.gc({ staleUploadAfterMs: 60_000, graceMs: 3_600_000 });
    expect(await exists(aged, paths.uploadFinished('u', a))).toBe(true);
    for (const id of ids) aged.backdate(paths.uploadFinished('u', id), 25 * 3_600_000);
    await ta.gc({ staleUploadAfterMs: 60_000, graceMs: 3_600_000 });
    expect(await exists(aged, paths.uploadFinished('u', a))).toBe(false);
    expect(await exists(aged, paths.uploadFinished('u', b))).toBe(true);
    await expect(ta.registry.uploadStatus('u', b)).rejects.toMatchObject({ code: 'BLOB_UPLOAD_UNKNOWN' });
    expect(await ta.blobStored(sha256(data))).toBe(true);
    await ta.close();
  });

  it('removes data no record names once it is idle and has been seen unnamed as long, and keeps fresh data', async () => {
    const id = randomUUID();
    const orphan = paths.blobData(id);
    await d.putContent(orphan, randomBytes(700));
    let r = await t.gc({ staleUploadAfterMs: 60_000 });
    expect(r.orphanData.count).toBe(0);
    expect(await exists(d, paths.gcOrphan(id))).toBe(false); // not idle yet: not even noted
    const img = await t.pushImage('o', 'v1');
    await sleep(30);
    r = await t.gc({ staleUploadAfterMs: 20 });
    expect(r.orphanData.count).toBe(0); // idle, but first seen unnamed just now
    expect(await exists(d, paths.gcOrphan(id))).toBe(true);
    await sleep(30);
    r = await t.gc({ staleUploadAfterMs: 20 });
    expect(r.orphanData).toEqual({ count: 1, bytes: 700 });
    expect(await exists(d, orphan)).toBe(false);
    expect(await exists(d, paths.gcOrphan(id))).toBe(false);
    expect(await t.imageStored(img)).toBe(true);
  });

  // At staleUploadAfter 0 the first collection to see unnamed data used to delete it at
  // once: a monolithic upload's data, a few milliseconds before its commit writes the
  // record, went, and the blob's 201 named deleted bytes (probe, 4 in 120 pushes lost).
  it('at staleUploadAfter 0, unnamed data is only noted by the first collection that sees it', async () => {
    const id = randomUUID();
    const orphan = paths.blobData(id);
    await d.putContent(orphan, randomBytes(300));
    await sleep(5);
    let r = await t.gc({ staleUploadAfterMs: 0 });
    expect(r.orphanData.count).toBe(0);
    expect(await exists(d, orphan)).toBe(true);
    expect(await exists(d, paths.gcOrphan(id))).toBe(true);
    r = await t.gc({ staleUploadAfterMs: 0 });
    expect(r.orphanData).toEqual({ count: 1, bytes: 300 });
    expect(await exists(d, orphan)).toBe(false);
  });

  it('a dry run reports and removes nothing', async () => {
    const img = await t.pushImage('dry', BY_DIGEST);
    const { id } = await t.registry.startUpload('dry');
    await t.registry.appendUpload('dry', id, {}, bodyOf(randomBytes(10)));
    await sleep(5);
    const dry = await t.gc({ dryRun: true, staleUploadAfterMs: 1 });
    expect(dry.dryRun).toBe(true);
    expect(await t.imageStored(img)).toBe(true);
    expect(await exists(d, paths.upload('dry', id))).toBe(true);
    expect(await readLease(d)).toBeUndefined();
    const real = await t.gc({ staleUploadAfterMs: 1 });
    const counts = (r: typeof dry) => ({ m: r.manifests, b: r.blobs, l: r.links, u: r.uploads, o: r.orphanData, live: r.live });
    expect(counts(dry)).toEqual(counts(real));
    expect(real.manifests).toBe(1);
    expect(await t.imageStored(img)).toBe(false);
  });
});

/** A view of `base` that runs `fn` once, just before `path` is written. */
function withHookOnPut(base: StorageDriver, path: string, fn: () => Promise<void>): StorageDriver {
  let pending = true;
  return new Proxy(base, {
    get(target, prop, receiver) {
      if (prop === 'putContent') {
        return async (p: string, content: Uint8Array, opts?: { ifNotExists?: boolean }) => {
          if (pending && p === path) {
            pending = false;
            await fn();
          }
          return target.putContent(p, content, opts);
        };
      }
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

async function readBlob(t: GcFixture, repo: string, digest: string): Promise<Buffer> {
  const read = await t.registry.readBlob(repo, digest);
  const parts: Buffer[] = [];
  for await (const c of read.stream) parts.push(Buffer.from(c as Uint8Array));
  return Buffer.concat(parts);
}

/** Issue 10 left blob records whose data is gone; the collector reports and removes them (collector.ts, I). */
describe('blob records without data', () => {
  let d: HookedDriver;
  let t: GcFixture;
  beforeEach(() => {
    d = new HookedDriver();
    t = new GcFixture(d, pool);
  });

  async function dataOf(digest: string): Promise<string> {
    return (JSON.parse((await d.getContent(paths.blobRecord(parseDigest(digest)))).toString()) as { data: string }).data;
  }

  it('are refused to manifests, reported and removed (referenced or not), and pushed again afterwards', async () => {
    const img = await t.pushImage('x', 'v1');
    const layer = img.layers[0]!;
    await d.delete(await dataOf(layer));
    const unreferenced = randomBytes(400);
    const loose = await t.pushBlob('x', unreferenced);
    await d.delete(await dataOf(loose));
    // The registry already treats them as absent.
    await expect(t.registry.statBlob('x', layer)).rejects.toMatchObject({ code: 'BLOB_UNKNOWN' });
    await expect(t.registry.putManifest('x', 'v2', MEDIA_TYPES.ociManifest, img.bytes)).rejects.toMatchObject({ code: 'MANIFEST_BLOB_UNKNOWN' });
    const dry = await t.gc({ dryRun: true });
    expect(dry.danglingRecords).toBe(2);
    expect(await exists(d, paths.blobRecord(parseDigest(layer)))).toBe(true);
    const r = await t.gc();
    expect(r.danglingRecords).toBe(2);
    expect(r.blobs.count).toBe(0); // nothing to free: their bytes were gone already
    for (const digest of [layer, loose]) expect(await exists(d, paths.blobRecord(parseDigest(digest)))).toBe(false);
    // The bytes pushed again are a blob again.
    await t.pushBlob('x', unreferenced);
    expect(await t.blobStored(loose)).toBe(true);
    expect((await t.gc()).danglingRecords).toBe(0);
  });

  it('a push replacing one while the collector removes it keeps its blob', async () => {
    const bytes = randomBytes(500);
    const digest = await t.pushBlob('x', bytes);
    await d.delete(await dataOf(digest));
    // Just before the collector claims the record's removal, a push of the same bytes replaces it.
    d.beforePut((p) => p.startsWith(`${paths.blobRecord(parseDigest(digest))}.takeover-`), async () => {
      await t.pushBlob('y', bytes);
    });
    const r = await t.gc();
    expect(r.danglingRecords).toBe(0);
    expect(await t.blobStored(digest)).toBe(true);
    expect(await t.registry.statBlob('y', digest)).toEqual({ digest, size: 500 });
  });
});


describe('touched markers a crash emptied', () => {
  // The markers are written without an fsync (gc/guard.ts, touch): after a machine crash one
  // can be empty. That must read as no marker, the blob's own times deciding, never as fresh
  // for good nor as a reason to delete a blob still within its grace period.
  it('count as none: an old unreferenced blob goes, one pushed within the grace period stays', async () => {
    const d = new BackdatedDriver();
    const t = new GcFixture(d, pool);
    const old = await t.pushBlob('m', Buffer.from('old, unreferenced'));
    const recent = await t.pushBlob('m', Buffer.from('recent, unreferenced'));
    for (const digest of [old, recent]) {
      await d.putContent(paths.blobTouched(parseDigest(digest)), new Uint8Array(0));
    }
    for (const p of [paths.blobRecord(parseDigest(old)), paths.layerLink('m', parseDigest(old))]) d.backdate(p, 2 * 3_600_000);
    const r = await t.gc({ graceMs: 3_600_000 });
    expect(r.blobs.count).toBe(1);
    expect(await t.blobStored(old)).toBe(false);
    expect(await t.blobStored(recent)).toBe(true);
    expect(await t.linked('m', recent)).toBe(true);
  });
});
