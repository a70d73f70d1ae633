/**
 * The S3 storage URL (config `storage`):
 *
 *   s3://BUCKET[/PREFIX][?option=value&...]
 *
 *   endpoint=URL            S3 endpoint (radosgw, MinIO, R2...); default: AWS for the region
 *   region=R                default us-east-1
 *   forcePathStyle=true     http://host/BUCKET/KEY instead of http://BUCKET.host/KEY
 *   partSize=16MiB          size of every non-final multipart part, 5 MiB to 5 GiB
 *   maxPartsInFlight=4      parts one upload sends at once
 *   maxBufferedBytes=256MiB part buffers held by all uploads together (at least one part)
 *   maxReadAheadBytes=128MiB  what blob reads may have requested ahead of their clients, all
 *                           together (reader.ts; 0: each read is one GET)
 *   redirect=true           blob GETs may answer 307 to a presigned URL (driver.redirectURL)
 *   timeout=15s             a store request that makes no progress this long fails (and is
 *                           retried while 2x this has not passed since its first try)
 *   sdkChecksums=true       let the SDK add its CRC32 checksums (requestChecksumCalculation
 *                           WHEN_SUPPORTED), small object requests included (they go through
 *                           the SDK then: small-requests.ts); off by default: parts and
 *                           objects are signed with their SHA-256 instead
 *
 * Credentials are not part of the URL: they come from the SDK's standard chain
 * (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, web identity, instance metadata).
 */
export interface S3Location {
  readonly bucket: string;
  /** '' or a key prefix ending in '/'. */
  readonly prefix: string;
  readonly endpoint: string | undefined;
  readonly region: string;
  readonly forcePathStyle: boolean;
  readonly partSizeBytes: number;
  readonly maxPartsInFlight: number;
  readonly maxBufferedBytes: number;
  readonly maxReadAheadBytes: number;
  readonly redirect: boolean;
  readonly sdkChecksums: boolean;
  /** No progress on a store request for this long fails it (driver.ts: deadlines). */
  readonly timeoutMs: number;
}

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
/** S3's limits on a multipart part (AWS "Amazon S3 multipart upload limits"). */
export const MIN_PART_BYTES = 5 * MiB;
export const MAX_PART_BYTES = 5 * GiB;

export const S3_DEFAULTS = {
  region: 'us-east-1',
  partSizeBytes: 16 * MiB,
  maxPartsInFlight: 4,
  maxBufferedBytes: 256 * MiB,
  maxReadAheadBytes: 128 * MiB,
  timeoutMs: 15_000,
} as const;

const UNITS: Record<string, number> = {
  '': 1, b: 1, k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9,
  ki: 1024, kib: 1024, mi: MiB, mib: MiB, gi: GiB, gib: GiB,
};

/** Bucket names as S3 accepts them (AWS "Bucket naming rules"), dots allowed for other stores. */
const BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
const PREFIX_SEGMENT_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;

export class S3UrlError extends Error {
  override readonly name = 'S3UrlError';
}

export function parseS3Url(storageUrl: string): S3Location {
  const fail = (why: string): never => {
    throw new S3UrlError(`storage ${JSON.stringify(storageUrl)}: ${why} (expected s3://BUCKET/PREFIX?endpoint=URL&region=R&forcePathStyle=true)`);
  };
  let url: URL;
  try {
    url = new URL(storageUrl);
  } catch {
    return fail('not a URL');
  }
  if (url.protocol !== 's3:') fail('the scheme must be s3:');
  if (url.username || url.password) fail('credentials do not belong in the URL; use the SDK chain (AWS_ACCESS_KEY_ID, AWS_PROFILE, ...)');
  if (url.port) fail('a port belongs in endpoint=, not after the bucket');
  const bucket = url.hostname;
  if (!BUCKET_RE.test(bucket) || bucket.includes('..')) fail(`invalid bucket name ${JSON.stringify(bucket)}`);

  // From the text as given: URL's pathname would resolve '..' and hide it.
  const rawPath = /^s3:\/\/[^/?#]*([^?#]*)/i.exec(storageUrl)?.[1] ?? '';
  let path: string;
  try {
    path = decodeURIComponent(rawPath).replace(/^\/+|\/+$/g, '');
  } catch {
    return fail(`invalid prefix ${JSON.stringify(rawPath)}`);
  }
  if (path !== '' && !path.split('/').every((seg) => PREFIX_SEGMENT_RE.test(seg))) {
    fail(`invalid prefix ${JSON.stringify(path)}: segments of letters, digits, '.', '_', '-'`);
  }

  const opts: Record<string, string> = {};
  for (const [k, v] of url.searchParams) {
    if (k in opts) fail(`option ${k} is given twice`);
    opts[k] = v;
  }
  const known = ['endpoint', 'region', 'forcePathStyle', 'partSize', 'maxPartsInFlight', 'maxBufferedBytes', 'maxReadAheadBytes', 'redirect', 'sdkChecksums', 'timeout'];
  for (const k of Object.keys(opts)) {
    if (!known.includes(k)) fail(`unknown option ${JSON.stringify(k)}; known: ${known.join(', ')}`);
  }

  let endpoint: string | undefined;
  if (opts.endpoint !== undefined) {
    try {
      const e = new URL(opts.endpoint);
      if (e.protocol !== 'http:' && e.protocol !== 'https:') throw new Error();
    } catch {
      fail(`endpoint must be an http(s) URL, got ${JSON.stringify(opts.endpoint)}`);
    }
    endpoint = opts.endpoint;
  }
  const region = opts.region ?? S3_DEFAULTS.region;
  if (!/^[a-z0-9-]{1,64}$/i.test(region)) fail(`invalid region ${JSON.stringify(region)}`);

  const bool = (name: string, value: string | undefined): boolean => {
    if (value === undefined) return false;
    if (value === 'true' || value === '1' || value === '') return true;
    if (value === 'false' || value === '0') return false;
    return fail(`${name} must be true or false, got ${JSON.stringify(value)}`);
  };
  const size = (name: string, value: string | undefined, dflt: number, min: number, max: number): number => {
    if (value === undefined) return dflt;
    const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
    const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
    if (!m || unit === undefined) return fail(`${name} is not a byte size: ${JSON.stringify(value)} (e.g. 16MiB)`);
    const n = Math.round(Number(m[1]) * unit);
    if (n < min || n > max) fail(`${name} must be between ${fmt(min)} and ${fmt(max)}, got ${fmt(n)}`);
    return n;
  };
  const int = (name: string, value: string | undefined, dflt: number, min: number, max: number): number => {
    if (value === undefined) return dflt;
    if (!/^\d+$/.test(value)) return fail(`${name} must be a whole number, got ${JSON.stringify(value)}`);
    const n = Number(value);
    if (n < min || n > max) fail(`${name} must be between ${min} and ${max}, got ${n}`);
    return n;
  };

  const duration = (name: string, value: string | undefined, dflt: number, min: number, max: number): number => {
    if (value === undefined) return dflt;
    const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)\s*$/.exec(value);
    if (!m) return fail(`${name} is not a duration: ${JSON.stringify(value)} (e.g. 15s, 500ms, 2m)`);
    const n = Math.round(Number(m[1]) * { ms: 1, s: 1000, m: 60_000 }[m[2] as 'ms' | 's' | 'm']);
    if (n < min || n > max) fail(`${name} must be between ${min} ms and ${max / 1000} s, got ${n} ms`);
    return n;
  };

  const partSizeBytes = size('partSize', opts.partSize, S3_DEFAULTS.partSizeBytes, MIN_PART_BYTES, MAX_PART_BYTES);
  const maxBufferedBytes = size('maxBufferedBytes', opts.maxBufferedBytes, Math.max(S3_DEFAULTS.maxBufferedBytes, partSizeBytes), partSizeBytes, 1024 * GiB);
  return Object.freeze({
    bucket,
    prefix: path === '' ? '' : `${path}/`,
    endpoint,
    region,
    forcePathStyle: bool('forcePathStyle', opts.forcePathStyle),
    partSizeBytes,
    maxPartsInFlight: int('maxPartsInFlight', opts.maxPartsInFlight, S3_DEFAULTS.maxPartsInFlight, 1, 64),
    maxBufferedBytes,
    maxReadAheadBytes: size('maxReadAheadBytes', opts.maxReadAheadBytes, S3_DEFAULTS.maxReadAheadBytes, 0, 1024 * GiB),
    redirect: bool('redirect', opts.redirect),
    sdkChecksums: bool('sdkChecksums', opts.sdkChecksums),
    timeoutMs: duration('timeout', opts.timeout, S3_DEFAULTS.timeoutMs, 100, 600_000),
  });
}

function fmt(bytes: number): string {
  if (bytes % GiB === 0) return `${bytes / GiB} GiB`;
  if (bytes % MiB === 0) return `${bytes / MiB} MiB`;
  return `${bytes} bytes`;
}
