import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBlobAnswer, startBlobUpstream, UpstreamBlobs, type BlobUpstream } from '../helpers/blob-upstream.js';
import { expectError, rawGet, request, tempDir, waitFor, waitForLog } from '../helpers/http.js';
import { metricsUrlOf, scrape } from '../helpers/metrics.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * Upstream blob fetches of a pull-through cache, bounded and given up on, found by probing:
 *
 * - pulls of many different digests at once started as many upstream fetches, each holding
 *   a connection, a storage writer and up to 1 MiB for late joiners: nothing bounded them.
 *   Now proxy.maxBlobFetches (HOIST_PROXY_MAX_BLOB_FETCHES) fetches at most, and a pull that
 *   needs one more gets 429 with Retry-After (hoist_limit_refusals_total{limit="blob_fetches"});
 * - a fetch whose upstream sent its headers and then nothing, its clients gone, was held for
 *   a minute (and by an upstream that kept the connection up, every pull of the blob joined
 *   it). Now it is given up on after 10 s with less than 32 KiB (here: 1000 bytes, then
 *   nothing), and its slot is free again (issue-trickling-upstream.test.ts: one that trickles);
 * - the first MiB of every fetch was kept for clients joining it late, however many fetches
 *   there were (and every namespace's cache had fetches of its own). Now 64 MiB at most in
 *   the process: a fetch finding them spent keeps none, and its late joiners wait for storage.
 *
 * The upstream is a small HTTP server of the test's own: a real one cannot be made to stall.
 */

/**
 * Blobs the upstream has: whole through `plain/*`; through `stall/*` 1000 bytes, through
 * `hold/*` 1 MiB (what a fetch keeps for late joiners at most), then nothing.
 */
const blobs = new UpstreamBlobs();
const newBlob = (size: number): { bytes: Buffer; digest: string } => blobs.newBlob(size);
/** The upstream's responses to stalled GETs, and whether the cache closed each. */
const stalled: Array<{ digest: string; closed: boolean }> = [];

let upstream: BlobUpstream;
let mirror: TestServer;
/** A cache with room for 80 fetches at once, and for the upload buffers of all of them. */
let roomy: TestServer;
let metricsUrl: string;
let cleanup: () => Promise<void>;

beforeAll(async () => {
  upstream = await startBlobUpstream(blobs, (ask) => {
    const { res, repo, digest, bytes } = ask;
    if (!startBlobAnswer(ask)) return;
    if (repo.startsWith('stall/') || repo.startsWith('hold/')) {
      const entry = { digest, closed: false };
      stalled.push(entry);
      res.write(bytes.subarray(0, repo.startsWith('hold/') ? 1024 * 1024 : 1000));
      res.on('close', () => (entry.closed = true));
    } else {
      res.end(bytes);
    }
  });
  let dir: string;
  ({ path: dir, cleanup } = await tempDir('hoist-fetch-limit-'));
  mirror = await startServer({
    storage: `fs:${dir}`,
    frontend: 'node',
    env: {
      HOIST_PROXY_REMOTE_URL: upstream.url,
      HOIST_PROXY_MAX_BLOB_FETCHES: '2',
      HOIST_METRICS_LISTEN: '127.0.0.1:0',
    },
  });
  metricsUrl = metricsUrlOf(mirror);
  roomy = await startServer({
    storage: `fs:${dir}/roomy`,
    frontend: 'node',
    env: {
      HOIST_PROXY_REMOTE_URL: upstream.url,
      HOIST_PROXY_MAX_BLOB_FETCHES: '80',
      // A slab each, so that every fetch takes its MiB at once rather than wait for a buffer.
      HOIST_UPLOADS_CHUNK_BYTES: '1MiB',
      HOIST_UPLOADS_MAX_BUFFERED_BYTES: '128MiB',
      // Its fetches get their MiB and then nothing: they must hold it until the 65th has
      // started. With the default window (10 s, from their first bytes) some were given up on
      // before that on a loaded machine (load average 13), and the 65th found budget.
      HOIST_TEST_PROXY_BLOB_WINDOW_MS: '20000',
      HOIST_LOG_LEVEL: 'debug',
    },
  });
});

afterAll(async () => {
  await mirror?.stop();
  await roomy?.stop();
  upstream?.close();
  await cleanup?.();
});

/** Starts a GET that stays open; resolves with its status once the headers are in, and a way to hang up. */
function openGet(path: string, server = mirror): Promise<{ status: number; hangUp: () => void }> {
  return new Promise((resolve, reject) => {
    void rawGet(server.url, path, {}, (res, req) => resolve({ status: res.statusCode ?? 0, hangUp: () => req.destroy() })).catch(reject);
  });
}

/** Starts a GET that stays open; resolves once its client got `bytes` of the body. */
function getUntil(server: TestServer, path: string, bytes: number): Promise<() => void> {
  return new Promise((resolve, reject) => {
    let got = 0;
    void rawGet(server.url, path, {}, (res, req) => {
      if (res.statusCode !== 200) reject(new Error(`${path}: HTTP ${res.statusCode}`));
      res.on('data', (c: Buffer) => {
        got += c.byteLength;
        if (got >= bytes) resolve(() => req.destroy());
      });
    }).catch(reject);
  });
}

describe('upstream blob fetches of a pull-through cache', () => {
  const a = newBlob(200_000);
  const b = newBlob(200_000);
  const c = newBlob(50_000);
  const hangUps: Array<() => void> = [];

  it('at proxy.maxBlobFetches, a pull needing another fetch gets 429 with Retry-After; one joining a fetch does not', async () => {
    for (const blob of [a, b]) {
      const open = await openGet(`/v2/stall/img/blobs/${blob.digest}`);
      expect(open.status).toBe(200);
      hangUps.push(open.hangUp);
    }
    expect(stalled.map((s) => s.digest)).toEqual([a.digest, b.digest]);
    const refused = await request(mirror.url, `/v2/plain/img/blobs/${c.digest}`);
    const [e] = expectError(refused, 429, 'TOOMANYREQUESTS');
    expect(refused.header('retry-after')).toBe('1');
    expect(e!.message).toBe('too many blobs being fetched from the upstream; retry');
    // A pull of a blob being fetched joins that fetch: no new fetch, no refusal.
    const joiner = await openGet(`/v2/stall/img/blobs/${a.digest}`);
    expect(joiner.status).toBe(200);
    hangUps.push(joiner.hangUp);
    expect(stalled).toHaveLength(2);
    const s = await scrape(metricsUrl);
    expect(s.value('hoist_limit_refusals_total', { limit: 'blob_fetches' })).toBe(1);
    expect(s.value('hoist_proxy_blob_fetches')).toBe(2);
  });

  it('a fetch whose upstream sends 1000 bytes and then nothing is given up on after 10 s, and its slot is free again', async () => {
    const since = Date.now();
    // Their clients go away; the fetches go on for the cache, until the upstream is given up on.
    for (const hangUp of hangUps) hangUp();
    await waitFor('the stalled upstream responses closed by the cache', () => (stalled.every((s) => s.closed) ? true : undefined), 14_000);
    expect(Date.now() - since).toBeGreaterThan(8_000);
    await waitFor('no fetch in flight', async () => ((await scrape(metricsUrl)).value('hoist_proxy_blob_fetches') === 0 ? true : undefined), 3_000);
    const got = await rawGet(mirror.url, `/v2/plain/img/blobs/${c.digest}`);
    expect(got.status).toBe(200);
    expect(got.body.equals(c.bytes)).toBe(true);
    await waitForLog(mirror, 'the fetch given up on', (r) => r.msg === 'blob fetch from upstream failed: nothing stored, clients cut off' && r.digest === a.digest, 5_000);
  }, 30_000);
});

describe('bytes kept for late joiners of upstream blob fetches', () => {
  it('are 64 MiB at most in all: a fetch past that keeps none, and its late joiners wait for storage; given back when fetches end', async () => {
    // 64 fetches, each holding its first MiB for late joiners (its client got all of it).
    const held = Array.from({ length: 64 }, () => newBlob(2 * 1024 * 1024));
    const hangUps = await Promise.all(held.map((b) => getUntil(roomy, `/v2/hold/img/blobs/${b.digest}`, 1024 * 1024)));
    // One of them: a joiner gets the kept bytes at once.
    const inBudget = await openGet(`/v2/hold/img/blobs/${held[0]!.digest}`, roomy);
    expect(inBudget.status).toBe(200);
    hangUps.push(inBudget.hangUp);
    // The 65th fetch finds the budget spent: its joiner gets no status line while the fetch
    // stalls (it waits for storage), then the fetch's 503 when the upstream is given up on.
    const over = newBlob(200_000);
    hangUps.push(await getUntil(roomy, `/v2/stall/img/blobs/${over.digest}`, 999));
    const joiner = openGet(`/v2/stall/img/blobs/${over.digest}`, roomy);
    const early = await Promise.race([joiner.then((j) => `answered ${j.status}`), new Promise((r) => setTimeout(() => r('waiting'), 2000))]);
    expect(early, 'a joiner past the budget waits for storage').toBe('waiting');
    await waitForLog(roomy, 'the budget spent', (r) => r.msg === 'replay budget spent: later joiners of this fetch read from storage' && r.digest === over.digest, 5_000);
    for (const hangUp of hangUps) hangUp();
    expect((await joiner).status).toBe(503);
    // Every fetch above was given up on, and gave its bytes back: a new fetch keeps some again.
    await waitFor('the stalled fetches given up on', () => (stalled.every((x) => x.closed) ? true : undefined), 25_000);
    const again = newBlob(200_000);
    const first = await getUntil(roomy, `/v2/stall/img/blobs/${again.digest}`, 999);
    const late = await openGet(`/v2/stall/img/blobs/${again.digest}`, roomy);
    expect(late.status).toBe(200);
    first();
    late.hangUp();
  }, 60_000);
});
