import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBlobUpstream, UpstreamBlobs, type BlobUpstream } from '../helpers/blob-upstream.js';
import { rawGet, tempDir, type RawReply } from '../helpers/http.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * One blob fetch shared by pulls through several repositories, or by pulls that join it
 * late, found by probing (2026-12-04):
 *
 * - client X asked for blob D through slow404/r, whose upstream answers 404 after a while;
 *   client Y asked for D through plain/x, where the upstream has it, meanwhile: Y joined X's
 *   fetch and got X's 404 (or 403), an answer about another repository;
 * - a client that joined a fetch after its first MiB went by (it waits for storage), or
 *   through another repository, had its connection reset when the fetch failed before it
 *   got a byte; a client still waiting for its answer gets 503 (README), and one whose own
 *   repository has the blob gets the blob.
 *
 * The upstream is a small HTTP server of the test's own: a real one cannot be made to
 * answer slowly, or send wrong bytes, on cue.
 */

/** Blobs the upstream has: served through `plain/*` whole, through `slowbad/*` slowly with the last byte flipped. */
const blobs = new UpstreamBlobs();
const newBlob = (size: number): { bytes: Buffer; digest: string } => blobs.newBlob(size);
/** Resolvers called when the upstream gets a blob GET, by repository. */
const arrivals = new Map<string, () => void>();

/** Resolves once the upstream gets a GET of a blob through `repo`. */
function arrival(repo: string): Promise<void> {
  return new Promise((resolve) => arrivals.set(repo, resolve));
}

let upstream: BlobUpstream;
let mirror: TestServer;
let cleanup: () => Promise<void>;

beforeAll(async () => {
  upstream = await startBlobUpstream(blobs, ({ req, res, repo, bytes }) => {
    if (req.method === 'GET') arrivals.get(repo)?.();
    const slowError = /^slow(40[34])\//.exec(repo);
    if (slowError) {
      setTimeout(() => res.writeHead(Number(slowError[1]), { 'content-type': 'application/json' }).end('{"errors":[{"code":"DENIED"}]}'), 1000);
      return;
    }
    res.writeHead(200, { 'content-length': String(bytes.byteLength), 'content-type': 'application/octet-stream' });
    if (req.method === 'HEAD') {
      res.end();
    } else if (repo.startsWith('slowbad/')) {
      // 256 KiB every 40 ms, the last byte wrong: the fetch fails at its very end.
      const bad = Buffer.from(bytes);
      bad[bad.length - 1] = bad[bad.length - 1]! ^ 1;
      let at = 0;
      const t = setInterval(() => {
        res.write(bad.subarray(at, at + 256 * 1024));
        at += 256 * 1024;
        if (at >= bad.length) {
          clearInterval(t);
          res.end();
        }
      }, 40);
      res.on('close', () => clearInterval(t));
    } else {
      res.end(bytes);
    }
  });
  let dir: string;
  ({ path: dir, cleanup } = await tempDir('hoist-shared-fetch-'));
  mirror = await startServer({
    storage: `fs:${dir}`,
    frontend: 'node',
    env: { HOIST_PROXY_REMOTE_URL: upstream.url, HOIST_LOG_LEVEL: 'debug' },
  });
});

afterAll(async () => {
  await mirror?.stop();
  upstream?.close();
  await cleanup?.();
});

/** A GET's reply, or status 0 when the connection closed without one. */
function get(path: string): Promise<RawReply & { error?: string }> {
  return rawGet(mirror.url, path).catch((err: NodeJS.ErrnoException) => ({ status: 0, headers: {}, body: Buffer.alloc(0), complete: false, error: err.code ?? err.message }));
}

describe('a blob fetch shared by several pulls', () => {
  it.each(['slow404', 'slow403'])('another repository\'s failed fetch (%s) is not this repository\'s answer', async (bad) => {
    const { bytes, digest } = newBlob(100_000);
    const asked = arrival(`${bad}/r`);
    const x = get(`/v2/${bad}/r/blobs/${digest}`);
    // Y asks while X's fetch waits for the upstream's answer.
    await asked;
    const y = await get(`/v2/plain/x/blobs/${digest}`);
    expect(y.status, y.body.toString()).toBe(200);
    expect(y.complete).toBe(true);
    expect(y.body.equals(bytes)).toBe(true);
    expect((await x).status).toBe(bad === 'slow404' ? 404 : 403);
  });

  // Found by probing the mend above: pulls through failing repositories, in a loop, kept
  // starting the next fetch first, and a healthy repository's pull joined one after another
  // until it gave up (503, seven times in eight). After one foreign failure a pull joins
  // only its own repository's fetch.
  it('pulls through failing repositories in a loop do not keep a healthy repository\'s pull out', async () => {
    for (let round = 0; round < 3; round++) {
      const { bytes, digest } = newBlob(100_000);
      let stop = false;
      const asked = arrival(`slow404/r${round}-0`);
      const failing = [0, 1, 2, 3].map(async (i) => {
        while (!stop) expect((await get(`/v2/slow404/r${round}-${i}/blobs/${digest}`)).status).toBe(404);
      });
      await asked;
      try {
        const y = await get(`/v2/plain/y/blobs/${digest}`);
        expect(y.status, y.body.toString()).toBe(200);
        expect(y.body.equals(bytes)).toBe(true);
      } finally {
        stop = true;
        await Promise.all(failing);
      }
    }
  }, 60_000);
});

describe('a client waiting for storage when the fetch fails', () => {
  /** Starts a GET through slowbad/a (a fetch that fails at its end); resolves once its client has `past` bytes. */
  function failingFetch(digest: string, past: number): { first: Promise<RawReply>; pastWindow: Promise<void> } {
    let got = 0;
    let passed!: () => void;
    const pastWindow = new Promise<void>((r) => (passed = r));
    const first = rawGet(mirror.url, `/v2/slowbad/a/blobs/${digest}`, {}, (res) => res.on('data', (c: Buffer) => {
      got += c.length;
      if (got > past) passed();
    }));
    return { first, pastWindow };
  }

  it('a client that joined after the first MiB went by gets 503, not a connection cut with no status', async () => {
    const { digest } = newBlob(3 * 1024 * 1024);
    const { first, pastWindow } = failingFetch(digest, 1.5 * 1024 * 1024);
    await pastWindow;
    const late = await get(`/v2/slowbad/a/blobs/${digest}`);
    expect(late.error).toBeUndefined();
    expect(late.status).toBe(503);
    expect(JSON.parse(late.body.toString()).errors[0].code).toBe('UNAVAILABLE');
    // The first client was already receiving: it is cut off, as before.
    const a = await first;
    expect(a.status).toBe(200);
    expect(a.complete).toBe(false);
  });

  it('a client of another repository waiting on it gets the blob through its own repository\'s fetch', async () => {
    const { bytes, digest } = newBlob(3 * 1024 * 1024);
    const { first, pastWindow } = failingFetch(digest, 1.5 * 1024 * 1024);
    await pastWindow;
    const other = await get(`/v2/plain/x/blobs/${digest}`);
    expect(other.error).toBeUndefined();
    expect(other.status).toBe(200);
    expect(other.complete).toBe(true);
    expect(other.body.equals(bytes)).toBe(true);
    expect((await first).complete).toBe(false);
  });
});
