import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  expectStatus, openRequest, patchChunk, pathOf, pieces, request, startUpload, storedBytes, tempDir, uploadRange,
  waitForLog, withQuery, type OpenRequest, type Reply,
} from '../helpers/http.js';
import { randomBlob, sha256 } from '../helpers/oci.js';
import { s3Env, s3EnvOrFail, s3ServerEnv, useTestBucket } from '../helpers/s3-http.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * Graceful shutdown with uploads in flight (fs storage, and S3 with the node front end, so the
 * upload outlives the process; on S3 what a cut request received is a staged tail and parts):
 * on SIGTERM the server stops accepting, lets running requests finish for up to
 * shutdownTimeoutMs, cuts the rest, keeps what they stored, and exits 0. After a restart on
 * the same directory the upload's status must match what is stored, and the client must be
 * able to finish it with the right digest.
 *
 * Nothing here races the clock: SIGTERM goes out once the server handles the PATCH (it
 * answered the request's Expect: 100-continue), the request that must finish within the
 * grace period sends its rest only once the server logged that it is shutting down, under a
 * grace period it cannot outlast, and the one that must be cut is still sending when the
 * server exits (it needs ~13 s; the grace period is 2 s).
 */

const MiB = 1024 * 1024;
const FRONTENDS = ['uws', 'node'] as const;
const GRACE_MS = 2000;
/** A grace period no request here comes near: the test waits for the request, never for the clock. */
const LONG_GRACE_MS = 120_000;
// Each test's timeout (300 s) is a hang guard: S3 on a loaded machine is slow.

/**
 * A PATCH of `length` bytes, opened with `Expect: 100-continue`: `handling` resolves once the
 * server answered 100 Continue, which both front ends do as they hand the parsed request to
 * the handler. (A second PATCH as a probe would not do: it takes the upload's lock itself
 * when it comes first, and the real one is turned away as busy.)
 */
function openPatch(base: string, location: string, length: number): { o: OpenRequest; handling: Promise<void> } {
  const o = openRequest(base, location, {
    method: 'PATCH',
    headers: { 'content-type': 'application/octet-stream', 'content-length': length, expect: '100-continue' },
  });
  const handling = new Promise<void>((resolve, reject) => {
    o.req.once('continue', () => resolve());
    o.reply.then(() => reject(new Error(`PATCH ${location} answered before 100 Continue`)), reject);
  });
  handling.catch(() => undefined);
  return { o, handling };
}

/**
 * Writes `data` through `o` in `pieceBytes` pieces every `intervalMs`, until done or the
 * connection fails. Resolves with the bytes handed to the socket.
 */
async function trickle(o: OpenRequest, data: Buffer, pieceBytes: number, intervalMs: number): Promise<number> {
  let sent = 0;
  let failed = false;
  o.req.once('error', () => {
    failed = true;
  });
  o.req.once('close', () => {
    failed = true;
  });
  for (const piece of pieces(data, pieceBytes)) {
    if (failed || o.req.destroyed) break;
    try {
      await o.write(piece);
    } catch {
      break;
    }
    sent += piece.byteLength;
    await sleep(intervalMs);
  }
  if (!failed && !o.req.destroyed && sent === data.byteLength) o.req.end();
  return sent;
}

const combos: Array<{ frontend: (typeof FRONTENDS)[number]; storage: 'fs' | 's3' }> = [
  ...FRONTENDS.map((frontend) => ({ frontend, storage: 'fs' as const })),
  { frontend: 'node', storage: 's3' },
];

describe.each(combos)('graceful shutdown ($frontend front end, $storage storage)', ({ frontend, storage }) => {
  let dir: Awaited<ReturnType<typeof tempDir>> | undefined;
  const servers: TestServer[] = [];
  if (storage === 's3' && !s3EnvOrFail()) return;
  const bucket = storage === 's3' ? useTestBucket(s3Env!, 'shutdown') : undefined;

  beforeAll(async () => {
    if (!bucket) dir = await tempDir();
  });

  afterAll(async () => {
    for (const s of servers) await s.kill();
    await dir?.cleanup();
  });

  async function start(graceMs = GRACE_MS): Promise<TestServer> {
    const s = await startServer({
      storage: bucket ? bucket.url('shutdown') : `fs:${dir!.path}/storage`,
      frontend,
      env: { HOIST_SHUTDOWN_TIMEOUT_MS: String(graceMs), ...(bucket ? s3ServerEnv() : {}) },
    });
    servers.push(s);
    return s;
  }

  it('SIGTERM during a slow upload that outlasts the grace period: cut, exits 0; the upload resumes after restart', async () => {
    const name = 'shutdown/slow';
    const data = randomBlob(8 * MiB + 13);
    const a = await start();
    const { location } = await startUpload(a.url, name);
    // 32 KiB every 50 ms is about 640 KiB/s: 8 MiB would take ~13 s, far past the grace period.
    const { o, handling } = openPatch(a.url, location, data.byteLength);
    const sending = trickle(o, data, 32 * 1024, 50);
    await handling;

    // stop() fails the test if the process outlives its timeout, a hang guard only: that the
    // server did not wait for the upload shows in what the client still had to send.
    expect(await a.stop('SIGTERM', 60_000)).toBe(0);
    const sent = await sending;
    expect(sent, 'bytes the client sent before the server cut the request').toBeLessThan(data.byteLength);
    // The cut request either got no reply or an error status; never a success.
    const outcome = await o.reply.then((r: Reply) => r.status, () => 'no reply');
    expect(outcome === 'no reply' || (typeof outcome === 'number' && outcome >= 400), `reply: ${outcome}`).toBe(true);

    const b = await start();
    const s = await request(b.url, location);
    expectStatus(s, 204, `GET ${location} after restart`);
    const offset = storedBytes(s.header('range'));
    expect(offset).toBeLessThanOrEqual(sent);
    // The stored bytes are a prefix of what was sent: continuing from there gives the right digest.
    const r = await patchChunk(b.url, pathOf(b.url, s.header('location') ?? location), data.subarray(offset), offset);
    expectStatus(r, 202);
    expect(r.header('range')).toBe(uploadRange(data.byteLength));
    const put = await request(b.url, withQuery(pathOf(b.url, r.header('location')!), 'digest', sha256(data)), { method: 'PUT' });
    expectStatus(put, 201);
    const g = await request(b.url, `/v2/${name}/blobs/${sha256(data)}`);
    expectStatus(g, 200);
    expect(sha256(g.body)).toBe(sha256(data));
    expect(await b.stop()).toBe(0);
  }, 300_000);

  it('SIGTERM during an upload that finishes within the grace period: the request completes, then the process exits 0', async () => {
    const name = 'shutdown/quick';
    const data = randomBlob(MiB + 7);
    const a = await start(LONG_GRACE_MS);
    const { location } = await startUpload(a.url, name);
    const { o, handling } = openPatch(a.url, location, data.byteLength);
    // Half the body, SIGTERM while the server handles the request, and the rest once it is shutting down.
    const half = Math.floor(data.byteLength / 2);
    await o.write(data.subarray(0, half));
    await handling;
    const stopping = a.stop('SIGTERM', LONG_GRACE_MS + 10_000);
    await waitForLog(a, 'the server to log that it is shutting down', (l) => l.msg === 'shutting down', 60_000);
    expect(await trickle(o, data.subarray(half), 128 * 1024, 0)).toBe(data.byteLength - half);
    const r = await o.reply;
    expectStatus(r, 202, 'the in-flight PATCH');
    expect(r.header('range')).toBe(uploadRange(data.byteLength));
    expect(await stopping).toBe(0);

    const b = await start();
    const s = await request(b.url, location);
    expectStatus(s, 204);
    expect(s.header('range')).toBe(uploadRange(data.byteLength));
    const put = await request(b.url, withQuery(location, 'digest', sha256(data)), { method: 'PUT' });
    expectStatus(put, 201);
    expect(await b.stop()).toBe(0);
  }, 300_000);
});
