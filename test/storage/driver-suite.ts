import { createHash, randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { childKey, InvalidPathError, listPage, PathNotFoundError, type ListPage, type StorageDriver } from '../../src/storage/driver.js';

/**
 * The behaviour every StorageDriver must have (distribution
 * registry/storage/driver/testsuites/testsuites.go). Each test gets a fresh, empty driver from
 * `makeDriver`; `cleanup` then removes whatever it left (a temp dir, a bucket prefix).
 */
export function driverSuite(
  name: string,
  makeDriver: () => Promise<StorageDriver>,
  cleanup?: (driver: StorageDriver) => Promise<void>,
): void {
  describe(`storage driver suite: ${name}`, () => {
    let driver: StorageDriver;

    beforeEach(async () => {
      driver = await makeDriver();
    });

    afterEach(async () => {
      await driver.close();
      await cleanup?.(driver);
    });

    describe('putContent / getContent', () => {
      it('round-trips content of many sizes', async () => {
        for (const size of [0, 1, 4096, 100_000]) {
          const content = randomBytes(size);
          expect(await driver.putContent(`/put/size-${size}`, content)).toBe(true);
          expect(sha256(await driver.getContent(`/put/size-${size}`))).toBe(sha256(content));
        }
      });

      it('overwrites existing content', async () => {
        await driver.putContent('/a/b', randomBytes(5000));
        const second = randomBytes(10);
        expect(await driver.putContent('/a/b', second)).toBe(true);
        expect(await driver.getContent('/a/b')).toEqual(second);
      });

      it('keeps its own copy of the bytes', async () => {
        const content = Buffer.from('hello');
        await driver.putContent('/copy', content);
        content.fill(0);
        const read = await driver.getContent('/copy');
        read.fill(1);
        expect((await driver.getContent('/copy')).toString()).toBe('hello');
      });

      it('with ifNotExists writes only when the path is free', async () => {
        const first = randomBytes(100);
        expect(await driver.putContent('/once', first, { ifNotExists: true })).toBe(true);
        expect(await driver.putContent('/once', randomBytes(100), { ifNotExists: true })).toBe(false);
        expect(await driver.getContent('/once')).toEqual(first);
      });

      it('with ifNotExists lets exactly one of many racing writers win', async () => {
        const contents = Array.from({ length: 32 }, () => randomBytes(4096));
        const results = await Promise.all(contents.map((c) => driver.putContent('/race/link', c, { ifNotExists: true })));
        expect(results.filter(Boolean)).toHaveLength(1);
        const winner = contents[results.indexOf(true)]!;
        expect(sha256(await driver.getContent('/race/link'))).toBe(sha256(winner));
        expect(await driver.list('/race')).toEqual(['/race/link']);
      });

      it('keeps transient writes atomic: one of many racing creators wins, and every read sees whole content', async () => {
        const contents = Array.from({ length: 16 }, () => randomBytes(2048));
        const reads: Promise<Buffer | undefined>[] = [];
        const results = await Promise.all(contents.map((c) => {
          reads.push(driver.getContent('/transient/lock').catch(() => undefined));
          return driver.putContent('/transient/lock', c, { ifNotExists: true, transient: true });
        }));
        expect(results.filter(Boolean)).toHaveLength(1);
        const winner = contents[results.indexOf(true)]!;
        for (const r of await Promise.all(reads)) if (r) expect(sha256(r)).toBe(sha256(winner));
        const next = randomBytes(100);
        expect(await driver.putContent('/transient/lock', next, { transient: true })).toBe(true);
        expect(await driver.getContent('/transient/lock')).toEqual(next);
        expect(await driver.list('/transient')).toEqual(['/transient/lock']);
      });

      it('stores large content', async () => {
        const content = randomBytes(8 * 1024 * 1024 + 3);
        await driver.putContent('/large', content);
        expect(sha256(await driver.getContent('/large'))).toBe(sha256(content));
      });

      it('stores a Uint8Array view backed by a SharedArrayBuffer', async () => {
        const view = sharedView(randomBytes(1000), 7);
        await driver.putContent('/shared', view);
        expect(await driver.getContent('/shared')).toEqual(Buffer.from(view));
      });
    });

    describe('reader', () => {
      it('reads from offsets, with and without a length', async () => {
        const content = randomBytes(100_000);
        await driver.putContent('/r/blob', content);
        for (const offset of [0, 1, 4095, 4096, 65_536, 99_999, 100_000, 150_000]) {
          for (const length of [undefined, 0, 1, 1000, 200_000]) {
            const got = await readAll(await driver.reader('/r/blob', offset, length));
            const want = content.subarray(offset, length === undefined ? undefined : offset + length);
            expect(got.length, `offset ${offset}, length ${length}`).toBe(want.length);
            expect(sha256(got), `offset ${offset}, length ${length}`).toBe(sha256(want));
          }
        }
      });

      it('reads everything by default', async () => {
        const content = randomBytes(3 * 1024 * 1024);
        await driver.putContent('/r/big', content);
        expect(sha256(await readAll(await driver.reader('/r/big')))).toBe(sha256(content));
      });

      it('yields an empty stream for an empty object', async () => {
        await driver.putContent('/r/empty', new Uint8Array(0));
        expect(await readAll(await driver.reader('/r/empty'))).toHaveLength(0);
      });
    });

    describe('writer', () => {
      it('writes chunks, counts size, and commits', async () => {
        const chunks = [randomBytes(1), randomBytes(64 * 1024), randomBytes(0), randomBytes(1_000_003)];
        const w = await driver.writer('/uploads/u1/data', false);
        expect(w.size).toBe(0);
        let size = 0;
        for (const chunk of chunks) {
          await w.write(chunk);
          size += chunk.length;
          expect(w.size).toBe(size);
        }
        await w.commit();
        expect(sha256(await driver.getContent('/uploads/u1/data'))).toBe(sha256(Buffer.concat(chunks)));
        expect((await driver.stat('/uploads/u1/data')).size).toBe(size);
      });

      it('resumes across writer instances with append', async () => {
        const parts = [randomBytes(300_000), randomBytes(5), randomBytes(1_234_567)];
        let expectedSize = 0;
        for (const [i, part] of parts.entries()) {
          const w = await driver.writer('/uploads/u2/data', i > 0);
          expect(w.size).toBe(expectedSize);
          await w.write(part);
          expectedSize += part.length;
          await (i === parts.length - 1 ? w.commit() : w.close());
        }
        const all = Buffer.concat(parts);
        expect(sha256(await driver.getContent('/uploads/u2/data'))).toBe(sha256(all));
        expect(sha256(await readAll(await driver.reader('/uploads/u2/data', 300_000)))).toBe(sha256(all.subarray(300_000)));
      });

      it('truncates existing content without append', async () => {
        await driver.putContent('/w/t', randomBytes(10_000));
        const w = await driver.writer('/w/t', false);
        expect(w.size).toBe(0);
        await w.write(Buffer.from('short'));
        await w.commit();
        expect((await driver.getContent('/w/t')).toString()).toBe('short');
      });

      it('writes large content', async () => {
        const chunk = randomBytes(1024 * 1024);
        const hash = createHash('sha256');
        const w = await driver.writer('/w/large', false);
        for (let i = 0; i < 12; i++) {
          await w.write(chunk);
          hash.update(chunk);
        }
        await w.commit();
        expect(w.size).toBe(12 * chunk.length);
        expect(sha256(await readAll(await driver.reader('/w/large')))).toBe(hash.digest('hex'));
      });

      it('writev() writes parts in order between write()s, views and empty parts included (a driver without it: write() per part, as the engine does)', async () => {
        const w = await driver.writer('/w/writev', false);
        // The engine's fallback (upload-write.ts) when a driver has no writev: one write() per part.
        const writev = w.writev ? w.writev.bind(w) : async (parts: readonly Uint8Array[]) => { for (const p of parts) await w.write(p); };
        // More parts than one pwritev takes (IOV_MAX is 1024 on Linux).
        const many = Array.from({ length: 1500 }, (_, i) => randomBytes(i % 7 === 0 ? 0 : 100 + (i % 50)));
        const first = randomBytes(3000);
        const views = [sharedView(randomBytes(70_000), 5), randomBytes(9000).subarray(10, 8000)];
        await w.write(first);
        await writev(many);
        await writev(views);
        const all = Buffer.concat([first, ...many, ...views]);
        expect(w.size).toBe(all.length);
        await w.commit();
        expect(sha256(await driver.getContent('/w/writev'))).toBe(sha256(all));
      });

      it('writes Uint8Array views backed by a SharedArrayBuffer or at an offset', async () => {
        const a = sharedView(randomBytes(100_000), 13);
        const b = randomBytes(5000).subarray(100, 4000);
        const c = sharedView(randomBytes(10), 0);
        const w = await driver.writer('/w/views', false);
        for (const view of [a, b, c]) await w.write(view);
        await w.commit();
        expect(sha256(await driver.getContent('/w/views'))).toBe(sha256(Buffer.concat([a, b, c])));
      });

      it('discards everything on cancel, including what earlier writers stored', async () => {
        const w1 = await driver.writer('/w/c/data', false);
        await w1.write(randomBytes(1000));
        await w1.close();
        const w2 = await driver.writer('/w/c/data', true);
        expect(w2.size).toBe(1000);
        await w2.write(randomBytes(1000));
        await w2.cancel();
        await expectNotFound(driver.stat('/w/c/data'), '/w/c/data');
        await expectNotFound(driver.getContent('/w/c/data'), '/w/c/data');
      });

      it('throws when used after close, commit or cancel', async () => {
        for (const finish of ['close', 'commit', 'cancel'] as const) {
          const w = await driver.writer(`/w/done-${finish}`, false);
          await w.write(Buffer.from('x'));
          await w[finish]();
          await expect(w.write(Buffer.from('y'))).rejects.toThrow(Error);
          await expect(w.close()).rejects.toThrow(Error);
          await expect(w.commit()).rejects.toThrow(Error);
          await expect(w.cancel()).rejects.toThrow(Error);
        }
        expect((await driver.getContent('/w/done-commit')).toString()).toBe('x');
      });

      it('runs concurrent writers on different paths', async () => {
        const paths = Array.from({ length: 8 }, (_, i) => `/concurrent/${i}/data`);
        const hashes = await Promise.all(paths.map(async (path) => {
          const hash = createHash('sha256');
          const w = await driver.writer(path, false);
          for (let i = 0; i < 16; i++) {
            const chunk = randomBytes(1 + Math.floor(Math.random() * 64 * 1024));
            hash.update(chunk);
            await w.write(chunk);
          }
          await w.commit();
          return hash.digest('hex');
        }));
        for (const [i, path] of paths.entries()) {
          expect(sha256(await driver.getContent(path))).toBe(hashes[i]);
        }
      });
    });

    describe('stat', () => {
      it('describes a file', async () => {
        const before = Date.now();
        await driver.putContent('/s/file', randomBytes(1234));
        const info = await driver.stat('/s/file');
        expect(info).toMatchObject({ path: '/s/file', size: 1234, isDir: false });
        expect(info.modTime).toBeInstanceOf(Date);
        // File systems round mtimes (to 2 s on some); allow for it.
        expect(info.modTime.getTime()).toBeGreaterThanOrEqual(before - 2000);
        expect(info.modTime.getTime()).toBeLessThanOrEqual(Date.now() + 2000);
      });

      it('describes directories', async () => {
        await driver.putContent('/s/dir/sub/file', randomBytes(10));
        for (const path of ['/s', '/s/dir', '/s/dir/sub', '/']) {
          expect(await driver.stat(path)).toMatchObject({ path, isDir: true });
        }
      });

      it('does not mistake a name prefix for a directory', async () => {
        await driver.putContent('/s/ab', randomBytes(10));
        await expectNotFound(driver.stat('/s/a'), '/s/a');
      });
    });

    describe('list', () => {
      it('lists direct children, sorted, as full paths', async () => {
        for (const name of ['z', 'm', 'a', 'B', '_x', '1', 'a.b', 'a-b']) await driver.putContent(`/l/${name}`, randomBytes(1));
        await driver.putContent('/l/nested/deep/file', randomBytes(1));
        await driver.putContent('/lx', randomBytes(1));
        const expected = ['z', 'm', 'a', 'B', '_x', '1', 'a.b', 'a-b', 'nested'].map((n) => `/l/${n}`).sort();
        expect(await driver.list('/l')).toEqual(expected);
        expect(await driver.list('/l/nested')).toEqual(['/l/nested/deep']);
        expect(await driver.list('/l/nested/deep')).toEqual(['/l/nested/deep/file']);
        expect(await driver.list('/')).toEqual(['/l', '/lx']);
      });

      it('lists an empty root as empty', async () => {
        expect(await driver.list('/')).toEqual([]);
      });

      it('throws PathNotFoundError for a file or a missing directory', async () => {
        await driver.putContent('/l/file', randomBytes(1));
        await expectNotFound(driver.list('/l/file'), '/l/file');
        await expectNotFound(driver.list('/l/missing'), '/l/missing');
        await expectNotFound(driver.list('/l/fi'), '/l/fi');
      });
    });

    describe('listPage', () => {
      // Objects 0, B, _x, a-b, a.c, b and directories a/ and c/: in key order a directory
      // sorts as its name plus '/', after a-b and a.c.
      const KEYS = ['0', 'B', '_x', 'a-b', 'a.c', 'a/', 'b', 'c/'];
      async function fill(): Promise<void> {
        for (const key of KEYS) {
          await driver.putContent(key.endsWith('/') ? `/p/${key}inner/file` : `/p/${key}`, randomBytes(key.length + 1));
        }
        await driver.putContent('/px', randomBytes(1));
      }
      const keysOf = (page: ListPage): string[] => page.children.map(childKey);

      it('is implemented (the listPage() fallback for drivers without it reads the whole directory)', () => {
        expect(typeof driver.listPage).toBe('function');
      });

      it('lists direct children in key order, directories marked, as list() names them', async () => {
        await fill();
        const page = await driver.listPage!('/p');
        expect(keysOf(page)).toEqual(KEYS);
        expect(page.truncated).toBe(false);
        expect(page.children.map((c) => c.path).sort()).toEqual(await driver.list('/p'));
        expect(page.children.filter((c) => c.isDir).map((c) => c.path)).toEqual(['/p/a', '/p/c']);
        expect(keysOf(await driver.listPage!('/'))).toEqual(['p/', 'px']);
        expect(keysOf(await driver.listPage!('/p/c'))).toEqual(['inner/']);
      });

      it('pages with limit and startAfter, each page after the last key of the one before', async () => {
        await fill();
        const seen: string[] = [];
        let startAfter: string | undefined;
        for (let i = 0; ; i++) {
          const page = await driver.listPage!('/p', { limit: 3, ...(startAfter !== undefined ? { startAfter } : {}) });
          expect(page.children.length).toBeLessThanOrEqual(3);
          seen.push(...keysOf(page));
          if (!page.truncated) break;
          startAfter = childKey(page.children.at(-1)!);
          expect(i).toBeLessThan(5);
        }
        expect(seen).toEqual(KEYS);
        // A key need not exist; a directory's own name sorts before it.
        expect(keysOf(await driver.listPage!('/p', { startAfter: 'a' }))).toEqual(['a-b', 'a.c', 'a/', 'b', 'c/']);
        expect(keysOf(await driver.listPage!('/p', { startAfter: 'a/' }))).toEqual(['b', 'c/']);
        expect(keysOf(await driver.listPage!('/p', { startAfter: 'a.c', limit: 1 }))).toEqual(['a/']);
        expect(await driver.listPage!('/p', { startAfter: 'c/' })).toEqual({ children: [], truncated: false });
      });

      it('gives objects their size and modification time with details', async () => {
        await fill();
        const page = await driver.listPage!('/p', { details: true, startAfter: 'a-b', limit: 2 });
        expect(page.children.map((c) => c.path)).toEqual(['/p/a.c', '/p/a']);
        const [object, dir] = page.children;
        const info = await driver.stat('/p/a.c');
        expect(object).toMatchObject({ isDir: false, size: info.size });
        // S3 lists times to the second; stat may have the milliseconds.
        expect(Math.abs(object!.modTime!.getTime() - info.modTime.getTime())).toBeLessThan(1000);
        expect(dir).toMatchObject({ isDir: true });
        expect((await driver.listPage!('/p', { limit: 1 })).children[0]).not.toHaveProperty('modTime');
      });

      it('the listPage() fallback (list() and stat()) gives the same pages', async () => {
        await fill();
        const plain = { name: 'plain', list: (p: string) => driver.list(p), stat: (p: string) => driver.stat(p) } as unknown as StorageDriver;
        const strip = (page: ListPage) => ({ ...page, children: page.children.map(({ modTime: _, ...c }) => c) });
        for (const opts of [{ limit: 2 }, { startAfter: 'a', limit: 3, details: true }]) {
          expect(strip(await listPage(plain, '/p', opts))).toEqual(strip(await driver.listPage!('/p', opts)));
        }
        expect(await listPage(plain, '/missing')).toEqual({ children: [], truncated: false });
      });

      it('gives an empty page for a missing directory, a file, and rejects a bad limit', async () => {
        await fill();
        for (const path of ['/missing', '/p/b', '/p/a-']) expect(await driver.listPage!(path)).toEqual({ children: [], truncated: false });
        for (const limit of [0, -1, 1.5]) await expect(driver.listPage!('/p', { limit })).rejects.toBeInstanceOf(RangeError);
        await expect(driver.listPage!('/a/../b')).rejects.toBeInstanceOf(InvalidPathError);
      });
    });

    describe('move', () => {
      it('moves an object into new directories', async () => {
        const content = randomBytes(100_000);
        await driver.putContent('/m/src', content);
        await driver.move('/m/src', '/m/deep/new/dest');
        expect(sha256(await driver.getContent('/m/deep/new/dest'))).toBe(sha256(content));
        await expectNotFound(driver.getContent('/m/src'), '/m/src');
      });

      it('replaces an existing object', async () => {
        const content = randomBytes(10);
        await driver.putContent('/m/a', content);
        await driver.putContent('/m/b', randomBytes(1000));
        await driver.move('/m/a', '/m/b');
        expect(await driver.getContent('/m/b')).toEqual(content);
        expect(await driver.list('/m')).toEqual(['/m/b']);
      });

      it('throws PathNotFoundError for a missing source and creates nothing', async () => {
        await expectNotFound(driver.move('/m/missing', '/m2/dest'), '/m/missing');
        await expectNotFound(driver.stat('/m2'), '/m2');
      });
    });

    describe('delete', () => {
      it('deletes a file', async () => {
        await driver.putContent('/d/file', randomBytes(10));
        await driver.putContent('/d/other', randomBytes(10));
        await driver.delete('/d/file');
        await expectNotFound(driver.getContent('/d/file'), '/d/file');
        expect(await driver.list('/d')).toEqual(['/d/other']);
      });

      it('deletes a directory recursively, and nothing that merely shares its name prefix', async () => {
        for (const path of ['/d/x', '/d/y/z', '/d/y/w/v', '/d2/x', '/dx']) await driver.putContent(path, randomBytes(10));
        await driver.delete('/d');
        await expectNotFound(driver.stat('/d'), '/d');
        await expectNotFound(driver.getContent('/d/y/w/v'), '/d/y/w/v');
        expect(await driver.list('/')).toEqual(['/d2', '/dx']);
      });

      it('throws PathNotFoundError when nothing is there', async () => {
        await driver.putContent('/d/ab', randomBytes(10));
        await expectNotFound(driver.delete('/d/a'), '/d/a');
        await expectNotFound(driver.delete('/nothing'), '/nothing');
      });
    });

    describe('missing paths', () => {
      it('throw PathNotFoundError from every operation', async () => {
        await driver.putContent('/present/file', randomBytes(10));
        for (const path of ['/missing', '/present/missing', '/present/file/below']) {
          await expectNotFound(driver.getContent(path), path);
          await expectNotFound(driver.reader(path), path);
          await expectNotFound(driver.reader(path, 5, 5), path);
          await expectNotFound(driver.writer(path, true), path);
          await expectNotFound(driver.stat(path), path);
          await expectNotFound(driver.list(path), path);
          await expectNotFound(driver.move(path, '/elsewhere'), path);
          await expectNotFound(driver.delete(path), path);
        }
      });

      it('include directories read as objects', async () => {
        await driver.putContent('/dir/file', randomBytes(10));
        await expectNotFound(driver.getContent('/dir'), '/dir');
        await expectNotFound(driver.reader('/dir'), '/dir');
      });
    });

    describe('invalid paths', () => {
      const BAD_PATHS = [
        '', 'relative', 'a/b', '..', '/..', '/a/..', '/a/../b', '/a/./b', '/a//b', '/a/', '//', '/.hidden',
        '/a b', '/a\\b', '/a\0b', '/a:b', '/ä', `/${'x'.repeat(5000)}`,
      ];

      it('are rejected with InvalidPathError by every operation, which writes nothing', async () => {
        await driver.putContent('/good', randomBytes(10));
        for (const bad of BAD_PATHS) {
          const ops: Array<[string, () => Promise<unknown>]> = [
            ['getContent', () => driver.getContent(bad)],
            ['putContent', () => driver.putContent(bad, randomBytes(10))],
            ['putContent ifNotExists', () => driver.putContent(bad, randomBytes(10), { ifNotExists: true })],
            ['reader', () => driver.reader(bad)],
            ['writer', () => driver.writer(bad, false)],
            ['writer append', () => driver.writer(bad, true)],
            ['stat', () => driver.stat(bad)],
            ['list', () => driver.list(bad)],
            ['move from', () => driver.move(bad, '/moved')],
            ['move to', () => driver.move('/good', bad)],
            ['delete', () => driver.delete(bad)],
          ];
          for (const [op, call] of ops) {
            await expect(call(), `${op}(${JSON.stringify(bad).slice(0, 20)})`).rejects.toBeInstanceOf(InvalidPathError);
          }
        }
        expect(await driver.list('/')).toEqual(['/good']);
      });

      it('include the root used as an object', async () => {
        await driver.putContent('/good', randomBytes(10));
        const ops = [
          () => driver.getContent('/'),
          () => driver.putContent('/', randomBytes(10)),
          () => driver.reader('/'),
          () => driver.writer('/', false),
          () => driver.move('/', '/moved'),
          () => driver.move('/good', '/'),
          () => driver.delete('/'),
        ];
        for (const call of ops) await expect(call()).rejects.toBeInstanceOf(InvalidPathError);
        expect(await driver.list('/')).toEqual(['/good']);
      });
    });
  });
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** `bytes` copied into a SharedArrayBuffer at `byteOffset`, as worker threads hand them back. */
export function sharedView(bytes: Uint8Array, byteOffset: number): Uint8Array {
  const view = new Uint8Array(new SharedArrayBuffer(byteOffset + bytes.length + 5), byteOffset, bytes.length);
  view.set(bytes);
  return view;
}

export async function expectNotFound(promise: Promise<unknown>, path: string): Promise<void> {
  const err = await promise.then(
    () => new Error(`expected PathNotFoundError for ${path}, but it succeeded`),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PathNotFoundError);
  expect((err as PathNotFoundError).path).toBe(path);
}
