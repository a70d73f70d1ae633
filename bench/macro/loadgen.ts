import { createHash, randomBytes, randomFillSync, type Hash } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

/**
 * Load generator: pushes blobs through the OCI distribution API (spec v1.1 "Pushing blobs")
 * at a given concurrency, then optionally pulls them back, and reports throughput and latency.
 * Usable on its own against any registry:
 *
 *   node dist/bench/macro/loadgen.js --url http://127.0.0.1:5000 --mode chunked \
 *     --count 16 --size 64MiB --chunk 8MiB --concurrency 16 --pull
 *
 * Against a registry that needs a login: `--user name:password` (HTTP basic auth), and an
 * https:// URL works too. Streamed pushes use chunked transfer encoding, as docker does;
 * `--stream-length` declares a Content-Length instead (as skopeo and containerd do).
 *
 * The client is node:http with a keep-alive Agent. Measured here against a discard server
 * (64 MiB PUTs, concurrency 1 and 8): node:http ~1.8-3.5 GiB/s, fetch (undici) ~350-650 MiB/s,
 * so fetch would cap the very thing we measure.
 */

export type PushMode = 'monolithic' | 'monolithic-post' | 'streamed' | 'chunked';

export interface LoadOptions {
  url: string;
  /** `user:password` for HTTP basic auth. */
  user?: string;
  repo: string;
  mode: PushMode;
  count: number;
  sizeBytes: number;
  concurrency: number;
  /** Chunk size for `chunked` mode. */
  chunkBytes: number;
  /** Streamed PATCH: send Content-Length instead of chunked transfer encoding. */
  streamLength?: boolean;
  /** Body bytes sent (pushes) or received (pulls) so far, for a progress display. */
  progress?: { bytes: number };
  /**
   * Called before the closing PUT of streamed and chunked pushes, e.g. to look at the
   * storage's half-finished upload. Its time is taken out of the blob's latency and the
   * phase's wall time, which is exact at concurrency 1.
   */
  beforePut?: (i: number) => Promise<void>;
}

export interface BlobRef { digest: string; sizeBytes: number }

export interface PhaseResult {
  bytes: number;
  requests: number;
  ok: number;
  errors: number;
  /** First few error messages, for the report. */
  errorSamples: string[];
  wallMs: number;
  mibPerSec: number;
  reqPerSec: number;
  /** Per-blob latency: POST to committed for pushes, request to last byte for pulls. */
  p50Ms: number;
  p99Ms: number;
  /**
   * Latency of the closing `PUT ?digest=` (no body) of streamed and chunked pushes: the time
   * the registry takes to check the digest and make the blob durable and visible.
   */
  putP50Ms?: number;
  putP99Ms?: number;
  /** Single-request POST pushes the registry answered with 202 (it then got a PUT). */
  fallbacks: number;
}

export const MiB = 1024 ** 2;
const UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, kib: 1024, m: MiB, mib: MiB, g: 1024 ** 3, gib: 1024 ** 3 };

/** `64MiB`, `512k`, `1GiB`, or a plain number of bytes; all units binary. */
export function parseBytes(v: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(v);
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new Error(`not a byte size: ${v}`);
  return Math.round(Number(m[1]) * unit);
}

export function formatBytes(n: number): string {
  for (const [u, f] of [['GiB', 1024 ** 3], ['MiB', MiB], ['KiB', 1024]] as const) {
    if (n >= f && n % f === 0) return `${n / f} ${u}`;
  }
  return `${n} B`;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

const IDLE_TIMEOUT_MS = 60_000;

interface Reply { status: number; headers: http.IncomingHttpHeaders; text: string }

class Client {
  readonly #base: URL;
  readonly #agent: http.Agent;
  readonly #auth: Record<string, string>;
  requests = 0;

  constructor(url: string, concurrency: number, user?: string) {
    this.#base = new URL(url);
    if (this.#base.protocol !== 'http:' && this.#base.protocol !== 'https:') throw new Error(`not an http(s) URL: ${url}`);
    const opts = { keepAlive: true, maxSockets: concurrency, maxFreeSockets: concurrency };
    this.#agent = this.#base.protocol === 'https:' ? new https.Agent(opts) : new http.Agent(opts);
    this.#auth = user ? { authorization: `Basic ${Buffer.from(user).toString('base64')}` } : {};
  }

  resolve(pathOrUrl: string): URL { return new URL(pathOrUrl, this.#base); }

  /**
   * One request. `body` is a whole buffer (sent with Content-Length unless the caller set
   * transfer-encoding) or a writer for streamed bodies. `onData` receives response bytes;
   * without it, up to 4 KiB of the body is kept as text for error messages.
   */
  request(method: string, url: URL, headers: Record<string, string | number>, body?: Buffer | ((req: http.ClientRequest) => Promise<void>), onData?: (chunk: Buffer) => void): Promise<Reply> {
    this.requests++;
    // Credentials go only to the registry itself, not to a storage backend it redirects to.
    const auth = url.host === this.#base.host ? this.#auth : {};
    // A redirect may lead to another scheme; the keep-alive agent serves the registry's.
    const mod = url.protocol === 'https:' ? https : http;
    const agent = url.protocol === this.#base.protocol ? this.#agent : undefined;
    return new Promise((resolve, reject) => {
      const req = mod.request(url, { method, agent, headers: { ...auth, ...headers } }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => {
          if (onData) onData(c);
          else if (text.length < 4096) text += c.toString('utf8', 0, 4096);
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text }));
        res.on('error', reject);
      });
      req.on('error', reject);
      // A stalled server must not hang the benchmark: fail the blob after a minute without progress.
      req.setTimeout(IDLE_TIMEOUT_MS, () => req.destroy(new Error(`no progress for ${IDLE_TIMEOUT_MS / 1000} s`)));
      if (body === undefined) req.end();
      else if (Buffer.isBuffer(body)) req.end(body);
      else body(req).then(() => req.end(), (err: Error) => req.destroy(err));
    });
  }

  close(): void { this.#agent.destroy(); }
}

class BlobError extends Error {}

function expect(step: string, r: Reply, status: number): void {
  if (r.status !== status) throw new BlobError(`${step}: HTTP ${r.status}, want ${status}: ${r.text.replace(/\s+/g, ' ').trim().slice(0, 200)}`);
}

function location(step: string, r: Reply): string {
  const loc = r.headers.location;
  if (!loc) throw new BlobError(`${step}: no Location header`);
  return loc;
}

function checkCommitted(step: string, r: Reply, digest: string): void {
  expect(step, r, 201);
  if (r.headers['docker-content-digest'] !== digest) {
    throw new BlobError(`${step}: Docker-Content-Digest ${String(r.headers['docker-content-digest'])}, want ${digest}`);
  }
}

function withDigest(c: Client, loc: string, digest: string): URL {
  const u = c.resolve(loc);
  u.searchParams.set('digest', digest);
  return u;
}

const octet = 'application/octet-stream';

/** Waits for 'drain', or 'close' when the server gave up on the request mid-body. */
function drained(req: http.ClientRequest): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => { req.off('drain', done); req.off('close', done); resolve(); };
    req.on('drain', done);
    req.on('close', done);
  });
}

/** Streamed bodies are written in slices so backpressure applies; subarray copies nothing. */
const STREAM_SLICE_BYTES = MiB;

/** Writes the pieces of a body, waiting for 'drain' when the socket's buffer is full. */
function writer(pieces: Buffer[], progress?: { bytes: number }): (req: http.ClientRequest) => Promise<void> {
  return async (req) => {
    for (const p of pieces) {
      const more = req.write(p);
      if (progress) progress.bytes += p.length;
      if (!more) await drained(req);
      if (req.destroyed) return;
    }
  };
}

export interface PushTimes { fallbacks: number; putMs?: number; pausedMs?: number }

async function pushOne(c: Client, o: LoadOptions, blobs: BlobSet, i: number): Promise<PushTimes> {
  const digest = blobs.digests[i]!;
  const size = blobs.sizeBytes;
  const whole = (): ((req: http.ClientRequest) => Promise<void>) => writer(blobs.pieces(i, 0, size), o.progress);
  const uploads = c.resolve(`/v2/${o.repo}/blobs/uploads/`);
  if (o.mode === 'monolithic-post') {
    uploads.searchParams.set('digest', digest);
    const r = await c.request('POST', uploads, { 'content-type': octet, 'content-length': size }, whole());
    if (r.status === 201) { checkCommitted('POST ?digest', r, digest); return { fallbacks: 0 }; }
    // The spec lets a registry ignore a single-request upload and open a session (202).
    expect('POST ?digest', r, 202);
    const put = await c.request('PUT', withDigest(c, location('POST', r), digest), { 'content-type': octet, 'content-length': size }, whole());
    checkCommitted('PUT', put, digest);
    return { fallbacks: 1 };
  }
  const start = await c.request('POST', uploads, { 'content-length': 0 });
  expect('POST', start, 202);
  let loc = location('POST', start);
  if (o.mode === 'monolithic') {
    const put = await c.request('PUT', withDigest(c, loc, digest), { 'content-type': octet, 'content-length': size }, whole());
    checkCommitted('PUT', put, digest);
    return { fallbacks: 0 };
  }
  if (o.mode === 'streamed') {
    // Docker streams a layer as one PATCH with chunked transfer encoding; skopeo and
    // containerd declare its length (--stream-length).
    const headers: Record<string, string | number> = { 'content-type': octet };
    if (o.streamLength) headers['content-length'] = size;
    else headers['transfer-encoding'] = 'chunked';
    const r = await c.request('PATCH', c.resolve(loc), headers, whole());
    expect('PATCH', r, 202);
    loc = location('PATCH', r);
  } else {
    for (let off = 0; off < size; off += o.chunkBytes) {
      const end = Math.min(size, off + o.chunkBytes);
      const r = await c.request('PATCH', c.resolve(loc), { 'content-type': octet, 'content-length': end - off, 'content-range': `${off}-${end - 1}` },
        writer(blobs.pieces(i, off, end), o.progress));
      expect('PATCH', r, 202);
      // OCI: Range is the inclusive range of bytes the registry has so far.
      if (r.headers.range !== undefined && r.headers.range !== `0-${end - 1}`) throw new BlobError(`PATCH: Range ${r.headers.range}, want 0-${end - 1}`);
      loc = location('PATCH', r);
    }
  }
  let pausedMs = 0;
  if (o.beforePut) {
    const t = performance.now();
    await o.beforePut(i);
    pausedMs = performance.now() - t;
  }
  const t = performance.now();
  const put = await c.request('PUT', withDigest(c, loc, digest), { 'content-length': 0 });
  const putMs = performance.now() - t;
  checkCommitted('PUT', put, digest);
  return { fallbacks: 0, putMs, pausedMs };
}

/** Bytes that differ per blob: the blob index and a per-run nonce, at the end of each blob. */
const TAIL_BYTES = 16;

/**
 * The blobs of one push: `count` blobs of `sizeBytes` that share one random buffer except
 * for their last 16 bytes (blob index and a per-set nonce), so every blob has its own digest
 * while the load generator holds one blob's worth of memory however many are in flight.
 *
 * Digests are computed before the clock starts. The shared prefix is hashed once and each
 * blob's digest is a copy of that SHA-256 state updated with its 16-byte tail: precomputing
 * 16 x 256 MiB of blobs costs one blob's hashing.
 */
export class BlobSet {
  readonly #base: Buffer;
  readonly #nonce = randomBytes(8);
  readonly #tailAt: number;
  readonly digests: string[] = [];
  readonly sizeBytes: number;

  constructor(count: number, sizeBytes: number) {
    this.sizeBytes = sizeBytes;
    this.#base = randomFillSync(Buffer.allocUnsafe(sizeBytes));
    this.#tailAt = Math.max(0, sizeBytes - TAIL_BYTES);
    const prefix = createHash('sha256').update(this.#base.subarray(0, this.#tailAt));
    for (let i = 0; i < count; i++) {
      const h: Hash = prefix.copy();
      this.digests.push(`sha256:${h.update(this.#tail(i)).digest('hex')}`);
    }
  }

  #tail(i: number): Buffer {
    const t = Buffer.alloc(TAIL_BYTES);
    t.writeUInt32BE(i, 0);
    this.#nonce.copy(t, 4);
    return t.subarray(0, this.sizeBytes - this.#tailAt);
  }

  /**
   * Bytes [start, end) of blob i as pieces of at most 1 MiB: views of the shared buffer, and
   * a small copy for whatever overlaps the blob's own tail.
   */
  pieces(i: number, start: number, end: number): Buffer[] {
    const out: Buffer[] = [];
    const shared = Math.min(end, this.#tailAt);
    for (let off = start; off < shared; off += STREAM_SLICE_BYTES) out.push(this.#base.subarray(off, Math.min(shared, off + STREAM_SLICE_BYTES)));
    if (end > this.#tailAt) out.push(this.#tail(i).subarray(Math.max(0, start - this.#tailAt), end - this.#tailAt));
    return out;
  }

  refs(): BlobRef[] { return this.digests.map((digest) => ({ digest, sizeBytes: this.sizeBytes })); }
}

export interface JobsResult {
  okIdx: number[];
  errors: number;
  errorSamples: string[];
  wallMs: number;
  p50Ms: number;
  p99Ms: number;
  putP50Ms?: number;
  putP99Ms?: number;
  fallbacks: number;
}

/**
 * Runs `count` jobs over `concurrency` workers that take the next index as they free up.
 * A job returns how many single-request fallbacks it needed and how long its closing PUT
 * took, or throws to count an error.
 */
export async function runJobs(count: number, concurrency: number, job: (i: number) => Promise<PushTimes>): Promise<JobsResult> {
  const latencies: number[] = [];
  const puts: number[] = [];
  const errorSamples: string[] = [];
  const okIdx: number[] = [];
  let next = 0;
  let errors = 0;
  let fallbacks = 0;
  let pausedMs = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, async () => {
    for (let i = next++; i < count; i = next++) {
      const t = performance.now();
      try {
        // Not `fallbacks += await ...`: that reads `fallbacks` before awaiting and loses updates.
        const r = await job(i);
        fallbacks += r.fallbacks;
        pausedMs += r.pausedMs ?? 0;
        if (r.putMs !== undefined) puts.push(r.putMs);
        latencies.push(performance.now() - t - (r.pausedMs ?? 0));
        okIdx.push(i);
      } catch (err) {
        errors++;
        if (errorSamples.length < 5) errorSamples.push((err as Error).message);
      }
    }
  }));
  const wallMs = performance.now() - t0 - pausedMs;
  latencies.sort((a, b) => a - b);
  puts.sort((a, b) => a - b);
  return {
    okIdx, errors, errorSamples, wallMs, p50Ms: percentile(latencies, 50), p99Ms: percentile(latencies, 99), fallbacks,
    ...(puts.length ? { putP50Ms: percentile(puts, 50), putP99Ms: percentile(puts, 99) } : {}),
  };
}

export function finish(r: JobsResult, bytes: number, requests: number): PhaseResult {
  const s = r.wallMs / 1000;
  return {
    bytes, requests, ok: r.okIdx.length, errors: r.errors, errorSamples: r.errorSamples, wallMs: r.wallMs,
    mibPerSec: bytes / MiB / s, reqPerSec: requests / s, p50Ms: r.p50Ms, p99Ms: r.p99Ms, fallbacks: r.fallbacks,
    ...(r.putP50Ms !== undefined ? { putP50Ms: r.putP50Ms, putP99Ms: r.putP99Ms } : {}),
  };
}

/** Pushes `o.count` blobs; the caller builds the BlobSet (untimed) so its cost stays out. */
export async function push(o: LoadOptions, blobs: BlobSet): Promise<PhaseResult & { blobs: BlobRef[] }> {
  const c = new Client(o.url, o.concurrency, o.user);
  try {
    const r = await runJobs(o.count, o.concurrency, (i) => pushOne(c, o, blobs, i));
    const refs = blobs.refs();
    return { ...finish(r, r.okIdx.length * o.sizeBytes, c.requests), blobs: r.okIdx.sort((a, b) => a - b).map((i) => refs[i]!) };
  } finally {
    c.close();
  }
}

/**
 * GETs each blob and checks its length and Docker-Content-Digest. The body is not hashed:
 * one client core would then cap pulls at SHA-256 speed.
 */
export async function pull(o: Pick<LoadOptions, 'url' | 'user' | 'repo' | 'concurrency' | 'progress'>, blobs: BlobRef[]): Promise<PhaseResult> {
  const c = new Client(o.url, o.concurrency, o.user);
  let bytes = 0;
  try {
    const r = await runJobs(blobs.length, o.concurrency, async (i) => {
      const b = blobs[i]!;
      let url = c.resolve(`/v2/${o.repo}/blobs/${b.digest}`);
      let n = 0;
      const count = (chunk: Buffer): void => {
        n += chunk.length;
        if (o.progress) o.progress.bytes += chunk.length;
      };
      let res = await c.request('GET', url, {}, undefined, count);
      // Registries with redirecting storage answer 307 to the backend's URL.
      if (res.status === 307 && res.headers.location) {
        url = c.resolve(res.headers.location);
        if (o.progress) o.progress.bytes -= n;
        n = 0;
        res = await c.request('GET', url, {}, undefined, count);
      }
      expect('GET', { ...res, text: '' }, 200);
      if (n !== b.sizeBytes) throw new BlobError(`GET: ${n} bytes, want ${b.sizeBytes}`);
      const d = res.headers['docker-content-digest'];
      if (d !== undefined && d !== b.digest) throw new BlobError(`GET: Docker-Content-Digest ${d}, want ${b.digest}`);
      bytes += n;
      return { fallbacks: 0 };
    });
    return finish(r, bytes, c.requests);
  } finally {
    c.close();
  }
}

export function summary(name: string, r: PhaseResult): string {
  const err = r.errors ? `  errors ${r.errors} (${r.errorSamples[0] ?? ''})` : '';
  const put = r.putP50Ms !== undefined ? `  PUT ?digest= p50 ${r.putP50Ms.toFixed(0)} ms` : '';
  return `${name}: ${r.mibPerSec.toFixed(1)} MiB/s  ${r.reqPerSec.toFixed(1)} req/s  p50 ${r.p50Ms.toFixed(0)} ms  p99 ${r.p99Ms.toFixed(0)} ms${put}  ` +
    `${r.ok} ok in ${(r.wallMs / 1000).toFixed(2)} s${err}`;
}

async function main(): Promise<void> {
  const { values: v } = parseArgs({
    options: {
      url: { type: 'string', default: 'http://127.0.0.1:5000' },
      user: { type: 'string' },
      repo: { type: 'string', default: 'bench/loadgen' },
      mode: { type: 'string', default: 'streamed' },
      count: { type: 'string', default: '16' },
      size: { type: 'string', default: '64MiB' },
      chunk: { type: 'string', default: '8MiB' },
      concurrency: { type: 'string', short: 'c', default: '16' },
      'stream-length': { type: 'boolean', default: false },
      pull: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (v.help) {
    console.log(`usage: loadgen [--url URL] [--user u:p] [--repo NAME] [--mode monolithic|monolithic-post|streamed|chunked]
               [--count N] [--size 64MiB] [--chunk 8MiB] [-c N] [--stream-length] [--pull] [--json]`);
    return;
  }
  const modes: PushMode[] = ['monolithic', 'monolithic-post', 'streamed', 'chunked'];
  if (!modes.includes(v.mode as PushMode)) throw new Error(`--mode must be one of ${modes.join(', ')}`);
  const o: LoadOptions = {
    url: v.url!, repo: v.repo!, mode: v.mode as PushMode, count: Number(v.count), sizeBytes: parseBytes(v.size!),
    chunkBytes: parseBytes(v.chunk!), concurrency: Number(v.concurrency), streamLength: v['stream-length']!,
    ...(v.user ? { user: v.user } : {}),
  };
  const pushed = await push(o, new BlobSet(o.count, o.sizeBytes));
  const pulled = v.pull ? await pull(o, pushed.blobs) : undefined;
  if (v.json) console.log(JSON.stringify({ options: { ...o, user: undefined }, push: { ...pushed, blobs: undefined }, pull: pulled }, null, 2));
  else {
    console.log(summary(`push ${o.count} x ${formatBytes(o.sizeBytes)} ${o.mode}`, pushed));
    if (pulled) console.log(summary(`pull ${pushed.blobs.length} x ${formatBytes(o.sizeBytes)}`, pulled));
  }
  if (pushed.errors || pulled?.errors) process.exitCode = 1;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err: Error) => { console.error(err.message); process.exit(2); });
}
