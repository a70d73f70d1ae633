import { randomBytes } from 'node:crypto';
import pLimit from 'p-limit';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { HashPool } from '../../../src/engine/hash-pool.js';
import { listData, listOrEmpty, listRepositories, scanBlobs, scanRepository } from '../../../src/gc/scan.js';
import { readOrUndefined } from '../../../src/storage/driver.js';
import { MEDIA_TYPES } from '../../../src/registry/manifest-schema.js';
import { paths } from '../../../src/registry/paths.js';
import { parseDigest } from '../../../src/registry/reference.js';
import { MemoryDriver } from '../../../src/storage/memory.js';
import { GcFixture, sha256, type PushedImage } from '../../helpers/gc.js';

/**
 * What a collection reads before it decides anything (src/gc/scan.ts), on the memory driver:
 * images pushed through the registry core, plus what a crash, another version or a hand in the
 * store can leave beside them (records that do not parse, names that are no digest, locks and
 * takeover markers). The scan must report exactly what the layout (registry/paths.ts) says those
 * objects are, and skip the rest: anything it misreads as referenced is never collected, and
 * anything it misses as a reference is.
 */

let pool: HashPool;
beforeAll(() => {
  pool = new HashPool({ threads: 1, maxQueue: 100 });
});
afterAll(async () => {
  await pool.close();
});

const limit = pLimit(4);
const put = (d: MemoryDriver, path: string, text: string) => d.putContent(path, Buffer.from(text));

describe('an empty store', () => {
  it('has no repositories, blobs or data, and a missing repository scans empty', async () => {
    const d = new MemoryDriver();
    expect(await listRepositories(d)).toEqual([]);
    expect(await listData(d)).toEqual([]);
    expect(await scanBlobs(d, limit)).toEqual({ records: new Set(), markers: new Set() });
    expect(await scanRepository(d, 'nobody', limit)).toEqual({
      name: 'nobody', tags: new Map(), revisions: new Set(), revisionTimes: new Map(), links: new Set(), referrers: new Map(),
      uploads: [], uploadLocks: [], finishedUploads: new Map(), expiring: new Set(),
    });
    expect(await listOrEmpty(d, '/no/such/dir')).toEqual([]);
    expect(await readOrUndefined(d, '/no/such/object')).toBeUndefined();
  });
});

describe('a store with pushed images', () => {
  let d: MemoryDriver;
  let t: GcFixture;
  let app: PushedImage;
  let sig: PushedImage;
  beforeEach(async () => {
    d = new MemoryDriver();
    t = new GcFixture(d, pool);
    app = await t.pushImage('team/app', 'v1');
    // A referrer of app: an artifact whose subject it is.
    sig = await t.pushImage('team/app', 'sig', {
      subject: { digest: app.digest, size: app.bytes.length, mediaType: MEDIA_TYPES.ociManifest },
      artifactType: 'application/vnd.example.sig',
    });
    await t.pushImage('team', 'v1');
    await t.pushImage('other', 'latest');
  });

  it('lists repositories, nested ones too, and not the namespaces between them', async () => {
    // 'team' is a repository and a namespace of 'team/app'; 'deep' only holds one.
    await put(d, paths.tag('deep/er/repo', 'v1'), JSON.stringify({ digest: app.digest }));
    expect(await listRepositories(d)).toEqual(['deep/er/repo', 'other', 'team', 'team/app']);
  });

  it("reads a repository's tags, revisions, links and referrers as stored", async () => {
    const scan = await scanRepository(d, 'team/app', limit);
    expect([...scan.tags.keys()].sort()).toEqual(['sig', 'v1']);
    const v1 = scan.tags.get('v1')!;
    expect(v1.digest).toBe(app.digest);
    expect(v1.raw).toBe((await d.getContent(paths.tag('team/app', 'v1'))).toString('utf8'));
    expect(scan.revisions).toEqual(new Set([app.digest, sig.digest]));
    expect(scan.links).toEqual(new Set([app.config, ...app.layers, sig.config, ...sig.layers]));
    expect(scan.referrers).toEqual(new Map([[app.digest, new Set([sig.digest])]]));
    expect(scan.uploads).toEqual([]);
    expect(scan.uploadLocks).toEqual([]);
    // Another repository's content is not this one's.
    const other = await scanRepository(d, 'other', limit);
    expect(other.revisions.has(app.digest)).toBe(false);
  });

  it("keeps a tag record's timestamps and skips tag records that name no digest", async () => {
    const name = 'team/app';
    const stamped = JSON.stringify({ digest: app.digest, updatedAt: '2026-01-01T00:00:00.000Z', expiresAt: '2026-02-01T00:00:00.000Z' });
    await put(d, paths.tag(name, 'stamped'), stamped);
    await put(d, paths.tag(name, 'torn'), '{"digest":"sha256:');
    await put(d, paths.tag(name, 'md5'), JSON.stringify({ digest: `md5:${'a'.repeat(32)}` }));
    await put(d, paths.tag(name, 'nodigest'), JSON.stringify({ updatedAt: '2026-01-01T00:00:00.000Z' }));
    await put(d, paths.tag(name, 'numbers'), JSON.stringify({ digest: app.digest, updatedAt: 5, expiresAt: null }));
    const scan = await scanRepository(d, name, limit);
    expect([...scan.tags.keys()].sort()).toEqual(['numbers', 'sig', 'stamped', 'v1']);
    expect(scan.tags.get('stamped')).toEqual({ digest: app.digest, updatedAt: '2026-01-01T00:00:00.000Z', expiresAt: '2026-02-01T00:00:00.000Z', raw: stamped });
    // Fields of the wrong type are left out, not passed on.
    expect(scan.tags.get('numbers')).toEqual({ digest: app.digest, raw: JSON.stringify({ digest: app.digest, updatedAt: 5, expiresAt: null }) });
  });

  it('skips revision, link and referrer names that are no digest', async () => {
    const name = 'other';
    const before = await scanRepository(d, name, limit);
    const hex = 'a'.repeat(64);
    await put(d, `/repositories/${name}/_manifests/revisions/sha256/not-hex`, '{}');
    await put(d, `/repositories/${name}/_manifests/revisions/sha256/${'A'.repeat(64)}`, '{}');
    await put(d, `/repositories/${name}/_manifests/revisions/md5/${'a'.repeat(32)}`, '{}');
    await put(d, `/repositories/${name}/_layers/sha256/${hex.slice(1)}`, '{}');
    await put(d, `/repositories/${name}/_manifests/referrers/sha256/short/sha256-${hex}`, '{}');
    await put(d, `/repositories/${name}/_manifests/referrers/sha256/${hex}/sha256${hex}`, '{}');
    await put(d, `/repositories/${name}/_manifests/referrers/sha256/${hex}/sha256-zz`, '{}');
    const after = await scanRepository(d, name, limit);
    expect(after.revisions).toEqual(before.revisions);
    expect(after.links).toEqual(before.links);
    // A subject whose entries all fail to parse has no referrers at all.
    expect(after.referrers).toEqual(new Map());
  });

  it('tells upload records from their locks, takeover markers and finished markers, and ignores other names', async () => {
    const name = 'other';
    const a = '3f2b1c7e-0000-4000-8000-000000000001';
    const b = '3f2b1c7e-0000-4000-8000-000000000002';
    await put(d, paths.upload(name, a), JSON.stringify({ startedAt: new Date().toISOString(), data: paths.blobData(a) }));
    await put(d, paths.uploadLock(name, a), '{}');
    // A lock left by a server that died, and the marker of one that was taking it over.
    await put(d, paths.uploadLock(name, b), '{}');
    await put(d, paths.takeoverMarker(paths.uploadLock(name, b), 'ab12', 1), '{}');
    await put(d, paths.uploadsChild(name, `${a}.partial`), '{}');
    await put(d, paths.uploadFinished(name, b), '{}');
    await put(d, paths.uploadsChild(name, `${b}.finished.takeover-ab12-1`), '{}');
    const scan = await scanRepository(d, name, limit);
    expect(scan.uploads).toEqual([a]);
    expect(scan.uploadLocks.sort()).toEqual([[a, `${a}.lock`], [b, `${b}.lock`], [b, `${b}.lock.takeover-ab12-1`]]);
    expect([...scan.finishedUploads.keys()]).toEqual([b]);
    expect(scan.finishedUploads.get(b)).toBeGreaterThan(Date.now() - 60_000);
  });

  it('reads blob records and touched markers, and skips takeover markers and stray names', async () => {
    const scan = await scanBlobs(d, limit);
    for (const digest of [app.config, ...app.layers, sig.config, ...sig.layers]) {
      expect(scan.records.has(digest), digest).toBe(true);
    }
    // A manifest's bytes live in its revision (issue 11), not in a blob of their own.
    for (const digest of [app.digest, sig.digest]) expect(scan.records.has(digest), digest).toBe(false);
    // Every digest the registry vouched for has a marker (a push touches what it stores).
    expect([...scan.records].every((digest) => scan.markers.has(digest))).toBe(true);

    const orphan = parseDigest(sha256(randomBytes(8)));
    const record = paths.blobRecord(orphan);
    await put(d, paths.takeoverMarker(record, 'cd34', 2), '{}');
    await put(d, `${paths.blobRecordDir('sha256', orphan.hex.slice(0, 2))}/not-a-digest`, '{}');
    await put(d, `${paths.blobRecordDir('sha256', orphan.hex.slice(0, 2))}/not-a-digest.touched`, '{}');
    const marked = parseDigest(sha256(randomBytes(8)));
    await put(d, paths.blobTouched(marked), JSON.stringify({ at: new Date().toISOString(), n: 1 }));
    const again = await scanBlobs(d, limit);
    expect(again.records).toEqual(scan.records);
    // A marker without a record is still reported: the collector decides what it means.
    expect(again.markers).toEqual(new Set([...scan.markers, marked.value]));
  });

  it("lists every data object, one per stored blob (a manifest's bytes are in its revision)", async () => {
    const data = await listData(d);
    expect(data.every((p) => p.startsWith(`${paths.blobDataDir()}/`))).toBe(true);
    const blobs = await scanBlobs(d, limit);
    expect(data.length).toBe(blobs.records.size);
  });
});
