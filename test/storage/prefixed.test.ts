import { describe, expect, it } from 'vitest';
import { PathNotFoundError } from '../../src/storage/driver.js';
import { MemoryDriver } from '../../src/storage/memory.js';
import { PrefixedDriver } from '../../src/storage/prefixed.js';
import { driverSuite } from './driver-suite.js';

// A namespace's view of the store must behave like a driver of its own.
driverSuite('prefixed (memory underneath)', async () => new PrefixedDriver(new MemoryDriver(), '/namespaces/suite'));

describe('PrefixedDriver', () => {
  it('keeps everything under its prefix, and views of different prefixes apart', async () => {
    const base = new MemoryDriver();
    const a = new PrefixedDriver(base, '/namespaces/a');
    const b = new PrefixedDriver(base, '/namespaces/b');
    await a.putContent('/repositories/x/file', Buffer.from('a'));
    await base.putContent('/repositories/x/file', Buffer.from('default'));
    expect(await base.list('/namespaces/a/repositories/x')).toEqual(['/namespaces/a/repositories/x/file']);
    expect(await a.list('/repositories/x')).toEqual(['/repositories/x/file']);
    expect((await a.getContent('/repositories/x/file')).toString()).toBe('a');
    await expect(b.getContent('/repositories/x/file')).rejects.toBeInstanceOf(PathNotFoundError);
    expect(await b.list('/')).toEqual([]);
    expect((await a.stat('/repositories/x/file')).path).toBe('/repositories/x/file');
    await a.move('/repositories/x/file', '/repositories/y/file');
    expect(await base.list('/namespaces/a/repositories')).toEqual(['/namespaces/a/repositories/y']);
    await a.close();
    // The base driver is still open: close() belongs to its owner.
    expect((await base.getContent('/repositories/x/file')).toString()).toBe('default');
  });

  it('offers redirectURL only when the base driver does, with the prefixed path', async () => {
    const plain = new PrefixedDriver(new MemoryDriver(), '/ns');
    expect(plain.redirectURL).toBeUndefined();
    const base = Object.assign(new MemoryDriver(), { redirectURL: async (path: string, s: number) => `https://store.example${path}?ttl=${s}` });
    const withRedirect = new PrefixedDriver(base, '/ns');
    expect(await withRedirect.redirectURL!('/blobs/data/1', 60)).toBe('https://store.example/ns/blobs/data/1?ttl=60');
  });

  it('rejects a root or invalid prefix', () => {
    expect(() => new PrefixedDriver(new MemoryDriver(), '/')).toThrow();
    expect(() => new PrefixedDriver(new MemoryDriver(), 'relative')).toThrow();
    expect(() => new PrefixedDriver(new MemoryDriver(), '/a/../b')).toThrow();
  });
});
