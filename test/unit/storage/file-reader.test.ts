import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FALLBACK_READ_BYTES, FileReader, ReadBufferShare, ReadBuffers, recyclerOf } from '../../../src/storage/file-reader.js';

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

  it('keeps at most its bound of buffers in use, and reads on in private buffers past it', async () => {
    const buffers = new ReadBuffers(4096, 4, 2 * 4096);
    const share = new ReadBufferShare(buffers, 2, FALLBACK_READ_BYTES);
    const held = [share.take(), share.take()];
    expect(buffers.inUseBytes).toBe(2 * 4096);
    // Another reader of the same file finds none free: it still reads every byte.
    expect((await readAll(0, Infinity, buffers, true)).bytes.equals(data)).toBe(true);
    expect(buffers.inUseBytes).toBe(2 * 4096);
    buffers.give(held[0]!);
    expect(buffers.inUseBytes).toBe(4096);
    share.close();
    expect(buffers.inUseBytes).toBe(0);
  });

  it('charges a share for its last buffers only, and not for memory another share took after it came back', () => {
    const buffers = new ReadBuffers(1024, 4, 8 * 1024);
    const a = new ReadBufferShare(buffers, 2, 512);
    // A consumer that keeps every chunk: the share lets go of all but the last two.
    for (let i = 0; i < 5; i++) a.take();
    expect(buffers.inUseBytes).toBe(2 * 1024);
    a.close();
    const kept = a.take();
    buffers.give(kept);
    const b = new ReadBufferShare(buffers, 2, 512);
    expect(b.take().buffer).toBe(kept.buffer);
    a.close();
    expect(buffers.inUseBytes).toBe(1024);
    b.close();
    expect(buffers.inUseBytes).toBe(0);
  });
});
