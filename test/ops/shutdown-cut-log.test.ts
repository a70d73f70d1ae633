import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { openRequest, startUpload } from '../helpers/http.js';
import { startServer } from '../helpers/server.js';

/**
 * A request the server cuts when its shutdown grace period (shutdownTimeoutMs) ends says so in
 * its log line. Found by probing: SIGTERM during a slow PATCH, and 10 s later the PATCH was cut
 * unanswered and logged `"status":499`, the status README gives to "the client went away": an
 * operator reading the log after a deploy blamed clients for what the server did. It is still
 * counted as 499 (no answer went out), and its line now carries `"cut":"shutdown"`; a client
 * that really went away (before the deadline) has no such field.
 */

const GRACE_MS = 1500;

for (const frontend of ['uws', 'node'] as const) describe(`requests cut at shutdown (${frontend})`, () => {
  it('the PATCH still running at the deadline logs "cut":"shutdown"; one whose client left earlier does not', async () => {
    const server = await startServer({ storage: 'memory:', frontend, env: { HOIST_SHUTDOWN_TIMEOUT_MS: String(GRACE_MS), HOIST_LOG_FORMAT: 'json' } });
    let stopped = false;
    try {
      // A client that goes away by itself, before any shutdown: a plain 499.
      const left = await startUpload(server.url, 'cut/left');
      const gone = openRequest(server.url, left.location, { method: 'PATCH', headers: { 'content-type': 'application/octet-stream', 'content-length': 1 << 20 } });
      gone.reply.catch(() => undefined);
      await gone.write(Buffer.alloc(64 * 1024));
      await sleep(200);
      gone.req.destroy();
      await expect.poll(() => server.records().find((r) => r.msg === 'request' && r.method === 'PATCH' && r.status === 499), { timeout: 10_000 }).toBeTruthy();

      // A client still sending when the grace period ends: the server cuts it.
      const { location } = await startUpload(server.url, 'cut/slow');
      const o = openRequest(server.url, location, { method: 'PATCH', headers: { 'content-type': 'application/octet-stream', 'content-length': 64 << 20 } });
      o.reply.catch(() => undefined);
      o.req.on('error', () => undefined);
      await o.write(Buffer.alloc(64 * 1024));
      let sending = true;
      const trickle = (async () => {
        while (sending && !o.req.destroyed) {
          await o.write(Buffer.alloc(16 * 1024)).catch(() => { sending = false; });
          await sleep(100);
        }
      })();
      await sleep(300);
      expect(await server.stop('SIGTERM', 30_000)).toBe(0);
      stopped = true;
      sending = false;
      await trickle;

      const patches = server.records().filter((r) => r.msg === 'request' && r.method === 'PATCH');
      expect(patches, server.logs().join('\n')).toHaveLength(2);
      const [early, cut] = patches;
      expect(early).toMatchObject({ status: 499 });
      expect(early).not.toHaveProperty('cut');
      expect(cut).toMatchObject({ status: 499, cut: 'shutdown', path: location });
    } finally {
      if (!stopped) await server.kill();
    }
  }, 60_000);
});
