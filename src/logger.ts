import pino, { type Logger } from 'pino';

/**
 * The one pino root (created by the CLI). Request logs are children bound to request id,
 * repository and upload id. Credentials never reach the log (pino docs/redaction.md).
 */
export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'hoist' },
      redact: {
        paths: ['headers.authorization', 'req.headers.authorization', 'headers.cookie', '*.secretAccessKey', '*.password'],
        censor: '[redacted]',
      },
    },
    destination ?? pino.destination({ fd: 1, sync: false }),
  );
}

export type { Logger };
