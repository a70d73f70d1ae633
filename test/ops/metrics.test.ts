import { mkdtemp, rename, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { basic, writeConfig, writeHtpasswd } from '../auth/fixtures.js';
import { startFaultyProxy, type FaultyProxy } from '../helpers/faulty-proxy.js';
import { expectStatus, openRequest, patchChunk, request, startUpload, waitFor, waitForLog, withQuery } from '../helpers/http.js';
import { metricsUrlOf, scrape } from '../helpers/metrics.js';
import { makeImage, pushBlob, pushImage, randomBlob, sha256 } from '../helpers/oci.js';
import { s3Env, s3EnvOrFail, s3ServerEnv, useTestBucket } from '../helpers/s3-http.js';
import { s3StorageUrl } from '../helpers/s3.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * Issue 12, operations: a spawned server with `metrics.listen` (HOIST_METRICS_LISTEN) serves
 * Prometheus metrics, /healthz and /readyz on a port of its own, and /healthz, /readyz on the
 * registry's port too, outside auth and limits. Real requests move the metrics; readiness
 * fails, with its reason, when storage does (an fs root that cannot be read, an S3 endpoint
 * that is down), and comes back when storage does.
 */

const METRICS_ENV = { HOIST_METRICS_LISTEN: '127.0.0.1:0' };

async function getJson(url: string, init?: RequestInit): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(url, init);
  const text = await res.text();
  return { status: res.status, body: init?.method === 'HEAD' ? {} : (JSON.parse(text) as Record<string, unknown>) };
}

for (const frontend of ['uws', 'node'] as const) describe(`metrics of a push (${frontend} front end, memory storage)`, () => {
  let server: TestServer;
  let metricsUrl: string;

  beforeAll(async () => {
    server = await startServer({ storage: 'memory:', frontend, env: METRICS_ENV });
    metricsUrl = metricsUrlOf(server);
  });

  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
  });

  it('counts requests, received bytes, commits, blob sizes and storage calls, and names no repository or digest', async () => {
    const repo = 'metrics/secret-team/app';
    const image = makeImage({ layerSizesBytes: [3000, 70_000] });
    await pushImage(server.url, repo, 'v1', image);
    // A chunked upload too: two PATCHes, then the PUT.
    const chunked = randomBlob(50_000);
    const up = await startUpload(server.url, repo);
    expectStatus(await patchChunk(server.url, up.location, chunked.subarray(0, 20_000), 0), 202);
    const second = await patchChunk(server.url, up.location, chunked.subarray(20_000), 20_000);
    expectStatus(second, 202);
    expectStatus(await request(server.url, withQuery(second.header('location')!, 'digest', sha256(chunked)), { method: 'PUT' }), 201);
    expectStatus(await request(server.url, `/v2/${repo}/manifests/v1`), 200);
    expectStatus(await request(server.url, '/v2/nothing/here/at/all'), 404);

    const blobs = [image.config.bytes, ...image.layers.map((l) => l.bytes), chunked];
    const bytes = blobs.reduce((n, b) => n + b.byteLength, 0);
    const s = await waitFor('the pushed bytes in the metrics', async () => {
      const now = await scrape(metricsUrl);
      return now.value('hoist_upload_received_bytes_total') === bytes ? now : undefined;
    });
    expect(s.value('hoist_blobs_committed_total')).toBe(blobs.length);
    expect(s.value('hoist_blob_size_bytes_sum')).toBe(bytes);
    expect(s.value('hoist_upload_commit_duration_seconds_count')).toBe(blobs.length);
    expect(s.value('hoist_http_requests_total', { route: 'upload', method: 'PUT', status: '201' })).toBe(4);
    expect(s.value('hoist_http_requests_total', { route: 'upload', method: 'PATCH', status: '202' })).toBe(2);
    expect(s.value('hoist_http_requests_total', { route: 'manifest', method: 'PUT', status: '201' })).toBe(1);
    expect(s.value('hoist_http_requests_total', { route: 'manifest', method: 'GET', status: '200' })).toBe(1);
    expect(s.value('hoist_http_requests_total', { route: 'unmatched', method: 'GET', status: '404' })).toBe(1);
    expect(s.value('hoist_http_request_duration_seconds_count', { route: 'upload', method: 'PUT' })).toBe(4);
    expect(s.sum('hoist_storage_requests_total', { driver: 'memory', op: 'putContent', outcome: 'ok' })).toBeGreaterThan(0);
    expect(s.sum('hoist_storage_requests_total', { driver: 'memory', op: 'write', outcome: 'ok' })).toBeGreaterThan(0);
    expect(s.value('hoist_info', { frontend, storage: 'memory' })).toBe(1);
    expect(s.value('hoist_slab_pool_slabs_in_use'), 'every slab went back').toBe(0);
    expect(s.value('hoist_uploads_in_progress')).toBe(0);
    expect(s.value('hoist_hash_pool_threads')).toBeGreaterThan(0);
    expect(s.value('nodejs_eventloop_lag_seconds')).toBeGreaterThanOrEqual(0);
    for (const leak of ['secret-team', ...blobs.map((b) => sha256(b).slice(7, 30)), up.id]) expect(s.text).not.toContain(leak);
  });

  it('answers /healthz and /readyz on both ports, GET and HEAD; the metrics port serves nothing else', async () => {
    for (const base of [server.url, metricsUrl]) {
      expect(await getJson(`${base}/healthz`)).toEqual({ status: 200, body: { status: 'ok' } });
      expect(await getJson(`${base}/readyz`)).toEqual({ status: 200, body: { status: 'ready' } });
      expect((await getJson(`${base}/readyz`, { method: 'HEAD' })).status).toBe(200);
    }
    expect((await fetch(`${metricsUrl}/v2/`)).status).toBe(404);
    expect((await fetch(`${metricsUrl}/metrics`, { method: 'POST' })).status).toBe(405);
    const s = await scrape(metricsUrl);
    expect(s.value('hoist_http_requests_total', { route: 'healthz', method: 'GET', status: '200' })).toBe(1);
    expect(s.value('hoist_http_requests_total', { route: 'readyz', method: 'HEAD', status: '200' })).toBe(1);
  });
});

describe('health checks and access metrics with auth and rate limits (node front end, fs storage)', () => {
  const USERS = { alice: 'alice-pw' };
  let work: string;
  let root: string;
  let server: TestServer;
  let metricsUrl: string;

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'hoist-ops-'));
    root = join(work, 'data');
    const config = await writeConfig(work, {
      auth: {
        htpasswd: await writeHtpasswd(work, USERS),
        access: [{ repository: 'alice/*', users: ['alice'], actions: ['pull', 'push'] }],
      },
      limits: { requestsPerSecond: 1, burst: 5 },
    });
    server = await startServer({ storage: `fs:${root}`, frontend: 'node', args: ['--config', config], env: METRICS_ENV });
    metricsUrl = metricsUrlOf(server);
  });

  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('counts access decisions (allowed, 401, 403) and 429 refusals', async () => {
    const alice = basic('alice', USERS.alice);
    expect((await request(server.url, '/v2/alice/app/tags/list', { headers: { authorization: alice } })).status).toBe(404);
    expect((await request(server.url, '/v2/alice/app/tags/list')).status).toBe(401);
    expect((await request(server.url, '/v2/bob/app/tags/list', { headers: { authorization: alice } })).status).toBe(403);
    // alice's burst is 5 and she has used 2: more requests at once run into the rate limit.
    const statuses = await Promise.all(Array.from({ length: 8 }, () => request(server.url, '/v2/alice/app/tags/list', { headers: { authorization: alice } }).then((r) => r.status)));
    expect(statuses).toContain(429);
    const s = await scrape(metricsUrl);
    expect(s.value('hoist_auth_decisions_total', { decision: 'allowed' })).toBeGreaterThanOrEqual(1);
    expect(s.value('hoist_auth_decisions_total', { decision: 'unauthorized' })).toBe(1);
    expect(s.value('hoist_auth_decisions_total', { decision: 'denied' })).toBe(1);
    expect(s.value('hoist_limit_refusals_total', { limit: 'rate' })).toBe(statuses.filter((x) => x === 429).length);
    expect(s.value('hoist_limit_refusals_total', { limit: 'uploads' })).toBe(0);
    expect(s.text, 'no user names').not.toContain('alice');
  });

  it('serves /healthz and /readyz on the main port to anyone, however often: no credentials, no rate limit', async () => {
    const replies = await Promise.all(Array.from({ length: 20 }, (_, i) => getJson(`${server.url}/${i % 2 ? 'healthz' : 'readyz'}`)));
    expect(new Set(replies.map((r) => r.status))).toEqual(new Set([200]));
    expect((await request(server.url, '/v2/')).status, 'the registry itself still wants credentials').toBe(401);
  });

  it('is not ready while the fs root cannot be read (503 with the reason, both ports), and ready again after', async () => {
    await rename(root, `${root}.away`);
    await symlink(root, root); // a loop: readdir fails with ELOOP
    try {
      for (const base of [server.url, metricsUrl]) {
        const r = await waitFor(`503 from ${base}/readyz`, async () => {
          const got = await getJson(`${base}/readyz`);
          return got.status === 503 ? got : undefined;
        });
        expect(r.body).toEqual({ status: 'not ready', reason: 'storage (fs) failed: ELOOP' });
        expect(JSON.stringify(r.body), 'no paths').not.toContain(work);
        expect((await getJson(`${base}/healthz`)).status, 'the process still answers').toBe(200);
      }
      // The log line travels the server's stdout, which may arrive after the 503 did.
      const warned = await waitForLog(server, 'the not-ready warning', (l) => l.msg === 'not ready: storage check failed');
      expect(warned.level, 'logged as a warning').toBe(40);
    } finally {
      await rm(root);
      await rename(`${root}.away`, root);
    }
    await waitFor('ready again', async () => ((await getJson(`${server.url}/readyz`)).status === 200 ? true : undefined));
    // As above: the 200 can come before the log line does.
    await waitForLog(server, "the log's 'ready again'", (l) => l.msg === 'ready: storage answers again');
  });
});

describe('S3 metrics and readiness (node front end, radosgw behind a proxy)', () => {
  const env = s3EnvOrFail();
  if (!env) return;
  const bucket = useTestBucket(env, 'ops');
  let proxy: FaultyProxy;
  let server: TestServer;
  let metricsUrl: string;

  beforeAll(async () => {
    // The first PutObject of a blob's data is answered 503 SlowDown once: the SDK retries it.
    let slowed = false;
    proxy = await startFaultyProxy(s3Env!.endpoint, (op) => {
      if (op === 'PutObject' && !slowed) {
        slowed = true;
        return 'slowdown';
      }
      return undefined;
    });
    const url = s3StorageUrl({ ...s3Env!, endpoint: proxy.endpoint }, bucket.name, 'ops', { partSize: '5MiB' });
    server = await startServer({ storage: url, frontend: 'node', env: { ...s3ServerEnv(), ...METRICS_ENV } });
    metricsUrl = metricsUrlOf(server);
  });

  afterAll(async () => {
    await server?.kill();
    await proxy?.close();
  });

  it('counts S3 commands by name, their retries, and driver calls', async () => {
    await pushBlob(server.url, 'ops/app', randomBlob(100_000));
    const s = await scrape(metricsUrl);
    expect(s.value('hoist_s3_requests_total', { operation: 'PutObject', outcome: 'ok' })).toBeGreaterThan(0);
    expect(s.value('hoist_s3_requests_total', { operation: 'HeadBucket', outcome: 'ok' }), 'start-up checks are before metrics start').toBeUndefined();
    expect(s.value('hoist_s3_retries_total', { operation: 'PutObject' })).toBe(1);
    expect(s.sum('hoist_s3_request_duration_seconds_count')).toBeGreaterThan(0);
    expect(s.sum('hoist_storage_requests_total', { driver: 's3', outcome: 'ok' })).toBeGreaterThan(0);
  });

  it('shows the part buffers a burst of pushes held, and lets most of them go once the pushes are over', async () => {
    const MiB = 1024 * 1024;
    // Eight 12 MiB blobs at once, in parts of 5 MiB: each upload holds at least one part.
    const blobs = Array.from({ length: 8 }, () => randomBlob(12 * MiB));
    await Promise.all(blobs.map((b, i) => pushBlob(server.url, `ops/burst${i}`, b)));
    const s = await waitFor('no part buffer in use', async () => {
      const got = await scrape(metricsUrl);
      return got.value('hoist_write_buffers_in_use_bytes') === 0 ? got : undefined;
    });
    // Kept: 1 + maxPartsInFlight (4) parts, not the burst's eight or more.
    expect(s.value('hoist_write_buffers_held_bytes')).toBeGreaterThan(0);
    expect(s.value('hoist_write_buffers_held_bytes')).toBeLessThanOrEqual(5 * 5 * MiB);
    for (const b of blobs) expect((await fetch(`${server.url}/v2/ops/burst${blobs.indexOf(b)}/blobs/${sha256(b)}`, { method: 'HEAD' })).status).toBe(200);
  });

  it('is not ready when the S3 endpoint is down', async () => {
    expect((await getJson(`${server.url}/readyz`)).status).toBe(200);
    await proxy.close();
    const r = await waitFor('503 from /readyz', async () => {
      const got = await getJson(`${metricsUrl}/readyz`);
      return got.status === 503 ? got : undefined;
    }, 30_000);
    expect(r.body.reason).toMatch(/^storage (\(s3\) failed: \w+|did not answer within 5000 ms)$/);
    expect(JSON.stringify(r.body), 'no endpoint').not.toContain('127.0.0.1');
    const s = await scrape(metricsUrl);
    expect(s.sum('hoist_s3_errors_total', { operation: 'ListObjectsV2' })).toBeGreaterThan(0);
  });
});

describe('readiness names the cause when S3 refuses connections (short timeout, so the check ends before its 5 s)', () => {
  const env = s3EnvOrFail();
  if (!env) return;
  const bucket = useTestBucket(env, 'refused');
  let proxy: FaultyProxy;
  let server: TestServer;
  let metricsUrl: string;

  beforeAll(async () => {
    proxy = await startFaultyProxy(s3Env!.endpoint, () => undefined);
    const url = s3StorageUrl({ ...s3Env!, endpoint: proxy.endpoint }, bucket.name, 'refused', { timeout: '1s' });
    server = await startServer({ storage: url, frontend: 'node', env: { ...s3ServerEnv(), ...METRICS_ENV } });
    metricsUrl = metricsUrlOf(server);
  });

  afterAll(async () => {
    await server?.kill();
    await proxy?.close();
  });

  it("says ECONNREFUSED, the store's error, not the driver's StorageUnavailableError that wraps it", async () => {
    expect((await getJson(`${metricsUrl}/readyz`)).status).toBe(200);
    await proxy.close();
    const r = await waitFor('503 from /readyz', async () => {
      const got = await getJson(`${metricsUrl}/readyz`);
      return got.status === 503 ? got : undefined;
    }, 30_000);
    expect(r.body).toEqual({ status: 'not ready', reason: 'storage (s3) failed: ECONNREFUSED' });
  });
});

for (const frontend of ['uws', 'node'] as const) describe(`sockets paused by backpressure (${frontend} front end, S3 with one writer at a time)`, () => {
  const env = s3EnvOrFail();
  if (!env) return;
  const bucket = useTestBucket(env, 'paused');
  let server: TestServer;
  let metricsUrl: string;

  beforeAll(async () => {
    // Two 5 MiB part buffers: the engine admits one writing request at a time
    // (StorageDriver.maxConcurrentWriters), and the next waits with its socket paused.
    const storage = bucket.url('paused', { partSize: '5MiB', maxBufferedBytes: '10MiB' });
    server = await startServer({ storage, frontend, env: { ...s3ServerEnv(), ...METRICS_ENV } });
    metricsUrl = metricsUrlOf(server);
  });

  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
  });

  it('counts a request waiting for admission as paused, and none once both finished', async () => {
    const repo = 'paused/app';
    const first = await startUpload(server.url, repo);
    const second = await startUpload(server.url, repo);
    const headers = { 'content-type': 'application/octet-stream' };
    // The first PATCH is admitted and keeps its body open; the second must wait.
    const a = openRequest(server.url, first.location, { method: 'PATCH', headers });
    await a.write(randomBlob(64 * 1024));
    await waitFor('the first upload writing', async () => ((await scrape(metricsUrl)).value('hoist_uploads_in_progress') === 1 ? true : undefined));
    const b = openRequest(server.url, second.location, { method: 'PATCH', headers });
    await b.write(randomBlob(64 * 1024));
    // Both are uploads in progress; the first reads its body, the second waits paused.
    await waitFor('the second upload waiting, paused', async () => {
      const now = await scrape(metricsUrl);
      const state = [now.value('hoist_uploads_in_progress'), now.value('hoist_http_requests_in_flight'), now.value('hoist_http_paused_sockets')];
      return state.join() === '2,2,1' ? true : undefined;
    });
    a.req.end();
    b.req.end();
    expect((await a.reply).status).toBe(202);
    expect((await b.reply).status).toBe(202);
    const after = await waitFor('nothing in flight', async () => {
      const now = await scrape(metricsUrl);
      return now.value('hoist_http_requests_in_flight') === 0 ? now : undefined;
    });
    expect(after.value('hoist_http_paused_sockets')).toBe(0);
    expect(after.value('hoist_uploads_in_progress')).toBe(0);
    expect(after.value('hoist_upload_received_bytes_total')).toBe(2 * 64 * 1024);
  });
});

describe('metrics of scheduled garbage collection (memory storage)', () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await startServer({ storage: 'memory:', env: { ...METRICS_ENV, HOIST_GC_SCHEDULE: '1s' } });
  });

  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
  });

  it('counts runs and records the last success', async () => {
    const started = Date.now() / 1000;
    const s = await waitFor('a successful scheduled collection', async () => {
      const now = await scrape(metricsUrlOf(server));
      return now.value('hoist_gc_runs_total', { outcome: 'success' })! >= 1 ? now : undefined;
    }, 30_000);
    expect(s.value('hoist_gc_runs_total', { outcome: 'failure' })).toBe(0);
    expect(s.value('hoist_gc_duration_seconds_count')).toBeGreaterThanOrEqual(1);
    expect(s.value('hoist_gc_last_success_timestamp_seconds')).toBeGreaterThanOrEqual(Math.floor(started));
    expect(s.value('hoist_gc_freed_bytes_total')).toBe(0);
  });
});
