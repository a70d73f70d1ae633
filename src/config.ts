import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';

/**
 * Configuration is parsed once, here, from (lowest to highest precedence) defaults, a YAML
 * file, HOIST_* environment variables and command-line flags; then validated and frozen.
 * Nothing else in the code reads the environment (fastify lib/initial-config-validation.js).
 *
 * Environment names are the option path in SCREAMING_SNAKE_CASE under one prefix:
 * `uploads.chunkBytes` is HOIST_UPLOADS_CHUNK_BYTES, `listen` is HOIST_LISTEN.
 */
export const ENV_PREFIX = 'HOIST_';

const UNITS: Record<string, number> = {
  '': 1, b: 1, k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9, t: 1e12, tb: 1e12,
  kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, tib: 1024 ** 4, ki: 1024, mi: 1024 ** 2, gi: 1024 ** 3, ti: 1024 ** 4,
};

/** Byte sizes: a number or `16MiB`, `512k`, `1GiB`. */
const bytes = z.union([z.number(), z.string()]).transform((v, ctx) => {
  if (typeof v === 'number') return v;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(v);
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: `not a byte size: ${JSON.stringify(v)} (e.g. 16MiB)` });
    return z.NEVER;
  }
  return Math.round(Number(m[1]) * unit);
}).pipe(z.number().int().nonnegative());

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** Durations in milliseconds: a number (ms) or `10s`, `5m`, `1h`, `7d`. */
export const durationMs = z.union([z.number(), z.string()]).transform((v, ctx) => {
  if (typeof v === 'number') return v;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$/.exec(v);
  if (!m) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: `not a duration: ${JSON.stringify(v)} (e.g. 30s, 1h)` });
    return z.NEVER;
  }
  return Math.round(Number(m[1]) * DURATION_UNITS[m[2] ?? 'ms']!);
}).pipe(z.number().int().nonnegative());

/**
 * A duration that a timer waits: at most 2^31 - 1 ms (24.8 days), beyond which Node fires the
 * timer after 1 ms instead (a 30-day gc.schedule collected back to back; a 30-day shutdown
 * timeout cut every upload at once).
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;
export const timerMs = durationMs.pipe(z.number().max(MAX_TIMER_MS, 'at most 24d (a timer waits it)'));

/**
 * The shortest a duration option may be. A number without a unit is milliseconds, so
 * `idleTimeout: 5` meant as seconds dropped every client after 5 ms, and `expiration: 30`
 * meant as days expired every tag at once; below the floor the value is refused instead.
 * `zero` says what 0 means, where the option gives it a meaning (off, never, at once).
 */
function atLeast(minMs: number, label: string, zero?: string) {
  return z.number().refine((v) => (zero !== undefined && v === 0) || v >= minMs, (v) => ({
    message: `${zero !== undefined ? `0 (${zero}) or ` : ''}at least ${label}, got ${v} ms (a number without a unit is milliseconds)`,
  }));
}

const listen = z.string().transform((v, ctx) => {
  const m = /^(?:\[([0-9a-fA-F:]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(v);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: `expected HOST:PORT, got ${JSON.stringify(v)}` });
    return z.NEVER;
  }
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
});

const storage = z.string().refine((v) => /^(fs|memory|s3):/.test(v), {
  message: 'expected fs:PATH, memory: or s3://BUCKET/PREFIX?...',
});

/** A bad value as the message quotes it: JSON, but a number as itself (JSON has no Infinity). */
const shown = (v: unknown): string => (typeof v === 'number' ? String(v) : JSON.stringify(v));

/**
 * A count: a whole number, or (from the environment) its digits. Anything else is refused
 * saying so and quoting it (zod's union said only "Invalid input").
 */
const integerish = z.unknown().transform((v, ctx) => {
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\s*\d+\s*$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n)) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: `expected a whole number, got ${shown(v)}` });
    return z.NEVER;
  }
  return n;
});

/** A namespace's name and path prefix segments: what a storage path segment and a URL allow. */
const NAMESPACE_SEGMENT = /^[a-z0-9]+(?:[._-][a-z0-9]+)*$/;
const HOSTNAME = /^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/;

/**
 * A pull-through cache (src/proxy/): the registry mirrors one upstream registry. Pulls of what
 * it does not hold are fetched from the upstream, stored and served; pushes and deletes are
 * refused. `tagTtl`: a tag confirmed by the upstream longer ago than this is checked again (a
 * HEAD) on its next pull. `ttl`: what nobody pulled for this long is collected (`hoist gc`).
 * `maxBlobFetches`: upstream blob fetches at once (src/proxy/cache.ts). `maxMetadataRequests`:
 * upstream manifest, blob HEAD and tag list requests at once (src/proxy/upstream.ts).
 */
const proxy = z.object({
  remoteUrl: z
    .string()
    .url()
    .regex(/^https?:\/\/[^\s?#]+$/, 'an http(s) URL without query or fragment, e.g. https://registry-1.docker.io')
    .refine((v) => { const u = new URL(v); return u.username === '' && u.password === ''; }, 'credentials go in username and password, not in the URL')
    .transform((v) => v.replace(/\/+$/, '')),
  username: z.string().min(1).optional(),
  password: z.string().min(1).optional(),
  /** A file holding the password (its last line break is not part of it). */
  passwordFile: z.string().min(1).optional(),
  tagTtl: durationMs.pipe(atLeast(1000, '1s', 'check at every pull')).default('5m'),
  ttl: durationMs.pipe(atLeast(1000, '1s')).default('7d'),
  /**
   * Distinct blobs fetched from the upstream at once; a pull that needs one more gets 429
   * with Retry-After (a pull joining a fetch in progress takes none). Each fetch holds an
   * upstream connection, a storage writer and up to 1 MiB kept for clients that join it.
   */
  maxBlobFetches: integerish.pipe(z.number().min(1).max(100_000)).default(64),
  /**
   * Upstream metadata requests (manifests, blob HEADs, tag lists) at once; four times as many
   * wait for a place, for 10 s at most, and the rest get 429 with Retry-After. Requests for
   * one reference share one upstream request and take one place. Why 32: a pull asks them one
   * after another (tag, index, platform manifest, then its blobs), so 32 pulls resolve at the
   * same moment and the next wait a round trip (a HEAD to a registry takes some 50-300 ms:
   * 100 or more a second get through); half of maxBlobFetches' 64, which each hold their
   * connection far longer. Each holds an upstream socket and up to a manifest's bytes
   * (manifests.maxBytes) or a tag list's (16 MiB) while it is read.
   */
  maxMetadataRequests: integerish.pipe(z.number().min(1).max(10_000)).default(32),
}).strict()
  .refine((p) => !(p.password !== undefined && p.passwordFile !== undefined), { message: 'password and passwordFile exclude each other' })
  .refine((p) => (p.username === undefined) === (p.password === undefined && p.passwordFile === undefined), {
    message: 'username needs a password or passwordFile, and they need a username',
  });

export type ProxyConfig = z.output<typeof proxy>;

/**
 * A registry of its own in this process (zuul-registry's namespaces): its own blobs, tags and
 * uploads, stored under `/namespaces/<name>`. Requests reach it by Host header (exact, port
 * ignored) or by a path prefix, `/<pathPrefix>/v2/...`.
 */
const namespace = z.object({
  name: z.string().regex(NAMESPACE_SEGMENT, 'lower-case letters, digits and . _ - between them'),
  host: z.string().toLowerCase().regex(HOSTNAME, 'a host name or IPv4 address, without port').optional(),
  pathPrefix: z
    .string()
    .transform((v) => v.replace(/^\/+|\/+$/g, ''))
    .refine((v) => v.split('/').every((s) => NAMESPACE_SEGMENT.test(s)), 'path segments of lower-case letters, digits and . _ -')
    .refine((v) => v.split('/')[0] !== 'v2', 'must not start with v2 (it would shadow the default registry)')
    .optional(),
  /** This namespace is a pull-through cache of another registry. */
  proxy: proxy.optional(),
}).strict().refine((n) => n.host !== undefined || n.pathPrefix !== undefined, { message: 'needs a host or a pathPrefix to be reachable' });

/** A YAML list, or (from HOIST_NAMESPACES) the same list as JSON. */
const namespaces = z
  .union([
    z.array(z.unknown()),
    z.string().transform((v, ctx) => {
      try {
        return JSON.parse(v) as unknown;
      } catch {
        ctx.addIssue({ code: z.ZodIssueCode.custom, message: 'expected a JSON list, e.g. [{"name":"team-a","host":"a.example.com"}]' });
        return z.NEVER;
      }
    }),
  ])
  .pipe(z.array(namespace))
  .superRefine((list, ctx) => {
    // zod still runs this after a failed parse above; there is nothing to compare then.
    if (!Array.isArray(list)) return;
    for (const key of ['name', 'host', 'pathPrefix'] as const) {
      const seen = new Set<string>();
      list.forEach((n, i) => {
        const v = n[key];
        if (v === undefined) return;
        if (seen.has(v)) ctx.addIssue({ code: z.ZodIssueCode.custom, path: [i, key], message: `${key} ${JSON.stringify(v)} is used by two namespaces` });
        seen.add(v);
      });
    }
    // `/x/v2/v2/app` would be namespace x's repository v2/app and also namespace x/v2's app;
    // the longer prefix wins, so x could push what it never sees again.
    list.forEach((n, i) => {
      const inner = n.pathPrefix;
      if (inner === undefined) return;
      const outer = list.find((o) => o.pathPrefix !== undefined && (inner === `${o.pathPrefix}/v2` || inner.startsWith(`${o.pathPrefix}/v2/`)));
      if (outer) ctx.addIssue({ code: z.ZodIssueCode.custom, path: [i, 'pathPrefix'], message: `pathPrefix ${JSON.stringify(inner)} would take repositories of namespace ${JSON.stringify(outer.name)} (pathPrefix ${JSON.stringify(outer.pathPrefix)})` });
    });
  });

/** Repository names and prefixes: what a name may be (reference.ts), without a leading or trailing '/'. */
const REPOSITORY_PREFIX = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/;

/**
 * Tag expiration (zuul-registry's `expiration`; src/registry/expiry.ts): a duration for every
 * registry, or per namespace and per repository prefix. `30d` is short for `{default: 30d}`.
 */
const expiresAfter = durationMs.pipe(atLeast(1000, '1s', 'off'));
const expiration = z
  .union([
    expiresAfter,
    z.object({
      default: expiresAfter.optional(),
      namespaces: z.record(z.string().regex(NAMESPACE_SEGMENT, 'a namespace name'), expiresAfter).optional(),
      repositories: z.record(z.string().regex(REPOSITORY_PREFIX, 'a repository name or prefix, e.g. ci/tmp'), expiresAfter).optional(),
    }).strict(),
  ])
  // Not on the first branch: zod would then report a value under the floor as 'Invalid input'.
  .transform((v) => (typeof v === 'number' ? { default: v } : v));

/**
 * A YAML value, or (from the environment) the same value as JSON. With `scalars`, a string that
 * is no JSON object or list is the value itself, for options that take a scalar too:
 * HOIST_GC_EXPIRATION=30d, or '{"default":"90d","namespaces":{"ci":"7d"}}'.
 */
function jsonOr<T extends z.ZodTypeAny>(schema: T, example: string, scalars = false) {
  return z
    .unknown()
    .transform((v, ctx) => {
      if (typeof v !== 'string' || (scalars && !/^\s*[[{]/.test(v))) return v;
      try {
        return JSON.parse(v) as unknown;
      } catch {
        ctx.addIssue({ code: z.ZodIssueCode.custom, message: `expected ${scalars ? 'a scalar or ' : ''}JSON, e.g. ${example}` });
        return z.NEVER;
      }
    })
    .pipe(schema);
}

/** File names: a YAML list, or from the environment a JSON list or `a.pem,b.pem`. */
const fileList = z
  .union([z.array(z.string()), z.string().transform((v, ctx) => {
    if (!v.trim().startsWith('[')) return v.split(',').map((f) => f.trim()).filter(Boolean);
    try {
      return JSON.parse(v) as unknown;
    } catch {
      // Thrown here it would escape zod, and the CLI print a stack trace instead of the setting.
      ctx.addIssue({ code: z.ZodIssueCode.custom, message: 'expected a JSON list of file names, e.g. ["a.pem","b.pem"], or a.pem,b.pem' });
      return z.NEVER;
    }
  })])
  .pipe(z.array(z.string().min(1)));

/** Text that goes into a quoted challenge parameter (WWW-Authenticate). */
const challengeParam = z.string().min(1).regex(/^[^"\\\s]+$/, 'no spaces, quotes or backslashes');

/** Who may do what (src/auth/access.ts); `repository` is a name or a pattern where * matches anything. */
const accessRule = z.object({
  repository: z.string().regex(/^[a-z0-9._*-]+(?:\/[a-z0-9._*-]+)*$/, 'a repository name or pattern, e.g. team-a/app, team-a/* or *'),
  namespace: z.string().regex(NAMESPACE_SEGMENT, 'a namespace name').optional(),
  users: z.array(z.string().min(1)).default([]),
  groups: z.array(z.string().min(1)).default([]),
  actions: z.array(z.enum(['pull', 'push', 'delete'])).min(1),
}).strict().refine((r) => r.users.length + r.groups.length > 0, { message: "needs users (names, '*' or 'anonymous') or groups" });

/** Authentication and access rules (README "Secure deployment"); absent, everyone may do everything. */
const auth = z.object({
  /** htpasswd file of bcrypt hashes (`htpasswd -B`). */
  htpasswd: z.string().min(1).optional(),
  /** Bearer tokens (Docker token authentication spec), issued by Hoist or by another issuer. */
  token: z.object({
    realm: z.string().url().regex(/^https?:\/\/[^"\\\s]+$/, 'an http(s) URL').optional(),
    service: challengeParam.default('hoist'),
    issuer: challengeParam.default('hoist'),
    privateKeyFile: z.string().min(1).optional(),
    publicKeyFiles: fileList.default([]),
    /**
     * At least a minute: token verifiers allow a minute of clock skew (distribution's
     * token.Leeway), and a client needs its token for a push's several requests. At most a
     * day: a token cannot be revoked (taking a user out of the htpasswd file does not end
     * theirs), and a day covers the longest that registries issue (Harbor's default is 30
     * minutes, raised from 5 for slow transfers, goharbor/harbor#634; ACR's tokens last 3 hours).
     */
    expiry: durationMs.pipe(atLeast(60_000, '1m')).pipe(z.number().max(86_400_000, 'at most 24h (a token cannot be revoked before it expires)')).default('5m'),
  }).strict().optional(),
  groups: jsonOr(z.record(z.array(z.string().min(1))), '{"team-a":["alice","bob"]}').default({}),
  access: jsonOr(z.array(accessRule), '[{"repository":"team-a/*","users":["alice"],"actions":["pull","push"]}]').optional(),
}).strict().refine((a) => a.htpasswd !== undefined || a.token !== undefined, { message: 'needs htpasswd, token, or both' });

/**
 * A rate: a finite number, or (from the environment) its decimal digits. YAML's `.inf` and
 * `.nan`, and digits past a double's range, are refused: an infinite rate turns the token
 * bucket's arithmetic into NaN (0 × Infinity) rather than meaning "no limit", which is 0.
 */
const numberish = z.unknown().transform((v, ctx) => {
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\s*\d+(?:\.\d+)?\s*$/.test(v) ? Number(v) : NaN;
  if (!Number.isFinite(n)) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: `expected a finite number, got ${shown(v)}` });
    return z.NEVER;
  }
  return n;
});

/** Limits on what one request or one client may ask for (src/http/limits.ts). */
const limits = z.object({
  /** Longest request target (path and query); longer is 400 NAME_INVALID. */
  maxUrlBytes: bytes.pipe(z.number().min(512)).default('8KiB'),
  /** Largest request header section, both front ends; larger is 431 (uWS itself cuts a section over 4 KiB that spans TCP reads). */
  maxHeaderBytes: bytes.pipe(z.number().min(1024)).default('16KiB'),
  /** A client that sends no body bytes (or no headers) this long is dropped; its upload stays resumable (0: never). */
  idleTimeout: timerMs.pipe(atLeast(1000, '1s', 'never')).default('60s'),
  /** Uploads in flight per user (or address, without credentials); more is 429 (0: no limit). */
  maxConcurrentUploads: integerish.pipe(z.number().min(0)).default(0),
  /** Requests per second per user (or address), on average (0: no limit); more is 429 with Retry-After. */
  requestsPerSecond: numberish.pipe(z.number().min(0)).default(0),
  /** Requests a client may make at once before the rate applies (0: twice requestsPerSecond). */
  burst: integerish.pipe(z.number().min(0)).default(0),
}).strict().default({});

/** HTTPS on the front end (node:http; reloaded on SIGHUP). */
const tls = z.object({
  certFile: z.string().min(1),
  keyFile: z.string().min(1),
}).strict();

export const ConfigSchema = z.object({
  listen: listen.default('127.0.0.1:5000'),
  storage: storage.default('fs:./data'),
  /** Which HTTP front end: uWebSockets.js when its binary loads ('auto'), or force one. */
  frontend: z.enum(['auto', 'uws', 'node']).default('auto'),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** json: one JSON object a line (for collectors); pretty: readable lines; auto: pretty on a terminal. */
  logFormat: z.enum(['auto', 'json', 'pretty']).default('auto'),
  /** Grace period for in-flight requests on SIGINT/SIGTERM. */
  // No floor: the option's name says a bare number is milliseconds, and a short grace is a choice.
  shutdownTimeoutMs: timerMs.default('10s'),
  uploads: z.object({
    /**
     * Bytes are gathered into buffers of this size before they are hashed and written:
     * tasks sized in MiB amortise the cost of a worker round trip (STYLE.md).
     */
    chunkBytes: bytes.pipe(z.number().min(64 * 1024).max(64 * 1024 ** 2)).default('4MiB'),
    /**
     * Upper bound on request bytes held in memory across all uploads: 32 MiB, two uploads'
     * worth (maxSessionBufferedBytes). Small on purpose: every byte is copied out of the
     * socket, then into the page cache (or an S3 part) and hashed, and those copies cost
     * twice as much once the bytes between them no longer fit the CPU's caches. Sixteen
     * pushes at once with 128 MiB in flight cost 15-20% more CPU per GiB than with 32 MiB, and
     * ran slower (bench/HISTORY.md, seventh round); the uploads beyond the bound wait their
     * turn for a slab, with their sockets paused.
     */
    maxBufferedBytes: bytes.pipe(z.number().min(1024 ** 2)).default('32MiB'),
    /** Upper bound on bytes one upload may hold in memory before its socket is paused. */
    maxSessionBufferedBytes: bytes.pipe(z.number().min(64 * 1024)).default('16MiB'),
    /**
     * Smallest chunk clients should send, advertised as OCI-Chunk-Min-Length (distribution-spec
     * v1.1 "Pushing a blob in chunks"; 0: not advertised). Smaller chunks still work, but each
     * costs a request, a storage write and (S3) a staging object.
     */
    minChunkBytes: bytes.default('1MiB'),
    /** Hashing worker threads; 0 means one per available core. */
    hashThreads: integerish.pipe(z.number().min(0).max(64)).default(0),
    /** Largest monolithic or chunked upload the registry accepts (0: no limit). */
    maxBlobBytes: bytes.default(0),
  }).strict().default({}),
  manifests: z.object({
    /**
     * A manifest is read whole into memory before it is parsed. Not 0: read as "no limit",
     * as uploads.maxBlobBytes has it, it refused every manifest push with 413.
     */
    maxBytes: bytes.pipe(z.number().min(1024, 'at least 1KiB (0 is not "no limit" here: every manifest would be refused)')).default('4MiB'),
  }).strict().default({}),
  /** Online garbage collection (src/gc/collector.ts; `hoist gc` runs one by hand). */
  gc: z.object({
    /** `hoist serve` runs a collection this often, on one instance at a time (0: never). */
    schedule: timerMs.pipe(atLeast(1000, '1s', 'off')).default(0),
    /** Nothing touched this recently is collected: longer than the slowest push. */
    grace: durationMs.pipe(atLeast(1000, '1s', 'spare nothing unreferenced')).default('1h'),
    /** Uploads (and unrecorded data) without activity this long are removed. */
    staleUploadAfter: durationMs.pipe(atLeast(1000, '1s', 'any idle upload')).default('1h'),
    expiration: jsonOr(expiration, '30d or {"default":"90d","namespaces":{"ci":"7d"}}', true).default({}),
  }).strict().default({}),
  /** The default registry is a pull-through cache of another registry (src/proxy/). */
  proxy: proxy.optional(),
  /** Extra isolated registries served by this process; requests matching none go to the default one. */
  namespaces: namespaces.default([]),
  /** Authentication and authorization (src/auth/); absent: no access control. */
  auth: auth.optional(),
  limits,
  tls: tls.optional(),
  /** Prometheus metrics and health checks (src/metrics/). */
  metrics: z.object({
    /**
     * Serve /metrics, /healthz and /readyz on this address, apart from the registry's port
     * (absent: no metrics listener; /healthz and /readyz are on the main port all the same).
     */
    listen: listen.optional(),
  }).strict().default({}),
}).strict();

export type Config = z.output<typeof ConfigSchema>;
export type ConfigInput = z.input<typeof ConfigSchema>;

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

type Json = Record<string, unknown>;

/** Flattens the schema's option paths so env names can be derived from them. */
function optionPaths(schema: z.ZodTypeAny, prefix: string[] = []): string[][] {
  let s: z.ZodTypeAny = schema;
  while (s instanceof z.ZodDefault || s instanceof z.ZodOptional || s instanceof z.ZodEffects) {
    s = s instanceof z.ZodEffects ? s.innerType() : s._def.innerType;
  }
  if (s instanceof z.ZodObject) {
    return Object.entries(s.shape as Record<string, z.ZodTypeAny>).flatMap(([k, v]) => optionPaths(v, [...prefix, k]));
  }
  return [prefix];
}

export function envName(path: string[]): string {
  return ENV_PREFIX + path.map((p) => p.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()).join('_');
}

/** HOIST_CONFIG names the config file (cli.ts) rather than an option. */
const ENV_NOT_OPTIONS: ReadonlySet<string> = new Set([`${ENV_PREFIX}CONFIG`]);
/**
 * The test and benchmark harnesses' own settings, which may reach a server they start
 * (test/helpers/clock.ts passes HOIST_TEST_CLOCK_FILE, testSettings() reads HOIST_TEST_GC_SWEEP_WATCH_MS
 * and HOIST_TEST_PROXY_BLOB_WINDOW_MS,
 * bench/macro/targets.ts HOIST_BENCH_*).
 */
const HARNESS_ENV_PREFIXES = ['HOIST_TEST_', 'HOIST_BENCH_', 'HOIST_FUZZ_', 'HOIST_E2E_'];

/**
 * What the test harness may shorten that is no option for users, read once at start-up from
 * its HOIST_TEST_* variables (a value that is no positive whole number is ignored).
 */
export interface TestSettings {
  /** HOIST_TEST_GC_SWEEP_WATCH_MS: how often a server looks for a dead collector's sweep note (gc/schedule.ts SWEEP_WATCH_MS). */
  readonly sweepWatchMs?: number;
  /** HOIST_TEST_PROXY_BLOB_WINDOW_MS: the window an upstream blob body must progress in (proxy/blob-flight.ts PROGRESS_WINDOW_MS). */
  readonly proxyBlobWindowMs?: number;
}

export function testSettings(env: NodeJS.ProcessEnv): TestSettings {
  const ms = (name: string): number | undefined => {
    const n = Number(env[name]);
    return Number.isSafeInteger(n) && n > 0 ? n : undefined;
  };
  const sweepWatchMs = ms('HOIST_TEST_GC_SWEEP_WATCH_MS');
  const proxyBlobWindowMs = ms('HOIST_TEST_PROXY_BLOB_WINDOW_MS');
  return {
    ...(sweepWatchMs !== undefined ? { sweepWatchMs } : {}),
    ...(proxyBlobWindowMs !== undefined ? { proxyBlobWindowMs } : {}),
  };
}

/**
 * The HOIST_* variables in `env` that name no option, sorted: a misspelt option would
 * otherwise leave its default in force without a word (an unknown YAML key is an error; a
 * variable may be meant for another program or version, so these are only warned of).
 */
export function unknownEnvNames(env: NodeJS.ProcessEnv): string[] {
  const known = new Set(optionPaths(ConfigSchema).map(envName));
  return Object.keys(env)
    .filter((k) => k.startsWith(ENV_PREFIX) && !known.has(k) && !ENV_NOT_OPTIONS.has(k) && !HARNESS_ENV_PREFIXES.some((p) => k.startsWith(p)))
    .sort();
}

function setPath(obj: Json, path: string[], value: unknown): void {
  let o = obj;
  for (const k of path.slice(0, -1)) {
    if (typeof o[k] !== 'object' || o[k] === null) o[k] = {};
    o = o[k] as Json;
  }
  o[path[path.length - 1]!] = value;
}

function merge(base: Json, over: Json): Json {
  const out: Json = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (v === undefined) continue;
    const b = out[k];
    out[k] = v && typeof v === 'object' && !Array.isArray(v) && b && typeof b === 'object' ? merge(b as Json, v as Json) : v;
  }
  return out;
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object') {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}

export interface LoadConfigOptions {
  /** Path of a YAML config file. */
  file?: string;
  /** Usually process.env; only main/cli pass it. */
  env?: NodeJS.ProcessEnv;
  /** Values from command-line flags, already shaped like the config (e.g. { listen: '...' }). */
  overrides?: Json;
}

/** Builds the frozen config, or throws ConfigError naming the offending option. */
export function loadConfig(opts: LoadConfigOptions = {}): Readonly<Config> {
  let fileValues: Json = {};
  if (opts.file) {
    let text: string;
    try {
      text = readFileSync(opts.file, 'utf8');
    } catch (err) {
      throw new ConfigError(`cannot read config file ${opts.file}: ${(err as Error).message}`);
    }
    try {
      fileValues = (parseYaml(text) ?? {}) as Json;
    } catch (err) {
      throw new ConfigError(`config file ${opts.file} is not valid YAML: ${(err as Error).message}`);
    }
    if (typeof fileValues !== 'object' || Array.isArray(fileValues)) throw new ConfigError(`config file ${opts.file} must hold a mapping`);
  }
  const envValues: Json = {};
  const env = opts.env ?? {};
  const sources = new Map<string, string>();
  for (const path of optionPaths(ConfigSchema)) {
    const name = envName(path);
    const v = env[name];
    if (v !== undefined && v !== '') {
      setPath(envValues, path, v);
      sources.set(path.join('.'), name);
    }
  }
  const merged = merge(merge(fileValues, envValues), opts.overrides ?? {});
  const result = ConfigSchema.safeParse(merged);
  if (!result.success) {
    const lines = result.error.issues.map((i) => {
      const key = i.path.join('.');
      const from = sources.get(key);
      return `  ${key || '(root)'}${from ? ` (from ${from})` : ''}: ${i.message}`;
    });
    throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`);
  }
  const cfg = result.data;
  if (cfg.uploads.hashThreads === 0) cfg.uploads.hashThreads = Math.max(1, availableParallelism());
  // Rules across options name every option involved, and where each value came from.
  const named = (...keys: string[]): string => keys.map((k) => (sources.has(k) ? `${k} (from ${sources.get(k)})` : k)).join(', ');
  if (cfg.uploads.maxSessionBufferedBytes < cfg.uploads.chunkBytes * 2) {
    throw new ConfigError(
      `invalid configuration:\n  ${named('uploads.maxSessionBufferedBytes', 'uploads.chunkBytes')}: uploads.maxSessionBufferedBytes must be at least twice uploads.chunkBytes`,
    );
  }
  if (cfg.uploads.maxBufferedBytes < cfg.uploads.maxSessionBufferedBytes) {
    throw new ConfigError(
      `invalid configuration:\n  ${named('uploads.maxBufferedBytes', 'uploads.maxSessionBufferedBytes')}: uploads.maxBufferedBytes must be at least uploads.maxSessionBufferedBytes`,
    );
  }
  // A name no namespace has (a typo) under a namespace's expiration would expire nothing, and
  // in an access rule grant nothing, silently.
  const namespaceNames = cfg.namespaces.map((n) => n.name);
  const defined = `(namespaces: ${namespaceNames.join(', ') || 'none'})`;
  const exp = cfg.gc.expiration;
  for (const name of Object.keys(typeof exp === 'object' ? exp.namespaces ?? {} : {})) {
    if (!namespaceNames.includes(name)) {
      throw new ConfigError(`invalid configuration:\n  ${named(`gc.expiration.namespaces.${name}`)}: no namespace is named ${JSON.stringify(name)} ${defined}`);
    }
  }
  for (const [i, rule] of (cfg.auth?.access ?? []).entries()) {
    if (rule.namespace !== undefined && !namespaceNames.includes(rule.namespace)) {
      throw new ConfigError(`invalid configuration:\n  ${named('auth.access')}: rule ${i + 1} names namespace ${JSON.stringify(rule.namespace)}, which no namespace is ${defined}`);
    }
    const unknownGroup = rule.groups.find((g) => !Object.hasOwn(cfg.auth!.groups, g));
    if (unknownGroup !== undefined) {
      throw new ConfigError(
        `invalid configuration:\n  ${named('auth.access', 'auth.groups')}: rule ${i + 1} names group ${JSON.stringify(unknownGroup)}, which auth.groups does not define (groups: ${Object.keys(cfg.auth!.groups).join(', ') || 'none'})`,
      );
    }
  }
  return deepFreeze(cfg);
}
