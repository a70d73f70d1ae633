import { describe, expect, it } from 'vitest';
import { InvalidPathError } from '../../../../src/storage/driver.js';
import { INTERNAL_SEGMENT, Layout } from '../../../../src/storage/s3/layout.js';

/**
 * The S3 driver's key layout (src/storage/s3/layout.ts): driver paths to bucket keys and back,
 * and the writers' own keys under `_s3/writers/`, which no driver path can name and which must
 * never be mistaken for another path's.
 */

describe.each(['', 'reg/one/'])('Layout with prefix %j', (prefix) => {
  const l = new Layout(prefix);

  it('maps object paths to keys and directory paths to key prefixes', () => {
    expect(l.key('/blobs/data/abc')).toBe(`${prefix}blobs/data/abc`);
    expect(l.dirPrefix('/')).toBe(prefix);
    expect(l.dirPrefix('/repositories/a')).toBe(`${prefix}repositories/a/`);
  });

  it('maps keys below the prefix back to paths, and nothing else', () => {
    expect(l.pathOf(`${prefix}blobs/data/abc`)).toBe('/blobs/data/abc');
    expect(l.pathOf(l.key('/a/b/c'))).toBe('/a/b/c');
    // The driver's own keys, keys no path names, keys outside the prefix.
    expect(l.pathOf(`${prefix}${INTERNAL_SEGMENT}/writers/blobs/data/abc.json`)).toBeUndefined();
    expect(l.pathOf(`${prefix}a//b`)).toBeUndefined();
    expect(l.pathOf(`${prefix}a/`)).toBeUndefined();
    expect(l.pathOf(`${prefix}a/../b`)).toBeUndefined();
    if (prefix) expect(l.pathOf('elsewhere/blobs/data/abc')).toBeUndefined();
  });

  it("refuses the driver's own area and the root as an object", () => {
    for (const path of [`/${INTERNAL_SEGMENT}`, `/${INTERNAL_SEGMENT}/writers/x.json`]) {
      expect(() => l.check(path)).toThrow(InvalidPathError);
      expect(() => l.checkObject(path)).toThrow(InvalidPathError);
    }
    expect(l.check('/')).toBe('/');
    expect(() => l.checkObject('/')).toThrow(InvalidPathError);
    // A segment that only starts like the area is an ordinary path.
    expect(l.checkObject(`/${INTERNAL_SEGMENT}x/y`)).toBe(`/${INTERNAL_SEGMENT}x/y`);
    for (const bad of ['', 'a', '/a/', '/a//b', '/a/../b', '/./a']) expect(() => l.check(bad)).toThrow(InvalidPathError);
  });

  it("puts a path's writer state and tails under the writers area, by generation", () => {
    const p = '/blobs/data/abc';
    expect(l.writersArea).toBe(`${prefix}_s3/writers/`);
    expect(l.writerState(p)).toBe(`${prefix}_s3/writers/blobs/data/abc.json`);
    expect(l.writerTailPrefix(p)).toBe(`${prefix}_s3/writers/blobs/data/abc.tail.`);
    expect(l.writerTail(p, 0)).toBe(`${prefix}_s3/writers/blobs/data/abc.tail.0`);
    expect(l.writerTail(p, 12)).toBe(`${prefix}_s3/writers/blobs/data/abc.tail.12`);
    expect(l.writerKeysPrefix(p)).toBe(`${prefix}_s3/writers/blobs/data/abc.`);
    expect(l.writersDirPrefix('/')).toBe(`${prefix}_s3/writers/`);
    expect(l.writersDirPrefix('/blobs/data')).toBe(`${prefix}_s3/writers/blobs/data/`);
    // Every key of a path lies under its directory's writers prefix and its own keys prefix.
    for (const key of [l.writerState(p), l.writerTail(p, 3)]) {
      expect(key.startsWith(l.writersDirPrefix('/blobs/data'))).toBe(true);
      expect(key.startsWith(l.writerKeysPrefix(p))).toBe(true);
      expect(l.isOwnWriterKey(p, key)).toBe(true);
    }
  });

  it("never takes another path's writer keys for a path's own, though they share its keys prefix", () => {
    const p = '/blobs/data/abc';
    // Siblings whose names extend p's: their keys start with writerKeysPrefix(p) too.
    for (const other of ['/blobs/data/abc.tail', '/blobs/data/abc.json', '/blobs/data/abc.tail.1', '/blobs/data/abc.x']) {
      for (const key of [l.writerState(other), l.writerTail(other, 0)]) {
        expect(key.startsWith(l.writerKeysPrefix(p)), key).toBe(true);
        expect(l.isOwnWriterKey(p, key), key).toBe(false);
      }
    }
    expect(l.isOwnWriterKey(p, `${l.writerTailPrefix(p)}`)).toBe(false);
    expect(l.isOwnWriterKey(p, `${l.writerTailPrefix(p)}1a`)).toBe(false);
    expect(l.isOwnWriterKey(p, `${l.writerTailPrefix(p)}-1`)).toBe(false);
    expect(l.isOwnWriterKey(p, l.key(p))).toBe(false);
  });

  it('finds the path of a writer state key, and of nothing else', () => {
    const p = '/blobs/data/abc';
    expect(l.pathOfWriterState(l.writerState(p))).toBe(p);
    // A path whose name itself ends in .json keeps it.
    expect(l.pathOfWriterState(l.writerState('/a/b.json'))).toBe('/a/b.json');
    expect(l.pathOfWriterState(l.writerTail(p, 2))).toBeUndefined();
    expect(l.pathOfWriterState(l.key('/blobs/data/abc.json'))).toBeUndefined();
    if (prefix) expect(l.pathOfWriterState(`_s3/writers/blobs/data/abc.json`)).toBeUndefined();
  });
});
