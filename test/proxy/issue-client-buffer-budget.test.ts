import type http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBlobAnswer, startBlobUpstream, UpstreamBlobs, type BlobUpstream } from '../helpers/blob-upstream.js';
import { rawGet, tempDir, waitFor, waitForLog, type RawReply } from '../helpers/http.js';
import { metricsUrlOf, scrape } from '../helpers/metrics.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * A client receiving a blob while the cache fetches it may hold up to 8 MiB of it unread
 * before it continues from storage (blob-flight.ts READER_MAX_BUFFERED), and nothing bounded
 * that in total: 24 clients of one 24 MiB fetch that read nothing held 192 MiB of the
 * process (hoist_proxy_client_buffered_bytes), and more clients, more. Now the live bytes
 * clients hold unread are 128 MiB at most in the process: a client that would take more
 * stops getting live bytes and gets the rest from storage once the blob is stored, as one
 * that falls 8 MiB behind does. Every client still gets the whole blob, right.
 *
 * The upstream is a small HTTP server of the test's own: it sends the first 256 KiB, then the
 * rest only once every client has joined the fetch (a real registry sends at its own pace).
 */
const MiB = 1024 * 1024;
const BUDGET = 128 * MiB;
const CLIENTS = 24;

const blobs = new UpstreamBlobs();
const blob = blobs.newBlob(24 * MiB);
let release: () => void = () => undefined;
const released = new Promise<void>((resolve) => (release = resolve));

let upstream: BlobUpstream;
let mirror: TestServer;
let cleanup: () => Promise<void>;

beforeAll(async () => {
  upstream = await startBlobUpstream(blobs, (ask) => {
    if (!startBlobAnswer(ask)) return;
    ask.res.write(ask.bytes.subarray(0, 256 * 1024));
    void released.then(() => ask.res.end(ask.bytes.subarray(256 * 1024)));
  });
  let dir: string;
  ({ path: dir, cleanup } = await tempDir('hoist-client-buffers-'));
  mirror = await startServer({
    storage: `fs:${dir}`,
    frontend: 'node',
    env: { HOIST_PROXY_REMOTE_URL: upstream.url, HOIST_METRICS_LISTEN: '127.0.0.1:0', HOIST_LOG_LEVEL: 'debug' },
  });
});

afterAll(async () => {
  release();
  await mirror?.stop();
  upstream?.close();
  await cleanup?.();
});

describe('bytes that clients of upstream blob fetches hold unread', () => {
  it(`are ${BUDGET / MiB} MiB at most in the process: ${CLIENTS} clients that read nothing of a 24 MiB fetch; each then gets the whole blob`, async () => {
    const metricsUrl = metricsUrlOf(mirror);
    // Clients that read nothing until told to (their responses paused as their headers come).
    const responses: http.IncomingMessage[] = [];
    const replies: Array<Promise<RawReply>> = [];
    for (let i = 0; i < CLIENTS; i++) {
      let started: () => void = () => undefined;
      const headers = new Promise<void>((resolve) => (started = resolve));
      replies.push(rawGet(mirror.url, `/v2/img/blobs/${blob.digest}`, {}, (res) => {
        res.pause();
        responses.push(res);
        started();
      }));
      // Each joins the fetch live: it has its first bytes (its status line) before the next asks.
      await headers;
    }
    expect(responses.map((r) => r.statusCode)).toEqual(Array<number>(CLIENTS).fill(200));
    release();
    await waitForLog(mirror, 'the blob stored', (r) => r.msg === 'blob fetched from upstream and stored' && r.digest === blob.digest, 20_000);
    // What the clients' responses took from their bodies has settled (they read nothing more).
    let last = -1;
    const held = await waitFor('the clients\' unread bytes to settle', async () => {
      const now = (await scrape(metricsUrl)).value('hoist_proxy_client_buffered_bytes') ?? 0;
      const settled = now === last ? now : undefined;
      last = now;
      await new Promise((r) => setTimeout(r, 200));
      return settled;
    });
    console.log(`clients' unread live bytes: ${(held / MiB).toFixed(1)} MiB (${CLIENTS} clients)`);
    expect(held, 'live bytes clients hold unread').toBeGreaterThan(64 * MiB);
    expect(held, 'live bytes clients hold unread').toBeLessThanOrEqual(BUDGET);
    // Every client reads now, and gets the whole blob, right (live bytes, then storage's).
    for (const res of responses) res.resume();
    for (const reply of await Promise.all(replies)) {
      expect(reply.status).toBe(200);
      expect(reply.complete).toBe(true);
      expect(reply.body.equals(blob.bytes)).toBe(true);
    }
    expect((await scrape(metricsUrl)).value('hoist_proxy_client_buffered_bytes')).toBe(0);
  }, 60_000);
});
