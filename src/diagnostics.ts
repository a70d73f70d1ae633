import diagnostics from 'node:diagnostics_channel';

/**
 * Tracing hooks instead of per-chunk logs (undici lib/core/diagnostics.js): subscribe with
 * `diagnostics_channel.subscribe('hoist:upload:append', fn)`. Messages are built only when
 * somebody listens.
 */
export const channels = {
  /** One request's bytes stored: { repository, uploadId, bytes, offset, ms, aborted }. */
  uploadAppend: diagnostics.channel('hoist:upload:append'),
  /** An upload became a blob: { repository, uploadId, digest, size, ms }. */
  uploadCommit: diagnostics.channel('hoist:upload:commit'),
  /** A running hash was rebuilt from storage (the slow path): { uploadId, bytes, ms }. */
  hashRebuild: diagnostics.channel('hoist:hash:rebuild'),
} as const;
