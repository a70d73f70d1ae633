import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { GcGuard, type PresenceRecord } from '../../../src/gc/guard.js';
import { processIdentity } from '../../../src/process-identity.js';
import { Lease } from '../../../src/gc/lease.js';
import { HashPool } from '../../../src/engine/hash-pool.js';
import { MEDIA_TYPES } from '../../../src/registry/manifest-schema.js';
import { paths } from '../../../src/registry/paths.js';
import type { FileInfo, ListOptions, ListPage } from '../../../src/storage/driver.js';
import { FsDriver } from '../../../src/storage/fs.js';
import { MemoryDriver } from '../../../src/storage/memory.js';
import { CountingDriver } from '../../helpers/counting-driver.js';
import { BY_DIGEST, GcFixture } from '../../helpers/gc.js';

/**
 * The servers' side of online garbage collection (src/gc/guard.ts): what an operation costs
 * the store while no collection runs (nothing), the presence and its acknowledgements, and
 * which servers a collection waits for (src/gc/collector.ts, C).
 */

let pool: HashPool;
beforeAll(() => {
  pool = new HashPool({ threads: 1, maxQueue: 100 });
});
afterAll(async () => {
  await pool.close();
});

async function presences(d: MemoryDriver): Promise<PresenceRecord[]> {
  const list = await d.list(paths.gcServersDir()).catch(() => []);
  return Promise.all(list.map(async (p) => JSON.parse((await d.getContent(p)).toString('utf8')) as PresenceRecord));
}

/**
 * Resolves once `cond` holds, looking every 10 ms. The 30 s bound is a hang guard (an
 * acknowledgement takes milliseconds), and its failure says what never came.
 */
async function until(what: string, cond: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`no ${what} within 30 s`);
    await sleep(10);
  }
}

/** The PID of a process that has exited. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ['-e', '']);
  await new Promise((resolve) => child.once('exit', resolve));
  return child.pid!;
}

describe('operations while no collection runs', () => {
  let d: MemoryDriver;
  let counting: CountingDriver;
  let t: GcFixture;
  beforeEach(() => {
    d = new MemoryDriver();
    counting = new CountingDriver(d);
    t = new GcFixture(counting, pool);
  });

  it('a manifest PUT reads and writes nothing for garbage collection', async () => {
    const img = await t.pushImage('r', 'v1');
    for (const [ref, what] of [['v2', 'a new tag'], ['v1', 'the same tag'], [BY_DIGEST, 'nothing new']] as const) {
      const { calls } = await counting.during(() => t.registry.putManifest('r', ref === BY_DIGEST ? img.digest : ref, MEDIA_TYPES.ociManifest, img.bytes));
      // The server's polls of the lease (every 10 ms here) run whatever it does: left out.
      const gc = calls.filter((c) => (c.path.startsWith('/gc/') && c.path !== paths.gcLease()) || c.path.endsWith('.touched'));
      // An untagged manifest pushed again is touched, to keep it for the grace period.
      expect(gc.map((c) => c.path), what).toEqual(ref === BY_DIGEST ? [paths.blobTouched(imgDigest(img.digest))] : []);
    }
  });

  it('the first operation writes the presence, then reads the lease; close() deletes the presence', async () => {
    const { calls } = await counting.during(() => t.pushImage('r', 'v1', { layerCount: 1 }));
    const first = calls.findIndex((c) => c.path.startsWith('/gc/'));
    expect(calls[first]).toMatchObject({ op: 'putContent', path: expect.stringMatching(/^\/gc\/servers\//) as unknown as string });
    // A look at it, for the server's clock against the store's (PresenceRecord.skewMs).
    expect(calls[first + 1]).toEqual({ op: 'stat', path: calls[first]!.path });
    expect(calls[first + 2]).toEqual({ op: 'reader', path: paths.gcLease() });
    // Nothing else for garbage collection but the polls of the lease (every 10 ms here).
    expect(calls.slice(first + 3).filter((c) => c.path.startsWith('/gc/') && c.path !== paths.gcLease())).toEqual([]);
    const [p] = await presences(d);
    expect(p).toMatchObject({ ...processIdentity() });
    expect(p!.ack).toBeUndefined();
    await t.close();
    expect(await presences(d)).toEqual([]);
  });
});

function imgDigest(digest: string) {
  const [algorithm, hex] = digest.split(':') as [string, string];
  return { algorithm, hex, value: digest } as Parameters<typeof paths.blobTouched>[0];
}

describe('acknowledgements', () => {
  it('a server acknowledges a collection once its earlier operations are done, and later ones touch with its generation', async () => {
    const d = new MemoryDriver();
    const t = new GcFixture(d, pool);
    const img = await t.pushImage('r', BY_DIGEST, { layerCount: 1 });
    const guard = new GcGuard(d, { pollMs: 10 });
    let release!: () => void;
    const stalled = guard.op(() => new Promise<void>((resolve) => (release = resolve)));
    const lease = await Lease.acquire(d, { ttlMs: 60_000 });
    try {
      await guard.poll();
      // The fixture's server, with nothing running, acknowledges as soon as it looks.
      await until('acknowledgement by the idle server', async () => (await presences(d)).some((p) => p.ack === lease.gen));
      await t.registry.putManifest('r', 'during', MEDIA_TYPES.ociManifest, img.bytes);
      const touched = JSON.parse((await d.getContent(paths.blobTouched(imgDigest(img.layers[0]!)))).toString('utf8')) as { gen?: number };
      expect(touched.gen).toBe(lease.gen);
      // This guard, which has seen the lease (poll() above), waits for its stalled operation
      // however long it is given.
      await guard.poll();
      await sleep(50);
      expect((await presences(d)).map((p) => p.ack).sort()).toEqual([lease.gen, undefined]);
      release();
      await stalled;
      await guard.poll();
      await until('acknowledgement once the stalled operation ended', async () => (await presences(d)).every((p) => p.ack === lease.gen));
      expect((await presences(d)).map((p) => p.ack)).toEqual([lease.gen, lease.gen]);
    } finally {
      await lease.release();
      await guard.close();
    }
  });

  it('a server that starts while a collection runs acknowledges at once', async () => {
    const d = new MemoryDriver();
    const lease = await Lease.acquire(d, { ttlMs: 60_000 });
    try {
      const guard = new GcGuard(d, { pollMs: 10 });
      expect(await guard.op(async () => guard.collecting)).toBe(true);
      await until('acknowledgement', async () => (await presences(d))[0]?.ack !== undefined);
      expect((await presences(d))[0]?.ack).toBe(lease.gen);
      await guard.close();
    } finally {
      await lease.release();
    }
  });
});

/**
 * A store whose listings show chosen objects as older than they are (the collector judges a
 * presence's silence by its listed time), and which counts listings of the presences.
 */
class AgedListing extends MemoryDriver {
  readonly #ageMs = new Map<string, number>();
  serverListings = 0;

  age(path: string, ms: number): void {
    this.#ageMs.set(path, ms);
  }

  override async listPage(path: string, opts?: ListOptions): Promise<ListPage> {
    if (path === paths.gcServersDir()) this.serverListings++;
    const page = await super.listPage(path, opts);
    return {
      ...page,
      children: page.children.map((c) => {
        const ms = this.#ageMs.get(c.path);
        return ms === undefined || c.modTime === undefined ? c : { ...c, modTime: new Date(c.modTime.getTime() - ms) };
      }),
    };
  }
}

describe('a server\'s clock', () => {
  // The collector refuses to run beside a server whose clock is off (collector.test.ts): the
  // server measures it at every presence write, against the store's date of the object.
  it('is measured against the store\'s at every presence write, and written into the next', async () => {
    class SkewedStore extends MemoryDriver {
      override async stat(path: string): Promise<FileInfo> {
        const info = await super.stat(path);
        return { ...info, modTime: new Date(info.modTime.getTime() + 90_000) };
      }
    }
    const d = new SkewedStore();
    const guard = new GcGuard(d, { pollMs: 10, heartbeatMs: 20 });
    await guard.op(async () => undefined);
    try {
      await until('a presence with skewMs', async () => (await presences(d)).some((p) => p.skewMs !== undefined));
      const [p] = await presences(d);
      expect(p!.skewMs).toBeGreaterThanOrEqual(89_000);
      expect(p!.skewMs).toBeLessThanOrEqual(90_000);
    } finally {
      await guard.close();
    }
    // On local storage the store's clock is the host's: nothing measured.
    const root = await mkdtemp(join(tmpdir(), 'hoist-guard-'));
    try {
      const fs = await FsDriver.open({ rootDirectory: root });
      const local = new GcGuard(fs, { pollMs: 10, heartbeatMs: 20 });
      await local.op(async () => undefined);
      await sleep(100);
      const written = JSON.parse((await fs.getContent((await fs.list(paths.gcServersDir()))[0]!)).toString('utf8')) as PresenceRecord;
      expect(written.skewMs).toBeUndefined();
      await local.close();
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});

describe('which servers a collection waits for', () => {
  async function presence(d: MemoryDriver, id: string, extra: Partial<PresenceRecord>): Promise<void> {
    const now = new Date().toISOString();
    const record: PresenceRecord = { id, owner: 'test', ...processIdentity(), startedAt: now, heartbeatAt: now, ...extra };
    await d.putContent(paths.gcServer(id), Buffer.from(JSON.stringify(record)));
  }

  it('not for a server whose process is gone from this host, and its presence goes', async () => {
    const d = new MemoryDriver();
    const t = new GcFixture(d, pool);
    await presence(d, 'crashed', { pid: await deadPid() });
    const started = Date.now();
    await t.gc({ inflightTimeoutMs: 60_000 });
    expect(Date.now() - started).toBeLessThan(30_000);
    expect(await presences(d)).toEqual([]);
  });

  it('for a live server until it acknowledges, or until its presence has been silent for inflightTimeout', async () => {
    const d = new AgedListing();
    const t = new GcFixture(d, pool);
    // On another host: nothing tells whether it lives, but its silence.
    await presence(d, 'elsewhere', { host: 'another-host' });
    let done = false;
    const gc = t.gc({ inflightTimeoutMs: 60_000 }).then((r) => {
      done = true;
      return r;
    });
    // The collector has judged the presence and gone round again: it waits. (Its presence is
    // not a minute old; no stall of a loaded machine makes it so.)
    const listed = d.serverListings;
    await until('second look at the servers', async () => d.serverListings >= listed + 2);
    expect(done).toBe(false);
    expect((await presences(d)).map((p) => p.id)).toEqual(['elsewhere']);
    // Silent for longer than the timeout: no longer waited for, and its presence goes.
    d.age(paths.gcServer('elsewhere'), 120_000);
    await gc;
    expect(await presences(d)).toEqual([]);
  });
});

describe('a manifest PUT while the collector deletes and puts back a blob it references', () => {
  /** Starts a collection's lease and waits until the registry's guard has acknowledged it. */
  async function collecting(d: MemoryDriver): Promise<Lease> {
    const lease = await Lease.acquire(d, { ttlMs: 60_000 });
    await until('acknowledgement', async () => (await presences(d)).some((p) => p.ack === lease.gen));
    return lease;
  }

  it('finds the blob once the collector has put its record back (gc/collector.ts A), and fails when it never comes back', async () => {
    const d = new MemoryDriver();
    const t = new GcFixture(d, pool);
    const img = await t.pushImage('r', 'v1');
    const lease = await collecting(d);
    try {
      const record = paths.blobRecord(imgDigest(img.layers[0]!));
      const saved = await d.getContent(record);
      // As the collector does under a touch it had not seen: the record goes, and comes back
      // once the marker's re-read finds the touch fresh.
      await d.delete(record);
      const back = sleep(200).then(() => d.putContent(record, saved));
      await expect(t.registry.putManifest('r', 'v2', MEDIA_TYPES.ociManifest, img.bytes)).resolves.toMatchObject({ digest: img.digest });
      await back;
      expect(await t.blobStored(img.layers[0]!)).toBe(true);
      // Gone for good: after the pauses, the push is refused.
      await d.delete(record);
      const t0 = Date.now();
      await expect(t.registry.putManifest('r', 'v3', MEDIA_TYPES.ociManifest, img.bytes)).rejects.toMatchObject({ code: 'MANIFEST_BLOB_UNKNOWN' });
      expect(Date.now() - t0).toBeGreaterThanOrEqual(2_500);
    } finally {
      await lease.release();
      await t.close();
    }
  });

  it('answers a missing blob at once while no collection runs', async () => {
    const d = new MemoryDriver();
    const t = new GcFixture(d, pool);
    try {
      const img = await t.pushImage('r', 'v1');
      await d.delete(paths.blobRecord(imgDigest(img.layers[0]!)));
      const t0 = Date.now();
      await expect(t.registry.putManifest('r', 'v2', MEDIA_TYPES.ociManifest, img.bytes)).rejects.toMatchObject({ code: 'MANIFEST_BLOB_UNKNOWN' });
      expect(Date.now() - t0).toBeLessThan(1_000);
    } finally {
      await t.close();
    }
  });
});
