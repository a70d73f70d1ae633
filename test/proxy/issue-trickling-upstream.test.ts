import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBlobAnswer, startBlobUpstream, UpstreamBlobs, type BlobUpstream } from '../helpers/blob-upstream.js';
import { rawGet, tempDir, waitFor, waitForLog } from '../helpers/http.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * An upstream that trickles a blob held its fetch for as long as it liked. A fetch was given
 * up on after 10 s without a byte; an upstream that sent one byte every 9 s never tripped
 * that, and kept the fetch, its clients, a storage writer and one of proxy.maxBlobFetches.
 * Now a fetch must get 32 KiB (or the rest of the blob) in every 10 s of waiting for the
 * upstream (blob-flight.ts MIN_PROGRESS_BYTES, PROGRESS_WINDOW_MS), and an honest slow link
 * is still served whole.
 *
 * The window is 1 s here (HOIST_TEST_PROXY_BLOB_WINDOW_MS), so the bytes wanted are 32 KiB a
 * second: the trickle sends a byte every 300 ms (under a tenth of the window between bytes,
 * as a byte every 9 s is of 10 s), the slow link 16 KiB every 100 ms (160 KiB/s: five times
 * the minimum, so a loaded machine's late timers do not make it look slow).
 */
const WINDOW_MS = 1000;
const blobs = new UpstreamBlobs();
/** The upstream's trickled responses, and whether (and when) the cache closed each. */
const trickled: Array<{ digest: string; startedMs: number; closedMs: number | undefined }> = [];

let upstream: BlobUpstream;
let mirror: TestServer;
let cleanup: () => Promise<void>;

beforeAll(async () => {
  upstream = await startBlobUpstream(blobs, (ask) => {
    const { res, repo, digest, bytes } = ask;
    if (!startBlobAnswer(ask)) return;
    const [every, step] = repo.startsWith('trickle/') ? [300, 1] : [100, 16 * 1024];
    const entry = { digest, startedMs: Date.now(), closedMs: undefined as number | undefined };
    if (repo.startsWith('trickle/')) trickled.push(entry);
    let at = 0;
    const send = (): void => {
      res.write(bytes.subarray(at, at + step));
      at += step;
      if (at >= bytes.byteLength) {
        clearInterval(timer);
        res.end();
      }
    };
    const timer = setInterval(send, every);
    send();
    res.on('close', () => {
      clearInterval(timer);
      entry.closedMs = Date.now();
    });
  });
  let dir: string;
  ({ path: dir, cleanup } = await tempDir('hoist-trickle-'));
  mirror = await startServer({
    storage: `fs:${dir}`,
    frontend: 'node',
    env: { HOIST_PROXY_REMOTE_URL: upstream.url, HOIST_TEST_PROXY_BLOB_WINDOW_MS: String(WINDOW_MS) },
  });
});

afterAll(async () => {
  await mirror?.stop();
  upstream?.close();
  await cleanup?.();
});

describe('an upstream blob body must progress', () => {
  it('an upstream trickling a byte every 300 ms (window 1 s) is given up on within two windows; its client is cut off', async () => {
    const blob = blobs.newBlob(100_000);
    // Resolves once the response ended, whole or cut.
    const reply = rawGet(mirror.url, `/v2/trickle/img/blobs/${blob.digest}`);
    const entry = await waitFor('the trickling upstream response closed by the cache', () => trickled.find((t) => t.digest === blob.digest && t.closedMs !== undefined), 5_000);
    const heldMs = entry.closedMs! - entry.startedMs;
    expect(heldMs).toBeGreaterThanOrEqual(WINDOW_MS * 0.9);
    expect(heldMs).toBeLessThan(WINDOW_MS * 3);
    const failed = await waitForLog(mirror, 'the fetch given up on', (r) => r.msg === 'blob fetch from upstream failed: nothing stored, clients cut off' && r.digest === blob.digest, 5_000);
    expect(JSON.stringify(failed.err)).toMatch(/upstream sent \d+ bytes in 1 s \(at least 32768 wanted\)/);
    const got = await reply;
    expect(got.status).toBe(200);
    expect(got.complete).toBe(false);
    expect(got.body.byteLength).toBeLessThan(blob.bytes.byteLength);
  }, 20_000);

  it('an honest slow link (160 KiB/s, several windows long) is served whole, and stored', async () => {
    const blob = blobs.newBlob(640 * 1024);
    const t0 = Date.now();
    const first = await rawGet(mirror.url, `/v2/slow/img/blobs/${blob.digest}`);
    expect(first.status).toBe(200);
    expect(first.body.equals(blob.bytes)).toBe(true);
    expect(Date.now() - t0).toBeGreaterThan(3 * WINDOW_MS);
    await waitForLog(mirror, 'the blob stored', (r) => r.msg === 'blob fetched from upstream and stored' && r.digest === blob.digest, 5_000);
  }, 20_000);
});
