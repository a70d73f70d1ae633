import type { S3Client } from '@aws-sdk/client-s3';

/**
 * The store's time as the driver signs with it: this host's clock plus the client's
 * systemClockOffset, which the SDK sets from a store's Date header after a refusal for a
 * skewed clock, and correctClock() below sets for the requests the driver signs itself.
 * The presigner (@aws-sdk/s3-request-presigner) does not apply the offset on its own: a
 * presigned GET signed by a clock more than its lifetime behind the store's had expired
 * before it was sent (found by probing: a host an hour behind answered blob GETs 500).
 */
export function storeNow(client: S3Client): Date {
  return new Date(Date.now() + ((client.config as { systemClockOffset?: number }).systemClockOffset ?? 0));
}

/** A correction smaller than this is not worth a retry: signatures allow 15 minutes. */
const MIN_CLOCK_CORRECTION_MS = 5 * 60_000;

/**
 * After a refusal that a skewed clock explains: takes the store's time (`serverTime`, its
 * Date header) into the client's systemClockOffset, as the SDK does. True when that changed
 * the offset by enough to matter, so that one more try can succeed.
 */
export function correctClock(client: S3Client, serverTime: string | null | undefined): boolean {
  const server = Date.parse(serverTime ?? '');
  if (!Number.isFinite(server)) return false;
  const config = client.config as { systemClockOffset?: number };
  const offset = server - Date.now();
  if (Math.abs(offset - (config.systemClockOffset ?? 0)) < MIN_CLOCK_CORRECTION_MS) return false;
  config.systemClockOffset = offset;
  return true;
}
