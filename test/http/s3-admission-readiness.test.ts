/**
 * On S3 the upload engine admits only as many writing requests as the driver has part
 * buffers for (src/engine/admission.ts). Admission was first come, first served: requests
 * whose bodies trickle in (a byte every few seconds) that came first were each admitted in
 * turn and stopped only after the 10 s window, while a push whose body was all there waited
 * behind them (found by probing: 100 such PATCHes held a 16 MiB push for about 60 s). Now a
 * waiting request whose body has arrived in part (body-pump.ts, READY_BYTES) or whole goes
 * first, and while one waits, an admitted body that crawls is given a quarter of the window.
 * Real radosgw, both front ends.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import {
  commitUpload, expectBlob, headerSectionIn, openRequest, parseRawReply, pathOf, request, socketExchange, type Reply,
} from '../helpers/http.js';
import { describeS3, useTestBucket } from '../helpers/s3-http.js';
import { startServer, type Frontend, type TestServer } from '../helpers/server.js';
import { tricklingPatch, type TricklingPatch } from '../helpers/trickle.js';

const TRICKLERS = 8;
/** Clients pushing without `Expect`, each one PATCH after another: more than the two slots. */
const PUSHERS = 12;
/** How long they go on pushing unless the waiting PATCH was answered first. */
const PUSHING_MS = 25_000;

/**
 * On node:http, with the slots taken: a PATCH with `Expect: 100-continue` to an unknown
 * upload gets its 404, and one to an upload another request holds (a trickling PATCH,
 * waiting for admission) its 416, instead of the 100, so the body is never sent.
 */
async function expectRefusedWithout100(base: string, length: number): Promise<void> {
  const port = Number(new URL(base).port);
  const head = (path: string): string =>
    `PATCH ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: ${length}\r\nExpect: 100-continue\r\n\r\n`;
  const refused = async (path: string): Promise<number> => {
    // A 100 would end the exchange too (its header section is in), and fail below.
    const r = await socketExchange(port, head(path), { until: headerSectionIn, timeoutMs: 10_000 });
    expect(r.text).not.toContain('100 Continue');
    return parseRawReply(r.text).status;
  };
  expect(await refused(`/v2/ready/expecting/blobs/uploads/${randomUUID()}`)).toBe(404);
  const start = await request(base, '/v2/ready/held/blobs/uploads/', { method: 'POST' });
  const location = pathOf(base, start.header('location')!);
  const holder = tricklingPatch(port, location, 10 * 1024 * 1024, 1000);
  try {
    // Its lock taken, it waits for a slot behind the ready pushes (it is not ready).
    await new Promise((r) => setTimeout(r, 1000));
    expect(await refused(location)).toBe(416);
  } finally {
    holder.stop();
  }
}

for (const frontend of ['node', 'uws'] as Frontend[]) describeS3(`a push whose body is there goes before trickling ones (S3, ${frontend})`, (env) => {
  let server: TestServer;
  const bucket = useTestBucket(env, `ready-${frontend}`);

  beforeAll(async () => {
    // Four part buffers of 5 MiB: two writing requests admitted at a time.
    server = await startServer({
      storage: bucket.url('r', { partSize: '5MiB', maxBufferedBytes: '20MiB' }),
      frontend,
      env: { HOIST_UPLOADS_CHUNK_BYTES: '1MiB', HOIST_LIMITS_IDLE_TIMEOUT: '120s' },
    });
  });
  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
  });

  it(`admits the push ahead of ${TRICKLERS} trickling PATCHes that came first`, async () => {
    const base = server.url;
    const port = Number(new URL(base).port);
    const tricklers: TricklingPatch[] = [];
    try {
      for (let i = 0; i < TRICKLERS; i++) {
        const start = await request(base, `/v2/ready/slow${i}/blobs/uploads/`, { method: 'POST' });
        expect(start.status).toBe(202);
        tricklers.push(tricklingPatch(port, pathOf(base, start.header('location')!), 10 * 1024 * 1024, 3000));
      }
      // All of them in: two admitted, the rest waiting.
      await new Promise((r) => setTimeout(r, 1500));

      const data = randomBytes(4 * 1024 * 1024);
      const t0 = Date.now();
      const start = await request(base, '/v2/ready/fast/blobs/uploads/', { method: 'POST' });
      const location = pathOf(base, start.header('location')!);
      const patch = await request(base, location, { method: 'PATCH', body: data, timeoutMs: 90_000 });
      const ms = Date.now() - t0;
      expect(patch.status, patch.text()).toBe(202);
      await commitUpload(base, location, data, 'ready/fast');
      await expectBlob(base, 'ready/fast', data);
      console.log(`${frontend}: the push's PATCH took ${ms} ms behind ${TRICKLERS} trickling PATCHes`);
      // First come, first served, it waited for 4 rounds of the 10 s window. Now it waits for
      // the two admitted tricklers' shortened window (2.5 s, checked every 1.25 s).
      expect(ms).toBeLessThan(8_000);
    } finally {
      for (const t of tricklers) t.stop();
    }
  }, 120_000);

  // node:http sends `100 Continue` only when the body is read; before, a PATCH that waited
  // for it while it waited for admission sent nothing, so never became ready, and every
  // ready push that came meanwhile went first: with ready pushes coming steadily it was
  // served only once they stopped (after PUSHING_MS). Now the 100 goes out when it starts
  // waiting; the refusals made before the wait (401: test/auth/basic.test.ts; 404, and 416
  // for a busy upload: below, with the slots taken) still go out instead of it.
  it(`serves a PATCH that waits for 100 Continue while ${PUSHERS} clients keep pushing without Expect`, async () => {
    const base = server.url;
    const data = randomBytes(2 * 1024 * 1024);
    let pushing = true;
    const pushers = Array.from({ length: PUSHERS }, async (_, i) => {
      let pushes = 0;
      while (pushing) {
        const start = await request(base, `/v2/ready/steady${i}/blobs/uploads/`, { method: 'POST' });
        expect(start.status).toBe(202);
        const patch = await request(base, pathOf(base, start.header('location')!), { method: 'PATCH', body: data, timeoutMs: 90_000 });
        expect(patch.status, patch.text()).toBe(202);
        pushes++;
      }
      return pushes;
    });
    try {
      // Two admitted, the others waiting, all ready.
      await new Promise((r) => setTimeout(r, 1500));
      // uWS answers the 100 itself, before any handler runs (README, Front ends).
      if (frontend === 'node') await expectRefusedWithout100(base, data.byteLength);
      const start = await request(base, '/v2/ready/expecting/blobs/uploads/', { method: 'POST' });
      const location = pathOf(base, start.header('location')!);
      const t0 = Date.now();
      const o = openRequest(base, location, {
        method: 'PATCH',
        headers: { 'content-type': 'application/octet-stream', 'content-length': data.byteLength, expect: '100-continue' },
        timeoutMs: 90_000,
      });
      o.req.once('continue', () => o.req.end(data));
      const stopPushing = setTimeout(() => (pushing = false), PUSHING_MS);
      let patch: Reply;
      try {
        patch = await o.reply;
      } finally {
        clearTimeout(stopPushing);
      }
      const ms = Date.now() - t0;
      const stillPushing = pushing;
      pushing = false;
      const pushes = (await Promise.all(pushers)).reduce((a, b) => a + b, 0);
      expect(patch.status, patch.text()).toBe(202);
      await commitUpload(base, location, data, 'ready/expecting');
      await expectBlob(base, 'ready/expecting', data);
      console.log(`${frontend}: the PATCH with Expect: 100-continue took ${ms} ms; ${pushes} other pushes went through meanwhile and after`);
      expect(stillPushing).toBe(true);
      // It waits for the ready ones that came before it, about one round of the slots each.
      expect(ms).toBeLessThan(10_000);
    } finally {
      pushing = false;
      await Promise.allSettled(pushers);
    }
  }, 180_000);
});
