/**
 * A PATCH that sends a little more than the stage (src/engine/upload-write.ts, STAGE_FRACTION)
 * and then holds its body open takes a slab of the one pool every upload shares
 * (uploads.maxBufferedBytes), and its batch, which no byte fills any more, kept the slab for
 * MAX_FILL_MS (500 ms). Found by probing on fs storage: ~36 such requests a second held every
 * slab of the default pool, and a 4 KiB push waited ~5 s in the pool's line behind them.
 * While uploads wait for a slab, a batch that has received nothing for a few tens of
 * milliseconds is now sent on at once, and its slab goes to the next in line.
 */
import { createHash, randomBytes } from 'node:crypto';
import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectBlob, pathOf, request, stallingPatch, tempDir } from '../helpers/http.js';
import { startServer, type TestServer } from '../helpers/server.js';

const KiB = 1024;
/** Stalling requests opened a second: four slabs held 500 ms each serve 8 a second, so a line builds. */
const ATTACK_PER_SECOND = 40;
const ATTACK_MS = 3_000;

describe.each(['node', 'uws'] as const)('batches that stopped filling give their slabs to waiting uploads (%s front end, fs)', (frontend) => {
  let server: TestServer;
  let dir: { path: string; cleanup: () => Promise<void> };
  beforeAll(async () => {
    dir = await tempDir('hoist-stalled-batches-');
    // Four slabs of 1 MiB (a stage of 4 KiB), and an idle timeout far beyond the test's.
    server = await startServer({
      frontend,
      storage: `fs:${dir.path}`,
      env: {
        HOIST_UPLOADS_CHUNK_BYTES: '1MiB', HOIST_UPLOADS_MAX_SESSION_BUFFERED_BYTES: '2MiB',
        HOIST_UPLOADS_MAX_BUFFERED_BYTES: '4MiB', HOIST_LIMITS_IDLE_TIMEOUT: '120s',
      },
    });
  });
  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
    await dir?.cleanup();
  });

  it('a small push beside many requests that sent 20 KB and then nothing completes in well under a second', async () => {
    const base = server.url;
    const stalled: net.Socket[] = [];
    const opening: Array<Promise<void>> = [];
    let attacking = true;
    const attack = (async () => {
      for (let i = 0; attacking; i++) {
        opening.push((async () => {
          const start = await request(base, '/v2/slow/stalled/blobs/uploads/', { method: 'POST' });
          expect(start.status).toBe(202);
          stalled.push(await stallingPatch(server.port, pathOf(base, start.header('location')!), 1024 * KiB, randomBytes(20_000)));
        })());
        await new Promise((r) => setTimeout(r, 1000 / ATTACK_PER_SECOND));
      }
    })();
    const pushes: number[] = [];
    try {
      // Let the line build, then push small blobs one after another while the attack goes on.
      await new Promise((r) => setTimeout(r, 1_000));
      const until = Date.now() + ATTACK_MS - 1_000;
      for (let n = 0; Date.now() < until; n++) {
        const data = randomBytes(4 * KiB);
        const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
        const t0 = Date.now();
        const start = await request(base, '/v2/slow/honest/blobs/uploads/', { method: 'POST' });
        const location = pathOf(base, start.header('location')!);
        const patch = await request(base, location, { method: 'PATCH', body: data, timeoutMs: 30_000 });
        expect(patch.status, patch.text()).toBe(202);
        const put = await request(base, `${location}${location.includes('?') ? '&' : '?'}digest=${digest}`, { method: 'PUT', timeoutMs: 30_000 });
        expect(put.status, put.text()).toBe(201);
        pushes.push(Date.now() - t0);
        await expectBlob(base, 'slow/honest', data);
      }
    } finally {
      attacking = false;
      await attack;
      await Promise.allSettled(opening);
      for (const s of stalled) s.destroy();
    }
    // Every stalling request got its 20 KB in, and the pushes went through beside them: 35-200
    // ms each here (20-300 ms with no attack: the commit's fsync). Before, the line grew by
    // ~30 requests a second and the one push that fit waited for all of it: 3.3-3.7 s.
    expect(stalled.length).toBeGreaterThan(ATTACK_PER_SECOND * 2);
    expect(pushes.length).toBeGreaterThan(0);
    expect(Math.max(...pushes), `push times ${pushes.join(', ')} ms`).toBeLessThan(1_000);
  }, 60_000);
});
