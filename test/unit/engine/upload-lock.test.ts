import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RegistryError } from '../../../src/errors.js';
import { lockInForce, UploadLocks } from '../../../src/engine/upload-lock.js';
import { processIdentity } from '../../../src/process-identity.js';
import { isPathNotFound, type PutOptions, type StorageDriver } from '../../../src/storage/driver.js';
import { FsDriver } from '../../../src/storage/fs.js';
import { MemoryDriver } from '../../../src/storage/memory.js';
import { FaultyDriver, sleep } from '../../helpers/uploads.js';

const LOCK = '/repositories/r/_uploads/3f0c1b7e-0000-4000-8000-000000000000.lock';

async function exists(driver: StorageDriver, path: string): Promise<boolean> {
  try {
    await driver.stat(path);
    return true;
  } catch (err) {
    if (isPathNotFound(err)) return false;
    throw err;
  }
}

/** A lock left by a holder that died `agoMs` after its lease ran out. */
async function deadLock(driver: StorageDriver, agoMs: number): Promise<void> {
  const record = { token: 'dead0000dead0000dead0000dead0000', expiresAt: new Date(Date.now() - agoMs).toISOString() };
  await driver.putContent(LOCK, Buffer.from(JSON.stringify(record)));
}

async function waitUntil(what: string, fn: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'hoist-lock-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const drivers: Array<[string, () => Promise<StorageDriver>]> = [
  ['memory', async () => new MemoryDriver()],
  ['fs', async () => FsDriver.open({ rootDirectory: await mkdtemp(join(root, 'd-')) })],
];

describe.each(drivers)('UploadLocks on %s', (_name, make) => {
  it('is held by one request at a time, and free again once released', async () => {
    const driver = await make();
    const locks = new UploadLocks(driver);
    const first = await locks.acquire(LOCK);
    expect(first?.held).toBe(true);
    expect(await locks.acquire(LOCK)).toBeUndefined();
    await first!.release();
    expect(first!.held).toBe(false);
    expect(await exists(driver, LOCK)).toBe(false);
    const second = await locks.acquire(LOCK);
    expect(second?.held).toBe(true);
    await second!.release();
  });

  it('gives a lock to exactly one of many requests racing for it', async () => {
    const driver = await make();
    // Two "instances": separate UploadLocks on one store.
    const a = new UploadLocks(driver);
    const b = new UploadLocks(driver);
    const got = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).acquire(LOCK)));
    expect(got.filter(Boolean)).toHaveLength(1);
    await got.find(Boolean)!.release();
  });

  it('takes over the lock of a holder that died, once its lease and the clock skew allowance are over', async () => {
    const driver = await make();
    await deadLock(driver, 1_000);
    expect(await new UploadLocks(driver, { skewMs: 60_000 }).acquire(LOCK)).toBeUndefined();
    const lock = await new UploadLocks(driver, { skewMs: 500 }).acquire(LOCK);
    expect(lock?.held).toBe(true);
    expect(JSON.parse((await driver.getContent(LOCK)).toString()).token).not.toBe('dead0000dead0000dead0000dead0000');
    await lock!.release();
    // No takeover marker is left behind.
    expect((await driver.list('/repositories/r/_uploads').catch(() => [])).filter((p) => p.includes('takeover'))).toEqual([]);
  });

  it('takes over at once, on local storage only, a lock whose holder is a process of this host that is gone', async () => {
    const driver = await make();
    const child = spawn(process.execPath, ['-e', '']);
    const deadPid = child.pid!;
    await once(child, 'exit');
    const unexpired = (pid: number) => ({ token: `t${pid}`, expiresAt: new Date(Date.now() + 30_000).toISOString(), ...processIdentity(), pid });

    // The holder lives (this process's parent): the lock stays held.
    await driver.putContent(LOCK, Buffer.from(JSON.stringify(unexpired(process.ppid))));
    expect(await new UploadLocks(driver).acquire(LOCK)).toBeUndefined();

    // The same host name, PID namespace and PID, on another machine (or before a reboot):
    // nothing here can tell whether it lives (the first PID namespace has one number on every
    // Linux machine, and host names repeat), so the lock waits for its expiry.
    await driver.putContent(LOCK, Buffer.from(JSON.stringify({ ...unexpired(deadPid), boot: 'another-boot' })));
    expect(await new UploadLocks(driver).acquire(LOCK)).toBeUndefined();

    // The holder is gone: fs takes the lock now; in memory (no other process could have
    // held it, and the rule is for local storage only) the expiry is still waited out.
    await driver.putContent(LOCK, Buffer.from(JSON.stringify(unexpired(deadPid))));
    const lock = await new UploadLocks(driver).acquire(LOCK);
    expect(lock !== undefined).toBe(driver.local === true);
    await lock?.release();
    await driver.delete(LOCK).catch(() => undefined);
  });

  it('lets exactly one of many servers take over a dead holder\'s lock at once', async () => {
    const driver = await make();
    for (let round = 0; round < 10; round++) {
      await deadLock(driver, 120_000);
      const servers = Array.from({ length: 6 }, () => new UploadLocks(driver));
      const got = await Promise.all(servers.map((s) => s.acquire(LOCK)));
      const holders = got.filter(Boolean);
      expect(holders, `round ${round}`).toHaveLength(1);
      // The lock in storage is the winner's, and still there.
      expect(holders[0]!.held).toBe(true);
      await holders[0]!.release();
      expect(await exists(driver, LOCK)).toBe(false);
    }
  });

  it('judges an unreadable lock (a transient file after a machine crash) by its age', async () => {
    const driver = await make();
    await driver.putContent(LOCK, Buffer.alloc(0));
    expect(await new UploadLocks(driver, { ttlMs: 60_000, skewMs: 60_000 }).acquire(LOCK)).toBeUndefined();
    // (A 1 ms lease: the taker's own lock runs out at once, but it was taken: it is in storage.)
    const taker = new UploadLocks(driver, { ttlMs: 1, skewMs: 1 });
    // The object's modification time may be a little ahead of our clock (fs): ask again.
    const lock = (await taker.acquire(LOCK)) ?? (await sleep(50), await taker.acquire(LOCK));
    expect(lock).toBeDefined();
    expect(JSON.parse((await driver.getContent(LOCK)).toString()).token).toMatch(/^[0-9a-f]{32}$/);
    await lock!.release();
  });

  // Found by probing: a lock whose expiresAt lay far ahead (a holder's clock running ahead,
  // or a hand-written lock) kept its upload busy, and uncollected, for as long as it said.
  it('counts a lock\'s expiry as no later than a lease from the store\'s time of its last write', async () => {
    const driver = await make();
    await driver.putContent(LOCK, Buffer.from(JSON.stringify({ token: 'ahead000ahead000ahead000ahead000', expiresAt: '2099-01-01T00:00:00.000Z' })));
    expect(await lockInForce(driver, LOCK)).toBe(true);
    expect(await new UploadLocks(driver).acquire(LOCK)).toBeUndefined();
    // (A 1 ms lease and skew: written a moment ago, it is past both at once.)
    await sleep(50);
    expect(await lockInForce(driver, LOCK, 1, 1)).toBe(false);
    const lock = await new UploadLocks(driver, { ttlMs: 1, skewMs: 1 }).acquire(LOCK);
    expect(lock).toBeDefined();
    await lock!.release();
  });

  it('renews itself while held, so that a long request keeps it', async () => {
    const driver = await make();
    const locks = new UploadLocks(driver, { ttlMs: 300, skewMs: 0 });
    const lock = (await locks.acquire(LOCK))!;
    const first = JSON.parse((await driver.getContent(LOCK)).toString()).expiresAt as string;
    let beats = 0;
    lock.onBeat = () => beats++;
    await waitUntil('two renewals', async () => beats >= 2 && JSON.parse((await driver.getContent(LOCK)).toString()).expiresAt !== first);
    expect(lock.held).toBe(true);
    await lock.release();
  });
});

describe('an upload lock whose renewals fail', () => {
  it('stops being held when its lease runs out, refuses further effects, and is not deleted by its old holder', async () => {
    let failLockWrites = false;
    const driver = new FaultyDriver();
    const put = driver.putContent.bind(driver);
    driver.putContent = async (path: string, content: Uint8Array, opts?: PutOptions) => {
      if (failLockWrites && path === LOCK) throw new Error('injected: storage refuses the renewal');
      return put(path, content, opts);
    };
    const locks = new UploadLocks(driver, { ttlMs: 150, skewMs: 10_000 });
    const lock = (await locks.acquire(LOCK))!;
    failLockWrites = true;
    await waitUntil('the lease to run out', () => !lock.held);
    const err = (() => {
      try {
        lock.assertHeld();
        return undefined;
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(RegistryError);
    expect((err as RegistryError).code).toBe('UNAVAILABLE');
    await lock.release();
    // Past its lease another server may own the path by now: the old holder leaves it be.
    expect(await exists(driver, LOCK)).toBe(true);
  });
});

/**
 * Answers lost between a server and its store (found by a fault-injecting proxy in front of
 * radosgw; end to end in test/http/s3-upload-lock-lost-answers.test.ts): a create the store
 * took but whose answer never came, a delete the store did not take.
 */
describe('a lock whose create or delete lost its answer', () => {
  /** A store whose lock creates and deletes fail as `faults` says. */
  function store(faults: { create?: 'taken-then-412' | 'taken-then-throw'; del?: boolean }): FaultyDriver {
    const driver = new FaultyDriver();
    const put = driver.putContent.bind(driver);
    driver.putContent = async (path: string, content: Uint8Array, opts?: PutOptions) => {
      const fault = path === LOCK && opts?.ifNotExists ? faults.create : undefined;
      const created = await put(path, content, opts);
      // The SDK retries a create whose answer was lost, and its retry finds the object there.
      if (fault === 'taken-then-412') return false;
      if (fault === 'taken-then-throw') throw new Error('injected: the answer to the lock create was lost on every try');
      return created;
    };
    const del = driver.delete.bind(driver);
    driver.delete = async (path: string) => {
      if (faults.del && path === LOCK) throw new Error('injected: 503 SlowDown');
      return del(path);
    };
    return driver;
  }

  it('is held by the request whose create the store took, though its retry was told the lock exists', async () => {
    const driver = store({ create: 'taken-then-412' });
    const lock = await new UploadLocks(driver).acquire(LOCK);
    expect(lock?.held).toBe(true);
    // Still one holder at a time: another request finds it held.
    expect(await new UploadLocks(driver).acquire(LOCK)).toBeUndefined();
    await lock!.release();
    expect(await exists(driver, LOCK)).toBe(false);
  });

  it('whose create failed with its outcome unknown is taken over by the same server at once, and by no other', async () => {
    const faults: Parameters<typeof store>[0] = { create: 'taken-then-throw' };
    const driver = store(faults);
    const locks = new UploadLocks(driver);
    await expect(locks.acquire(LOCK)).rejects.toThrow(/lost/);
    expect(await exists(driver, LOCK), 'the store took the create').toBe(true);
    faults.create = undefined;
    expect(await new UploadLocks(driver).acquire(LOCK), 'another server').toBeUndefined();
    const lock = await locks.acquire(LOCK);
    expect(lock?.held).toBe(true);
    expect(locks.leftBehind).toBe(0);
    await lock!.release();
  });

  it('whose release could not delete it: release still resolves, the same server takes it at once, another does not', async () => {
    const faults: Parameters<typeof store>[0] = { del: true };
    const driver = store(faults);
    const failures: string[] = [];
    const locks = new UploadLocks(driver, { onReleaseFailed: (path) => failures.push(path) });
    const first = (await locks.acquire(LOCK))!;
    await first.release();
    expect(failures).toEqual([LOCK]);
    expect(await exists(driver, LOCK)).toBe(true);
    expect(locks.leftBehind).toBe(1);
    // The store takes deletes again; before the first background delete (1 s) ...
    faults.del = false;
    // ... another instance, which cannot tell a finished holder from a live one, finds it held;
    expect(await new UploadLocks(driver).acquire(LOCK)).toBeUndefined();
    // the server that left it takes it over.
    const second = await locks.acquire(LOCK);
    expect(second?.held).toBe(true);
    expect(locks.leftBehind).toBe(0);
    await second!.release();
    expect(await exists(driver, LOCK)).toBe(false);
  });

  it('whose release could not delete it is deleted in the background once the store takes deletes again, so that another server gets it', async () => {
    const faults: Parameters<typeof store>[0] = { del: true };
    const driver = store(faults);
    const locks = new UploadLocks(driver);
    await (await locks.acquire(LOCK))!.release();
    faults.del = false;
    await waitUntil('the background delete', async () => !(await exists(driver, LOCK)), 5_000);
    expect(locks.leftBehind).toBe(0);
    const other = await new UploadLocks(driver).acquire(LOCK);
    expect(other?.held).toBe(true);
    await other!.release();
  });

  it('is deleted in the background only while it carries our token: another request\'s lock in its place stays', async () => {
    const faults: Parameters<typeof store>[0] = { del: true };
    const driver = store(faults);
    const locks = new UploadLocks(driver);
    await (await locks.acquire(LOCK))!.release();
    // The store took the delete after all (its answer was lost), and another server's request took the upload.
    faults.del = false;
    await driver.delete(LOCK);
    const other = (await new UploadLocks(driver).acquire(LOCK))!;
    await waitUntil('the background delete to give up', () => locks.leftBehind === 0, 5_000);
    expect(other.held).toBe(true);
    expect(await exists(driver, LOCK), 'the other request\'s lock').toBe(true);
    expect(await new UploadLocks(driver).acquire(LOCK)).toBeUndefined();
    await other.release();
  });
});
