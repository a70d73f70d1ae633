import pino, { type Logger } from 'pino';

/**
 * The one pino root (created by the CLI). Request logs are children bound to request id,
 * repository and upload id. Credentials never reach the log (pino docs/redaction.md): the
 * fields that may hold them are redacted by path, and as a last line of defence every line
 * is scrubbed of anything shaped like a credential before it is written (an error message
 * quoting a header, a presigned URL in a stack trace).
 */
export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'hoist' },
      redact: {
        paths: [
          'headers.authorization', 'req.headers.authorization', 'headers.cookie', 'headers["proxy-authorization"]',
          '*.authorization', '*.password', '*.token', '*.access_token', '*.refresh_token',
          '*.secretAccessKey', '*.sessionToken', '*.SecretAccessKey', '*.SessionToken',
        ],
        censor: '[redacted]',
      },
      hooks: { streamWrite: scrubSecrets },
    },
    destination ?? pino.destination({ fd: 1, sync: false }),
  );
}

/**
 * Replaces what looks like a secret in a serialized log line (or a message for stderr):
 *
 *   Authorization: Basic dXNlcjpwYXNz / Bearer eyJ...   → Basic [redacted] / Bearer [redacted]
 *   eyJhbGciOi....eyJzdWIi....sig                       → [redacted jwt]
 *   ...&X-Amz-Signature=ab12&X-Amz-Credential=AKIA%2F.. → X-Amz-Signature=[redacted]...
 *   ?token=…, secretAccessKey=…, password=…             → token=[redacted]
 *   s3://AKIA…:secret@bucket                            → s3://[redacted]@bucket
 */
export function scrubSecrets(line: string): string {
  return line
    .replace(/\b(Basic|Bearer)\s+[A-Za-z0-9._~+/=-]{8,}/gi, '$1 [redacted]')
    .replace(/\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*/g, '[redacted jwt]')
    .replace(/\b([A-Za-z0-9_-]*(?:signature|credential|secret|password|passwd|token|accesskey)[A-Za-z0-9_-]*)=[^&"\s\\]+/gi, '$1=[redacted]')
    .replace(/\b([a-z][a-z0-9+.-]*:\/\/)[^/\s"@]+@/gi, '$1[redacted]@');
}

export type { Logger };
