import { mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ReadinessCheck, type Readiness } from '../../src/health.js';
import { FsDriver } from '../../src/storage/fs.js';
import { StorageUnavailableError } from '../../src/storage/driver.js';
import { MemoryDriver } from '../../src/storage/memory.js';

/** A memory driver whose list() can be made to fail or hang, counting calls: the probe's only request. */
class ControlledDriver extends MemoryDriver {
  calls = 0;
  fail: Error | undefined;
  hang = false;
  #release: (() => void) | undefined;
  override async list(path: string): Promise<string[]> {
    this.calls++;
    if (this.hang) await new Promise<void>((resolve) => (this.#release = resolve));
    if (this.fail) throw this.fail;
    return super.list(path);
  }
  release(): void {
    this.#release?.();
  }
}

function codeError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

describe('ReadinessCheck', () => {
  it('is ready when storage answers, also an empty store', async () => {
    expect(await new ReadinessCheck(new MemoryDriver()).check()).toEqual({ ready: true });
  });

  it('is not ready when storage fails, giving the error code and never the message', async () => {
    const d = new ControlledDriver();
    d.fail = codeError('EACCES', "EACCES: permission denied, scandir '/var/lib/hoist/secret-path'");
    const changes: Array<[Readiness, unknown]> = [];
    const r = await new ReadinessCheck(d, { onChange: (now, err) => changes.push([now, err]) }).check();
    expect(r).toEqual({ ready: false, reason: 'storage (memory) failed: EACCES' });
    expect(JSON.stringify(r)).not.toContain('secret-path');
    expect(changes, 'the log hears of it once, with the whole error').toEqual([[r, d.fail]]);
  });

  it("gives the code of what a driver's domain error wraps, not the wrapper's class name", async () => {
    // The S3 driver wraps the SDK's error after its retries, and fs its EMFILE, in a
    // StorageUnavailableError: the reason was "storage (s3) failed: StorageUnavailableError".
    const d = new ControlledDriver();
    const check = new ReadinessCheck(d, { cacheMs: 0 });
    d.fail = new StorageUnavailableError('S3 ListObjectsV2 failed: connect ECONNREFUSED 10.0.0.1:443', { cause: codeError('ECONNREFUSED', 'connect ECONNREFUSED 10.0.0.1:443') });
    expect(await check.check()).toEqual({ ready: false, reason: 'storage (memory) failed: ECONNREFUSED' });
    const timeout = Object.assign(new Error('no progress for 3000 ms'), { name: 'TimeoutError' });
    d.fail = new StorageUnavailableError('S3 ListObjectsV2 failed: no progress', { cause: timeout });
    expect(await check.check(), 'no code anywhere: the innermost class name').toEqual({ ready: false, reason: 'storage (memory) failed: TimeoutError' });
    d.fail = new StorageUnavailableError('gave up');
    expect(await check.check(), 'nothing wrapped: the class name').toEqual({ ready: false, reason: 'storage (memory) failed: StorageUnavailableError' });
  });

  it('reuses a result for cacheMs and runs one check at a time, however many probes ask', async () => {
    const d = new ControlledDriver();
    const check = new ReadinessCheck(d, { cacheMs: 60_000 });
    d.hang = true;
    const asked = Array.from({ length: 20 }, () => check.check());
    // Each check() starts or joins the probe synchronously.
    expect(d.calls).toBe(1);
    d.release();
    expect(new Set((await Promise.all(asked)).map((r) => r.ready))).toEqual(new Set([true]));
    await check.check();
    expect(d.calls, 'cached').toBe(1);
  });

  it('says so when storage does not answer within timeoutMs, and recovers when it does', async () => {
    const d = new ControlledDriver();
    const changes: boolean[] = [];
    const check = new ReadinessCheck(d, { timeoutMs: 50, cacheMs: 0, onChange: (now) => changes.push(now.ready) });
    d.hang = true;
    expect(await check.check()).toEqual({ ready: false, reason: 'storage did not answer within 50 ms' });
    d.hang = false;
    d.release();
    await new Promise((r) => setTimeout(r, 10));
    expect(await check.check()).toEqual({ ready: true });
    d.fail = codeError('ECONNREFUSED', 'connect ECONNREFUSED 10.0.0.1:443');
    expect(await check.check()).toEqual({ ready: false, reason: 'storage (memory) failed: ECONNREFUSED' });
    d.fail = undefined;
    expect(await check.check()).toEqual({ ready: true });
    expect(changes).toEqual([false, true]);
  });

  it('is not ready once the server is shutting down', async () => {
    const check = new ReadinessCheck(new MemoryDriver());
    check.shuttingDown();
    expect(await check.check()).toEqual({ ready: false, reason: 'shutting down' });
  });

  /**
   * An fs store that answers ready, then `breakRoot(work, root)` done to its root directory,
   * then the reason the check gives.
   */
  async function afterBreakingRoot(breakRoot: (work: string, root: string) => Promise<void>): Promise<Readiness> {
    const work = await mkdtemp(join(tmpdir(), 'hoist-health-'));
    try {
      const root = join(work, 'data');
      const driver = await FsDriver.open({ rootDirectory: root });
      const check = new ReadinessCheck(driver, { cacheMs: 0 });
      expect(await check.check()).toEqual({ ready: true });
      await breakRoot(work, root);
      const result = await check.check();
      await driver.close();
      return result;
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }

  it('on fs: not ready when the root cannot be read (a symlink loop where the directory was)', async () => {
    expect(await afterBreakingRoot(async (work, root) => {
      await rename(root, join(work, 'moved'));
      await symlink(root, root);
    })).toEqual({ ready: false, reason: 'storage (fs) failed: ELOOP' });
  });

  // Found by probing (2026-12-02): every push failed with 500 while /readyz said ready, the
  // driver reading ENOTDIR as "nothing there", which an empty store may answer.
  it('on fs: not ready when a file stands where the root directory was', async () => {
    expect(await afterBreakingRoot(async (_work, root) => {
      await rm(root, { recursive: true, force: true });
      await writeFile(root, 'not a directory');
    })).toEqual({ ready: false, reason: 'storage (fs) failed: ENOTDIR' });
  });

  // Found by probing (2026-12-03): the root moved away (a volume unmounted), every push failed
  // with 500 and /readyz said ready, "not found" counting as an empty store.
  it('on fs: not ready when the root directory is gone', async () => {
    expect(await afterBreakingRoot(async (work, root) => {
      await rename(root, join(work, 'moved'));
    })).toEqual({ ready: false, reason: 'storage (fs) failed: ENOENT' });
  });
});
