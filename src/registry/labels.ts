/**
 * Image labels, as Quay reads them: the `config.Labels` object of an image's config blob
 * (image-spec config.md; Docker's container config), recorded with the manifest.
 *
 * One label means something to the registry: `quay.expires-after` (e.g. `2h`, `7d`) gives the
 * tag an expiry, counted from when the tag was pushed. A value that doesn't parse is
 * ignored, as Quay ignores it: the push must not fail over a label.
 */

export const EXPIRES_AFTER_LABEL = 'quay.expires-after';

/** Largest config blob read for its labels; real configs are a few KiB. */
export const MAX_CONFIG_BYTES = 1024 * 1024;

/**
 * The string labels of an image config, or undefined when it has none, isn't JSON, or has
 * no `config.Labels` object. Non-string values are dropped: labels are strings by spec.
 */
export function labelsOf(config: Uint8Array): Record<string, string> | undefined {
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(config.buffer, config.byteOffset, config.byteLength).toString('utf8'));
  } catch {
    return undefined;
  }
  const labels = (doc as { config?: { Labels?: unknown } } | null)?.config?.Labels;
  if (typeof labels !== 'object' || labels === null || Array.isArray(labels)) return undefined;
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels)) if (typeof v === 'string') out[k] = v;
  return Object.keys(out).length > 0 ? out : undefined;
}

const UNIT_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** Longer is taken as a typo and ignored (and `now + ms` must stay a valid Date). */
const MAX_EXPIRES_AFTER_MS = 10 * 366 * 86_400_000;

/**
 * `quay.expires-after` → milliseconds: a positive whole number and one unit, `s`, `m`, `h`,
 * `d` or `w` (`3600s`, `30m`, `2h`, `7d`, `1w`). Undefined for anything else.
 */
export function parseExpiresAfter(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const m = /^\s*(\d{1,9})\s*([smhdw])\s*$/.exec(value);
  if (!m) return undefined;
  const ms = Number(m[1]) * UNIT_MS[m[2]!]!;
  return ms > 0 && ms <= MAX_EXPIRES_AFTER_MS ? ms : undefined;
}
