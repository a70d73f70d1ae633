import diagnostics from 'node:diagnostics_channel';

/**
 * Tracing hooks instead of per-chunk logs (undici lib/core/diagnostics.js): subscribe with
 * `diagnostics_channel.subscribe('hoist:upload:append', fn)`. Publishers check
 * `hasSubscribers` first, so a message is built only when somebody listens (src/metrics/
 * subscribes when `metrics.listen` is set). Messages carry no credentials; repository names
 * and digests are there for tracing, and metrics must not use them as label values.
 */
export const channels = {
  /** One request's bytes stored: { repository, uploadId, bytes, offset, ms, aborted }. */
  uploadAppend: diagnostics.channel('hoist:upload:append'),
  /**
   * One request body through the upload engine (UploadBodyMessage): how many of its bytes
   * were copied rather than kept as the front end handed them over.
   */
  uploadBody: diagnostics.channel('hoist:upload:body'),
  /** An upload became a blob: { repository, uploadId, digest, size, ms }. */
  uploadCommit: diagnostics.channel('hoist:upload:commit'),
  /** A running hash was rebuilt from storage (the slow path): { uploadId, bytes, ms }. */
  hashRebuild: diagnostics.channel('hoist:hash:rebuild'),
  /** An admitted body was stopped for crawling while others waited (engine/admission.ts): { receivedBytes }. */
  uploadStopped: diagnostics.channel('hoist:upload:stopped'),
  /** A request was answered (HttpRequestMessage): route name, method, status, duration, body bytes. */
  httpRequest: diagnostics.channel('hoist:http:request'),
  /** The request gate decided who may do what (AuthDecisionMessage); only with access control. */
  authDecision: diagnostics.channel('hoist:auth:decision'),
  /** A limit refused a request with 429 (LimitRefusalMessage). */
  limitRefusal: diagnostics.channel('hoist:limit:refusal'),
  /** One storage driver call finished (StorageRequestMessage; src/storage/instrumented.ts). */
  storageRequest: diagnostics.channel('hoist:storage:request'),
  /** One S3 SDK command finished, retries included (S3RequestMessage; src/storage/s3/driver.ts). */
  s3Request: diagnostics.channel('hoist:s3:request'),
  /** A scheduled garbage collection ended (GcRunMessage; src/gc/schedule.ts). */
  gcRun: diagnostics.channel('hoist:gc:run'),
  /** A server replayed the sweep note of a collector that died (GcSweepReplayMessage; src/gc/schedule.ts). */
  gcSweepReplay: diagnostics.channel('hoist:gc:sweep-replay'),
} as const;

export interface UploadBodyMessage {
  readonly uploadId: string;
  /** Body bytes the engine took. */
  readonly bytes: number;
  /**
   * Of those, bytes it copied into its slabs: all of a uWS body (its chunks are gone when
   * the callback returns); none of a node:http one, whose Buffers it keeps and moves to the
   * hashing worker, unless something on the way dropped their ownership.
   */
  readonly copiedBytes: number;
  /** Batches stored and hashed (one storage write and one hashing task each). */
  readonly batches: number;
}

export interface HttpRequestMessage {
  /** A route name of src/http/routes.ts, or 'unmatched'. */
  readonly route: string;
  readonly method: string;
  /** The status sent; 499 when the client went away first. */
  readonly status: number;
  readonly ms: number;
  /** Request body bytes read (uploads, manifests). */
  readonly bytesIn: number;
}

export interface AuthDecisionMessage {
  /** allowed; unauthorized (401: no, wrong or insufficient credentials); denied (403). */
  readonly decision: 'allowed' | 'unauthorized' | 'denied';
}

export interface LimitRefusalMessage {
  /**
   * rate: requests per second; uploads: uploads in flight per client; blob_fetches: a
   * pull-through cache's upstream blob fetches at once (proxy.maxBlobFetches);
   * upstream_requests: its upstream metadata requests at once and waiting (proxy.maxMetadataRequests).
   */
  readonly limit: 'rate' | 'uploads' | 'blob_fetches' | 'upstream_requests';
}

export interface StorageRequestMessage {
  /** The driver's name: fs, memory, s3. */
  readonly driver: string;
  /** A StorageDriver method, or a FileWriter's (write, close, commit, cancel). */
  readonly op: string;
  /** not_found: PathNotFoundError, an answer rather than a failure. */
  readonly outcome: 'ok' | 'not_found' | 'error';
  readonly ms: number;
}

export interface S3RequestMessage {
  /** The SDK command without its `Command` suffix: GetObject, UploadPart, ... */
  readonly operation: string;
  /** HTTP attempts made (1 when the first one answered). */
  readonly attempts: number;
  /** undefined on success; else the S3 error code or the SDK's error name. */
  readonly error: string | undefined;
  readonly ms: number;
}

export interface GcRunMessage {
  /** skipped: another instance held the lease; stopped: shutdown interrupted it. */
  readonly outcome: 'success' | 'failure' | 'skipped' | 'stopped';
  readonly ms: number;
  /** Freed by a successful run (0 otherwise). */
  readonly objects: number;
  readonly bytes: number;
}

export interface GcSweepReplayMessage {
  /** '' for the default registry, else the namespace's name. */
  readonly registry: string;
  /** Objects put back. */
  readonly restored: number;
}
