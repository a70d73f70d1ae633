import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileReader, ReadBuffers, recyclerOf } from '../../../src/storage/file-reader.js';

describe('FileReader', () => {
  let dir: string;
  let file: string;
  const data = randomBytes(10 * 1024 + 7);

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hoist-reader-'));
    file = join(dir, 'blob');
    await writeFile(file, data);
  });

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function readAll(start: number, end: number, buffers: ReadBuffers, recycle: boolean): Promise<{ bytes: Buffer; chunks: Uint8Array[] }> {
    const reader = new FileReader(await open(file, 'r'), start, end, buffers);
    const recycler = recyclerOf(reader);
    const copies: Buffer[] = [];
    const chunks: Uint8Array[] = [];
    for await (const chunk of reader) {
      copies.push(Buffer.from(chunk as Buffer));
      chunks.push(chunk as Uint8Array);
      if (recycle) recycler!(chunk as Uint8Array);
    }
    return { bytes: Buffer.concat(copies), chunks };
  }

  it('streams a range, the whole file, and stops at an end past the file', async () => {
    const buffers = new ReadBuffers(4096, 4);
    expect((await readAll(100, 5000, buffers, false)).bytes.equals(data.subarray(100, 5000))).toBe(true);
    expect((await readAll(0, Infinity, buffers, false)).bytes.equals(data)).toBe(true);
    expect((await readAll(10_000, 20_000, buffers, false)).bytes.equals(data.subarray(10_000))).toBe(true);
  });

  it('reuses the buffers its consumer gives back, and only whole ones of its size', async () => {
    const buffers = new ReadBuffers(4096, 2);
    const { bytes, chunks } = await readAll(0, Infinity, buffers, true);
    expect(bytes.equals(data)).toBe(true);
    // Three chunks (4096, 4096, 2055): each read after the first two took a given-back buffer.
    expect(chunks.length).toBe(3);
    expect(new Set(chunks.map((c) => c.buffer)).size).toBeLessThan(3);
    expect(buffers.idle).toBe(2);
    buffers.give(new Uint8Array(4096).subarray(1)); // not from its start
    buffers.give(new Uint8Array(1000)); // not its size
    expect(buffers.idle).toBe(2);
    buffers.give(new Uint8Array(4096)); // beyond maxIdle: dropped
    expect(buffers.idle).toBe(2);
  });

  it('closes its file handle when destroyed before the end', async () => {
    const fh = await open(file, 'r');
    const reader = new FileReader(fh, 0, Infinity, new ReadBuffers(1024, 1));
    await new Promise<void>((resolve) => reader.once('data', () => resolve()));
    reader.destroy();
    await new Promise((resolve) => reader.once('close', resolve));
    expect(fh.fd).toBe(-1);
  });
});
