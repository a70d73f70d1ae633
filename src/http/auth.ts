import type { Auth, Identity } from '../auth/auth.js';
import { userOf } from '../auth/auth.js';
import { CATALOG, formatScopes, parseScopes, type Requirement } from '../auth/scope.js';
import { channels, type AuthDecisionMessage } from '../diagnostics.js';
import { RegistryError, UnauthorizedError } from '../errors.js';
import { isValidName } from '../registry/reference.js';
import type { IncomingRequest } from './adapter.js';
import { hasBody } from './body.js';
import { checkUrlLength, RateLimiter, UploadSlots } from './limits.js';
import type { RouteMatch } from './routes.js';

/**
 * The one check before dispatch (handlers.ts): request limits, then who is asking
 * (src/auth/), then whether they may do what the route and method mean:
 *
 *   GET|HEAD /v2/                       authenticated (an anonymous token counts)
 *   GET /v2/_catalog                    registry:catalog:*
 *   GET|HEAD manifests, blobs, tags, referrers            repository:<name>:pull
 *   PUT manifests, POST|PATCH|PUT|GET|HEAD|DELETE uploads  repository:<name>:push
 *   POST uploads ?mount=<digest>&from=<other>             + repository:<other>:pull, else no mount
 *   DELETE manifests, blobs                               repository:<name>:delete
 *   GET /token                          no check: it authenticates itself
 *
 * A request that fails is answered before its handler runs, so nothing is written:
 *
 *   401 UNAUTHORIZED  WWW-Authenticate: Bearer realm="https://r.example/token",service="hoist",scope="repository:a:pull,push"
 *                     (no or wrong credentials, or a token without the scope; Basic realm="hoist" without tokens)
 *   403 DENIED        an authenticated user the rules do not allow
 *   429 TOOMANYREQUESTS  Retry-After: 2   (rate limit, or too many uploads at once)
 *
 * A mount from a repository the rules do not let the client pull is not refused: the upload
 * starts without it (202), as the spec has a registry do when it cannot mount, and as
 * containerd, which fails the push on any answer to a mount but 201, 202 and 401, needs.
 * (A token that lacks the source's scope but could have it still gets 401 insufficient_scope.)
 */
export interface GateOptions {
  /** Undefined: no access control (every request allowed). */
  auth?: Auth;
  maxUrlBytes: number;
  /** Per user or address; 0: no limit. */
  maxConcurrentUploads: number;
  /** Per user or address; 0: no limit. */
  requestsPerSecond: number;
  /** 0: twice requestsPerSecond. */
  burst: number;
  /** The front end serves HTTPS: the token realm Hoist derives for itself says https. */
  https: boolean;
}

export interface Admission {
  readonly identity: Identity;
  /** The user, for the log line; undefined when anonymous. */
  readonly user: string | undefined;
  /** Call when the request finished (frees its upload slot). */
  release(): void;
  /** The request asked to mount from a repository the client may not pull: start the upload without it. */
  readonly mountRefused?: boolean;
}

export interface TokenReply {
  token: string;
  access_token: string;
  expires_in: number;
  issued_at: string;
}

const ANONYMOUS: Identity = { kind: 'anonymous' };
const BASIC_CHALLENGE = 'Basic realm="hoist", charset="UTF-8"';
const noop = (): void => undefined;

export class RequestGate {
  readonly #o: GateOptions;
  readonly #rate: RateLimiter | undefined;
  readonly #uploads: UploadSlots | undefined;

  constructor(o: GateOptions) {
    this.#o = o;
    if (o.requestsPerSecond > 0) this.#rate = new RateLimiter(o.requestsPerSecond, o.burst || Math.ceil(o.requestsPerSecond * 2));
    if (o.maxConcurrentUploads > 0) this.#uploads = new UploadSlots(o.maxConcurrentUploads);
  }

  /** GET /token is served (tokens issued by Hoist itself). */
  get issuesTokens(): boolean {
    return this.#o.auth?.issues ?? false;
  }

  /** Admits the request or throws the error to answer with (see above). */
  async admit(req: IncomingRequest, m: RouteMatch, namespace: string | undefined): Promise<Admission> {
    checkUrlLength(req.path, req.rawQuery, this.#o.maxUrlBytes);
    const auth = this.#o.auth;
    // Without access control nothing is derived, so every answer stays the core's own.
    const needs: Needs = auth ? requirements(m, req) : { kind: 'none', list: [] };
    let identity = ANONYMOUS;
    if (auth) {
      const address = `ip:${req.remoteAddress}`;
      const found = await auth.authenticate(req.header('authorization'), namespace, {
        // A password not remembered costs a bcrypt (~80 ms of the one thread all logins
        // share): an address whose wrong passwords used up its limit gets its 429 before
        // any more work, and it has at most a few checks in that line at once (htpasswd.ts).
        client: address,
        beforeCheck: () => this.#rate?.ensure(address),
      });
      if (found === 'invalid') {
        // Wrong passwords cost a bcrypt each: they count against the address.
        this.#rate?.take(address);
        decided('unauthorized');
        throw this.#unauthorized(req, namespace, m.route.name === 'token' ? [] : challenged(needs), 'invalid_token', m.route.name === 'token');
      }
      identity = found;
    }
    const user = userOf(identity);
    const key = user === undefined ? `ip:${req.remoteAddress}` : `user:${user}`;
    this.#rate?.take(key);
    let mountRefused = false;
    if (auth) {
      try {
        mountRefused = this.#authorize(auth, req, identity, namespace, needs);
      } catch (err) {
        if (err instanceof RegistryError && (err.code === 'UNAUTHORIZED' || err.code === 'DENIED')) {
          decided(err.code === 'UNAUTHORIZED' ? 'unauthorized' : 'denied');
        }
        throw err;
      }
      decided('allowed');
    }
    const release = this.#uploads && carriesUpload(m, req) ? this.#uploads.acquire(key) : noop;
    return { identity, user, release, ...(mountRefused ? { mountRefused } : {}) };
  }

  /** Throws 401 or 403 unless `identity` may; returns whether a mount's source is refused. */
  #authorize(auth: Auth, req: IncomingRequest, identity: Identity, namespace: string | undefined, needs: Needs): boolean {
    if (needs.kind === 'none') return false;
    if (needs.kind === 'authenticated') {
      if (identity.kind === 'anonymous') throw this.#unauthorized(req, namespace, [], undefined);
      return false;
    }
    for (const need of needs.list) {
      const d = auth.decide(identity, namespace, need);
      if (d === 'allow') continue;
      if (d === 'deny') throw new RegistryError('DENIED', { detail: [{ Type: need.type, Name: need.name, Action: need.action }] });
      throw this.#unauthorized(req, namespace, challenged(needs), d === 'scope' ? 'insufficient_scope' : undefined, false, need);
    }
    if (!needs.mountFrom) return false;
    const d = auth.decide(identity, namespace, needs.mountFrom);
    // A token without the source's scope that a new token could have: asked for, so that
    // the client can mount (Docker token spec). Refused by the rules: the upload goes on without.
    if (d === 'scope') throw this.#unauthorized(req, namespace, challenged(needs), 'insufficient_scope', false, needs.mountFrom);
    return d !== 'allow';
  }

  /**
   * The 401: with tokens, `Bearer realm,service[,scope][,error]` (Docker token spec, RFC 6750
   * §3); without, or for the token endpoint itself, `Basic realm`.
   */
  #unauthorized(
    req: IncomingRequest, namespace: string | undefined, needs: readonly Requirement[], error: string | undefined,
    basic = false, failed?: Requirement,
  ): UnauthorizedError {
    const auth = this.#o.auth!;
    const detail = failed ? [{ Type: failed.type, Name: failed.name, Action: failed.action }] : undefined;
    if (basic || auth.mode === 'basic') return new UnauthorizedError(BASIC_CHALLENGE, { detail });
    const params = [`realm="${auth.realm ?? this.#ownRealm(req)}"`, `service="${auth.service(namespace)}"`];
    if (needs.length > 0) params.push(`scope="${formatScopes(needs)}"`);
    if (error) params.push(`error="${error}"`);
    return new UnauthorizedError(`Bearer ${params.join(',')}`, { detail });
  }

  /** `http(s)://<Host>/token`: where this registry was reached, so clients come back to it. */
  #ownRealm(req: IncomingRequest): string {
    const host = req.header('host') ?? '';
    const safe = /^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/.test(host) ? host : 'localhost';
    return `${this.#o.https ? 'https' : 'http'}://${safe}/token`;
  }

  /**
   * GET /token?service=hoist&scope=repository:team-a/app:pull,push   (Docker token spec)
   *   Authorization: Basic <user:password from the htpasswd file>, or none for anonymous
   *   → 200 {"token":"<JWT>","access_token":"<JWT>","expires_in":300,"issued_at":"2024-..."}
   * The token grants what was asked for as far as the rules allow, possibly nothing; a wrong
   * password is a 401 (the gate's), a service that is not this registry's a 403.
   */
  async issueToken(req: IncomingRequest, admission: Admission, namespace: string | undefined): Promise<TokenReply> {
    const auth = this.#o.auth;
    if (!auth?.issues) throw new RegistryError('NOT_FOUND');
    if (admission.identity.kind === 'token') {
      // Tokens are for the registry; the issuer takes passwords.
      throw new UnauthorizedError(BASIC_CHALLENGE, { message: 'the token endpoint takes Basic credentials' });
    }
    const service = req.query.get('service') || auth.service(namespace);
    const issued = await auth.issue(admission.user, service, parseScopes(req.query.getAll('scope')));
    if (!issued) throw new RegistryError('DENIED', { message: 'unknown service', detail: { service: service.slice(0, 200) } });
    const t = issued.token;
    return { token: t.token, access_token: t.token, expires_in: t.expiresInSeconds, issued_at: t.issuedAt.toISOString() };
  }
}

/** Reports an access decision (metrics: hoist_auth_decisions_total). */
function decided(decision: AuthDecisionMessage['decision']): void {
  if (channels.authDecision.hasSubscribers) channels.authDecision.publish({ decision } satisfies AuthDecisionMessage);
}

type Needs =
  | { kind: 'none'; list: readonly Requirement[] }
  | { kind: 'authenticated'; list: readonly Requirement[] }
  /** `mountFrom`: pull on a mount's source, which decides only whether the mount is tried. */
  | { kind: 'actions'; list: readonly Requirement[]; mountFrom?: Requirement };

/** The scopes a challenge names: a mount's source too, so that the next token can mount. */
function challenged(needs: Needs): readonly Requirement[] {
  return needs.kind === 'actions' && needs.mountFrom ? [...needs.list, needs.mountFrom] : needs.list;
}

/** What a route and method need (see the table at the top). */
function requirements(m: RouteMatch, req: IncomingRequest): Needs {
  const route = m.route.name;
  if (route === 'token') return { kind: 'none', list: [] };
  if (route === 'base') return { kind: 'authenticated', list: [] };
  if (route === 'catalog') return { kind: 'actions', list: [CATALOG] };
  // The core would refuse the name anyway; refusing it here keeps it out of the challenge.
  if (!isValidName(m.name)) throw new RegistryError('NAME_INVALID', { detail: { name: m.name.slice(0, 256) } });
  const repo = (action: 'pull' | 'push' | 'delete'): Requirement => ({ type: 'repository', name: m.name, action });
  const method = req.method;
  switch (route) {
    case 'tags':
    case 'referrers':
      return { kind: 'actions', list: [repo('pull')] };
    case 'manifest':
    case 'blob':
      if (method === 'DELETE') return { kind: 'actions', list: [repo('delete')] };
      return { kind: 'actions', list: [repo(method === 'PUT' ? 'push' : 'pull')] };
    case 'uploads': {
      const from = req.query.get('from');
      const mount = req.query.get('mount') !== null && from !== null && isValidName(from);
      // A mount reads the blob from `from`: tried only if the client may pull it there.
      return { kind: 'actions', list: [repo('push')], ...(mount ? { mountFrom: { type: 'repository', name: from!, action: 'pull' } } : {}) };
    }
    case 'upload':
      return { kind: 'actions', list: [repo('push')] };
  }
  return { kind: 'actions', list: [repo('pull')] };
}

/** Requests that carry blob bytes, which the per-client upload limit counts. */
function carriesUpload(m: RouteMatch, req: IncomingRequest): boolean {
  const route = m.route.name;
  if (route === 'upload') return req.method === 'PATCH' || (req.method === 'PUT' && hasBody(req));
  return route === 'uploads' && hasBody(req);
}
