import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { channels } from '../../../src/diagnostics.js';
import { HashPool } from '../../../src/engine/hash-pool.js';
import { SlabPool } from '../../../src/engine/slab-pool.js';
import { HoistMetrics, type MetricSources } from '../../../src/metrics/metrics.js';

/**
 * The metrics module against the diagnostics channels the rest of Hoist publishes on, and the
 * getters it reads at scrape time (a real slab pool and hashing pool). Scrapes are parsed from
 * the text exposition, as Prometheus reads them.
 */

/** `name{labels} value` lines of a scrape, keyed by `name{labels}` as written. */
function parse(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

let hashPool: HashPool;
beforeAll(() => {
  hashPool = new HashPool({ threads: 1, maxQueue: 16 });
});
afterAll(async () => {
  await hashPool.close();
});

let metrics: HoistMetrics | undefined;
afterEach(() => {
  metrics?.close();
  metrics = undefined;
});

function start(over: Partial<MetricSources> = {}): { metrics: HoistMetrics; slabs: SlabPool; scrape: () => Promise<Map<string, number>> } {
  const slabs = new SlabPool(64 * 1024, 4 * 64 * 1024);
  let uploads = 0;
  const m = new HoistMetrics({
    hashPool,
    slabs,
    frontend: { kind: 'node', inFlight: 3, pausedSockets: 2 },
    uploadsInProgress: () => ++uploads,
    proxyBlobFetches: () => 5,
    proxyClientBufferedBytes: () => 0,
    readBufferBytes: () => 3 * 1024 * 1024,
    writeBufferBytes: () => ({ inUse: 16 * 1024 * 1024, held: 80 * 1024 * 1024 }),
    storage: 'memory',
    ...over,
  });
  metrics = m;
  return { metrics: m, slabs, scrape: async () => parse(await m.metrics()) };
}

describe('HoistMetrics', () => {
  it('counts requests by route, method and status, and times them by route and method', async () => {
    const { scrape } = start();
    channels.httpRequest.publish({ route: 'manifest', method: 'GET', status: 200, ms: 12, bytesIn: 0 });
    channels.httpRequest.publish({ route: 'manifest', method: 'GET', status: 404, ms: 3, bytesIn: 0 });
    channels.httpRequest.publish({ route: 'unmatched', method: 'BREW', status: 405, ms: 1, bytesIn: 0 });
    const s = await scrape();
    expect(s.get('hoist_http_requests_total{route="manifest",method="GET",status="200"}')).toBe(1);
    expect(s.get('hoist_http_requests_total{route="manifest",method="GET",status="404"}')).toBe(1);
    expect(s.get('hoist_http_requests_total{route="unmatched",method="OTHER",status="405"}'), 'invented methods are one label value').toBe(1);
    expect(s.get('hoist_http_request_duration_seconds_count{route="manifest",method="GET"}')).toBe(2);
    expect(s.get('hoist_http_request_duration_seconds_sum{route="manifest",method="GET"}')).toBeCloseTo(0.015, 6);
    expect(s.get('hoist_http_request_duration_seconds_bucket{le="0.005",route="manifest",method="GET"}')).toBe(1);
  });

  it('adds up upload bytes (upload routes only), commits, blob sizes and rebuilds', async () => {
    const { scrape } = start();
    channels.httpRequest.publish({ route: 'upload', method: 'PATCH', status: 202, ms: 5, bytesIn: 1000 });
    channels.httpRequest.publish({ route: 'uploads', method: 'POST', status: 201, ms: 5, bytesIn: 24 });
    channels.httpRequest.publish({ route: 'upload', method: 'PATCH', status: 499, ms: 5, bytesIn: 76 });
    channels.httpRequest.publish({ route: 'manifest', method: 'PUT', status: 201, ms: 5, bytesIn: 500 });
    channels.uploadCommit.publish({ repository: 'secret/repo', uploadId: 'u', digest: 'sha256:x', size: 2048, ms: 40 });
    channels.hashRebuild.publish({ uploadId: 'u', bytes: 4096, ms: 9 });
    const s = await scrape();
    expect(s.get('hoist_upload_received_bytes_total')).toBe(1100);
    expect(s.get('hoist_blobs_committed_total')).toBe(1);
    expect(s.get('hoist_blob_size_bytes_sum')).toBe(2048);
    expect(s.get('hoist_blob_size_bytes_bucket{le="1024"}')).toBe(0);
    expect(s.get('hoist_blob_size_bytes_bucket{le="4096"}')).toBe(1);
    expect(s.get('hoist_upload_commit_duration_seconds_sum')).toBeCloseTo(0.04, 6);
    expect(s.get('hoist_hash_rebuilds_total')).toBe(1);
    expect(s.get('hoist_hash_rebuild_bytes_total')).toBe(4096);
  });

  it('reads the engine and front end at scrape time', async () => {
    const { slabs, scrape } = start();
    const held = [slabs.tryAcquire()!, slabs.tryAcquire()!, slabs.tryAcquire()!];
    let s = await scrape();
    expect(s.get('hoist_slab_pool_slabs')).toBe(4);
    expect(s.get('hoist_slab_pool_slabs_in_use')).toBe(3);
    expect(s.get('hoist_slab_pool_waiting_uploads')).toBe(0);
    held.push(slabs.tryAcquire()!);
    const waiting = slabs.acquire();
    s = await scrape();
    expect(s.get('hoist_slab_pool_waiting_uploads')).toBe(1);
    slabs.release(held.pop()!);
    slabs.release(await waiting);
    expect((await scrape()).get('hoist_slab_pool_waiting_uploads')).toBe(0);
    expect(s.get('hoist_hash_pool_threads')).toBe(1);
    expect(s.get('hoist_hash_pool_busy_threads')).toBe(0);
    expect(s.get('hoist_hash_pool_queue_depth')).toBe(0);
    expect(s.get('hoist_http_requests_in_flight')).toBe(3);
    expect(s.get('hoist_http_paused_sockets')).toBe(2);
    expect(s.get('hoist_read_buffers_in_use_bytes')).toBe(3 * 1024 * 1024);
    expect(s.get('hoist_write_buffers_in_use_bytes')).toBe(16 * 1024 * 1024);
    expect(s.get('hoist_write_buffers_held_bytes')).toBe(80 * 1024 * 1024);
    expect(s.get('hoist_info{frontend="node",storage="memory"}')).toBe(1);
    expect(s.get('hoist_proxy_blob_fetches')).toBe(5);
    // uploadsInProgress() is asked at every scrape, not cached.
    const a = (await scrape()).get('hoist_uploads_in_progress')!;
    expect((await scrape()).get('hoist_uploads_in_progress')).toBe(a + 1);
  });

  it('counts storage calls by driver, operation and outcome, and S3 commands with retries and bounded error codes', async () => {
    const { scrape } = start();
    channels.storageRequest.publish({ driver: 's3', op: 'getContent', outcome: 'ok', ms: 20 });
    channels.storageRequest.publish({ driver: 's3', op: 'getContent', outcome: 'not_found', ms: 10 });
    channels.s3Request.publish({ operation: 'PutObject', attempts: 3, error: undefined, ms: 100 });
    channels.s3Request.publish({ operation: 'GetObject', attempts: 1, error: 'NoSuchKey', ms: 5 });
    for (let i = 0; i < 40; i++) channels.s3Request.publish({ operation: 'HeadObject', attempts: 5, error: `Weird${i}`, ms: 1 });
    channels.s3Request.publish({ operation: 'HeadObject', attempts: 1, error: 'not a code!', ms: 1 });
    const s = await scrape();
    expect(s.get('hoist_storage_requests_total{driver="s3",op="getContent",outcome="ok"}')).toBe(1);
    expect(s.get('hoist_storage_requests_total{driver="s3",op="getContent",outcome="not_found"}')).toBe(1);
    expect(s.get('hoist_storage_request_duration_seconds_count{driver="s3",op="getContent"}')).toBe(2);
    expect(s.get('hoist_s3_requests_total{operation="PutObject",outcome="ok"}')).toBe(1);
    expect(s.get('hoist_s3_retries_total{operation="PutObject"}')).toBe(2);
    expect(s.get('hoist_s3_errors_total{operation="GetObject",code="NoSuchKey"}')).toBe(1);
    expect(s.get('hoist_s3_retries_total{operation="HeadObject"}')).toBe(160);
    const codes = [...s.keys()].filter((k) => k.startsWith('hoist_s3_errors_total{'));
    expect(codes.length, 'error codes are capped').toBeLessThanOrEqual(33);
    expect(s.get('hoist_s3_errors_total{operation="HeadObject",code="other"}')).toBe(10);
  });

  it('tracks GC runs, what they freed and the last success', async () => {
    const { scrape } = start();
    let s = await scrape();
    for (const outcome of ['success', 'failure', 'skipped', 'stopped']) expect(s.get(`hoist_gc_runs_total{outcome="${outcome}"}`), 'present at 0 for alerts').toBe(0);
    expect(s.get('hoist_gc_last_success_timestamp_seconds')).toBe(0);
    const before = Date.now() / 1000;
    channels.gcRun.publish({ outcome: 'success', ms: 1500, objects: 12, bytes: 4096 });
    channels.gcRun.publish({ outcome: 'failure', ms: 500, objects: 0, bytes: 0 });
    channels.gcRun.publish({ outcome: 'skipped', ms: 2, objects: 0, bytes: 0 });
    s = await scrape();
    expect(s.get('hoist_gc_runs_total{outcome="success"}')).toBe(1);
    expect(s.get('hoist_gc_runs_total{outcome="failure"}')).toBe(1);
    expect(s.get('hoist_gc_runs_total{outcome="skipped"}')).toBe(1);
    expect(s.get('hoist_gc_duration_seconds_count'), 'skipped runs are not timed').toBe(2);
    expect(s.get('hoist_gc_freed_objects_total')).toBe(12);
    expect(s.get('hoist_gc_freed_bytes_total')).toBe(4096);
    expect(s.get('hoist_gc_last_success_timestamp_seconds')).toBeGreaterThanOrEqual(Math.floor(before));
  });

  it('counts the sweep notes of dead collectors this instance replayed', async () => {
    const { scrape } = start();
    expect((await scrape()).get('hoist_gc_sweep_replays_total'), 'present at 0 for alerts').toBe(0);
    channels.gcSweepReplay.publish({ registry: '', restored: 2 });
    channels.gcSweepReplay.publish({ registry: 'team-a', restored: 0 });
    expect((await scrape()).get('hoist_gc_sweep_replays_total')).toBe(2);
  });

  it('counts auth decisions and limit refusals, each present at 0', async () => {
    const { scrape } = start();
    channels.authDecision.publish({ decision: 'allowed' });
    channels.authDecision.publish({ decision: 'denied' });
    channels.limitRefusal.publish({ limit: 'rate' });
    const s = await scrape();
    expect(s.get('hoist_auth_decisions_total{decision="allowed"}')).toBe(1);
    expect(s.get('hoist_auth_decisions_total{decision="unauthorized"}')).toBe(0);
    expect(s.get('hoist_auth_decisions_total{decision="denied"}')).toBe(1);
    expect(s.get('hoist_limit_refusals_total{limit="rate"}')).toBe(1);
    expect(s.get('hoist_limit_refusals_total{limit="uploads"}')).toBe(0);
  });

  it('exposes the process defaults, event-loop lag included', async () => {
    const { scrape } = start();
    const s = await scrape();
    for (const name of ['process_cpu_seconds_total', 'process_resident_memory_bytes', 'nodejs_eventloop_lag_seconds', 'nodejs_heap_size_used_bytes']) {
      expect(s.has(name), name).toBe(true);
    }
  });

  it('never puts a repository name or digest in a label, and follows the naming conventions', async () => {
    const { metrics: m } = start();
    channels.uploadCommit.publish({ repository: 'secret/repo', uploadId: 'u-1', digest: 'sha256:feedface', size: 1, ms: 1 });
    channels.uploadAppend.publish({ repository: 'secret/repo', uploadId: 'u-1', bytes: 1, offset: 1, ms: 1 });
    const text = await m.metrics();
    for (const leak of ['secret/repo', 'feedface', 'u-1']) expect(text).not.toContain(leak);
    const types = new Map([...text.matchAll(/^# TYPE (hoist_\w+) (\w+)$/gm)].map((x) => [x[1]!, x[2]!]));
    expect(types.size).toBeGreaterThan(30);
    for (const [name, type] of types) {
      if (type === 'counter') expect(name, 'counters end in _total').toMatch(/_total$/);
      else expect(name, 'only counters end in _total').not.toMatch(/_total$/);
      if (type === 'histogram') expect(name, 'histograms carry their unit').toMatch(/_(seconds|bytes)$/);
    }
  });

  it('stops listening on close(): publishers skip building messages again', () => {
    const { metrics: m } = start();
    expect(channels.httpRequest.hasSubscribers).toBe(true);
    m.close();
    expect(channels.httpRequest.hasSubscribers).toBe(false);
    expect(channels.storageRequest.hasSubscribers).toBe(false);
  });
});
