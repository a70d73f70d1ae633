import pino, { type Logger } from 'pino';
import { prettyFactory } from 'pino-pretty';

/** json: one JSON object a line, for log collectors; pretty: one readable line a record, for people. */
export type LogFormat = 'json' | 'pretty';

/**
 * The one pino root (created by the CLI). Request logs are children bound to request id,
 * repository and upload id. Credentials never reach the log (pino docs/redaction.md): the
 * fields that may hold them are redacted by path, and as a last line of defence every line
 * is scrubbed of anything shaped like a credential before it is written (an error message
 * quoting a header, a presigned URL in a stack trace).
 *
 * Both formats go through the same redaction and scrubbing: pretty lines are made from the
 * JSON line after it was scrubbed, on this thread and synchronously (pino-pretty's
 * prettyFactory, not its transport), so a line is never lost on exit and never leaves the
 * process unscrubbed. Pretty costs CPU per line: it is for terminals, not for production logs.
 */
export function createLogger(level: string, destination?: pino.DestinationStream, format: LogFormat = 'json', colorize = false): Logger {
  const out = destination ?? pino.destination({ fd: 1, sync: false });
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
    format === 'pretty' ? prettyDestination(out, colorize) : out,
  );
}

/** A destination that turns each (already scrubbed) JSON line into a readable one. */
function prettyDestination(out: pino.DestinationStream, colorize: boolean): pino.DestinationStream & { flush(cb: (err?: Error) => void): void } {
  const pretty = prettyFactory({
    colorize,
    translateTime: 'SYS:yyyy-mm-dd HH:MM:ss.l',
    // Always the same on every line of one process.
    ignore: 'pid,hostname,service',
    // One line a record (its fields as JSON after the message); an error's stack still
    // follows on lines of its own.
    singleLine: true,
  });
  return {
    write: (line: string) => out.write(pretty(line)),
    flush: (cb) => {
      const flushable = out as { flush?: (cb: (err?: Error) => void) => void };
      if (typeof flushable.flush === 'function') flushable.flush(cb);
      else cb();
    },
  };
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

/**
 * A field a client chose (a request's path, repository, upload id), cut to `maxChars` with
 * the length that was cut: a request within limits.maxUrlBytes made a line of 32 KB (a path
 * of backslashes, each written `\\` in JSON, logged as path and again as repository), and
 * Docker's json-file and journald log drivers split lines over 16 KiB into pieces that a
 * collector cannot parse. Valid values are shorter than the bounds callers pick, so they stay whole.
 */
export function clientField(value: string, maxChars: number): string {
  return value.length <= maxChars ? value : `${value.slice(0, maxChars)}…(${value.length - maxChars} more characters)`;
}

export type { Logger };
