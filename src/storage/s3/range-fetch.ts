import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import http from 'node:http';
import https from 'node:https';
import { performance } from 'node:perf_hooks';
import type { Readable } from 'node:stream';
import { channels, type S3RequestMessage } from '../../diagnostics.js';
import { StorageUnavailableError } from '../driver.js';
import type { ReadBuffers } from '../file-reader.js';
import { correctClock, storeNow } from './clock.js';
import { errorName, serviceError } from './errors.js';
import { PlainHttp } from './plain-get.js';

/**
 * Ranged GETs for blob reads (reader.ts), sent over plain node:http to a presigned
 * GetObject URL instead of through the SDK: a read of a GiB in 8 MiB windows is 128 GETs,
 * and the SDK spends about a millisecond of CPU on each (middleware, signing, its response
 * wrapper), node:http a tenth of that. The URL is signed once per object and reused for a
 * while (the Range header is not part of a presigned signature).
 *
 * Deadlines as for every store request (deadlines.ts): no progress on the socket for
 * `timeoutMs`, connecting included, fails the request, or its body while it is being read,
 * with a StorageUnavailableError whose cause is a TimeoutError; the caller retries. A body
 * whose buffer is full because nobody reads it is not timed out (the reader holds it back,
 * not the store). A failed answer becomes an error shaped like the SDK's (`$metadata.httpStatusCode`,
 * `name` from the S3 error code), so errors.ts reads both alike. Each GET is reported on the
 * `hoist:s3:request` channel as GetObject, like the SDK's commands (driver.ts).
 */
export interface RangeFetchOptions {
  client: S3Client;
  bucket: string;
  httpAgent: http.Agent;
  httpsAgent: https.Agent;
  timeoutMs: number;
  /**
   * Buffers for the bodies of GETs to an http:// store (plain-get.ts), which the consumer may
   * give back (RecyclingReadable). An https:// store is read through node:https.
   */
  buffers: ReadBuffers;
}

/** A store answer to a ranged GET: its body, the object's whole size (Content-Range) and its ETag. */
export interface RangeAnswer {
  body: Readable;
  objectSize: number | undefined;
  etag: string | undefined;
}

/**
 * `ifMatch`: the ETag the read's first answer had; the store answers 412 when the object is
 * another one now (reader.ts).
 */
export type RangeFetch = (key: string, from: number, to: number, signal: AbortSignal, ifMatch?: string) => Promise<RangeAnswer>;

/** Presigned URLs are good for an hour and reused for half of it. */
const URL_EXPIRY_SECONDS = 3600;
const URL_REUSE_MS = 30 * 60 * 1000;
const MAX_URLS = 1000;

export function rangeFetch(o: RangeFetchOptions): RangeFetch {
  const urls = new Map<string, { url: Promise<string>; signedAt: number }>();
  const urlOf = (key: string): Promise<string> => {
    const now = Date.now();
    const known = urls.get(key);
    if (known && now - known.signedAt < URL_REUSE_MS) return known.url;
    const url = getSignedUrl(o.client, new GetObjectCommand({ Bucket: o.bucket, Key: key }), { expiresIn: URL_EXPIRY_SECONDS, signingDate: storeNow(o.client) });
    urls.delete(key);
    urls.set(key, { url, signedAt: now });
    url.catch(() => urls.delete(key));
    while (urls.size > MAX_URLS) urls.delete(urls.keys().next().value!);
    return url;
  };

  const plain = new PlainHttp(o.buffers);
  const timedOut = (key: string): StorageUnavailableError => {
    const timeout = Object.assign(new Error(`no progress for ${o.timeoutMs} ms`), { name: 'TimeoutError' });
    return new StorageUnavailableError(`S3 GET of ${key}: no progress for ${o.timeoutMs} ms`, { cause: timeout });
  };
  const failed = (key: string, status: number, text: string, serverTime: string | null | undefined): Error => {
    // Refused: perhaps the URL outlived its credentials (it answers AccessDenied then), or was
    // signed by a clock far from the store's (its Date says so: corrected); sign anew.
    if (status === 403) {
      urls.delete(key);
      correctClock(o.client, serverTime);
    }
    return serviceError(status, text, `S3 GET of ${key}`);
  };

  return async (key, from, to, signal, ifMatch) => {
    const headers: Record<string, string> = { range: `bytes=${from}-${to - 1}` };
    if (ifMatch !== undefined) headers['if-match'] = ifMatch;
    const url = new URL(await urlOf(key));
    const secure = url.protocol === 'https:';
    const ch = channels.s3Request;
    const t0 = ch.hasSubscribers ? performance.now() : 0;
    const report = (error: string | undefined): void => {
      if (ch.hasSubscribers) ch.publish({ operation: 'GetObject', attempts: 1, error, ms: performance.now() - t0 } satisfies S3RequestMessage);
    };
    if (url.protocol === 'http:') {
      let answer;
      try {
        answer = await plain.get(url, headers, { timeoutMs: o.timeoutMs, onTimeout: () => timedOut(key), signal });
      } catch (err) {
        report(errorName(err as Error));
        throw err;
      }
      const body = answer.body;
      if (!body) {
        const err = failed(key, answer.status, answer.text, answer.headers.get('date'));
        report(err.name);
        throw err;
      }
      const objectSize = answeredRange(key, from, to, answer.status, answer.headers.get('content-range'), answer.headers.get('content-length'));
      if (objectSize instanceof Error) {
        body.destroy();
        report(objectSize.name);
        throw objectSize;
      }
      // Reported once the body has been read, or broke off.
      body.once('end', () => report(undefined));
      body.once('error', (err: Error) => report(errorName(err)));
      return { body, objectSize, etag: answer.headers.get('etag') };
    }
    return new Promise<RangeAnswer>((resolve, reject) => {
      let body: http.IncomingMessage | undefined;
      const req = (secure ? https : http).request(url, {
        agent: secure ? o.httpsAgent : o.httpAgent,
        headers,
        signal,
      }, (res) => {
        const status = res.statusCode ?? 0;
        if (status >= 200 && status <= 299) {
          const objectSize = answeredRange(key, from, to, status, res.headers['content-range'], res.headers['content-length']);
          if (objectSize instanceof Error) {
            res.destroy();
            report(objectSize.name);
            reject(objectSize);
            return;
          }
          body = res;
          // Reported once the body has been read, or broke off.
          res.once('end', () => report(undefined));
          res.once('error', (err: Error & { code?: string }) => report(err.name && err.name !== 'Error' ? err.name : (err.code ?? 'Error')));
          resolve({ body: res, objectSize, etag: res.headers.etag });
          return;
        }
        // An S3 error document: keep its code for errors.ts.
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          if (text.length < 4096) text += c;
        });
        res.on('error', reject);
        res.on('end', () => {
          const err = failed(key, status, text, res.headers.date);
          report(err.name);
          reject(err);
        });
      });
      // Inactivity on the socket, from connecting to the last byte of the body.
      req.setTimeout(o.timeoutMs);
      req.on('timeout', () => {
        if (body && body.readableLength >= body.readableHighWaterMark) {
          // The body holds a full buffer nobody has taken (a paused client, a window waiting
          // for its turn), so node stopped reading the socket: the store is not to blame for
          // the quiet. The deadline starts over. (Paused or flowing says nothing here: an
          // async iterator reads in paused mode.)
          req.setTimeout(o.timeoutMs);
          return;
        }
        const timeout = Object.assign(new Error(`no progress for ${o.timeoutMs} ms`), { name: 'TimeoutError' });
        const err = new StorageUnavailableError(`S3 GET of ${key}: no progress for ${o.timeoutMs} ms`, { cause: timeout });
        // The body's reader hears of it as the body's error; the request's, as a rejection.
        body?.destroy(err);
        req.destroy(err);
      });
      req.on('error', (err: Error & { code?: string }) => {
        report(err.name && err.name !== 'Error' ? err.name : (err.code ?? 'Error'));
        reject(err);
      });
      req.end();
    });
  };
}

/**
 * What a 2xx answer to the GET of bytes [from, to) says of itself: the object's whole size
 * (undefined when it does not say), or an error when its body is not those bytes. A blob read
 * is streamed to the client under a digest it was promised, so an answer is taken only when
 * its headers prove it is the range asked for: a 206 whose Content-Range starts at `from`
 * and ends at `to` or at the object's end, and whose Content-Length agrees; or a 200 (a store
 * or a cache in between that ignores Range), which is the whole object and so serves only a
 * read from byte 0 of an object no longer than `to`. Anything else (a Range ignored for a
 * read further in, a range shifted or cut short) would hand the client other bytes under a
 * 206 that looks complete. The error is StorageUnavailableError, so the read is asked again
 * within the driver's deadlines and then fails with a 503, before the client has been
 * answered when it is the read's first GET.
 */
export function answeredRange(key: string, from: number, to: number, status: number, contentRange: string | null | undefined, contentLength: string | null | undefined): number | undefined | StorageUnavailableError {
  const length = contentLength !== undefined && contentLength !== null && /^\d+$/.test(contentLength) ? Number(contentLength) : undefined;
  const wrong = (what: string): StorageUnavailableError =>
    new StorageUnavailableError(`S3 GET of ${key}: asked for bytes ${from}-${to - 1}, the store answered ${what}`);
  if (status === 200) {
    if (from !== 0 || length === undefined || length > to) return wrong(`${status} with ${length ?? 'no'} Content-Length (the Range ignored)`);
    return length;
  }
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(contentRange?.trim() ?? '');
  if (status !== 206 || !m) return wrong(`${status} with Content-Range ${JSON.stringify(contentRange ?? null)}`);
  const first = Number(m[1]);
  const last = Number(m[2]);
  const size = m[3] === '*' ? undefined : Number(m[3]);
  const end = size === undefined ? to : Math.min(to, size);
  if (first !== from || last + 1 !== end || (length !== undefined && length !== last + 1 - first)) {
    return wrong(`Content-Range ${contentRange} and ${length ?? 'no'} Content-Length`);
  }
  return size;
}
