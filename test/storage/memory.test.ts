import { describe, expect, it } from 'vitest';
import { createDriver } from '../../src/storage/index.js';
import { MemoryDriver } from '../../src/storage/memory.js';
import { driverSuite } from './driver-suite.js';

driverSuite('memory', async () => new MemoryDriver());

describe('createDriver memory:', () => {
  it('opens a memory driver', async () => {
    const driver = await createDriver('memory:');
    expect(driver).toBeInstanceOf(MemoryDriver);
    expect(driver.name).toBe('memory');
  });

  it('rejects a path', async () => {
    await expect(createDriver('memory:/data')).rejects.toThrow(/memory: takes no path/);
  });

  it('keeps drivers apart', async () => {
    const [a, b] = [await createDriver('memory:'), await createDriver('memory:')];
    await a.putContent('/x', Buffer.from('a'));
    expect(await b.list('/')).toEqual([]);
  });
});
