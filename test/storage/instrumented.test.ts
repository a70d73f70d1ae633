import diagnostics from 'node:diagnostics_channel';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { StorageRequestMessage } from '../../src/diagnostics.js';
import { PathNotFoundError, type StorageDriver } from '../../src/storage/driver.js';
import { InstrumentedDriver } from '../../src/storage/instrumented.js';
import { MemoryDriver } from '../../src/storage/memory.js';
import { driverSuite } from './driver-suite.js';

// The wrapper must not change what a driver does, whoever listens.
driverSuite('instrumented (memory underneath)', async () => new InstrumentedDriver(new MemoryDriver()));

describe('InstrumentedDriver', () => {
  let seen: StorageRequestMessage[];
  const listener = (m: unknown): void => void seen.push(m as StorageRequestMessage);
  beforeEach(() => {
    seen = [];
    diagnostics.subscribe('hoist:storage:request', listener);
  });
  afterEach(() => {
    diagnostics.unsubscribe('hoist:storage:request', listener);
  });
  const ops = (): string[] => seen.map((m) => `${m.op}:${m.outcome}`);

  it('reports each call with its operation, outcome and duration', async () => {
    const d = new InstrumentedDriver(new MemoryDriver());
    await d.putContent('/a/b', Buffer.from('x'));
    await d.getContent('/a/b');
    await expect(d.getContent('/a/missing')).rejects.toBeInstanceOf(PathNotFoundError);
    await expect(d.getContent('/../escape')).rejects.toThrow(/invalid path/);
    await d.stat('/a/b');
    await d.list('/a');
    await d.move('/a/b', '/a/c');
    (await d.reader('/a/c')).destroy();
    await d.delete('/a/c');
    expect(ops()).toEqual([
      'putContent:ok', 'getContent:ok', 'getContent:not_found', 'getContent:error', 'stat:ok', 'list:ok', 'move:ok', 'reader:ok', 'delete:ok',
    ]);
    for (const m of seen) {
      expect(m.driver).toBe('memory');
      expect(m.ms).toBeGreaterThanOrEqual(0);
    }
  });

  it('reports the writers it opens: write, close, commit, cancel', async () => {
    const d = new InstrumentedDriver(new MemoryDriver());
    const w = await d.writer('/up/data', false);
    await w.write(Buffer.from('abc'));
    expect(w.size).toBe(3);
    await w.close();
    const again = await d.writer('/up/data', true);
    expect(again.size, 'appends where the last writer stopped').toBe(3);
    await again.write(Buffer.from('de'));
    await again.commit();
    expect((await d.getContent('/up/data')).toString()).toBe('abcde');
    const other = await d.writer('/up/other', false);
    await other.cancel();
    expect(ops()).toEqual(['writer:ok', 'write:ok', 'close:ok', 'writer:ok', 'write:ok', 'commit:ok', 'getContent:ok', 'writer:ok', 'cancel:ok']);
  });

  it('offers the optional methods exactly when the wrapped driver does', async () => {
    const plain = new InstrumentedDriver(new MemoryDriver());
    expect(plain.redirectURL).toBeUndefined();
    expect(plain.listIncompleteWrites).toBeUndefined();
    expect(plain.maxConcurrentWriters).toBeUndefined();
    const base = new MemoryDriver() as StorageDriver & { deleteObjects?: (paths: readonly string[]) => Promise<void> };
    const deleted: string[] = [];
    base.deleteObjects = async (paths) => void deleted.push(...paths);
    const wrapped = new InstrumentedDriver(base);
    await wrapped.deleteObjects!(['/x', '/y']);
    expect(deleted).toEqual(['/x', '/y']);
    expect(ops()).toEqual(['deleteObjects:ok']);
  });

  it('costs nothing to nobody: without subscribers nothing is published', async () => {
    diagnostics.unsubscribe('hoist:storage:request', listener);
    const d = new InstrumentedDriver(new MemoryDriver());
    await d.putContent('/a', Buffer.from('x'));
    expect(seen).toEqual([]);
    diagnostics.subscribe('hoist:storage:request', listener);
  });
});
