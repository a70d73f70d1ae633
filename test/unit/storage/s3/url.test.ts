import { describe, expect, it } from 'vitest';
import { parseS3Url, S3UrlError } from '../../../../src/storage/s3/url.js';

const MiB = 1024 * 1024;

describe('parseS3Url', () => {
  it('reads bucket, prefix and every option', () => {
    expect(parseS3Url('s3://my-bucket/reg/one/?endpoint=http://127.0.0.1:7480&region=eu-west-1&forcePathStyle=true&partSize=32MiB&maxPartsInFlight=8&maxBufferedBytes=1GiB&redirect=true&sdkChecksums=1&timeout=2.5s&maxReadAheadBytes=0')).toEqual({
      bucket: 'my-bucket',
      prefix: 'reg/one/',
      endpoint: 'http://127.0.0.1:7480',
      region: 'eu-west-1',
      forcePathStyle: true,
      partSizeBytes: 32 * MiB,
      maxPartsInFlight: 8,
      maxBufferedBytes: 1024 * MiB,
      maxReadAheadBytes: 0,
      redirect: true,
      sdkChecksums: true,
      timeoutMs: 2500,
    });
  });

  it('has defaults: AWS endpoint, us-east-1, 16 MiB parts, 4 in flight, 256 MiB of buffers, 15 s without progress', () => {
    expect(parseS3Url('s3://bucket')).toEqual({
      bucket: 'bucket', prefix: '', endpoint: undefined, region: 'us-east-1', forcePathStyle: false,
      partSizeBytes: 16 * MiB, maxPartsInFlight: 4, maxBufferedBytes: 256 * MiB, maxReadAheadBytes: 128 * MiB, redirect: false, sdkChecksums: false, timeoutMs: 15_000,
    });
    expect(parseS3Url('s3://bucket?timeout=500ms').timeoutMs).toBe(500);
    expect(parseS3Url('s3://bucket?timeout=2m').timeoutMs).toBe(120_000);
    expect(parseS3Url('s3://bucket/').prefix).toBe('');
    // The buffers hold at least one part.
    expect(parseS3Url('s3://bucket?partSize=512MiB').maxBufferedBytes).toBe(512 * MiB);
  });

  it.each([
    ['s3:/', /invalid bucket name/],
    ['s3://Bucket/x', /invalid bucket name "Bucket"/],
    ['s3://a/x', /invalid bucket name/],
    ['s3://b..b/x', /invalid bucket name/],
    ['s3://bucket:9000/x', /a port belongs in endpoint=/],
    ['s3://key:secret@bucket/x', /credentials do not belong in the URL/],
    ['s3://bucket/../x', /invalid prefix/],
    ['s3://bucket/a b', /invalid prefix/],
    ['s3://bucket/x?endpoint=ftp://h', /endpoint must be an http\(s\) URL/],
    ['s3://bucket/x?endpoint=nope', /endpoint must be an http\(s\) URL/],
    ['s3://bucket/x?partSize=4MiB', /partSize must be between 5 MiB and 5 GiB, got 4 MiB/],
    ['s3://bucket/x?partSize=6GiB', /partSize must be between 5 MiB and 5 GiB/],
    ['s3://bucket/x?partSize=lots', /partSize is not a byte size: "lots"/],
    ['s3://bucket/x?maxPartsInFlight=0', /maxPartsInFlight must be between 1 and 64/],
    ['s3://bucket/x?maxPartsInFlight=two', /maxPartsInFlight must be a whole number/],
    ['s3://bucket/x?maxBufferedBytes=1MiB', /maxBufferedBytes must be between 16 MiB/],
    ['s3://bucket/x?forcePathStyle=yes', /forcePathStyle must be true or false/],
    ['s3://bucket/x?region=a/b', /invalid region/],
    ['s3://bucket/x?timeout=15', /timeout is not a duration: "15"/],
    ['s3://bucket/x?timeout=20m', /timeout must be between 100 ms and 600 s/],
    ['s3://bucket/x?bucket=other', /unknown option "bucket"; known: endpoint, region/],
    ['s3://bucket/x?region=a&region=b', /option region is given twice/],
  ])('rejects %s', (url, message) => {
    expect(() => parseS3Url(url)).toThrow(S3UrlError);
    expect(() => parseS3Url(url)).toThrow(message);
  });

  it('names the URL and the expected form in its errors', () => {
    expect(() => parseS3Url('s3://Bucket')).toThrow(/^storage "s3:\/\/Bucket": .*\(expected s3:\/\/BUCKET\/PREFIX\?endpoint=URL/);
  });
});
