import type { Logger } from 'pino';
import { channels, type LimitRefusalMessage } from '../diagnostics.js';
import { BlobTooLargeError, RegistryError, TooManyRequestsError, type ErrorCode } from '../errors.js';
import { Slots } from '../engine/slots.js';
import { MANIFEST_MEDIA_TYPES } from '../registry/manifest-schema.js';
import type { Page } from '../registry/manifests.js';
import { parseChallenge, type Challenge } from './challenge.js';
import { bareHost, isInternalAddress, isInternalHost } from './destinations.js';
import { internalAddressError, UpstreamHttp } from './http-client.js';

/**
 * The upstream registry of a pull-through cache, spoken to as a client does (distribution-spec
 * v1.1 "Pulling"), over keep-alive connections of its own (http-client.ts: fetch()'s Response
 * and streamed bodies, and a check of every address connected to).
 *
 * Authentication, as docker and containerd do it: a request goes out with what worked last
 * time for that repository (nothing, HTTP Basic, or a bearer token); a 401 names what the
 * upstream wants, and the request is answered once more with it:
 *
 *   GET /v2/library/alpine/manifests/3.20                               → 401
 *       WWW-Authenticate: Bearer realm="https://auth.docker.io/token",service="registry.docker.io",
 *                                scope="repository:library/alpine:pull"
 *   GET https://auth.docker.io/token?service=registry.docker.io&scope=repository:library/alpine:pull
 *       (Authorization: Basic <username:password> when configured; anonymous otherwise)
 *                                                                       → 200 {"token": "...", "expires_in": 300}
 *   GET /v2/library/alpine/manifests/3.20, Authorization: Bearer ...   → 200
 *
 * Tokens are kept per scope until shortly before they expire (Docker token spec: `expires_in`,
 * 60 s when absent), so a pull of many blobs fetches one token, not one per blob.
 *
 * Redirects are followed by hand (#request), as fetch() would not: at most MAX_REDIRECTS, never from
 * https to http, never to an address of this machine or its link (destinations.ts) unless the
 * upstream itself is at one, and the credentials only to the origin they are for. A host
 * name is checked where it is connected to (http-client.ts), by the addresses it resolves to
 * then, not before: a DNS server that answers otherwise the second time has no second time.
 * A redirect refused is the upstream failing: 503, and a warning in the log. fetch() followed any
 * redirect (20 of them, to http://127.0.0.1 or the cloud's metadata service alike, found by
 * probing): an upstream, or whoever controls where it redirects, could make the cache fetch
 * from services only this host may reach.
 */
export interface UpstreamOptions {
  /** `https://registry-1.docker.io`, without a trailing '/'. */
  readonly remoteUrl: string;
  readonly username?: string;
  readonly password?: string;
  readonly log: Logger;
  /** How long to wait for a response's headers (connecting included). */
  readonly headersTimeoutMs?: number;
  /** Metadata requests (manifests, blob HEADs, tag lists) at once (proxy.maxMetadataRequests); the rest wait in a bounded line. */
  readonly maxMetadataRequests: number;
}

const DEFAULT_HEADERS_TIMEOUT_MS = 30_000;
/** Docker token spec: "if omitted, the token is valid for 60 seconds". */
const DEFAULT_TOKEN_SECONDS = 60;
/** Tokens cached at once (one per repository pulled lately). */
const MAX_TOKENS = 1000;
/**
 * The longest token taken (characters; they are ASCII), so that the cache holds at most
 * MAX_TOKENS × 16 KiB = 16 MiB of them: a token service that sent 1 MiB tokens made it hold
 * about 1 GiB (found by probing). Real ones are far shorter (Docker Hub's JWTs: a few KiB),
 * and a longer one would not fit in the request headers of most servers anyway (node: 16 KiB).
 */
const MAX_TOKEN_CHARS = 16 * 1024;
/** A token service's answer: the token, perhaps twice (`token`, `access_token`), and a few fields. */
const MAX_TOKEN_RESPONSE_BYTES = 64 * 1024;
const USER_AGENT = 'hoist-pull-through-cache';
/** Redirects followed for one request at most (fetch's own limit is 20; real registries use one, to S3 or a CDN). */
const MAX_REDIRECTS = 5;
/** What fetch() follows (Fetch standard, "redirect status"). */
const REDIRECT_STATUSES: ReadonlySet<number> = new Set([301, 302, 303, 307, 308]);
const MANIFEST_ACCEPT = MANIFEST_MEDIA_TYPES.join(', ');
/**
 * Requests that wait for a place, per place: a burst of four times as many as run (a fleet
 * starting at once) waits rather than being refused; past that the client gets 429, as past
 * proxy.maxBlobFetches. Waiters are client requests holding connections; a line that only
 * grew while the upstream was slow would be the pile-up the limit is there to stop.
 */
const QUEUED_PER_METADATA_REQUEST = 4;
/**
 * The longest a metadata request waits in line: past it, 429 (the client retries) rather than
 * a wait that the line's length times the upstream's timeouts (30 s for headers and 30 s for
 * a body) would allow, minutes behind a stalled upstream. A healthy upstream clears a full
 * line in well under it (4 rounds of a round trip).
 */
const MAX_METADATA_WAIT_MS = 10_000;

/**
 * The upstream could not be asked (refused connection, timeout, reset, 5xx). A tag the cache
 * holds is served from the cache then; anything else gets this error: 503 UNAVAILABLE.
 */
export class UpstreamUnavailableError extends RegistryError {
  constructor(remote: string, reason: string, cause?: unknown) {
    super('UNAVAILABLE', { message: `upstream registry ${remote} is unavailable: ${reason}`, detail: { upstream: remote }, cause });
  }
}

/** The upstream said 429: the client gets 429 too (with its Retry-After), unless the cache has the content. */
export class UpstreamThrottledError extends TooManyRequestsError {
  constructor(remote: string, retryAfterSeconds: number) {
    super(retryAfterSeconds, { message: `upstream registry ${remote} asks to slow down`, detail: { upstream: remote } });
  }
}

/**
 * The cache's own bound on upstream metadata requests (proxy.maxMetadataRequests) is reached,
 * and the line behind it too (or this one waited too long in it): 429, as past
 * proxy.maxBlobFetches, unless the cache has the content.
 */
export class UpstreamBusyError extends TooManyRequestsError {
  constructor(remote: string, why: 'full' | 'waited') {
    super(1, {
      message: why === 'full' ? 'too many requests to the upstream registry waiting; retry' : 'waited too long for a request to the upstream registry; retry',
      detail: { upstream: remote },
    });
  }
}

/** Whether the cache may answer from what it holds instead: the upstream could not say (or not now). */
export function isUpstreamDown(err: unknown): boolean {
  return err instanceof UpstreamUnavailableError || err instanceof UpstreamThrottledError || err instanceof UpstreamBusyError;
}

export interface UpstreamManifest {
  readonly bytes: Buffer;
  readonly contentType: string | undefined;
  /** Docker-Content-Digest, when sent. */
  readonly digest: string | undefined;
}

export interface UpstreamBlob {
  /** Content-Length; undefined when the upstream streams without one. */
  readonly size: number | undefined;
  readonly body: ReadableStream<Uint8Array>;
}

/** A response, and the URL that answered it (after the redirects followed). */
interface Answered {
  readonly res: Response;
  readonly url: URL;
}

interface CachedToken {
  readonly value: string;
  readonly expiresAtMs: number;
}

export class UpstreamClient {
  readonly #o: UpstreamOptions;
  /** For messages and logs: the upstream without credentials or path. */
  readonly remote: string;
  readonly #basic: string | undefined;
  readonly #headersTimeoutMs: number;
  /** The upstream's own origin: the only one its credentials go to. */
  readonly #origin: string;
  /** Whether the upstream is at an internal address itself (then redirects may lead to one). */
  #local: Promise<boolean> | undefined;
  /** What the upstream asked for last: decides what requests carry before any 401. */
  #scheme: 'none' | 'basic' | 'bearer' = 'none';
  #bearer: { realm: string; service: string | undefined } | undefined;
  readonly #tokens = new Map<string, CachedToken>();
  readonly #fetchingTokens = new Map<string, Promise<string>>();
  /** Blob HEADs in flight, by `<repo> <digest>`: one per blob and repository at a time. */
  readonly #heads = new Map<string, Promise<number>>();
  readonly #http: UpstreamHttp;
  /** What bounds the metadata requests (not blob GETs: the cache bounds those, proxy.maxBlobFetches). */
  readonly #metadata: Slots;

  constructor(o: UpstreamOptions) {
    this.#o = o;
    this.remote = new URL(o.remoteUrl).host;
    this.#origin = new URL(o.remoteUrl).origin;
    this.#basic = o.username !== undefined && o.password !== undefined
      ? `Basic ${Buffer.from(`${o.username}:${o.password}`).toString('base64')}`
      : undefined;
    this.#headersTimeoutMs = o.headersTimeoutMs ?? DEFAULT_HEADERS_TIMEOUT_MS;
    this.#http = new UpstreamHttp(() => this.#isLocal());
    const max = o.maxMetadataRequests;
    this.#metadata = new Slots(max, {
      maxWaiting: max * QUEUED_PER_METADATA_REQUEST, maxWaitMs: MAX_METADATA_WAIT_MS,
      refuse: (why) => {
        if (channels.limitRefusal.hasSubscribers) channels.limitRefusal.publish({ limit: 'upstream_requests' } satisfies LimitRefusalMessage);
        this.#o.log.debug({ upstream: this.remote, why, active: this.#metadata.inflight, queued: this.#metadata.waiting }, 'upstream metadata request refused: proxy.maxMetadataRequests busy');
        return new UpstreamBusyError(this.remote, why);
      },
    });
  }

  // --- the operations ---------------------------------------------------------------------

  /** HEAD a manifest: its digest (Docker-Content-Digest, when sent). MANIFEST_UNKNOWN, DENIED, or unavailable. */
  headManifest(repo: string, reference: string): Promise<{ digest: string | undefined }> {
    return this.#metadata.run(async () => {
      const res = await this.#send('HEAD', repo, `manifests/${reference}`, { accept: MANIFEST_ACCEPT });
      await this.#expectOk(res, 'MANIFEST_UNKNOWN', { reference });
      return { digest: res.headers.get('docker-content-digest') ?? undefined };
    });
  }

  /** GET a manifest, at most `maxBytes` of it. */
  getManifest(repo: string, reference: string, maxBytes: number): Promise<UpstreamManifest> {
    // Its body is read within its place: the bytes in memory are what the bound is for too.
    return this.#metadata.run(async () => {
      const res = await this.#send('GET', repo, `manifests/${reference}`, { accept: MANIFEST_ACCEPT });
      await this.#expectOk(res, 'MANIFEST_UNKNOWN', { reference });
      const bytes = await this.#readCapped(res, maxBytes);
      return { bytes, contentType: res.headers.get('content-type') ?? undefined, digest: res.headers.get('docker-content-digest') ?? undefined };
    });
  }

  /**
   * Whether `repo` has the blob upstream, and its size (BLOB_UNKNOWN when not). Over
   * `maxBytes` (when not 0) it is SIZE_INVALID, as openBlob answers a GET of it.
   */
  async headBlob(repo: string, digest: string, maxBytes = 0): Promise<number> {
    // Pulls of one blob through a repository it is not linked in yet (a fleet pulling a base
    // layer by a new name) each asked the upstream: 20 at once sent 20 HEADs. They share one.
    const key = `${repo} ${digest}`;
    let head = this.#heads.get(key);
    if (!head) {
      // Its place is taken inside the shared HEAD: those who share it take none.
      head = this.#metadata.run(() => this.#headBlob(repo, digest)).finally(() => this.#heads.delete(key));
      this.#heads.set(key, head);
    }
    const size = await head;
    if (maxBytes > 0 && size > maxBytes) throw new BlobTooLargeError(maxBytes, { size, upstream: this.remote });
    return size;
  }

  async #headBlob(repo: string, digest: string): Promise<number> {
    // Not following redirects: a HEAD sent on to a presigned GET URL (S3, a CDN) is refused there.
    const res = await this.#send('HEAD', repo, `blobs/${digest}`, { redirect: 'manual' });
    if (res.status >= 300 && res.status < 400) {
      // The blob lives elsewhere; its first byte tells its size (Content-Range: bytes 0-0/<size>).
      const ranged = await this.#send('GET', repo, `blobs/${digest}`, { range: 'bytes=0-0' });
      await this.#expectOk(ranged, 'BLOB_UNKNOWN', { digest });
      await ranged.body?.cancel().catch(() => undefined);
      const total = /\/(\d+)$/.exec(ranged.headers.get('content-range') ?? '')?.[1] ?? (ranged.status === 200 ? ranged.headers.get('content-length') : null);
      if (total == null) throw new UpstreamUnavailableError(this.remote, 'blob size not reported');
      return Number(total);
    }
    await this.#expectOk(res, 'BLOB_UNKNOWN', { digest });
    const length = res.headers.get('content-length');
    if (length === null || !/^\d+$/.test(length)) throw new UpstreamUnavailableError(this.remote, 'blob size not reported');
    return Number(length);
  }

  /**
   * GET a blob, following redirects (#request: Authorization is not sent to another origin). Resolves
   * once the headers are in; the body streams from `body`. Aborting `signal` cuts it.
   */
  async openBlob(repo: string, digest: string, signal: AbortSignal, maxBytes = 0): Promise<UpstreamBlob> {
    // Identity: the bytes must arrive as they were hashed, not re-encoded on the way.
    const res = await this.#send('GET', repo, `blobs/${digest}`, { signal, identity: true });
    await this.#expectOk(res, 'BLOB_UNKNOWN', { digest });
    if (!res.body) throw new UpstreamUnavailableError(this.remote, 'blob response without a body');
    // Its length, or no fetch: a body without one has no end the cache could hold it to (an
    // upstream sending without end filled the disk), and clients would wait for it headerless.
    const length = res.headers.get('content-length');
    const size = length !== null && /^\d{1,15}$/.test(length) ? Number(length) : undefined;
    // Re-encoded despite Accept-Encoding: identity: http-client.ts decodes it (as fetch() did), so its length is not the blob's.
    const encoding = res.headers.get('content-encoding');
    const encoded = encoding !== null && encoding.trim().toLowerCase() !== 'identity';
    if (size === undefined || encoded || (maxBytes > 0 && size > maxBytes)) {
      await res.body.cancel().catch(() => undefined);
      if (encoded) throw new UpstreamUnavailableError(this.remote, `the blob came with Content-Encoding: ${encoding!.slice(0, 40)}`);
      if (size === undefined) throw new UpstreamUnavailableError(this.remote, 'blob size not reported');
      throw new BlobTooLargeError(maxBytes, { size, upstream: this.remote });
    }
    return { size, body: res.body };
  }

  /** The upstream's tags/list, one page (distribution-spec "Listing Tags"). */
  listTags(repo: string, n: number | undefined, last: string | undefined): Promise<Page<string>> {
    return this.#metadata.run(() => this.#listTags(repo, n, last));
  }

  async #listTags(repo: string, n: number | undefined, last: string | undefined): Promise<Page<string>> {
    const q = new URLSearchParams();
    if (n !== undefined) q.set('n', String(n));
    if (last !== undefined) q.set('last', last);
    const query = q.size > 0 ? `?${q.toString()}` : '';
    const res = await this.#send('GET', repo, `tags/list${query}`, { accept: 'application/json' });
    await this.#expectOk(res, 'NAME_UNKNOWN', { name: repo });
    let tags: unknown;
    try {
      tags = (JSON.parse((await this.#readCapped(res, 16 * 1024 ** 2)).toString('utf8')) as { tags?: unknown }).tags;
    } catch (err) {
      if (err instanceof RegistryError) throw err;
      throw new UpstreamUnavailableError(this.remote, 'tags/list is not JSON', err);
    }
    const items = Array.isArray(tags) ? tags.filter((t): t is string => typeof t === 'string') : [];
    const more = /rel="?next"?/.test(res.headers.get('link') ?? '');
    return more && items.length > 0 ? { items, next: items[items.length - 1]! } : { items };
  }

  // --- requests and authentication ------------------------------------------------------------

  async #send(
    method: string, repo: string, path: string,
    opts: { accept?: string; range?: string; identity?: boolean; signal?: AbortSignal; redirect?: RequestRedirect } = {},
  ): Promise<Response> {
    const url = new URL(`${this.#o.remoteUrl}/v2/${repo}/${path}`);
    const headers: Record<string, string> = { 'user-agent': USER_AGENT };
    if (opts.accept) headers['accept'] = opts.accept;
    if (opts.range) headers['range'] = opts.range;
    if (opts.identity) headers['accept-encoding'] = 'identity';
    const scope = `repository:${repo}:pull`;
    // A token service that fails (for another repository's challenge, say) must not fail the
    // repositories that need none: then the request goes without, and a 401 says what it needs.
    const auth = await this.#authorization(scope).catch((err: unknown) => {
      this.#o.log.debug({ upstream: this.remote, scope, err }, 'no upstream credentials to send first');
      return undefined;
    });
    const request = { method, headers, home: this.#origin, signal: opts.signal, follow: opts.redirect !== 'manual' };
    let sent = await this.#request(url, { ...request, authorization: auth });
    if (sent.res.status !== 401) return this.#checkAvailable(sent.res);
    await this.#refuseElsewhere(sent);
    // Answer the challenge once; a second 401 is the upstream's last word.
    const answer = await this.#answer(parseChallenge(sent.res.headers.get('www-authenticate')), scope, auth);
    if (answer === undefined) return sent.res;
    await sent.res.body?.cancel().catch(() => undefined);
    sent = await this.#request(url, { ...request, authorization: answer });
    if (sent.res.status === 401) await this.#refuseElsewhere(sent);
    return this.#checkAvailable(sent.res);
  }

  /**
   * One request, its redirects followed by hand when `follow` (see the top of this file).
   * `authorization` goes only to `home`, the origin it is for: a redirect to another host
   * (S3 presigned URLs, a CDN) is sent without it, as fetch() did (Fetch standard, "HTTP-redirect
   * fetch", step 13).
   */
  async #request(
    url: URL,
    o: {
      method: string; headers: Record<string, string>; authorization: string | undefined; home: string; signal?: AbortSignal; follow: boolean;
      /** Throws what `url` itself connecting to an internal `address` is (a redirect's is a redirect refused). */
      refusedStart?: (address: string) => never;
    },
  ): Promise<Answered> {
    let at = url;
    let from: URL | undefined;
    for (let hop = 1; ; hop++) {
      const headers = o.authorization !== undefined && at.origin === o.home ? { ...o.headers, authorization: o.authorization } : o.headers;
      let res: Response;
      try {
        res = await this.#fetch(at, o.method, headers, o.signal);
      } catch (err) {
        // The name resolved to an internal address where it was connected to (http-client.ts).
        const internal = internalAddressError(err);
        if (!internal) throw err;
        if (from) this.#refuseRedirect(from, at, hop - 1, 'to a loopback or link-local address', internal.address);
        o.refusedStart?.(internal.address);
        throw err;
      }
      const location = res.headers.get('location');
      // A redirect status without a Location is the answer, as fetch() has it.
      if (!o.follow || !REDIRECT_STATUSES.has(res.status) || location === null) return { res, url: at };
      await res.body?.cancel().catch(() => undefined);
      // We send only GET and HEAD, which every redirect status repeats as they are (303 included).
      from = at;
      at = await this.#redirectTarget(at, location, hop);
    }
  }

  /** Where a redirect from `from` leads, or UpstreamUnavailableError (logged) when it may not be followed. */
  async #redirectTarget(from: URL, location: string, hop: number): Promise<URL> {
    let to: URL | undefined;
    try {
      to = new URL(location, from);
    } catch {
      // Not a URL: named nowhere, refused below.
    }
    const reason = !to ? 'a Location that is not a URL'
      : hop > MAX_REDIRECTS ? `more than ${MAX_REDIRECTS} redirects`
      : to.protocol !== 'http:' && to.protocol !== 'https:' ? `to a ${to.protocol.slice(0, 20)} URL`
      : from.protocol === 'https:' && to.protocol === 'http:' ? 'from https to http'
      : (await this.#refusesInternal(to)) ? 'to a loopback or link-local address'
      : undefined;
    if (reason === undefined) return to!;
    return this.#refuseRedirect(from, to, hop, reason);
  }

  /** A redirect refused: logged, and the upstream failing. `address`: what `to` resolved to, when that was why. */
  #refuseRedirect(from: URL, to: URL | undefined, hop: number, reason: string, address?: string): never {
    // Hosts only: a presigned URL's query is a credential.
    this.#o.log.warn({ upstream: this.remote, from: from.host, to: to?.host, hop, reason, ...(address !== undefined ? { address } : {}) }, 'upstream redirect refused');
    throw new UpstreamUnavailableError(this.remote, `redirect refused (${reason})`);
  }

  /**
   * Whether `to` names an internal address (destinations.ts) by an IP literal where the
   * upstream is not at one: those node:net connects to without a lookup, so they are checked
   * here; names are checked where they are connected to (http-client.ts, the same rule).
   */
  async #refusesInternal(to: URL): Promise<boolean> {
    return isInternalAddress(bareHost(to.hostname)) && !(await this.#isLocal());
  }

  /**
   * Whether the upstream is at an internal address itself: an upstream configured at one (a
   * registry beside the cache, the tests' upstreams on 127.0.0.1) may send the cache there,
   * it is where the operator pointed it.
   */
  #isLocal(): Promise<boolean> {
    return (this.#local ??= isInternalHost(new URL(this.#o.remoteUrl).hostname));
  }

  /**
   * Only the upstream itself may ask for its credentials: a 401 from a host it redirected us
   * to (a CDN, or anyone a compromised upstream names) is not answered, or its realm would
   * get the username and password, and be asked for every later token. Unavailable instead.
   */
  async #refuseElsewhere(sent: Answered): Promise<void> {
    if (sent.url.origin === this.#origin) return;
    await sent.res.body?.cancel().catch(() => undefined);
    throw new UpstreamUnavailableError(this.remote, `${sent.url.host}, where it redirected, asked for credentials`);
  }

  /** What to send before any challenge: what the upstream asked for last time. */
  async #authorization(scope: string): Promise<string | undefined> {
    if (this.#scheme === 'basic') return this.#basic;
    if (this.#scheme === 'bearer' && this.#bearer) {
      const cached = this.#tokens.get(scope);
      if (cached && cached.expiresAtMs > Date.now()) return `Bearer ${cached.value}`;
      return `Bearer ${await this.#token(this.#bearer.realm, this.#bearer.service, scope, scope)}`;
    }
    return undefined;
  }

  /** The Authorization that answers a 401's challenge, or undefined when there is none to try. */
  async #answer(challenge: Challenge | undefined, scope: string, sent: string | undefined): Promise<string | undefined> {
    if (challenge?.scheme === 'basic') {
      this.#scheme = 'basic';
      return this.#basic !== undefined && sent !== this.#basic ? this.#basic : undefined;
    }
    if (challenge?.scheme !== 'bearer') return undefined;
    const realm = challenge.params['realm'];
    if (!realm || !/^https?:\/\//i.test(realm)) return undefined;
    this.#scheme = 'bearer';
    this.#bearer = { realm, service: challenge.params['service'] };
    // The token we sent (if any) was not good enough: forget it, ask for the scope the upstream named.
    this.#tokens.delete(scope);
    const token = await this.#token(realm, challenge.params['service'], challenge.params['scope'] ?? scope, scope);
    return `Bearer ${token}`;
  }

  /** A token for `scope` from the realm, fetched once however many requests wait for it. */
  #token(realm: string, service: string | undefined, requestScope: string, cacheKey: string): Promise<string> {
    const key = `${realm} ${service ?? ''} ${requestScope}`;
    let p = this.#fetchingTokens.get(key);
    if (!p) {
      p = this.#fetchToken(realm, service, requestScope).then((t) => {
        if (this.#tokens.size >= MAX_TOKENS) this.#tokens.delete(this.#tokens.keys().next().value!);
        this.#tokens.set(cacheKey, t);
        return t.value;
      }).finally(() => this.#fetchingTokens.delete(key));
      this.#fetchingTokens.set(key, p);
    }
    return p;
  }

  async #fetchToken(realm: string, service: string | undefined, scope: string): Promise<CachedToken> {
    const url = new URL(realm);
    if (service) url.searchParams.set('service', service);
    if (scope) url.searchParams.set('scope', scope);
    if (this.#o.username) url.searchParams.set('account', this.#o.username);
    const headers: Record<string, string> = { 'user-agent': USER_AGENT, accept: 'application/json' };
    // The realm is where the upstream sends us, as a redirect is: held to the same rules.
    const refuseRealm = (address?: string): never => {
      this.#o.log.warn({ upstream: this.remote, realm: url.host, ...(address !== undefined ? { address } : {}) }, 'upstream token realm refused: a loopback or link-local address');
      throw new UpstreamUnavailableError(this.remote, 'token realm refused (a loopback or link-local address)');
    };
    if (await this.#refusesInternal(url)) refuseRealm();
    const { res: answered } = await this.#request(url, { method: 'GET', headers, authorization: this.#basic, home: url.origin, follow: true, refusedStart: refuseRealm });
    const res = this.#checkAvailable(answered);
    if (res.status === 401 || res.status === 403) {
      await res.body?.cancel().catch(() => undefined);
      throw new RegistryError('DENIED', {
        message: `upstream registry ${this.remote}: its token service refused ${this.#basic ? 'the configured credentials' : 'an anonymous token'}`,
        detail: { upstream: this.remote, status: res.status },
      });
    }
    if (res.status !== 200) {
      await res.body?.cancel().catch(() => undefined);
      throw new UpstreamUnavailableError(this.remote, `token service answered HTTP ${res.status}`);
    }
    let body: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      body = JSON.parse((await this.#readCapped(res, MAX_TOKEN_RESPONSE_BYTES)).toString('utf8')) as typeof body;
    } catch (err) {
      if (err instanceof RegistryError) throw err;
      throw new UpstreamUnavailableError(this.remote, 'token service answered something that is not JSON', err);
    }
    const value = typeof body.token === 'string' && body.token ? body.token : typeof body.access_token === 'string' ? body.access_token : '';
    if (!value) throw new UpstreamUnavailableError(this.remote, 'token service answered without a token');
    if (value.length > MAX_TOKEN_CHARS) throw new UpstreamUnavailableError(this.remote, `token service answered a token of ${value.length} characters (at most ${MAX_TOKEN_CHARS} taken)`);
    const seconds = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : DEFAULT_TOKEN_SECONDS;
    // Renew a little early: a token must not expire between our check and the upstream's.
    const lifetimeMs = seconds * 1000;
    this.#o.log.debug({ upstream: this.remote, scope, expiresInSeconds: seconds }, 'upstream token fetched');
    return { value, expiresAtMs: Date.now() + lifetimeMs - Math.min(30_000, lifetimeMs / 10) };
  }

  /** One request (no redirect followed) with a bound on the time to the response headers; failures become UpstreamUnavailableError. */
  async #fetch(url: URL, method: string, headers: Record<string, string>, signal?: AbortSignal): Promise<Response> {
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(new Error(`no response within ${this.#headersTimeoutMs} ms`)), this.#headersTimeoutMs);
    // The caller's signal stays wired for the body too: aborting it cuts a streaming blob.
    if (signal) {
      if (signal.aborted) ac.abort(signal.reason);
      else signal.addEventListener('abort', () => ac.abort(signal.reason), { once: true });
    }
    try {
      return await this.#http.request(url, method, headers, ac.signal);
    } catch (err) {
      throw new UpstreamUnavailableError(this.remote, reasonOf(ac.signal.aborted ? ac.signal.reason : err), err);
    } finally {
      clearTimeout(timer);
    }
  }

  /** 5xx and 429 mean "ask again later": the cache may answer instead. */
  #checkAvailable(res: Response): Response {
    if (res.status >= 500 || res.status === 429) {
      void res.body?.cancel().catch(() => undefined);
      if (res.status === 429) throw new UpstreamThrottledError(this.remote, retryAfter(res.headers.get('retry-after')));
      throw new UpstreamUnavailableError(this.remote, `HTTP ${res.status}`);
    }
    return res;
  }

  /** 2xx passes; 404 is `missing`; 401/403 DENIED (the upstream refuses us); anything else unavailable. */
  async #expectOk(res: Response, missing: ErrorCode, detail: Record<string, string>): Promise<void> {
    if (res.status >= 200 && res.status < 300) return;
    const text = await res.text().catch(() => '');
    const upstream = upstreamErrors(text);
    if (res.status === 404) throw new RegistryError(missing, { detail: { ...detail, upstream: this.remote } });
    if (res.status === 401 || res.status === 403) {
      throw new RegistryError('DENIED', {
        message: `upstream registry ${this.remote} refused access${this.#basic ? '' : ' (no credentials configured)'}`,
        detail: { ...detail, upstream: this.remote, status: res.status, ...(upstream ? { errors: upstream } : {}) },
      });
    }
    throw new UpstreamUnavailableError(this.remote, `HTTP ${res.status}${upstream ? ` ${JSON.stringify(upstream).slice(0, 200)}` : ''}`);
  }

  /**
   * The body, refusing more than `max` bytes; a body cut short is the upstream being
   * unavailable, and so is one too large: the upstream's fault, not the client's (503, not 400).
   * These bodies are small (a manifest, a tag list, a token), and all of one must arrive within
   * the time allowed for headers: one that stalls, or drips a byte at a time, would otherwise
   * hold every client of the fetch it belongs to (a cached tag is served instead, as when the
   * headers never come).
   */
  async #readCapped(res: Response, max: number): Promise<Buffer> {
    const declared = Number(res.headers.get('content-length') ?? NaN);
    const tooLarge = (): UpstreamUnavailableError => new UpstreamUnavailableError(this.remote, `a response over ${max} bytes`);
    if (declared > max) {
      await res.body?.cancel().catch(() => undefined);
      throw tooLarge();
    }
    if (!res.body) return Buffer.alloc(0);
    const reader = res.body.getReader();
    let late = false;
    const timer = setTimeout(() => {
      late = true;
      void reader.cancel().catch(() => undefined);
    }, this.#headersTimeoutMs);
    const chunks: Uint8Array[] = [];
    let n = 0;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (late) throw new UpstreamUnavailableError(this.remote, `a response body not complete within ${this.#headersTimeoutMs} ms`);
        if (done) break;
        n += value.byteLength;
        if (n > max) {
          void reader.cancel().catch(() => undefined);
          throw tooLarge();
        }
        chunks.push(value);
      }
    } catch (err) {
      if (err instanceof RegistryError) throw err;
      throw new UpstreamUnavailableError(this.remote, reasonOf(err), err);
    } finally {
      clearTimeout(timer);
    }
    return Buffer.concat(chunks, n);
  }
}

/** The spec's error envelope of an upstream reply, for the detail we pass on. */
function upstreamErrors(text: string): unknown[] | undefined {
  try {
    const errors = (JSON.parse(text) as { errors?: unknown }).errors;
    return Array.isArray(errors) ? errors.slice(0, 3) : undefined;
  } catch {
    return undefined;
  }
}

function retryAfter(header: string | null): number {
  if (header && /^\d+$/.test(header.trim())) return Number(header.trim());
  const at = header ? Date.parse(header) : NaN;
  return Number.isFinite(at) ? Math.max(1, (at - Date.now()) / 1000) : 1;
}

/** undici says "fetch failed" and keeps the reason (ECONNREFUSED, ...) in `cause`. */
export function reasonOf(err: unknown): string {
  let e: unknown = err;
  for (let i = 0; i < 4 && e instanceof Error; i++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code && typeof code === 'string' && !code.startsWith('UND_ERR_') && code !== 'ABORT_ERR') return code;
    if (!(e.cause instanceof Error)) return e.message;
    e = e.cause;
  }
  return String(err);
}
