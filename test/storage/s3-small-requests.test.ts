import { S3Client } from '@aws-sdk/client-s3';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import http from 'node:http';
import https from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { S3RequestMessage } from '../../src/diagnostics.js';
import { StorageUnavailableError } from '../../src/storage/driver.js';
import { BoundedRetryStrategy } from '../../src/storage/s3/deadlines.js';
import { isNoSuchKey, isPreconditionFailed } from '../../src/storage/s3/errors.js';
import { encodeKey, SigningKeys, SmallRequests } from '../../src/storage/s3/small-requests.js';
import { startFaultyProxy, type Fault } from '../helpers/faulty-proxy.js';
import { createTestBucket, deleteBucket, testClient, type S3TestEnv } from '../helpers/s3.js';
import { describeS3 } from '../helpers/s3-http.js';

/**
 * The small object requests that Hoist signs and sends itself (small-requests.ts), against
 * a real store (radosgw) and a proxy in front of it that fails requests the way a store can.
 */
describe('SigV4 as small-requests.ts signs it', () => {
  it('gives the signature of AWS\'s documented example (GET Object with a Range)', () => {
    // AWS, "Signature Calculations for the Authorization Header: Transferring Payload in a Single Chunk", example GET Object.
    const auth = new SigningKeys().authorization({
      method: 'GET',
      path: '/test.txt',
      headers: {
        host: 'examplebucket.s3.amazonaws.com',
        range: 'bytes=0-9',
        'x-amz-content-sha256': 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
        'x-amz-date': '20130524T000000Z',
      },
      payloadHash: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
      amzDate: '20130524T000000Z',
      region: 'us-east-1',
      accessKeyId: 'AKIAIOSFODNN7EXAMPLE',
      secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY',
    });
    expect(auth).toBe('AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, '
      + 'SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41');
  });

  it('encodes a key once, segment by segment, keeping only unreserved characters and slashes', () => {
    expect(encodeKey("a b/c+d/e~f_g.h-i/(j)*k!'l/é")).toBe('a%20b/c%2Bd/e~f_g.h-i/%28j%29%2Ak%21%27l/%C3%A9');
  });
});

describeS3('small S3 requests signed by Hoist (radosgw)', (env: S3TestEnv) => {
  let client: S3Client;
  let bucket: string;
  const agents = { httpAgent: new http.Agent({ keepAlive: true }), httpsAgent: new https.Agent({ keepAlive: true }) };

  beforeAll(async () => {
    client = testClient(env);
    bucket = await createTestBucket(client, 'small');
  });

  afterAll(async () => {
    await deleteBucket(client, bucket);
    client.destroy();
    agents.httpAgent.destroy();
    agents.httpsAgent.destroy();
  });

  /** Requests through `endpoint` (the store, or a proxy before it) with short deadlines. */
  function small(endpoint = env.endpoint, o: { timeoutMs?: number; maxAttempts?: number; credentials?: { accessKeyId: string; secretAccessKey: string }; viaSdk?: boolean } = {}): { requests: SmallRequests; client: S3Client } {
    const c = new S3Client({ region: env.region, endpoint, forcePathStyle: true, ...(o.credentials ? { credentials: o.credentials } : {}) });
    const timeoutMs = o.timeoutMs ?? 2000;
    return {
      client: c,
      requests: new SmallRequests({
        client: c, bucket, ...agents, connectTimeoutMs: timeoutMs, timeoutMs, retry: new BoundedRetryStrategy(o.maxAttempts ?? 4, 2 * timeoutMs),
        viaSdk: o.viaSdk,
      }),
    };
  }

  async function failure(p: Promise<unknown>): Promise<unknown> {
    return p.then(() => { throw new Error('expected a failure'); }, (err: unknown) => err);
  }

  // sdkChecksums=true sends them through the SDK (viaSdk): the two ways must answer alike.
  it.each([false, true])('puts, heads, gets and deletes objects whose keys need encoding, as the store answers them (through the SDK: %s)', async (viaSdk) => {
    const sent: URL[] = [];
    const proxy = await startFaultyProxy(env.endpoint, (op, _n, url) => {
      if (op !== 'HEAD') sent.push(url);
      return undefined;
    });
    const { requests, client: c } = small(proxy.endpoint, { viaSdk });
    try {
      await roundTrip(requests, `${viaSdk ? 'sdk' : 'plain'}/a b+c~(1)*!'é.json`);
    } finally {
      c.destroy();
      await proxy.close();
    }
    // The SDK marks its requests but HEADs with x-id=<operation>; small-requests.ts sends no query.
    expect(sent.length).toBeGreaterThan(8);
    for (const url of sent) expect(url.searchParams.has('x-id'), url.href).toBe(viaSdk);
  });

  async function roundTrip(requests: SmallRequests, key: string): Promise<void> {
    const body = Buffer.from('{"hello":"world"}');
    const put = await requests.put(key, body, { contentType: 'application/json' });
    expect(put.etag).toMatch(/^".+"$/);

    const head = await requests.head(key);
    expect(head).toMatchObject({ size: body.byteLength, etag: put.etag });
    expect(Math.abs(head.modTime.getTime() - Date.now())).toBeLessThan(5 * 60_000);

    const got = await requests.get(key);
    expect(got.body.equals(body)).toBe(true);
    expect(got.etag).toBe(put.etag);

    // Unchanged since that ETag: 304 (what callers look at: writer.ts loadWriterState). The SDK
    // names it 'Unknown'; small-requests.ts 'NotModified'.
    expect(await failure(requests.get(key, { ifNoneMatch: put.etag }))).toMatchObject({ $metadata: { httpStatusCode: 304 } });
    // Create-only where an object is: 412.
    const exists = await failure(requests.put(key, Buffer.from('other'), { ifNotExists: true }));
    expect(isPreconditionFailed(exists)).toBe(true);
    expect((await requests.get(key)).body.equals(body)).toBe(true);

    await requests.delete(key);
    await requests.delete(key); // idempotent, as S3's DELETE is
    const headGone = await failure(requests.head(key));
    expect(headGone).toMatchObject({ name: 'NotFound', $metadata: { httpStatusCode: 404 } });
    const getGone = await failure(requests.get(key));
    expect(getGone).toMatchObject({ name: 'NoSuchKey', $metadata: { httpStatusCode: 404 } });
    expect(isNoSuchKey(headGone) && isNoSuchKey(getGone)).toBe(true);

    // Create-only where none is: stored.
    await requests.put(key, body, { ifNotExists: true });
    expect((await requests.get(key)).body.equals(body)).toBe(true);
  }

  it('takes a body whose SHA-256 the caller computed, and the store checks it', async () => {
    const { requests } = small();
    const body = Buffer.from('signed payload');
    const right = 'e8c1f1dd2d1e2b0a4a2d3b1da5f0a8ad1dbd0a0e3c0d1bdf63c8e8b3cdd0c2a1';
    // A wrong payload hash is refused by the store (XAmzContentSHA256Mismatch), not retried.
    const err = await failure(requests.put('signed/x', body, { sha256: right }));
    expect((err as { $metadata: { httpStatusCode: number } }).$metadata.httpStatusCode).toBe(400);
    const { createHash } = await import('node:crypto');
    await requests.put('signed/x', body, { sha256: createHash('sha256').update(body).digest('hex') });
    expect((await requests.get('signed/x')).body.equals(body)).toBe(true);
  });

  it('is refused with the store\'s own code when the credentials are wrong, and does not retry that', async () => {
    const seen: string[] = [];
    const proxy = await startFaultyProxy(env.endpoint, (op) => { seen.push(op); return undefined; });
    try {
      const { requests, client: c } = small(proxy.endpoint, { credentials: { accessKeyId: 'testkey', secretAccessKey: 'wrong' } });
      const err = await failure(requests.head('any'));
      expect((err as { $metadata: { httpStatusCode: number } }).$metadata.httpStatusCode).toBe(403);
      const put = await failure(requests.put('any', Buffer.from('x')));
      expect(put).toMatchObject({ name: 'SignatureDoesNotMatch', $metadata: { httpStatusCode: 403 } });
      // The proxy names requests without a query by their method (faulty-proxy.ts s3Operation).
      expect(seen).toEqual(['HEAD', 'PutObject']);
      c.destroy();
    } finally {
      await proxy.close();
    }
  });

  it('takes the store\'s time when the store refuses ours (a clock 20 minutes off), as the SDK does', async () => {
    const seen: string[] = [];
    const proxy = await startFaultyProxy(env.endpoint, (op) => { seen.push(op); return undefined; });
    try {
      const { requests, client: c } = small(proxy.endpoint);
      const config = c.config as { systemClockOffset?: number };
      config.systemClockOffset = -20 * 60_000;
      await requests.put('skewed/x', Buffer.from('on time'));
      expect(seen).toEqual(['PutObject', 'PutObject']);
      expect(Math.abs(config.systemClockOffset)).toBeLessThan(60_000);
      expect((await requests.get('skewed/x')).body.toString()).toBe('on time');
      c.destroy();
    } finally {
      await proxy.close();
    }
  });

  it('retries 503 SlowDown, 500s and connection resets, and reports each operation once with its attempts', async () => {
    const faults: Fault[] = ['slowdown', 'reset', 'internal'];
    let n = 0;
    const proxy = await startFaultyProxy(env.endpoint, () => faults[n++ % 4]);
    const messages: S3RequestMessage[] = [];
    const onMessage = (m: unknown): void => { messages.push(m as S3RequestMessage); };
    subscribe('hoist:s3:request', onMessage);
    try {
      const { requests, client: c } = small(proxy.endpoint);
      await requests.put('retried/x', Buffer.from('retried'));
      expect((await requests.get('retried/x')).body.toString()).toBe('retried');
      expect(proxy.seen.get('PutObject')).toBe(4);
      expect(proxy.seen.get('GET')).toBe(4);
      expect(messages.map((m) => [m.operation, m.attempts, m.error])).toEqual([['PutObject', 4, undefined], ['GetObject', 4, undefined]]);
      c.destroy();
    } finally {
      unsubscribe('hoist:s3:request', onMessage);
      await proxy.close();
    }
  });

  it('a store that stops answering fails the operation with StorageUnavailableError within its deadlines; so does one that keeps answering 503', async () => {
    for (const fault of ['stall', 'stall-midway', 'unavailable'] as const) {
      const { requests: good } = small();
      await good.put(`stalled/${fault}`, Buffer.alloc(256 * 1024, 7));
      const proxy = await startFaultyProxy(env.endpoint, () => fault);
      try {
        const { requests, client: c } = small(proxy.endpoint, { timeoutMs: 400, maxAttempts: 3 });
        const t0 = Date.now();
        const err = await failure(fault === 'stall' ? requests.put(`stalled/${fault}`, Buffer.from('x')) : requests.get(`stalled/${fault}`));
        const took = Date.now() - t0;
        expect(err, fault).toBeInstanceOf(StorageUnavailableError);
        if (fault === 'unavailable') expect(err, fault).toMatchObject({ cause: { name: 'ServiceUnavailable', $metadata: { httpStatusCode: 503, attempts: 3 } } });
        else expect(err, fault).toMatchObject({ cause: { name: 'TimeoutError' } });
        // Three attempts of 400 ms without progress, retries only within 800 ms of the first.
        expect(took, fault).toBeLessThan(5_000);
        c.destroy();
      } finally {
        await proxy.close();
      }
      // Nothing changed what the store holds.
      expect((await good.get(`stalled/${fault}`)).body.equals(Buffer.alloc(256 * 1024, 7))).toBe(true);
    }
  });
});
