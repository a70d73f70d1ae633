/**
 * Found by probing: every client that asked for a blob on fs storage and then stopped reading
 * cost the server about 2 MiB, with no bound over all of them: the chunk waiting at its socket
 * and the one its reader had read ahead, each a 1 MiB read buffer. ReadBuffers bounded only
 * the free buffers kept for reuse, and took new ones without limit, so 500 such connections
 * took the server from ~100 MiB to 1.1 GB (both front ends), and a push meanwhile took 9.7 s.
 *
 * The buffers in use are now bounded (64 MiB); a read that finds none free reads 64 KiB into a
 * private buffer instead, so the others neither wait for the stalled ones nor stop. This opens
 * many GETs of a 16 MiB blob that never read, and checks the gauge of buffers in use, the
 * server's RSS (loosely), that a pull and a push meanwhile complete byte for byte, and that
 * once the stalled clients leave, no buffer is counted in use.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectBlob } from '../helpers/http.js';
import { metricsUrlOf, scrape } from '../helpers/metrics.js';
import { pushBlob, randomBlob } from '../helpers/oci.js';
import { startServer, type TestServer } from '../helpers/server.js';

const MiB = 1024 * 1024;
const BOUND_BYTES = 64 * MiB;
const STALLED = 200;
const GAUGE = 'hoist_read_buffers_in_use_bytes';

/** Sends a blob GET, waits for the answer's first bytes, then reads nothing more. */
function stalledGet(port: number, path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.write(`GET ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n`));
    socket.once('data', (first: Buffer) => {
      socket.pause();
      if (!first.toString('latin1').startsWith('HTTP/1.1 200')) reject(new Error(`not a 200: ${first.subarray(0, 200).toString()}`));
      else resolve(socket);
    });
    socket.on('error', reject);
  });
}

function rssBytes(pid: number): number {
  const kb = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
  return Number(kb) * 1024;
}

async function gauge(server: TestServer): Promise<number | undefined> {
  return (await scrape(metricsUrlOf(server))).value(GAUGE);
}

describe.each(['node', 'uws'] as const)('clients that stop reading blobs hold bounded read buffers (%s front end)', (frontend) => {
  let server: TestServer;
  let root: string;
  const blob = randomBlob(16 * MiB);
  let digest: string;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'hoist-stalled-pulls-'));
    server = await startServer({ frontend, storage: `fs:${root}`, env: { HOIST_METRICS_LISTEN: '127.0.0.1:0', HOIST_LIMITS_IDLE_TIMEOUT: '120s' } });
    digest = (await pushBlob(server.url, 'stalled/app', blob)).digest;
    await expectBlob(server.url, 'stalled/app', blob);
  });

  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
    if (root) await rm(root, { recursive: true, force: true });
  });

  it(`${STALLED} stalled GETs of a 16 MiB blob stay within the bound; a pull and a push meanwhile complete`, async () => {
    const rssBefore = rssBytes(server.pid);
    const sockets: net.Socket[] = [];
    try {
      for (let i = 0; i < STALLED; i++) sockets.push(await stalledGet(server.port, `/v2/stalled/app/blobs/${digest}`));
      // Their readers have read ahead by now (a read from the page cache takes well under a millisecond).
      await new Promise((r) => setTimeout(r, 500));
      // Unbounded, that was 2 MiB a stalled client (400 MiB); bounded, 64 MiB and 128 KiB a
      // client past it (measured: 145 MiB on node, 190 on uws, with what the connections cost).
      expect.soft(rssBytes(server.pid) - rssBefore).toBeLessThan(280 * MiB);
      // The shared buffers are all in use, by the first 32 stalled readers, and no more than that.
      expect(await gauge(server)).toBe(BOUND_BYTES);

      await expectBlob(server.url, 'stalled/app', blob);
      const pushed = randomBlob(8 * MiB + 5);
      await pushBlob(server.url, 'stalled/other', pushed);
      await expectBlob(server.url, 'stalled/other', pushed);
      expect(await gauge(server)).toBeLessThanOrEqual(BOUND_BYTES);
    } finally {
      for (const s of sockets) s.destroy();
    }
    // Readers let go of their buffers when their clients leave: none is counted in use.
    await expect.poll(() => gauge(server), { timeout: 10_000, interval: 100 }).toBe(0);
  }, 60_000);
});
