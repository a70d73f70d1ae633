import { describe, expect, it } from 'vitest';
import { paths } from '../../../src/registry/paths.js';
import { removeStale } from '../../../src/registry/takeover.js';
import { isPathNotFound, type StorageDriver } from '../../../src/storage/driver.js';
import { MemoryDriver } from '../../../src/storage/memory.js';

const PATH = '/blobs/sha256/ab/abcdef';

async function exists(driver: StorageDriver, path: string): Promise<boolean> {
  try {
    await driver.stat(path);
    return true;
  } catch (err) {
    if (isPathNotFound(err)) return false;
    throw err;
  }
}

async function markers(driver: StorageDriver): Promise<string[]> {
  return (await driver.list('/blobs/sha256/ab').catch(() => [])).filter((p) => p.includes('.takeover-'));
}

describe('removeStale', () => {
  it('removes the object when it still holds what the caller read, and leaves no marker', async () => {
    const driver = new MemoryDriver();
    const stale = Buffer.from('{"data":"/blobs/data/gone","size":3}');
    await driver.putContent(PATH, stale);
    expect(await removeStale(driver, PATH, stale)).toBe('removed');
    expect(await exists(driver, PATH)).toBe(false);
    expect(await markers(driver)).toEqual([]);
  });

  it('leaves an object that changed since it was read', async () => {
    const driver = new MemoryDriver();
    await driver.putContent(PATH, Buffer.from('new'));
    expect(await removeStale(driver, PATH, Buffer.from('old'))).toBe('changed');
    expect((await driver.getContent(PATH)).toString()).toBe('new');
    expect(await markers(driver)).toEqual([]);
  });

  it('lets one of many callers remove it, and none of them remove what replaced it', async () => {
    const driver = new MemoryDriver();
    for (let round = 0; round < 20; round++) {
      const stale = Buffer.from(`stale ${round}`);
      await driver.putContent(PATH, stale);
      const replacement = Buffer.from(`fresh ${round}`);
      // Each caller that sees it removed creates the replacement, as a lock taker or a push does.
      const results = await Promise.all(Array.from({ length: 8 }, async () => {
        const r = await removeStale(driver, PATH, stale);
        await driver.putContent(PATH, replacement, { ifNotExists: true });
        return r;
      }));
      expect(results.filter((r) => r === 'removed')).toHaveLength(1);
      expect((await driver.getContent(PATH)).toString()).toBe(`fresh ${round}`);
      // Late callers, who read the stale content long ago, leave the replacement alone.
      expect(await removeStale(driver, PATH, stale)).toBe('changed');
      expect((await driver.getContent(PATH)).toString()).toBe(`fresh ${round}`);
      expect(await markers(driver)).toEqual([]);
    }
  });

  it('answers busy while another server holds a fresh marker, and passes over one whose creator died', async () => {
    const driver = new MemoryDriver();
    const stale = Buffer.from('stale');
    await driver.putContent(PATH, stale);
    const { createHash } = await import('node:crypto');
    const h = createHash('sha256').update(stale).digest('hex').slice(0, 32);
    await driver.putContent(paths.takeoverMarker(PATH, h, 1), Buffer.from(JSON.stringify({ at: new Date().toISOString() })));
    expect(await removeStale(driver, PATH, stale)).toBe('busy');
    expect(await exists(driver, PATH)).toBe(true);
    // Its creator died ten minutes ago: the next marker is taken, and both go afterwards.
    await driver.putContent(paths.takeoverMarker(PATH, h, 1), Buffer.from(JSON.stringify({ at: new Date(Date.now() - 600_000).toISOString() })));
    expect(await removeStale(driver, PATH, stale)).toBe('removed');
    expect(await exists(driver, PATH)).toBe(false);
    expect(await markers(driver)).toEqual([]);
  });
});
