import diagnostics from 'node:diagnostics_channel';
import { collectDefaultMetrics, Counter, exponentialBuckets, Gauge, Histogram, Registry } from 'prom-client';
import {
  channels, type AuthDecisionMessage, type GcRunMessage, type HttpRequestMessage, type LimitRefusalMessage, type S3RequestMessage,
  type StorageRequestMessage,
} from '../diagnostics.js';

/**
 * Hoist's Prometheus metrics: the one registry of them, and the only module that imports
 * prom-client. The registry core, the engine, the HTTP layer and the storage drivers know
 * nothing of it: they publish on node:diagnostics_channel (src/diagnostics.ts), which this
 * module subscribes to, and expose a few plain getters (pool sizes, paused sockets) that the
 * gauges read when Prometheus scrapes, so that no hot path does metrics work.
 *
 * Conventions (prometheus.io/docs/practices/naming): `hoist_` prefix, base units in names
 * (`_seconds`, `_bytes`), `_total` on counters. Label values come from small fixed sets
 * (route names, methods, status codes, driver operations, S3 command names, error codes):
 * never repository names, digests, upload ids or users, which would make a series per push.
 * README "Running it" lists every metric.
 */

/** What the gauges read at scrape time. Structural, so this module imports no engine code. */
export interface MetricSources {
  readonly hashPool: { readonly threads: number; readonly busyThreads: number; readonly queueSize: number };
  readonly slabs: { readonly maxSlabs: number; readonly slabBytes: number; readonly inUse: number; readonly waiting: number };
  readonly frontend: { readonly kind: string; readonly inFlight: number; readonly pausedSockets: number };
  /** Bytes of the storage driver's read buffers in use now (0: it has none). */
  readBufferBytes(): number;
  /** Bytes of the storage driver's write buffers (S3 parts) in use now, and held in all (in use or kept free). */
  writeBufferBytes(): { inUse: number; held: number };
  /** Uploads with a request writing to them now, over every registry (namespaces included). */
  uploadsInProgress(): number;
  /** Blob fetches from upstreams in flight now, over every pull-through cache (src/proxy/). */
  proxyBlobFetches(): number;
  /** Bytes of upstream blob fetches that clients receiving them live have not read yet, process-wide (src/proxy/blob-flight.ts). */
  proxyClientBufferedBytes(): number;
  /** The storage driver's name (fs, memory, s3), for hoist_info. */
  readonly storage: string;
}

/** Methods of the protocol; anything else a client invents counts as OTHER. */
const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);
/** Distinct S3 error codes kept as label values; past this many, `other` (a runaway store cannot blow up the series). */
const MAX_S3_ERROR_CODES = 32;

/** Seconds: request latencies from a cached HEAD to a multi-GiB PATCH. */
const LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
/** Seconds: storage calls, from a memory read to a slow S3 part. */
const STORAGE_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
/** Bytes: 1 KiB to 4 GiB, ×4. */
const SIZE_BUCKETS = exponentialBuckets(1024, 4, 12);
/** Seconds: a collection takes from well under a second (small fs store) to hours (huge bucket). */
const GC_BUCKETS = [0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200];

export class HoistMetrics {
  readonly registry = new Registry();
  readonly #unsubscribe: Array<() => void> = [];
  readonly #s3ErrorCodes = new Set<string>();

  constructor(sources: MetricSources) {
    const registers = [this.registry];
    // CPU, memory, heap, GC pauses, handles, and event-loop lag (nodejs_eventloop_lag_seconds
    // and its percentiles): prom-client's standard process metrics, under their standard names.
    collectDefaultMetrics({ register: this.registry });

    new Gauge({
      name: 'hoist_info', help: 'Always 1; the labels say which HTTP front end and storage driver this instance runs', registers,
      labelNames: ['frontend', 'storage'],
      collect() {
        this.set({ frontend: sources.frontend.kind, storage: sources.storage }, 1);
      },
    });

    // --- HTTP ---------------------------------------------------------------------------
    const requests = new Counter({
      name: 'hoist_http_requests_total', help: 'Requests answered, by route (src/http/routes.ts; unmatched: none), method and status (499: the client went away)',
      labelNames: ['route', 'method', 'status'], registers,
    });
    const requestSeconds = new Histogram({
      name: 'hoist_http_request_duration_seconds', help: 'Time from a request\'s headers to its answer, by route and method',
      labelNames: ['route', 'method'], buckets: LATENCY_BUCKETS, registers,
    });
    new Gauge({
      name: 'hoist_http_requests_in_flight', help: 'Requests being served now', registers,
      collect() {
        this.set(sources.frontend.inFlight);
      },
    });
    new Gauge({
      name: 'hoist_http_paused_sockets', help: 'Requests whose socket is paused now: their upload waits for room (slabs, hashing, storage)', registers,
      collect() {
        this.set(sources.frontend.pausedSockets);
      },
    });

    // --- uploads ------------------------------------------------------------------------
    const receivedBytes = new Counter({
      name: 'hoist_upload_received_bytes_total', help: 'Blob bytes received in upload request bodies (POST, PATCH, PUT), aborted requests included', registers,
    });
    const committed = new Counter({ name: 'hoist_blobs_committed_total', help: 'Uploads that became blobs (digest verified)', registers });
    const blobBytes = new Histogram({
      name: 'hoist_blob_size_bytes', help: 'Sizes of the blobs committed by uploads', buckets: SIZE_BUCKETS, registers,
    });
    const commitSeconds = new Histogram({
      name: 'hoist_upload_commit_duration_seconds', help: 'Time to finish an upload: its last body (if the finishing request carries one), the digest check, and the commit',
      buckets: LATENCY_BUCKETS, registers,
    });
    new Gauge({
      name: 'hoist_uploads_in_progress', help: 'Uploads with a request writing to them now', registers,
      collect() {
        this.set(sources.uploadsInProgress());
      },
    });
    const rebuilds = new Counter({
      name: 'hoist_hash_rebuilds_total', help: 'Running hashes rebuilt by re-reading stored bytes (an upload continued on another instance, or after a restart)', registers,
    });
    const rebuildBytes = new Counter({ name: 'hoist_hash_rebuild_bytes_total', help: 'Bytes re-read from storage to rebuild running hashes', registers });

    // --- pull-through caches -------------------------------------------------------------
    new Gauge({
      name: 'hoist_proxy_blob_fetches', help: 'Blob fetches from upstream registries in flight now (at most proxy.maxBlobFetches per cache)', registers,
      collect() {
        this.set(sources.proxyBlobFetches());
      },
    });
    new Gauge({
      name: 'hoist_proxy_client_buffered_bytes', help: 'Bytes of blobs being fetched from upstream registries that clients receiving them live have not read yet (counted per client)', registers,
      collect() {
        this.set(sources.proxyClientBufferedBytes());
      },
    });

    // --- engine -------------------------------------------------------------------------
    new Gauge({
      name: 'hoist_hash_pool_threads', help: 'Hashing worker threads', registers,
      collect() {
        this.set(sources.hashPool.threads);
      },
    });
    new Gauge({
      name: 'hoist_hash_pool_busy_threads', help: 'Hashing worker threads running a task now', registers,
      collect() {
        this.set(sources.hashPool.busyThreads);
      },
    });
    new Gauge({
      name: 'hoist_hash_pool_queue_depth', help: 'Hashing tasks waiting for a worker', registers,
      collect() {
        this.set(sources.hashPool.queueSize);
      },
    });
    new Gauge({
      name: 'hoist_slab_pool_slabs', help: 'Slabs (upload buffers of uploads.chunkBytes) the pool may hand out: uploads.maxBufferedBytes / uploads.chunkBytes', registers,
      collect() {
        this.set(sources.slabs.maxSlabs);
      },
    });
    new Gauge({
      name: 'hoist_slab_pool_slabs_in_use', help: 'Slabs holding upload bytes now', registers,
      collect() {
        this.set(sources.slabs.inUse);
      },
    });
    new Gauge({
      name: 'hoist_slab_pool_waiting_uploads', help: 'Upload requests waiting for a free slab (their sockets are paused)', registers,
      collect() {
        this.set(sources.slabs.waiting);
      },
    });

    // --- storage ------------------------------------------------------------------------
    new Gauge({
      name: 'hoist_read_buffers_in_use_bytes', help: 'Bytes of the buffers blob reads from storage hold now (fs, S3 over http://): at most 64 MiB; past that, reads use small private buffers', registers,
      collect() {
        this.set(sources.readBufferBytes());
      },
    });
    new Gauge({
      name: 'hoist_write_buffers_in_use_bytes', help: 'Bytes of the S3 part buffers uploads hold now (parts being filled, parts in flight, held tails): at most maxBufferedBytes', registers,
      collect() {
        this.set(sources.writeBufferBytes().inUse);
      },
    });
    new Gauge({
      name: 'hoist_write_buffers_held_bytes', help: 'Bytes of the S3 part buffers made and not let go of (in use, or free and kept): back to 1 + maxPartsInFlight parts once none is in use', registers,
      collect() {
        this.set(sources.writeBufferBytes().held);
      },
    });
    const storageRequests = new Counter({
      name: 'hoist_storage_requests_total', help: 'Storage driver calls, by driver, operation and outcome (ok, not_found, error)',
      labelNames: ['driver', 'op', 'outcome'], registers,
    });
    const storageSeconds = new Histogram({
      name: 'hoist_storage_request_duration_seconds', help: 'Storage driver call latency, by driver and operation (reader: until the stream is open)',
      labelNames: ['driver', 'op'], buckets: STORAGE_BUCKETS, registers,
    });
    const s3Requests = new Counter({
      name: 'hoist_s3_requests_total', help: 'S3 API commands, by operation and outcome (ok, error), each counted once whatever its retries',
      labelNames: ['operation', 'outcome'], registers,
    });
    const s3Retries = new Counter({
      name: 'hoist_s3_retries_total', help: 'Extra HTTP attempts the S3 client made (503 SlowDown, 500s, resets), by operation',
      labelNames: ['operation'], registers,
    });
    const s3Errors = new Counter({
      name: 'hoist_s3_errors_total', help: 'S3 commands that failed after their retries, by operation and error code (NoSuchKey and friends are answers the driver expects)',
      labelNames: ['operation', 'code'], registers,
    });
    const s3Seconds = new Histogram({
      name: 'hoist_s3_request_duration_seconds', help: 'S3 command latency, retries included, by operation',
      labelNames: ['operation'], buckets: STORAGE_BUCKETS, registers,
    });

    // --- garbage collection -------------------------------------------------------------
    const gcRuns = new Counter({
      name: 'hoist_gc_runs_total', help: 'Scheduled garbage collections, by outcome (success, failure, skipped: another instance held the lease, stopped: shutdown)',
      labelNames: ['outcome'], registers,
    });
    const gcSeconds = new Histogram({
      name: 'hoist_gc_duration_seconds', help: 'Duration of scheduled collections that ran (success or failure)', buckets: GC_BUCKETS, registers,
    });
    const gcObjects = new Counter({ name: 'hoist_gc_freed_objects_total', help: 'Objects removed by scheduled collections (tags, manifests, links, blobs, uploads, markers)', registers });
    const gcBytes = new Counter({ name: 'hoist_gc_freed_bytes_total', help: 'Bytes freed by scheduled collections', registers });
    const gcLastSuccess = new Gauge({
      name: 'hoist_gc_last_success_timestamp_seconds', help: 'When the last scheduled collection on this instance succeeded (Unix time; 0: none yet)', registers,
    });
    for (const outcome of ['success', 'failure', 'skipped', 'stopped']) gcRuns.inc({ outcome }, 0);
    const gcSweepReplays = new Counter({
      name: 'hoist_gc_sweep_replays_total',
      help: 'Sweep notes of a collector that died mid-batch that this instance replayed between collections (src/gc/schedule.ts startSweepWatch)',
      registers,
    });

    // --- access -------------------------------------------------------------------------
    const authDecisions = new Counter({
      name: 'hoist_auth_decisions_total', help: 'Access decisions with access control configured: allowed, unauthorized (401), denied (403)',
      labelNames: ['decision'], registers,
    });
    const limitRefusals = new Counter({
      name: 'hoist_limit_refusals_total',
      help: 'Requests refused with 429 by a limit: rate (limits.requestsPerSecond), uploads (limits.maxConcurrentUploads), blob_fetches (proxy.maxBlobFetches), upstream_requests (proxy.maxMetadataRequests)',
      labelNames: ['limit'], registers,
    });
    const stoppedBodies = new Counter({
      name: 'hoist_upload_bodies_stopped_total',
      help: 'Upload bodies stopped with 503 for bringing under 1 MiB in 10 s while other uploads waited for storage buffers, or under 256 KiB in 2.5 s while one whose body was there waited (S3; src/engine/admission.ts)',
      registers,
    });
    for (const decision of ['allowed', 'unauthorized', 'denied']) authDecisions.inc({ decision }, 0);
    for (const limit of ['rate', 'uploads', 'blob_fetches', 'upstream_requests']) limitRefusals.inc({ limit }, 0);

    // --- subscriptions ------------------------------------------------------------------
    this.#on(channels.httpRequest, (m: HttpRequestMessage) => {
      const method = METHODS.has(m.method) ? m.method : 'OTHER';
      requests.inc({ route: m.route, method, status: String(m.status) });
      requestSeconds.observe({ route: m.route, method }, m.ms / 1000);
      if ((m.route === 'uploads' || m.route === 'upload') && m.bytesIn > 0) receivedBytes.inc(m.bytesIn);
    });
    this.#on(channels.uploadCommit, (m: { size: number; ms: number }) => {
      committed.inc();
      blobBytes.observe(m.size);
      commitSeconds.observe(m.ms / 1000);
    });
    this.#on(channels.hashRebuild, (m: { bytes: number }) => {
      rebuilds.inc();
      rebuildBytes.inc(m.bytes);
    });
    this.#on(channels.uploadStopped, () => stoppedBodies.inc());
    this.#on(channels.storageRequest, (m: StorageRequestMessage) => {
      storageRequests.inc({ driver: m.driver, op: m.op, outcome: m.outcome });
      storageSeconds.observe({ driver: m.driver, op: m.op }, m.ms / 1000);
    });
    this.#on(channels.s3Request, (m: S3RequestMessage) => {
      s3Requests.inc({ operation: m.operation, outcome: m.error === undefined ? 'ok' : 'error' });
      if (m.attempts > 1) s3Retries.inc({ operation: m.operation }, m.attempts - 1);
      if (m.error !== undefined) s3Errors.inc({ operation: m.operation, code: this.#s3ErrorCode(m.error) });
      s3Seconds.observe({ operation: m.operation }, m.ms / 1000);
    });
    this.#on(channels.gcRun, (m: GcRunMessage) => {
      gcRuns.inc({ outcome: m.outcome });
      if (m.outcome === 'success' || m.outcome === 'failure') gcSeconds.observe(m.ms / 1000);
      if (m.outcome === 'success') {
        gcObjects.inc(m.objects);
        gcBytes.inc(m.bytes);
        gcLastSuccess.set(Date.now() / 1000);
      }
    });
    this.#on(channels.gcSweepReplay, () => gcSweepReplays.inc());
    this.#on(channels.authDecision, (m: AuthDecisionMessage) => authDecisions.inc({ decision: m.decision }));
    this.#on(channels.limitRefusal, (m: LimitRefusalMessage) => limitRefusals.inc({ limit: m.limit }));
  }

  /** The Prometheus text exposition (format 0.0.4). */
  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** Stops listening to the channels (publishers then skip building messages again). */
  close(): void {
    for (const off of this.#unsubscribe.splice(0)) off();
  }

  #on<T>(channel: diagnostics.Channel, fn: (message: T) => void): void {
    const listener = (message: unknown): void => fn(message as T);
    channel.subscribe(listener);
    this.#unsubscribe.push(() => channel.unsubscribe(listener));
  }

  #s3ErrorCode(code: string): string {
    if (this.#s3ErrorCodes.has(code)) return code;
    if (this.#s3ErrorCodes.size >= MAX_S3_ERROR_CODES || !/^[A-Za-z0-9_.-]{1,64}$/.test(code)) return 'other';
    this.#s3ErrorCodes.add(code);
    return code;
  }
}
