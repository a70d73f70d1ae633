import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectError, request, tempDir, waitForLog } from '../helpers/http.js';
import { metricsUrlOf, scrape } from '../helpers/metrics.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * Upstream metadata requests of a pull-through cache (manifests by tag or digest, blob
 * HEADs, tag lists) were shared per reference (issue-shared-blob-heads.test.ts) but not
 * bounded over different ones: a client asking for 120 different references that do not
 * exist, all at once, had the cache make 120 upstream requests at once (an amplifier, a
 * socket each, and a manifest's or tag list's bytes each). Now proxy.maxMetadataRequests (here
 * 8) run at once, four times as many wait for a place, and the rest get 429 with Retry-After
 * at once; nobody waits longer than 10 s for a place (429 then too), however long the
 * upstream takes.
 *
 * While the limit turns requests away, a tag the cache holds is served from the cache, as when
 * the upstream cannot be asked at all.
 *
 * The upstream is a small HTTP server of the test's own that answers 404 to everything after
 * a delay (but one tag, /v2/cached/img:v1) and counts the requests it has open at once.
 */
const CAP = 8;

let open = 0;
let mostOpen = 0;
let upstreamRequests = 0;
/** The one manifest the upstream has. */
const INDEX = Buffer.from('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}');
const INDEX_DIGEST = `sha256:${createHash('sha256').update(INDEX).digest('hex')}`;
/** Requests under /v2/hold/ get no answer until released (then 404), while `holding`. */
const held: Array<() => void> = [];
let holding = true;
/**
 * While set, the upstream holds every other request too, until the test opens it: on a
 * loaded machine, sending the 120 requests took longer than one 200 ms round, so a round
 * finished and took more from the line before the last of them came (42 answered, not 40).
 */
let gated: Array<() => void> | undefined;
let upstream: http.Server;
let mirror: TestServer;
let cleanup: () => Promise<void>;

beforeAll(async () => {
  upstream = http.createServer((req, res) => {
    upstreamRequests++;
    open++;
    mostOpen = Math.max(mostOpen, open);
    const answer = (): void => {
      if (res.destroyed) return;
      const code = /\/tags\/list/.test(req.url ?? '') ? 'NAME_UNKNOWN' : /\/blobs\//.test(req.url ?? '') ? 'BLOB_UNKNOWN' : 'MANIFEST_UNKNOWN';
      res.writeHead(404, { 'content-type': 'application/json' }).end(req.method === 'HEAD' ? undefined : `{"errors":[{"code":"${code}"}]}`);
    };
    res.on('close', () => open--);
    if (req.url === '/v2/cached/img/manifests/v1') {
      res.writeHead(200, { 'content-type': 'application/vnd.oci.image.index.v1+json', 'docker-content-digest': INDEX_DIGEST, 'content-length': String(INDEX.byteLength) });
      res.end(req.method === 'HEAD' ? undefined : INDEX);
      return;
    }
    if (holding && req.url?.startsWith('/v2/hold/')) held.push(answer);
    else if (gated) gated.push(() => setTimeout(answer, 200));
    else setTimeout(answer, 200);
  });
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  let dir: string;
  ({ path: dir, cleanup } = await tempDir('hoist-metadata-requests-'));
  mirror = await startServer({
    storage: `fs:${dir}`,
    frontend: 'node',
    env: {
      HOIST_PROXY_REMOTE_URL: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`,
      HOIST_PROXY_MAX_METADATA_REQUESTS: String(CAP),
      // Tags are checked again (HEAD) a second after the upstream confirmed them.
      HOIST_PROXY_TAG_TTL: '1s',
      HOIST_METRICS_LISTEN: '127.0.0.1:0',
    },
  });
});

afterAll(async () => {
  holding = false;
  for (const answer of held.splice(0)) answer();
  await mirror?.stop();
  upstream?.closeAllConnections();
  upstream?.close();
  await cleanup?.();
});

const hex = (i: number): string => i.toString(16).padStart(64, '0');

describe('upstream metadata requests of a pull-through cache', () => {
  it(`120 different missing references at once: at most ${CAP} upstream requests open, ${4 * CAP} wait and get 404, the rest 429 at once`, async () => {
    const paths: Array<{ path: string; method: 'GET' | 'HEAD' }> = [];
    for (let i = 0; i < 30; i++) {
      paths.push({ path: `/v2/img/manifests/tag-${i}`, method: 'GET' });
      paths.push({ path: `/v2/img/manifests/sha256:${hex(i)}`, method: 'HEAD' });
      paths.push({ path: `/v2/img/blobs/sha256:${hex(1000 + i)}`, method: 'HEAD' });
      paths.push({ path: `/v2/repo-${i}/tags/list`, method: 'GET' });
    }
    const t0 = performance.now();
    gated = [];
    let refusedSoFar = 0;
    const pending = Promise.all(paths.map(async (p) => {
      const r = await request(mirror.url, p.path, { method: p.method, timeoutMs: 15_000 });
      if (r.status === 429) refusedSoFar++;
      return { ...p, r, ms: performance.now() - t0 };
    }));
    // Every request has come once all but the running ones and the line were refused (or
    // not, and the counts below say so); then the upstream answers, 200 ms a round.
    const deadline = Date.now() + 8000;
    while (refusedSoFar < 120 - 5 * CAP && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const gate = gated;
    gated = undefined;
    for (const answer of gate) answer();
    const replies = await pending;
    expect(mostOpen, 'upstream requests open at once').toBeLessThanOrEqual(CAP);
    const refused = replies.filter((x) => x.r.status === 429);
    const answered = replies.filter((x) => x.r.status === 404);
    expect(answered.length + refused.length, `statuses: ${replies.map((x) => x.r.status).join(' ')}`).toBe(120);
    // The running ones and the line are answered by the upstream; everyone else is refused.
    expect(answered).toHaveLength(CAP + 4 * CAP);
    expect(upstreamRequests).toBe(CAP + 4 * CAP);
    for (const x of refused) {
      expect(x.r.header('retry-after')).toBe('1');
      if (x.method === 'GET') expectError(x.r, 429, 'TOOMANYREQUESTS');
    }
    // Refused at once, not after waiting for the line to move (200 ms a round, 5 rounds).
    expect(Math.max(...refused.map((x) => x.ms))).toBeLessThan(Math.max(...answered.map((x) => x.ms)));
    const s = await scrape(metricsUrlOf(mirror));
    expect(s.value('hoist_limit_refusals_total', { limit: 'upstream_requests' })).toBe(refused.length);
  }, 30_000);

  it('a request that waits 10 s for a place behind an upstream that does not answer gets 429, not a longer wait', async () => {
    upstreamRequests = 0;
    // Every place taken by a request the upstream holds.
    const holding = Array.from({ length: CAP }, (_, i) => request(mirror.url, `/v2/hold/img/manifests/v${i}`, { timeoutMs: 60_000 }));
    for (let i = 0; i < 100 && upstreamRequests < CAP; i++) await new Promise((r) => setTimeout(r, 50));
    expect(upstreamRequests).toBe(CAP);
    const t0 = performance.now();
    const waiter = await request(mirror.url, '/v2/img/manifests/behind', { timeoutMs: 30_000 });
    const waitedMs = performance.now() - t0;
    expectError(waiter, 429, 'TOOMANYREQUESTS');
    expect(waitedMs).toBeGreaterThan(9_000);
    expect(waitedMs).toBeLessThan(12_000);
    expect(upstreamRequests, 'the waiter never reached the upstream').toBe(CAP);
    for (const answer of held.splice(0)) answer();
    for (const r of await Promise.all(holding)) expect(r.status).toBe(404);
    // The places are free again.
    expect((await request(mirror.url, '/v2/img/manifests/after')).status).toBe(404);
  }, 30_000);

  it('while every place and the line are taken, a tag the cache holds is served from the cache (not 429)', async () => {
    const first = await request(mirror.url, '/v2/cached/img/manifests/v1');
    expect(first.status).toBe(200);
    // Past tagTtl: the next pull would ask the upstream (HEAD) whether the tag moved.
    await new Promise((r) => setTimeout(r, 1_100));
    upstreamRequests = 0;
    const waiting = Array.from({ length: CAP + 4 * CAP }, (_, i) => request(mirror.url, `/v2/hold/img/manifests/w${i}`, { timeoutMs: 60_000 }));
    for (let i = 0; i < 100 && upstreamRequests < CAP; i++) await new Promise((r) => setTimeout(r, 50));
    // Their requests reach the cache's line too (it is full once a 429 comes back).
    const probe = await request(mirror.url, '/v2/img/manifests/probe');
    expectError(probe, 429, 'TOOMANYREQUESTS');
    const cached = await request(mirror.url, '/v2/cached/img/manifests/v1');
    expect(cached.status).toBe(200);
    expect(cached.body.equals(INDEX)).toBe(true);
    expect(cached.header('docker-content-digest')).toBe(INDEX_DIGEST);
    await waitForLog(mirror, 'the cached tag served', (r) => r.msg === 'upstream unavailable: serving the cached tag' && r.tag === 'v1', 5_000);
    holding = false;
    for (const answer of held.splice(0)) answer();
    // Those in line get their places in turn (and the upstream's 404 for them).
    for (const r of await Promise.all(waiting)) expect(r.status).toBe(404);
  }, 30_000);
});
