import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { ExpiryPolicy } from '../../../src/registry/expiry.js';
import { manifestRefs } from '../../../src/gc/mark.js';
import { HashPool } from '../../../src/engine/hash-pool.js';
import { MEDIA_TYPES } from '../../../src/registry/manifest-schema.js';
import { MemoryDriver } from '../../../src/storage/memory.js';
import { BY_DIGEST, GcFixture, sha256 } from '../../helpers/gc.js';

/**
 * Marking (src/gc/mark.ts) through whole collections on the memory driver: what a
 * collection keeps is what marking reached. Roots are unexpired tags; marking follows index
 * children, config and layers, and referrers of what is live; blobs are shared between
 * repositories, layer links are per repository. Grace 0 throughout, so whatever marking
 * does not reach goes.
 */

let pool: HashPool;
beforeAll(() => {
  pool = new HashPool({ threads: 1, maxQueue: 100 });
});
afterAll(async () => {
  await pool.close();
});

describe('manifestRefs', () => {
  const d = (c: string) => sha256(c);

  it('reads config, layers, index children and subject', () => {
    const bytes = Buffer.from(JSON.stringify({
      schemaVersion: 2,
      config: { mediaType: 'x/y', digest: d('c'), size: 1 },
      layers: [{ digest: d('l1') }, { digest: d('l2') }],
      manifests: [{ digest: d('m') }],
      subject: { digest: d('s') },
    }));
    expect(manifestRefs(bytes)).toEqual({ blobs: [d('c'), d('l1'), d('l2')], children: [d('m')], subject: d('s') });
  });

  it('skips what is not a digest and tolerates missing fields', () => {
    expect(manifestRefs(Buffer.from(JSON.stringify({ layers: [{ digest: 'md5:abc' }, null, 3], manifests: 'x' })))).toEqual({ blobs: [], children: [] });
  });

  it.each(['not json', '[]', 'null', '"x"'])('is undefined for %j', (text) => {
    expect(manifestRefs(Buffer.from(text))).toBeUndefined();
  });
});

describe('marking', () => {
  let t: GcFixture;
  beforeEach(() => {
    t = new GcFixture(new MemoryDriver(), pool);
  });

  it('keeps tagged images and removes an untagged one with its own blobs', async () => {
    const kept = await t.pushImage('a', 'v1');
    const gone = await t.pushImage('a', 'v2');
    await t.registry.deleteManifest('a', 'v2');
    const r = await t.gc();
    expect(await t.imageStored(kept)).toBe(true);
    expect(await t.manifestStored('a', gone.digest)).toBe(false);
    for (const b of [gone.config, ...gone.layers]) expect(await t.blobStored(b)).toBe(false);
    expect(r.manifests).toBe(1);
    expect(r.blobs.count).toBe(3); // config, two layers (the manifest's bytes went with its revision)
    expect(r.links).toBe(3);
    expect(r.live).toEqual({ manifests: 1, blobs: 3 });
  });

  it('keeps a layer shared with another repository, and removes only the link of the repository that lost it', async () => {
    const shared = randomBytes(500);
    const a = await t.pushImage('team/a', 'v1', { shared: [shared] });
    const b = await t.pushImage('team/b', 'v1', { shared: [shared] });
    const sharedDigest = sha256(shared);
    await t.registry.deleteManifest('team/a', a.digest);
    await t.gc();
    expect(await t.blobStored(sharedDigest)).toBe(true);
    expect(await t.linked('team/b', sharedDigest)).toBe(true);
    expect(await t.linked('team/a', sharedDigest)).toBe(false);
    expect(await t.imageStored(b)).toBe(true);
    for (const l of a.layers.filter((l) => l !== sharedDigest)) expect(await t.blobStored(l)).toBe(false);
    // The shared blob serves team/b and no longer team/a.
    await expect(t.registry.statBlob('team/b', sharedDigest)).resolves.toMatchObject({ digest: sharedDigest });
    await expect(t.registry.statBlob('team/a', sharedDigest)).rejects.toMatchObject({ code: 'BLOB_UNKNOWN' });
  });

  it('keeps the children of a tagged index (and their blobs), not those of an untagged one', async () => {
    const amd = await t.pushImage('multi', BY_DIGEST);
    const arm = await t.pushImage('multi', BY_DIGEST);
    const idx = await t.pushIndex('multi', 'latest', [amd, arm]);
    const lone = await t.pushImage('multi', BY_DIGEST);
    const oldIdx = await t.pushIndex('multi', 'old', [lone]);
    await t.registry.deleteManifest('multi', 'old');
    const r = await t.gc();
    for (const img of [amd, arm]) expect(await t.imageStored(img)).toBe(true);
    expect(await t.manifestStored('multi', idx.digest)).toBe(true);
    expect(await t.manifestStored('multi', oldIdx.digest)).toBe(false);
    expect(await t.manifestStored('multi', lone.digest)).toBe(false);
    for (const b of lone.layers) expect(await t.blobStored(b)).toBe(false);
    expect(r.manifests).toBe(2);
    // The index still pulls: every child resolves.
    const pulled = await t.registry.getManifest('multi', 'latest');
    expect(pulled.digest).toBe(idx.digest);
  });

  it('keeps referrers of live manifests, referrers of referrers too, and drops them with their subject', async () => {
    const img = await t.pushImage('signed', 'v1');
    const subject = { mediaType: MEDIA_TYPES.ociManifest, digest: img.digest, size: img.bytes.length };
    const sig = await t.pushImage('signed', BY_DIGEST, { subject, artifactType: 'application/vnd.example.sig', layerCount: 1 });
    const sigOfSig = await t.pushImage('signed', BY_DIGEST, {
      subject: { mediaType: MEDIA_TYPES.ociManifest, digest: sig.digest, size: sig.bytes.length }, artifactType: 'application/vnd.example.sig', layerCount: 1,
    });
    // A referrer whose subject is not in the repository is not reachable.
    const stray = await t.pushImage('signed', BY_DIGEST, { subject: { mediaType: MEDIA_TYPES.ociManifest, digest: sha256('elsewhere'), size: 1 }, layerCount: 1 });
    let r = await t.gc();
    for (const x of [img, sig, sigOfSig]) expect(await t.imageStored(x)).toBe(true);
    expect(await t.manifestStored('signed', stray.digest)).toBe(false);
    expect(r.manifests).toBe(1);
    expect(r.referrerEntries).toBe(1);
    expect((await t.registry.listReferrers('signed', sha256('elsewhere'), undefined)).items.length).toBe(0);

    await t.registry.deleteManifest('signed', 'v1');
    r = await t.gc();
    expect(r.manifests).toBe(3);
    for (const x of [img, sig, sigOfSig]) expect(await t.manifestStored('signed', x.digest)).toBe(false);
    expect((await t.registry.listReferrers('signed', img.digest, undefined)).items).toEqual([]);
    expect((await t.registry.listReferrers('signed', sig.digest, undefined)).items).toEqual([]);
  });

  it('keeps untagged manifests pushed within the grace period, with what they reference', async () => {
    const img = await t.pushImage('g', BY_DIGEST);
    let r = await t.gc({ graceMs: 60_000 });
    expect(r.manifests).toBe(0);
    expect(await t.imageStored(img)).toBe(true);
    r = await t.gc({ graceMs: 0 });
    expect(r.manifests).toBe(1);
    expect(await t.imageStored(img)).toBe(false);
  });

  it('treats an expired tag as gone: hidden at once, its manifest collected', async () => {
    // Date is the test's (timers stay real): 'short' is live until the test moves the clock
    // past its second, however long a loaded machine takes between the pushes and the listing.
    vi.useFakeTimers({ toFake: ['Date'], now: Date.now() });
    try {
      const short = await t.pushImage('exp', 'short', { labels: { 'quay.expires-after': '1s' } });
      const long = await t.pushImage('exp', 'long', { labels: { 'quay.expires-after': '1h' } });
      expect((await t.registry.listTags('exp', undefined, undefined)).items).toEqual(['long', 'short']);
      vi.setSystemTime(Date.now() + 1100);
      expect((await t.registry.listTags('exp', undefined, undefined)).items).toEqual(['long']);
      await expect(t.registry.getManifest('exp', 'short')).rejects.toMatchObject({ code: 'MANIFEST_UNKNOWN' });
      const r = await t.gc();
      expect(r.expiredTags).toBe(1);
      expect(await t.imageStored(short)).toBe(false);
      expect(await t.imageStored(long)).toBe(true);
    } finally {
      vi.useRealTimers();
    }
  });

  it('expires tags by a configured expiration, per repository prefix', async () => {
    const e = new GcFixture(new MemoryDriver(), pool, { default: 3_600_000, repositories: { 'ci/tmp': 1 } });
    const tmp = await e.pushImage('ci/tmp/x', 'v1');
    const kept = await e.pushImage('ci/release', 'v1');
    await new Promise((resolve) => setTimeout(resolve, 10));
    expect((await e.registry.listTags('ci/tmp/x', undefined, undefined)).items).toEqual([]);
    const r = await e.gc({ expiry: new ExpiryPolicy({ default: 3_600_000, repositories: { 'ci/tmp': 1 } }) });
    expect(r.expiredTags).toBe(1);
    expect(await e.imageStored(tmp)).toBe(false);
    expect(await e.imageStored(kept)).toBe(true);
  });

  it('re-pushing an expired tag makes it live again', async () => {
    const img = await t.pushImage('exp2', 'v1', { labels: { 'quay.expires-after': '1s' } });
    await new Promise((resolve) => setTimeout(resolve, 1100));
    expect((await t.registry.listTags('exp2', undefined, undefined)).items).toEqual([]);
    await t.registry.putManifest('exp2', 'v1', MEDIA_TYPES.ociManifest, img.bytes);
    expect((await t.registry.listTags('exp2', undefined, undefined)).items).toEqual(['v1']);
    await t.gc();
    expect(await t.imageStored(img)).toBe(true);
  });
});

