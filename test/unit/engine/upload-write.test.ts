import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { RegistryError } from '../../../src/errors.js';
import { HashPool } from '../../../src/engine/hash-pool.js';
import { SlabPool } from '../../../src/engine/slab-pool.js';
import { UploadWrite, type UploadWriteDeps } from '../../../src/engine/upload-write.js';
import type { FileWriter, StorageDriver } from '../../../src/storage/driver.js';
import { MemoryDriver } from '../../../src/storage/memory.js';
import { bodyOf, expectSameBytes, FaultyDriver, newStats, ODD_SIZES, sleep } from '../../helpers/uploads.js';

const KiB = 1024;
const SLAB = 64 * KiB;
const DATA_PATH = '/blobs/data/upload';

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

let pool: HashPool;
let keyCounter = 0;

beforeAll(() => {
  pool = new HashPool({ threads: 2, maxQueue: 1000 });
});

afterAll(async () => {
  await pool.close();
});

/** Pushes six slabs and a bit through `slabs`, checks what was stored, and says whether the push ever waited for a slab. */
async function pushWaitsForSlab(slabs: SlabPool): Promise<boolean> {
  const push = await harness({ slabs });
  const data = randomBytes(6 * SLAB + 7);
  let waited = false;
  await bodyOf(data, { sizes: ODD_SIZES, onWrite: () => (waited ||= slabs.waiting > 0) })(push.write);
  await push.write.flush();
  expectSameBytes(await stored(push.driver), data);
  return waited;
}

/**
 * The engine's rebuild, done plainly: read what storage holds [0, offset) and feed it to a
 * fresh state.
 * Counts its calls so tests can tell the slow path ran.
 */
function rebuilder(driver: StorageDriver, hashPool: HashPool, key: string) {
  const calls: number[] = [];
  const rebuild = async (offset: number): Promise<number> => {
    calls.push(offset);
    const parts: Buffer[] = [];
    if (offset > 0) for await (const c of await driver.reader(DATA_PATH, 0, offset)) parts.push(c as Buffer);
    const bytes = Buffer.concat(parts);
    const buffer = new ArrayBuffer(bytes.length);
    new Uint8Array(buffer).set(bytes);
    const r = await hashPool.update(key, undefined, { buffer, byteOffset: 0, length: bytes.length }, 0, true);
    if (!r.ok) throw new Error('rebuild failed');
    return r.threadId;
  };
  return { rebuild, calls };
}

interface Harness {
  driver: StorageDriver;
  writer: FileWriter;
  slabs: SlabPool;
  key: string;
  write: UploadWrite;
  rebuilds: number[];
}

async function harness(opts: {
  driver?: StorageDriver;
  slabs?: SlabPool;
  maxInflightSlabs?: number;
  maxBlobBytes?: number;
  append?: boolean;
  hashPool?: HashPool;
  pin?: number;
  key?: string;
} = {}): Promise<Harness> {
  const driver = opts.driver ?? new MemoryDriver();
  const writer = await driver.writer(DATA_PATH, opts.append ?? false);
  const slabs = opts.slabs ?? new SlabPool(SLAB, 16 * SLAB);
  const key = opts.key ?? `uw-${process.pid}-${keyCounter++}`;
  const hashPool = opts.hashPool ?? pool;
  const { rebuild, calls } = rebuilder(driver, hashPool, key);
  const deps: UploadWriteDeps = {
    writer,
    hashPool,
    slabs,
    maxInflightSlabs: opts.maxInflightSlabs ?? 2,
    maxBlobBytes: opts.maxBlobBytes ?? 0,
    hashKey: key,
    pin: opts.pin,
    rebuildHash: rebuild,
  };
  return { driver, writer, slabs, key, write: new UploadWrite(deps), rebuilds: calls };
}

async function stored(driver: StorageDriver): Promise<Buffer> {
  return driver.getContent(DATA_PATH);
}

async function runningDigest(h: Harness, hashPool = pool): Promise<string | undefined> {
  const r = await hashPool.digest(h.key, h.write.pin, h.write.offset, true);
  return r.ok ? r.hex : undefined;
}

describe('UploadWrite', () => {
  it('stores chunks of odd sizes in order, and hashes them in the pinned worker', async () => {
    const h = await harness();
    const data = randomBytes(777_777);
    const stats = newStats();
    await bodyOf(data, { sizes: ODD_SIZES, stats })(h.write);
    await h.write.flush();
    expect(stats.writes).toBeGreaterThan(ODD_SIZES.length);
    expect(h.write.offset).toBe(data.length);
    expect(h.writer.size).toBe(data.length);
    expectSameBytes(await stored(h.driver), data);
    expect(h.write.hashDirty).toBe(false);
    expect(h.write.pin).toBeTypeOf('number');
    expect(await runningDigest(h)).toBe(sha256(data));
    expect(h.rebuilds).toEqual([]);
    expect(h.slabs.inUse).toBe(0);
  });

  it.each([
    ['less than one slab', 1000],
    ['exactly one slab', SLAB],
    ['a slab and one byte', SLAB + 1],
    ['exactly three slabs', 3 * SLAB],
  ])('handles a body of %s', async (_label, size) => {
    const h = await harness();
    const data = randomBytes(size);
    await bodyOf(data, { sizes: [SLAB] })(h.write);
    await h.write.flush();
    expectSameBytes(await stored(h.driver), data);
    expect(await runningDigest(h)).toBe(sha256(data));
  });

  it('copies each chunk during write(): the caller may reuse its buffer at once', async () => {
    // bodyOf overwrites its one buffer after every write(); a sink keeping references would store 0xee.
    const h = await harness();
    const data = randomBytes(5 * SLAB + 17);
    await bodyOf(data, { sizes: [SLAB - 1, 2 * SLAB + 3, 100] })(h.write);
    await h.write.flush();
    expectSameBytes(await stored(h.driver), data);
  });

  it('keeps owned chunks as they are: one writev per batch, and their memory moves to the worker', async () => {
    const driver = new FaultyDriver();
    const h = await harness({ driver });
    const data = randomBytes(5 * SLAB + 1234);
    const chunks: Uint8Array[] = [];
    for (let pos = 0; pos < data.length; pos += 7000) {
      // What node:http hands over: a Buffer of its own for every chunk.
      const chunk = new Uint8Array(new ArrayBuffer(Math.min(7000, data.length - pos)));
      chunk.set(data.subarray(pos, pos + chunk.length));
      chunks.push(chunk);
      if (!h.write.write(chunk, true)) await h.write.drained();
    }
    await h.write.flush();
    expectSameBytes(await stored(h.driver), data);
    expect(await runningDigest(h)).toBe(sha256(data));
    // Moved, not copied: every chunk was detached here once hashed.
    expect(chunks.every((c) => c.buffer.byteLength === 0)).toBe(true);
    // A batch is at most a slab and goes to storage in one call.
    expect(driver.writes).toBeLessThanOrEqual(Math.ceil(data.length / (SLAB - 7000)));
    expect(Math.max(...driver.writeSizes)).toBeLessThanOrEqual(SLAB);
    expect(h.slabs.inUse).toBe(0);
  });

  // node:http gives each piece of a chunked body a Buffer of its own: a body of one-byte
  // chunks was kept as millions of parts (808 MiB for an 11 MiB body, a quadratic writev).
  it('copies small owned chunks: a body of one-byte Buffers is a few parts per batch', async () => {
    const driver = new FaultyDriver();
    const h = await harness({ driver });
    const data = randomBytes(3 * SLAB + 5);
    for (let pos = 0; pos < data.length; pos++) {
      const chunk = new Uint8Array(new ArrayBuffer(1));
      chunk[0] = data[pos]!;
      if (!h.write.write(chunk, true)) await h.write.drained();
    }
    await h.write.flush();
    expectSameBytes(await stored(h.driver), data);
    expect(await runningDigest(h)).toBe(sha256(data));
    expect(Math.max(...driver.writeParts)).toBeLessThanOrEqual(2);
    expect(h.slabs.inUse).toBe(0);
  });

  // A slab is a place in the one line all uploads wait in. Clients that sent a byte now and
  // then each took one for 500 ms per byte, and a push behind 200 of them waited ~12 s per batch.
  it('a few bytes wait outside the slab pool: clients that trickle hold no slab, and a push beside them never waits for one', async () => {
    const slabs = new SlabPool(SLAB, 2 * SLAB);
    const tricklers = await Promise.all([0, 1, 2, 3].map(() => harness({ slabs })));
    const bytes = tricklers.map(() => randomBytes(3));
    tricklers.forEach((t, i) => {
      expect(t.write.write(bytes[i]!.subarray(0, 1))).toBe(true);
      expect(t.write.write(new Uint8Array(bytes[i]!.subarray(1, 3)), true)).toBe(true);
    });
    expect(slabs.inUse).toBe(0);
    expect(slabs.waiting).toBe(0);
    expect(await pushWaitsForSlab(slabs)).toBe(false);
    // At their end the tricklers' bytes are stored and hashed like any others.
    for (const [i, t] of tricklers.entries()) {
      await t.write.flush();
      expectSameBytes(await stored(t.driver), bytes[i]!);
      expect(await runningDigest(t)).toBe(sha256(bytes[i]!));
    }
    expect(slabs.inUse).toBe(0);
  });

  // Found by probing: the stage served a request's first bytes only. Clients that sent 20 KB at
  // once and then a byte every few seconds took a slab for every byte, and 200 of them held a
  // 16 MiB push for 52 s.
  it('a client that slows to a trickle after its first batch stages its bytes again, holding no slab', async () => {
    const slabs = new SlabPool(SLAB, 4 * SLAB);
    const tricklers = await Promise.all([0, 1, 2, 3].map(() => harness({ slabs })));
    const first = tricklers.map(() => randomBytes(SLAB / 8));
    const later = tricklers.map(() => randomBytes(3));
    tricklers.forEach((t, i) => t.write.write(new Uint8Array(first[i]!), true));
    // Their first batches go out part-filled once MAX_FILL_MS (500 ms) passed.
    await sleep(700);
    expect(slabs.inUse).toBe(0);
    tricklers.forEach((t, i) => {
      expect(t.write.write(later[i]!.subarray(0, 1))).toBe(true);
      expect(t.write.write(new Uint8Array(later[i]!.subarray(1, 3)), true)).toBe(true);
    });
    expect(slabs.inUse).toBe(0);
    expect(await pushWaitsForSlab(slabs)).toBe(false);
    for (const [i, t] of tricklers.entries()) {
      await t.write.flush();
      const all = Buffer.concat([first[i]!, later[i]!]);
      expectSameBytes(await stored(t.driver), all);
      expect(await runningDigest(t)).toBe(sha256(all));
    }
    expect(slabs.inUse).toBe(0);
  });

  // Found by probing (fs): requests that sent 20 KB at once and then nothing, ~36 a second,
  // each held a slab for MAX_FILL_MS (500 ms); the pool's line grew and a 4 KiB push waited ~5 s.
  it('a batch that stopped filling gives its slab up at once when another upload waits for one, and keeps it when none does', async () => {
    const slabs = new SlabPool(SLAB, 2 * SLAB);
    const stalled = await Promise.all([0, 1].map(() => harness({ slabs })));
    const sent = stalled.map(() => randomBytes(SLAB / 8));
    stalled.forEach((s, i) => expect(s.write.write(new Uint8Array(sent[i]!), true)).toBe(true));
    expect(slabs.inUse).toBe(2);
    // Nobody waits: they keep their slabs (a body may yet fill them).
    await sleep(150);
    expect(slabs.inUse).toBe(2);
    expect(stalled.map((s) => s.write.stats.batches)).toEqual([0, 0]);

    const push = await harness({ slabs });
    const data = randomBytes(3 * SLAB + 7);
    const t0 = Date.now();
    await bodyOf(data, { sizes: ODD_SIZES })(push.write);
    await push.write.flush();
    // Within IDLE_MS to twice that, not MAX_FILL_MS (less the 150 ms already waited).
    expect(Date.now() - t0).toBeLessThan(250);
    expectSameBytes(await stored(push.driver), data);
    expect(await runningDigest(push)).toBe(sha256(data));
    // At least one gave its slab up to the push; the other may have kept its own, when the
    // push got through on one slab and nobody waited by the time it looked (a loaded machine).
    expect(stalled.reduce((n, s) => n + s.write.stats.batches, 0)).toBeGreaterThanOrEqual(1);
    for (const [i, s] of stalled.entries()) {
      await s.write.flush();
      expect(s.write.stats.batches).toBe(1);
      expectSameBytes(await stored(s.driver), sent[i]!);
      expect(await runningDigest(s)).toBe(sha256(sent[i]!));
    }
    expect(slabs.inUse).toBe(0);
  });

  it('a body still coming keeps filling its batch while others wait for a slab', async () => {
    const slabs = new SlabPool(SLAB, SLAB);
    const steady = await harness({ slabs });
    const data = randomBytes(SLAB);
    const piece = SLAB / 32;
    steady.write.write(new Uint8Array(data.subarray(0, piece)), true);
    const waiter = await harness({ slabs });
    const other = randomBytes(SLAB / 2);
    waiter.write.write(new Uint8Array(other), true);
    expect(slabs.waiting).toBe(1);
    // A chunk every 5 ms, well inside IDLE_MS: one full batch, however long the others wait.
    for (let pos = piece; pos < data.length; pos += piece) {
      await sleep(5);
      steady.write.write(new Uint8Array(data.subarray(pos, pos + piece)), true);
    }
    await steady.write.flush();
    expect(steady.write.stats.batches).toBe(1);
    expectSameBytes(await stored(steady.driver), data);
    await waiter.write.flush();
    expectSameBytes(await stored(waiter.driver), other);
    expect(slabs.inUse).toBe(0);
  });

  // Timers run before the event loop reads sockets: after the loop was busy for longer than
  // IDLE_MS, a look finds no new bytes although the socket holds them.
  it('a body whose bytes wait in its socket while the event loop is busy is not taken for stalled', async () => {
    const slabs = new SlabPool(SLAB, SLAB);
    const h = await harness({ slabs });
    const data = randomBytes(SLAB);
    const server = net.createServer((sock) => sock.on('data', (d: Buffer) => h.write.write(d)));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    try {
      await new Promise<void>((resolve) => client.once('connect', resolve));
      client.write(data.subarray(0, SLAB / 2));
      while (h.write.received < SLAB / 2) await sleep(1);
      // The batch's timer has looked once (bytes seen), and then another upload comes to wait.
      await sleep(30);
      const waiter = await harness({ slabs });
      const other = randomBytes(SLAB / 2);
      waiter.write.write(new Uint8Array(other), true);
      expect(slabs.waiting).toBe(1);
      client.write(data.subarray(SLAB / 2));
      const until = Date.now() + 80;
      while (Date.now() < until); // busy: the rest is in the socket, unread
      while (h.write.received < SLAB) await sleep(1);
      await h.write.flush();
      expect(h.write.stats.batches).toBe(1);
      expectSameBytes(await stored(h.driver), data);
      await waiter.write.flush();
      expectSameBytes(await stored(waiter.driver), other);
      expect(slabs.inUse).toBe(0);
    } finally {
      client.destroy();
      server.close();
    }
  });

  it('copies an owned chunk that is a view into a larger buffer, and leaves that buffer alone', async () => {
    const h = await harness();
    const big = randomBytes(3 * SLAB);
    const view = new Uint8Array(big.buffer, big.byteOffset + 10, 2 * SLAB);
    const expected = Buffer.from(view);
    h.write.write(view, true);
    await h.write.flush();
    expectSameBytes(await stored(h.driver), expected);
    expect(big.buffer.byteLength).toBeGreaterThan(0);
    expect(await runningDigest(h)).toBe(sha256(expected));
  });

  it('mixes owned and borrowed chunks in one body, and gets every slab back with its memory', async () => {
    const h = await harness();
    const data = randomBytes(6 * SLAB + 77);
    const scratch = new Uint8Array(SLAB);
    let i = 0;
    for (let pos = 0; pos < data.length; i++) {
      const n = Math.min(ODD_SIZES[i % ODD_SIZES.length]! + 1000, data.length - pos);
      let accepted: boolean;
      if (i % 2 === 0) {
        const chunk = new Uint8Array(n);
        chunk.set(data.subarray(pos, pos + n));
        accepted = h.write.write(chunk, true);
      } else {
        const chunk = scratch.subarray(0, Math.min(n, scratch.length));
        chunk.set(data.subarray(pos, pos + chunk.length));
        accepted = h.write.write(chunk);
        chunk.fill(0xee);
        pos += chunk.length - n;
      }
      pos += n;
      if (!accepted) await h.write.drained();
    }
    await h.write.flush();
    expectSameBytes(await stored(h.driver), data);
    expect(await runningDigest(h)).toBe(sha256(data));
    expect(h.slabs.inUse).toBe(0);
    // Slabs that carried copies went to the worker and came back usable; the others never
    // got memory (the pool's is lazy), and get it when first copied into.
    const slabs = Array.from({ length: h.slabs.maxSlabs }, () => h.slabs.tryAcquire()!);
    expect(slabs.some((s) => s.buffer.byteLength === SLAB)).toBe(true);
    for (const s of slabs) {
      expect([0, SLAB]).toContain(s.buffer.byteLength);
      expect(h.slabs.withMemory(s).length).toBe(SLAB);
      expect(s.buffer.byteLength).toBe(SLAB);
    }
  });

  it('writes nothing for an empty body', async () => {
    const driver = new FaultyDriver();
    const h = await harness({ driver });
    await bodyOf(new Uint8Array(0))(h.write);
    await h.write.flush();
    expect(h.write.offset).toBe(0);
    expect(driver.writes).toBe(0);
    expect(h.write.pin).toBeUndefined();
    expect(h.slabs.inUse).toBe(0);
  });

  it('pauses the source when its slabs are in flight, and resumes it when they drain', async () => {
    const slabs = new SlabPool(SLAB, 4 * SLAB);
    let maxInUse = 0;
    let maxBuffered = 0;
    const driver = new FaultyDriver({
      beforeWrite: async () => {
        maxInUse = Math.max(maxInUse, slabs.inUse);
        await sleep(2);
      },
    });
    const h = await harness({ driver, slabs, maxInflightSlabs: 2 });
    const data = randomBytes(24 * SLAB + 5);
    const stats = newStats();
    const chunk = 20 * KiB;
    await bodyOf(data, {
      sizes: [chunk],
      stats,
      onWrite: () => {
        maxInUse = Math.max(maxInUse, slabs.inUse);
        maxBuffered = Math.max(maxBuffered, h.write.offset - h.writer.size);
      },
    })(h.write);
    await h.write.flush();

    expect(stats.paused).toBeGreaterThan(0);
    // drained() was still pending a turn later: the socket really stayed paused for a while.
    expect(stats.waitedForDrain).toBeGreaterThan(0);
    // One filling slab plus maxInflightSlabs, never more; and within the pool's bound.
    expect(maxInUse).toBeLessThanOrEqual(3);
    expect(maxInUse).toBeLessThanOrEqual(slabs.maxSlabs);
    // Bytes held in memory: the slabs plus at most the one chunk that arrived after the pause.
    expect(maxBuffered).toBeLessThanOrEqual(3 * SLAB + chunk);
    expectSameBytes(await stored(h.driver), data);
    expect(await runningDigest(h)).toBe(sha256(data));
    expect(slabs.inUse).toBe(0);
  });

  it('shares a tiny slab pool between uploads without exceeding it', async () => {
    // Two slabs for two uploads that each may have two in flight: they must take turns.
    const slabs = new SlabPool(SLAB, 2 * SLAB);
    let maxInUse = 0;
    let sawWaiters = false;
    const sample = () => {
      maxInUse = Math.max(maxInUse, slabs.inUse);
      sawWaiters ||= slabs.waiting > 0;
    };
    const driver = new FaultyDriver({
      beforeWrite: async () => {
        sample();
        await sleep(1);
      },
    });
    const uploads = await Promise.all([0, 1].map(async (i) => {
      const h = await harness({ driver: new FaultyDriver(driver.opts), slabs, maxInflightSlabs: 2 });
      return { h, data: randomBytes(10 * SLAB + 1000 * i + 1) };
    }));
    await Promise.all(uploads.map(async ({ h, data }) => {
      await bodyOf(data, { sizes: ODD_SIZES, onWrite: sample })(h.write);
      await h.write.flush();
    }));
    expect(maxInUse).toBeLessThanOrEqual(2);
    expect(sawWaiters).toBe(true);
    for (const { h, data } of uploads) {
      expectSameBytes(await stored(h.driver), data);
      expect(await runningDigest(h)).toBe(sha256(data));
    }
    expect(slabs.inUse).toBe(0);
    expect(slabs.waiting).toBe(0);
  });

  it.each([
    ['whole', false],
    ['short', true],
  ])('after a failed (%s) storage write, keeps what is stored a prefix of what was sent', async (_label, partialFailure) => {
    const driver = new FaultyDriver({ failWriteAt: 3, partialFailure, beforeWrite: () => sleep(1) });
    const h = await harness({ driver });
    const data = randomBytes(10 * SLAB);
    const body = bodyOf(data, { sizes: [10_000] });
    await expect(body(h.write)).rejects.toThrow('injected failure of write #3');
    await expect(h.write.flush()).rejects.toThrow('injected failure of write #3');
    // Writes 1 and 2 landed (and half of 3 when the failure was short); nothing after.
    expect(driver.writes).toBe(3);
    const [w1, w2, w3] = driver.writeSizes;
    expect(w1! + w2!).toBeGreaterThan(SLAB);
    const expectedSize = w1! + w2! + (partialFailure ? Math.floor(w3! / 2) : 0);
    expect(h.writer.size).toBe(expectedSize);
    expectSameBytes(await stored(h.driver), data.subarray(0, expectedSize));
    // The running hash may include the failed slab: it must be rebuilt before use.
    expect(h.write.hashDirty).toBe(true);
    expect(h.write.write(new Uint8Array(1))).toBe(false);
    await expect(h.write.drained()).rejects.toThrow('injected failure');
    expect(h.slabs.inUse).toBe(0);
  });

  it('reports a storage failure of the last slab from flush()', async () => {
    const driver = new FaultyDriver({ failWriteAt: 2 });
    const h = await harness({ driver });
    const data = randomBytes(SLAB + 100);
    await bodyOf(data, { sizes: [SLAB + 100] })(h.write);
    await expect(h.write.flush()).rejects.toThrow('injected failure of write #2');
    expectSameBytes(await stored(h.driver), data.subarray(0, SLAB));
    expect(h.slabs.inUse).toBe(0);
  });

  it('refuses bytes beyond maxBlobBytes with SIZE_INVALID', async () => {
    const h = await harness({ maxBlobBytes: 2 * SLAB });
    const data = randomBytes(3 * SLAB);
    const err = await bodyOf(data, { sizes: [SLAB / 2] })(h.write).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RegistryError);
    expect((err as RegistryError).code).toBe('SIZE_INVALID');
    await expect(h.write.flush()).rejects.toBe(err);
    expect(h.writer.size).toBeLessThanOrEqual(2 * SLAB);
    expectSameBytes(await stored(h.driver), data.subarray(0, h.writer.size));
    expect(h.slabs.inUse).toBe(0);
  });

  it('accepts a body of exactly maxBlobBytes', async () => {
    const h = await harness({ maxBlobBytes: 2 * SLAB + 1 });
    const data = randomBytes(2 * SLAB + 1);
    await bodyOf(data, { sizes: ODD_SIZES })(h.write);
    await h.write.flush();
    expectSameBytes(await stored(h.driver), data);
  });

  it('stores everything that arrived, overflow included, when the client leaves while paused', async () => {
    const slabs = new SlabPool(SLAB, 2 * SLAB);
    const driver = new FaultyDriver({ beforeWrite: () => sleep(2) });
    const h = await harness({ driver, slabs, maxInflightSlabs: 1 });
    const data = randomBytes(5 * SLAB + 3);
    // One write far beyond the buffers, then the client is gone without waiting for drained().
    expect(h.write.write(data)).toBe(false);
    await h.write.flush();
    expect(h.write.offset).toBe(data.length);
    expectSameBytes(await stored(h.driver), data);
    expect(await runningDigest(h)).toBe(sha256(data));
    expect(slabs.inUse).toBe(0);
  });

  it('gives back every slab when uploads waiting for the pool finish early', async () => {
    const slabs = new SlabPool(SLAB, SLAB);
    const driver = new FaultyDriver({ beforeWrite: () => sleep(5) });
    const a = await harness({ driver, slabs });
    const b = await harness({ driver: new FaultyDriver(driver.opts), slabs });
    const da = randomBytes(3 * SLAB);
    const db = randomBytes(SLAB / 2);
    expect(a.write.write(da)).toBe(false);
    // The only slab is in flight for a: a waits in line for its next one, and b behind it.
    expect(b.write.write(db)).toBe(false);
    expect(slabs.waiting).toBe(2);
    await Promise.all([a.write.flush(), b.write.flush()]);
    expectSameBytes(await stored(a.driver), da);
    expectSameBytes(await stored(b.driver), db);
    expect(slabs.inUse).toBe(0);
    expect(slabs.waiting).toBe(0);
  });

  it('rebuilds a lost hash state from storage, once, and continues it', async () => {
    const driver = new MemoryDriver();
    const first = await harness({ driver });
    const data = randomBytes(5 * SLAB + 333);
    const cut = 2 * SLAB + 111;
    await bodyOf(data.subarray(0, cut), { sizes: ODD_SIZES })(first.write);
    await first.write.flush();
    await first.writer.close();

    // A restart: a new pool has no states; the pin names a thread that no longer exists.
    const restarted = new HashPool({ threads: 1, maxQueue: 100 });
    try {
      const second = await harness({ driver, append: true, hashPool: restarted, pin: first.write.pin, key: first.key });
      expect(second.write.offset).toBe(cut);
      await bodyOf(data.subarray(cut), { sizes: ODD_SIZES })(second.write);
      await second.write.flush();
      // The first batch was stored before its hash went out: the rebuild reads through it.
      expect(second.rebuilds).toEqual([cut + SLAB]);
      expect(second.write.hashDirty).toBe(false);
      expectSameBytes(await stored(driver), data);
      expect(await runningDigest(second, restarted)).toBe(sha256(data));
    } finally {
      await restarted.close();
    }
  });
});

describe('UploadWrite with a stale pin', () => {
  let driver: MemoryDriver;

  beforeEach(() => {
    driver = new MemoryDriver();
  });

  it('rebuilds when the pinned worker has the key at another offset', async () => {
    const data = randomBytes(3 * SLAB);
    const first = await harness({ driver });
    await bodyOf(data.subarray(0, SLAB), { sizes: [SLAB] })(first.write);
    await first.write.flush();
    // The state moves on without storage (as if a write had failed after hashing).
    const extra = { buffer: new SharedArrayBuffer(10), byteOffset: 0, length: 10 };
    expect(await pool.update(first.key, first.write.pin, extra, SLAB)).toMatchObject({ ok: true, offset: SLAB + 10 });
    await first.writer.close();

    const second = await harness({ driver, append: true, pin: first.write.pin, key: first.key });
    await bodyOf(data.subarray(SLAB), { sizes: [SLAB] })(second.write);
    await second.write.flush();
    expect(second.rebuilds).toEqual([2 * SLAB]);
    expect(await runningDigest(second)).toBe(sha256(data));
  });
});
