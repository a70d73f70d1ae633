import { describe, expect, it } from 'vitest';
import { TooManyRequestsError } from '../../../src/errors.js';
import { checkUrlLength, rawErrorResponse, RateLimiter, UploadSlots } from '../../../src/http/limits.js';

describe('RateLimiter', () => {
  it('allows a burst, then one request per 1/rate seconds, per key', () => {
    const r = new RateLimiter(2, 3);
    for (let i = 0; i < 3; i++) r.take('a', 0);
    const err = (() => { try { r.take('a', 0); } catch (e) { return e; } })();
    expect(err).toBeInstanceOf(TooManyRequestsError);
    expect((err as TooManyRequestsError).retryAfterSeconds).toBe(1);
    r.take('b', 0);
    expect(() => r.take('a', 400)).toThrow(TooManyRequestsError);
    r.take('a', 600); // 0.8 tokens at 400 ms, 1.2 at 600 ms
    expect(() => r.take('a', 700)).toThrow(TooManyRequestsError);
    r.take('a', 10_000);
  });
});

describe('UploadSlots', () => {
  it('counts per key and frees a slot once, on release', () => {
    const s = new UploadSlots(2);
    const a1 = s.acquire('a');
    s.acquire('a');
    expect(() => s.acquire('a')).toThrow(TooManyRequestsError);
    s.acquire('b');
    a1();
    a1();
    s.acquire('a');
    expect(() => s.acquire('a')).toThrow(TooManyRequestsError);
  });
});

describe('checkUrlLength', () => {
  it('counts path, ? and query', () => {
    expect(() => checkUrlLength('/v2/', 'a'.repeat(100), 105)).not.toThrow();
    expect(() => checkUrlLength('/v2/', 'a'.repeat(101), 105)).toThrow(/request URL longer than 105 bytes/);
  });
});

describe('rawErrorResponse', () => {
  it('writes the envelope with the status of the code, and closes', () => {
    const text = rawErrorResponse('HPE_INVALID_CONTENT_LENGTH')!;
    expect(text).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(text).toContain('connection: close\r\n');
    const body = text.slice(text.indexOf('\r\n\r\n') + 4);
    expect(JSON.parse(body)).toEqual({ errors: [{ code: 'SIZE_INVALID', message: 'invalid Content-Length' }] });
    expect(text).toContain(`content-length: ${Buffer.byteLength(body)}\r\n`);
    expect(rawErrorResponse('HPE_HEADER_OVERFLOW')).toBeUndefined();
  });
});
