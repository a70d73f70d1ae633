import { DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { createHash, createHmac } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { performance } from 'node:perf_hooks';
import { channels, type S3RequestMessage } from '../../diagnostics.js';
import { correctClock, storeNow } from './clock.js';
import { asUnavailable, type BoundedRetryStrategy, withRetries } from './deadlines.js';
import { errorName, isNoSuchKey, serviceError } from './errors.js';
import { signedPayload } from './writer.js';

/**
 * The small object requests (HeadObject, GetObject, PutObject, DeleteObject of records,
 * locks, writer states, staged pieces), signed here with SigV4 and sent over node:http(s),
 * instead of through the SDK's command stack.
 *
 * Why (bench/HISTORY.md, "S3, sixth round"): an upload makes some 30 of them besides its
 * parts, a chunked one seven per PATCH, and the SDK spends 2-3.5 ms of CPU on each (middleware,
 * endpoint rules, its response wrapper), several times what the request itself costs
 * node:http. Parts, multipart calls and listings stay on the SDK: they are few, or large.
 *
 * What it keeps from the SDK path, so that callers cannot tell them apart:
 * - the URL: the SDK resolves the bucket's endpoint once (a presigned URL for a dummy key,
 *   which says path-style or virtual-hosted, and where); keys are appended to it;
 * - the credentials and region: the SDK client's own providers (refreshed as they expire);
 * - deadlines.ts: connect within `connectTimeoutMs`, no request without progress for
 *   `timeoutMs`, retries by the same BoundedRetryStrategy, then StorageUnavailableError;
 * - errors shaped like the SDK's (`name` the S3 code, or NotFound, NotModified... for
 *   answers without a body; `$metadata.httpStatusCode`, `$metadata.attempts`), so errors.ts
 *   reads both alike;
 * - one `hoist:s3:request` message per operation, as driver.ts's middleware publishes.
 *
 * With `viaSdk` (the storage URL's sdkChecksums=true, which asks for the SDK's own checksums
 * on every upload) the same four go through the SDK's commands instead.
 */
export interface SmallRequestOptions {
  client: S3Client;
  bucket: string;
  httpAgent: http.Agent;
  httpsAgent: https.Agent;
  connectTimeoutMs: number;
  timeoutMs: number;
  retry: BoundedRetryStrategy;
  /** Send through the SDK's commands (see above). */
  viaSdk?: boolean;
}

export interface ObjectHead {
  size: number;
  modTime: Date;
  /** Quotes included, as S3 sends it. */
  etag: string;
}

export interface ObjectContent extends ObjectHead {
  body: Buffer;
}

export interface PutObjectOptions {
  /** The body's SHA-256 (hex) when the caller has it (the hashing pool); else hashed here. */
  sha256?: string;
  /** Create only where no object is: the check and the write are one step on the server. */
  ifNotExists?: boolean;
  contentType?: string;
}

const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
/** The store refused the request's time (our clock is off): the SDK corrects its offset and tries again; so do we. */
const CLOCK_SKEW_CODES = new Set(['RequestTimeTooSkewed', 'RequestExpired', 'RequestInTheFuture', 'InvalidSignatureException', 'SignatureDoesNotMatch']);
/** An error answer's text is read this far (an S3 error document is short). */
const MAX_ERROR_TEXT = 16 * 1024;

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

export class SmallRequests {
  readonly #o: SmallRequestOptions;
  #base: Promise<URL> | undefined;
  readonly #keys = new SigningKeys();

  constructor(o: SmallRequestOptions) {
    this.#o = o;
  }

  async head(key: string): Promise<ObjectHead> {
    if (this.#o.viaSdk) {
      const out = await this.#o.client.send(new HeadObjectCommand({ Bucket: this.#o.bucket, Key: key }));
      return { size: out.ContentLength ?? 0, modTime: out.LastModified ?? new Date(0), etag: out.ETag ?? '' };
    }
    const a = await this.#send('HeadObject', 'HEAD', key, {});
    return headOf(a);
  }

  /** The object's head, or undefined when no object is at `key`. */
  async headIfAny(key: string): Promise<ObjectHead | undefined> {
    try {
      return await this.head(key);
    } catch (err) {
      if (isNoSuchKey(err)) return undefined;
      throw err;
    }
  }

  /** With `ifNoneMatch`, an object that still has that ETag fails with 304 (NotModified). */
  async get(key: string, opts: { ifNoneMatch?: string } = {}): Promise<ObjectContent> {
    if (this.#o.viaSdk) {
      const out = await this.#o.client.send(new GetObjectCommand({ Bucket: this.#o.bucket, Key: key, IfNoneMatch: opts.ifNoneMatch }));
      const bytes = await out.Body!.transformToByteArray().catch((err: unknown) => {
        throw asUnavailable(err, `GetObject of ${key}`);
      });
      const body = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      return { size: body.byteLength, modTime: out.LastModified ?? new Date(0), etag: out.ETag ?? '', body };
    }
    const headers: Record<string, string> = {};
    if (opts.ifNoneMatch !== undefined) headers['if-none-match'] = opts.ifNoneMatch;
    const a = await this.#send('GetObject', 'GET', key, { headers });
    return { ...headOf(a), body: a.body };
  }

  async put(key: string, body: Buffer, opts: PutObjectOptions = {}): Promise<{ etag: string }> {
    if (this.#o.viaSdk) {
      const out = await this.#o.client.send(signedPayload(new PutObjectCommand({
        Bucket: this.#o.bucket, Key: key, Body: body, ContentLength: body.byteLength, ContentType: opts.contentType,
        IfNoneMatch: opts.ifNotExists ? '*' : undefined,
      }), opts.sha256));
      return { etag: out.ETag ?? '' };
    }
    const headers: Record<string, string> = { 'content-length': String(body.byteLength) };
    if (opts.ifNotExists) headers['if-none-match'] = '*';
    if (opts.contentType !== undefined) headers['content-type'] = opts.contentType;
    const a = await this.#send('PutObject', 'PUT', key, { headers, body, sha256: opts.sha256 });
    return { etag: header(a.headers, 'etag') ?? '' };
  }

  async delete(key: string): Promise<void> {
    if (this.#o.viaSdk) {
      await this.#o.client.send(new DeleteObjectCommand({ Bucket: this.#o.bucket, Key: key }));
      return;
    }
    await this.#send('DeleteObject', 'DELETE', key, {});
  }

  /** One operation: attempts within the retry strategy's bounds, reported once. */
  async #send(operation: string, method: string, key: string, r: { headers?: Record<string, string>; body?: Buffer; sha256?: string }): Promise<Answer> {
    const t0 = performance.now();
    const payloadHash = r.body === undefined || r.body.byteLength === 0
      ? EMPTY_SHA256
      : r.sha256 ?? createHash('sha256').update(r.body).digest('hex');
    let attempts = 0;
    try {
      const a = await withRetries(this.#o.retry, operation, async (n) => {
        attempts = n;
        const a = await this.#attempt(method, key, r.headers ?? {}, r.body, payloadHash);
        if (a.status >= 300) {
          // The store's time comes with the error, for #correctClock.
          throw Object.assign(serviceError(a.status, a.body.toString('utf8'), `S3 ${operation} of ${key}`), { serverTime: header(a.headers, 'date') });
        }
        return a;
      }, (err, n) => n === 1 && this.#correctClock(err));
      publish(operation, attempts, undefined, t0);
      return a;
    } catch (err) {
      publish(operation, attempts, errorName((err as { cause?: unknown }).cause ?? err), t0);
      throw err;
    }
  }

  /**
   * After a refusal for a skewed clock: takes the store's time (its Date header) as the SDK
   * does, into the client's systemClockOffset that both sign with. True when that changed
   * the offset by enough to matter, so that one more try can succeed.
   */
  #correctClock(err: unknown): boolean {
    const e = err as { name?: string; $metadata?: { httpStatusCode?: number }; serverTime?: string };
    if (e.$metadata?.httpStatusCode !== 403 || !CLOCK_SKEW_CODES.has(e.name ?? '')) return false;
    return correctClock(this.#o.client, e.serverTime);
  }

  async #attempt(method: string, key: string, extra: Record<string, string>, body: Buffer | undefined, payloadHash: string): Promise<Answer> {
    const base = await this.#baseUrl();
    const url = new URL(base.href + encodeKey(key));
    const [credentials, region] = await Promise.all([this.#o.client.config.credentials(), this.#o.client.config.region()]);
    const now = storeNow(this.#o.client);
    const amzDate = now.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
    const headers: Record<string, string> = {
      ...extra,
      host: url.host,
      'x-amz-content-sha256': payloadHash,
      'x-amz-date': amzDate,
    };
    if (credentials.sessionToken) headers['x-amz-security-token'] = credentials.sessionToken;
    headers.authorization = this.#keys.authorization({
      method, path: url.pathname, headers, payloadHash, amzDate, region,
      accessKeyId: credentials.accessKeyId, secretAccessKey: credentials.secretAccessKey,
    });
    return await exchange(url, method, headers, body, {
      agent: url.protocol === 'https:' ? this.#o.httpsAgent : this.#o.httpAgent,
      connectTimeoutMs: this.#o.connectTimeoutMs,
      timeoutMs: this.#o.timeoutMs,
      keepBody: method === 'GET',
    });
  }

  /** The bucket's URL with a trailing slash, as the SDK resolves it (see above). */
  #baseUrl(): Promise<URL> {
    this.#base ??= getSignedUrl(this.#o.client, new HeadObjectCommand({ Bucket: this.#o.bucket, Key: 'k' }), { expiresIn: 60 }).then((signed) => {
      const u = new URL(signed);
      if (!u.pathname.endsWith('/k')) throw new Error(`S3: cannot tell the bucket's URL from ${u.origin}${u.pathname}`);
      return new URL(`${u.origin}${u.pathname.slice(0, -1)}`);
    });
    this.#base.catch(() => { this.#base = undefined; });
    return this.#base;
  }
}

/** SigV4 (AWS "Signature Version 4 signing process", S3 flavour: the path is encoded once, not twice). */
export class SigningKeys {
  #cached: { id: string; key: Buffer } | undefined;

  authorization(r: {
    method: string; path: string; headers: Record<string, string>; payloadHash: string; amzDate: string; region: string;
    accessKeyId: string; secretAccessKey: string; query?: string;
  }): string {
    const names = Object.keys(r.headers).map((n) => n.toLowerCase()).sort();
    const lower = new Map(Object.entries(r.headers).map(([k, v]) => [k.toLowerCase(), v]));
    const canonicalHeaders = names.map((n) => `${n}:${String(lower.get(n)).trim().replace(/\s+/g, ' ')}\n`).join('');
    const signedHeaders = names.join(';');
    const canonicalRequest = [r.method, r.path, r.query ?? '', canonicalHeaders, signedHeaders, r.payloadHash].join('\n');
    const day = r.amzDate.slice(0, 8);
    const scope = `${day}/${r.region}/s3/aws4_request`;
    const stringToSign = ['AWS4-HMAC-SHA256', r.amzDate, scope, createHash('sha256').update(canonicalRequest).digest('hex')].join('\n');
    const signature = createHmac('sha256', this.#key(r.secretAccessKey, day, r.region)).update(stringToSign).digest('hex');
    return `AWS4-HMAC-SHA256 Credential=${r.accessKeyId}/${scope}, SignedHeaders=${signedHeaders}, Signature=${signature}`;
  }

  /** The day's signing key, derived once per day, region and secret. */
  #key(secret: string, day: string, region: string): Buffer {
    const id = `${day}/${region}/${createHash('sha256').update(secret).digest('hex')}`;
    if (this.#cached?.id === id) return this.#cached.key;
    const hmac = (k: string | Buffer, s: string): Buffer => createHmac('sha256', k).update(s).digest();
    const key = hmac(hmac(hmac(hmac(`AWS4${secret}`, day), region), 's3'), 'aws4_request');
    this.#cached = { id, key };
    return key;
  }
}

/** Each segment percent-encoded but for RFC 3986's unreserved characters; slashes kept. */
export function encodeKey(key: string): string {
  return key.split('/').map((s) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)).join('/');
}

function exchange(url: URL, method: string, headers: Record<string, string>, body: Buffer | undefined, o: {
  agent: http.Agent; connectTimeoutMs: number; timeoutMs: number; keepBody: boolean;
}): Promise<Answer> {
  return new Promise<Answer>((resolve, reject) => {
    const mod = url.protocol === 'https:' ? https : http;
    const req = mod.request(url, { method, headers, agent: o.agent });
    let connectTimer: NodeJS.Timeout | undefined;
    const fail = (err: Error): void => {
      clearTimeout(connectTimer);
      req.destroy(err);
      reject(err);
    };
    const timedOut = (what: string): Error => Object.assign(new Error(`S3 ${method} ${url.pathname}: ${what}`), { name: 'TimeoutError' });
    req.on('socket', (socket) => {
      if (socket.connecting) {
        connectTimer = setTimeout(() => fail(timedOut(`no connection within ${o.connectTimeoutMs} ms`)), o.connectTimeoutMs);
        socket.once('connect', () => clearTimeout(connectTimer));
      }
    });
    // Inactivity either way, as node-http-handler's socketTimeout: the whole request may be slow.
    req.setTimeout(o.timeoutMs, () => fail(timedOut(`no progress for ${o.timeoutMs} ms`)));
    req.on('error', (err) => {
      clearTimeout(connectTimer);
      reject(err);
    });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      let n = 0;
      const status = res.statusCode ?? 0;
      const keep = o.keepBody || status >= 300;
      res.on('data', (chunk: Buffer) => {
        if (!keep || (status >= 300 && n >= MAX_ERROR_TEXT)) return;
        chunks.push(chunk);
        n += chunk.byteLength;
      });
      res.on('error', (err) => fail(err));
      res.on('close', () => {
        if (!res.complete) fail(Object.assign(new Error(`S3 ${method} ${url.pathname}: the answer was cut short`), { code: 'ECONNRESET' }));
      });
      res.on('end', () => {
        clearTimeout(connectTimer);
        resolve({ status, headers: res.headers, body: chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, n) });
      });
    });
    req.end(body);
  });
}

function header(headers: http.IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function headOf(a: Answer): ObjectHead {
  const modified = header(a.headers, 'last-modified');
  return {
    size: Number(header(a.headers, 'content-length') ?? a.body.byteLength),
    modTime: modified ? new Date(modified) : new Date(0),
    etag: header(a.headers, 'etag') ?? '',
  };
}

function publish(operation: string, attempts: number, error: string | undefined, t0: number): void {
  const ch = channels.s3Request;
  if (ch.hasSubscribers) ch.publish({ operation, attempts, error, ms: performance.now() - t0 } satisfies S3RequestMessage);
}
