import { ConfigError } from '../config.js';
import { isValidName } from '../registry/reference.js';
import { AccessPolicy, type AccessRule } from './access.js';
import { Htpasswd, type VerifyOptions } from './htpasswd.js';
import { ACTIONS, grants, isAction, type Requirement, type ResourceActions } from './scope.js';
import {
  ephemeralSigningKey, loadSigningKey, loadVerifyingKeys, TokenIssuer, TokenVerifier, type IssuedToken, type VerifiedToken,
} from './tokens.js';

/**
 * Authentication and authorization, knowing nothing of HTTP: an Authorization header value
 * becomes an Identity, and an identity is allowed, or not, one action on one repository.
 * src/http/auth.ts derives what a request needs and turns the answer into 401/403.
 */
export interface AuthOptions {
  /** An htpasswd file of bcrypt hashes: users who log in with a password (HTTP Basic, or at GET /token). */
  readonly htpasswd?: string;
  /** Bearer tokens (Docker token authentication spec). */
  readonly token?: {
    /** Where clients get tokens; by default Hoist's own GET /token on the host they asked. */
    readonly realm?: string;
    /** The token audience (`aud`) for the default registry; a namespace's is `<service>/<namespace>`. */
    readonly service: string;
    /** The `iss` of tokens: Hoist's own, and what it requires of tokens it verifies. */
    readonly issuer: string;
    /** Hoist issues tokens signed with this key (EC P-256: ES256, RSA: RS256). */
    readonly privateKeyFile?: string;
    /** Public keys (or certificates) of an external issuer whose tokens are accepted. */
    readonly publicKeyFiles: readonly string[];
    /** Lifetime of the tokens Hoist issues. */
    readonly expiryMs: number;
  };
  readonly groups: Readonly<Record<string, readonly string[]>>;
  /** Undefined: every authenticated user may do everything (see access.ts). */
  readonly access?: readonly AccessRule[];
}

export type Identity =
  /** No credentials (or empty Basic ones, which some clients send when they have none). */
  | { readonly kind: 'anonymous' }
  /** A user whose password matched the htpasswd file. */
  | { readonly kind: 'user'; readonly user: string }
  /** A verified bearer token; `subject` '' is an anonymous token. */
  | { readonly kind: 'token'; readonly token: VerifiedToken };

/** The user an identity names, for logs and per-credential limits; undefined when anonymous. */
export function userOf(id: Identity): string | undefined {
  if (id.kind === 'user') return id.user;
  if (id.kind === 'token') return id.token.subject || undefined;
  return undefined;
}

/**
 * - allow
 * - login: no (valid) identity that could have it; a 401 challenge asks for credentials
 * - scope: a token that lacks it while its owner could get it; 401 with
 *   `error="insufficient_scope"` sends the client back to the issuer (RFC 6750 §3.1)
 * - deny: an authenticated user who may not; 403 DENIED, logging in again will not help
 */
export type Decision = 'allow' | 'login' | 'scope' | 'deny';

export interface TokenResponse {
  readonly token: IssuedToken;
  readonly access: readonly ResourceActions[];
}

export class Auth {
  readonly #htpasswd: Htpasswd | undefined;
  readonly #policy: AccessPolicy;
  readonly #issuer: TokenIssuer | undefined;
  readonly #verifier: TokenVerifier | undefined;
  readonly #service: string;
  readonly #namespaces: ReadonlySet<string>;
  /** Where clients get tokens, when configured (else the HTTP layer derives Hoist's own). */
  readonly realm: string | undefined;
  /** Tokens are issued with a key made at start-up (no privateKeyFile, no external issuer). */
  readonly ephemeralKey: boolean;

  private constructor(o: {
    htpasswd?: Htpasswd; policy: AccessPolicy; issuer?: TokenIssuer; verifier?: TokenVerifier; service: string;
    namespaces: readonly string[]; realm?: string; ephemeralKey: boolean;
  }) {
    this.#htpasswd = o.htpasswd;
    this.#policy = o.policy;
    this.#issuer = o.issuer;
    this.#verifier = o.verifier;
    this.#service = o.service;
    this.#namespaces = new Set(o.namespaces);
    this.realm = o.realm;
    this.ephemeralKey = o.ephemeralKey;
  }

  /**
   * Reads every file the options name, once, at start-up. A file that cannot be read or
   * parsed throws ConfigError naming the option. `namespaces`: the namespace names, whose
   * tokens have services of their own.
   */
  static async load(o: AuthOptions, namespaces: readonly string[] = []): Promise<Auth> {
    const htpasswd = o.htpasswd === undefined ? undefined : await Htpasswd.load(o.htpasswd);
    const t = o.token;
    if (!t) return new Auth({ htpasswd, policy: new AccessPolicy(o.access, o.groups), service: 'hoist', namespaces, ephemeralKey: false });
    // Hoist issues tokens when it has a key for it, or when nobody else does.
    const issues = t.privateKeyFile !== undefined || t.publicKeyFiles.length === 0;
    if (!issues && t.realm === undefined) {
      throw new ConfigError('auth.token.realm: required when tokens come from another issuer (auth.token.publicKeyFiles without privateKeyFile)');
    }
    const issuer = issues
      ? new TokenIssuer(t.privateKeyFile ? await loadSigningKey(t.privateKeyFile) : await ephemeralSigningKey(), t.issuer, t.expiryMs)
      : undefined;
    const keys = [...(issuer ? [issuer.verifyingKey] : []), ...(await loadVerifyingKeys(t.publicKeyFiles))];
    return new Auth({
      htpasswd,
      policy: new AccessPolicy(o.access, o.groups),
      issuer,
      verifier: new TokenVerifier(keys, t.issuer),
      service: t.service,
      namespaces,
      realm: t.realm,
      ephemeralKey: issues && t.privateKeyFile === undefined,
    });
  }

  /** 'bearer' when tokens are configured (challenges send clients to the token realm), else 'basic'. */
  get mode(): 'basic' | 'bearer' {
    return this.#verifier ? 'bearer' : 'basic';
  }

  /** Hoist serves GET /token. */
  get issues(): boolean {
    return this.#issuer !== undefined;
  }

  /** The token audience of a registry: `<service>`, or `<service>/<namespace>`. */
  service(namespace: string | undefined): string {
    return namespace === undefined ? this.#service : `${this.#service}/${namespace}`;
  }

  /** The namespace a service names: undefined for the default registry, null for none of ours. */
  namespaceOf(service: string): string | undefined | null {
    if (service === this.#service) return undefined;
    const prefix = `${this.#service}/`;
    if (service.startsWith(prefix) && this.#namespaces.has(service.slice(prefix.length))) return service.slice(prefix.length);
    return null;
  }

  /** How many users the htpasswd file holds; undefined without one. */
  get passwordUsers(): number | undefined {
    return this.#htpasswd?.size;
  }

  /** Reads the htpasswd file again (SIGHUP). */
  async reload(): Promise<void> {
    await this.#htpasswd?.reload();
  }

  /**
   * The identity an Authorization header value proves, for a request to the registry of
   * `namespace`. Resolves 'invalid' for credentials that do not check out (wrong password,
   * bad or expired token, a scheme we do not take): the client gets a 401, never anonymous
   * access instead. `check` goes with a password that needs a bcrypt check (Htpasswd.verify:
   * per-client bound, rate limit), which may refuse it with 429.
   */
  async authenticate(authorization: string | undefined, namespace: string | undefined, check?: VerifyOptions): Promise<Identity | 'invalid'> {
    if (authorization === undefined || authorization.trim() === '') return { kind: 'anonymous' };
    const space = authorization.indexOf(' ');
    const scheme = (space < 0 ? authorization : authorization.slice(0, space)).toLowerCase();
    const value = space < 0 ? '' : authorization.slice(space + 1).trim();
    if (scheme === 'basic') {
      const creds = parseBasic(value);
      if (creds === undefined) return 'invalid';
      if (creds.user === '' && creds.password === '') return { kind: 'anonymous' };
      if (!this.#htpasswd || !(await this.#htpasswd.verify(creds.user, creds.password, check))) return 'invalid';
      return { kind: 'user', user: creds.user };
    }
    if (scheme === 'bearer' && this.#verifier) {
      const token = await this.#verifier.verify(value, this.service(namespace));
      return token ? { kind: 'token', token } : 'invalid';
    }
    return 'invalid';
  }

  /** May `id` do what `need` says in the registry of `namespace`? */
  decide(id: Identity, namespace: string | undefined, need: Requirement): Decision {
    if (id.kind === 'token') {
      if (grants(id.token.access, need)) return 'allow';
      const subject = id.token.subject || undefined;
      // An external issuer's rules are its own: it may grant the scope when asked for it.
      if (!id.token.own) return 'scope';
      if (this.#policyAllows(subject, namespace, need)) return 'scope';
      return subject === undefined ? 'login' : 'deny';
    }
    const user = id.kind === 'user' ? id.user : undefined;
    if (this.#policyAllows(user, namespace, need)) return 'allow';
    return user === undefined ? 'login' : 'deny';
  }

  #policyAllows(user: string | undefined, namespace: string | undefined, need: Requirement): boolean {
    if (need.type === 'registry') return this.#policy.mayListCatalog(user, namespace);
    return this.#policy.may(user, namespace, need.name, need.action);
  }

  /**
   * GET /token: a token for `service` granting what was asked (`scopes`) as far as the rules
   * allow `user` (undefined: anonymous), and nothing more; unknown resources and actions are
   * left out, never refused (Docker token spec). Resolves undefined for a service not ours.
   */
  async issue(user: string | undefined, service: string, scopes: readonly ResourceActions[]): Promise<TokenResponse | undefined> {
    if (!this.#issuer) return undefined;
    const namespace = this.namespaceOf(service);
    if (namespace === null) return undefined;
    const access: ResourceActions[] = [];
    for (const s of scopes) {
      if (s.type === 'registry' && s.name === 'catalog') {
        if (s.actions.includes('*') && this.#policy.mayListCatalog(user, namespace)) access.push({ type: 'registry', name: 'catalog', actions: ['*'] });
        continue;
      }
      if (s.type !== 'repository' || !isValidName(s.name)) continue;
      const allowed = this.#policy.actions(user, namespace, s.name);
      const wanted = s.actions.includes('*') ? [...ACTIONS] : s.actions.filter(isAction);
      const actions = ACTIONS.filter((a) => wanted.includes(a) && allowed.has(a));
      if (actions.length > 0) access.push({ type: 'repository', name: s.name, actions });
    }
    return { token: await this.#issuer.issue(user ?? '', service, access), access };
  }
}

/** `Basic base64(user:password)` (RFC 7617); the password may contain ':'. */
function parseBasic(value: string): { user: string; password: string } | undefined {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(value)) return undefined;
  const text = Buffer.from(value, 'base64').toString('utf8');
  const colon = text.indexOf(':');
  if (colon < 0) return undefined;
  return { user: text.slice(0, colon), password: text.slice(colon + 1) };
}
