/**
 * What the SDK's errors mean to the driver. Service errors carry the S3 error code as `name`
 * and the response status in `$metadata.httpStatusCode`; HEAD responses have no body, so a
 * missing key there is only a 404 named 'NotFound'.
 */
export function httpStatus(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;
}

/** What a failure is called in metrics (hoist:s3:request): the S3 error code, else node's error code. */
export function errorName(err: unknown): string {
  const e = err as { name?: string; code?: string } | undefined;
  return e?.name && e.name !== 'Error' ? e.name : (e?.code ?? 'Error');
}

/** What the SDK names an error answer without a body (HEAD, 304), by status. */
const NAME_BY_STATUS: Record<number, string> = { 304: 'NotModified', 400: 'BadRequest', 403: 'Forbidden', 404: 'NotFound', 412: 'PreconditionFailed' };

/**
 * An error answer to a request Hoist sent itself (small-requests.ts, range-fetch.ts), shaped
 * as the SDK throws them: `name` the S3 code from the error document, or without one what
 * the SDK calls the status; `$metadata.httpStatusCode`. `what` says which request it was.
 */
export function serviceError(status: number, text: string, what: string): Error & { name: string; $metadata: { httpStatusCode: number; attempts: number } } {
  const code = /<Code>([^<]+)<\/Code>/.exec(text)?.[1] ?? NAME_BY_STATUS[status] ?? (status >= 500 ? 'ServerError' : 'UnknownError');
  const message = /<Message>([^<]*)<\/Message>/.exec(text)?.[1] ?? code;
  return Object.assign(new Error(`${what}: ${message}`), {
    name: code, Code: code, $fault: status >= 500 ? 'server' : 'client', $metadata: { httpStatusCode: status, attempts: 1 },
  });
}

export function errorCode(err: unknown): string | undefined {
  return (err as { name?: string; Code?: string } | undefined)?.Code ?? (err as { name?: string } | undefined)?.name;
}

/** The key does not exist (but the bucket does, as far as the response tells). */
export function isNoSuchKey(err: unknown): boolean {
  const code = errorCode(err);
  if (code === 'NoSuchBucket') return false;
  return code === 'NoSuchKey' || code === 'NotFound' || httpStatus(err) === 404;
}

/** The multipart upload is gone: aborted, completed, or never existed. */
export function isNoSuchUpload(err: unknown): boolean {
  return errorCode(err) === 'NoSuchUpload' || httpStatus(err) === 404;
}

export function isPreconditionFailed(err: unknown): boolean {
  return httpStatus(err) === 412 || errorCode(err) === 'PreconditionFailed';
}

/** AWS answers 409 ConditionalRequestConflict when conditional writes to one key race: try again. */
export function isConditionalConflict(err: unknown): boolean {
  return httpStatus(err) === 409 || errorCode(err) === 'ConditionalRequestConflict';
}

export function isInvalidRange(err: unknown): boolean {
  return httpStatus(err) === 416 || errorCode(err) === 'InvalidRange';
}

/** Start-up checks: turns HeadBucket's failure into a sentence an operator can act on. */
export function explainBucketError(err: unknown, bucket: string, endpoint: string | undefined): string {
  const where = endpoint ?? 'AWS';
  const status = httpStatus(err);
  const code = errorCode(err);
  const message = (err as Error | undefined)?.message ?? String(err);
  if (code === 'CredentialsProviderError' || /credential/i.test(message) && status === undefined) {
    return `no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE): ${message}`;
  }
  if (status === 404 || code === 'NoSuchBucket' || code === 'NotFound') {
    return `S3 bucket ${JSON.stringify(bucket)} does not exist at ${where}; create it first`;
  }
  if (status === 403 || code === 'InvalidAccessKeyId' || code === 'SignatureDoesNotMatch' || code === 'AccessDenied' || code === 'Forbidden') {
    return `S3 access to bucket ${JSON.stringify(bucket)} at ${where} was refused (HTTP ${status ?? '?'}, ${code}): check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the bucket's policy`;
  }
  if (status === 301 || code === 'PermanentRedirect') {
    return `S3 bucket ${JSON.stringify(bucket)} is in another region than the one configured; set region=`;
  }
  if (status === undefined) {
    return `cannot reach S3 at ${where}: ${message}`;
  }
  return `S3 HeadBucket on ${JSON.stringify(bucket)} at ${where} failed (HTTP ${status}, ${code}): ${message}`;
}
