import { createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID, X509Certificate, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { calculateJwkThumbprint, decodeProtectedHeader, exportJWK, jwtVerify, SignJWT, type JWTPayload } from 'jose';
import { ConfigError } from '../config.js';
import type { ResourceActions } from './scope.js';

/**
 * Bearer tokens per the Docker token authentication spec (distribution docs/spec/auth/jwt.md):
 * a JWT signed with RS256 or ES256 whose claims say who (`sub`), for which registry
 * (`aud`, the service), from whom (`iss`), for how long (`exp`, `nbf`, `iat`) and what it
 * allows (`access`):
 *
 *   {"iss":"hoist","sub":"alice","aud":"registry.example.com","exp":1700000300,"nbf":1700000000,
 *    "iat":1700000000,"jti":"...","access":[{"type":"repository","name":"team-a/app","actions":["pull","push"]}]}
 *
 * Hoist verifies tokens from a configured issuer's public keys, and can issue them itself
 * (GET /token) with its own private key.
 */
export type TokenAlgorithm = 'RS256' | 'ES256';

export interface SigningKey {
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
  readonly alg: TokenAlgorithm;
  /** RFC 7638 thumbprint of the public key, sent as the JWT `kid`. */
  readonly kid: string;
}

export interface VerifyingKey {
  readonly key: KeyObject;
  readonly alg: TokenAlgorithm;
  readonly kid: string;
  /** Hoist's own key (tokens it issued). */
  readonly own: boolean;
}

/** The algorithm a key signs with: RSA → RS256, EC P-256 → ES256; anything else is refused. */
export function algorithmOf(key: KeyObject): TokenAlgorithm | undefined {
  if (key.asymmetricKeyType === 'rsa') return 'RS256';
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') return 'ES256';
  return undefined;
}

async function thumbprint(key: KeyObject): Promise<string> {
  return calculateJwkThumbprint(await exportJWK(key));
}

async function readText(file: string, option: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`${option}: cannot read ${file}: ${(err as Error).message}`);
  }
}

/** A PEM private key (PKCS#8, or SEC1/PKCS#1) for Hoist's own tokens. */
export async function loadSigningKey(file: string, option = 'auth.token.privateKeyFile'): Promise<SigningKey> {
  const text = await readText(file, option);
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(text);
  } catch (err) {
    throw new ConfigError(`${option}: ${file} holds no PEM private key: ${(err as Error).message}`);
  }
  return signingKey(privateKey, `${option}: ${file}`);
}

/** An ES256 key made at start-up: tokens then last until a restart and work on this instance only. */
export function ephemeralSigningKey(): Promise<SigningKey> {
  return signingKey(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey, 'generated key');
}

async function signingKey(privateKey: KeyObject, where: string): Promise<SigningKey> {
  const alg = algorithmOf(privateKey);
  if (!alg) throw new ConfigError(`${where}: need an RSA or EC P-256 key (RS256/ES256), got ${describeKey(privateKey)}`);
  const publicKey = createPublicKey(privateKey);
  return { privateKey, publicKey, alg, kid: await thumbprint(publicKey) };
}

/**
 * The public keys of a token issuer: PEM public keys or certificates (a bundle may hold
 * several, as distribution's `rootcertbundle` does; only the keys are used, not the chain).
 */
export async function loadVerifyingKeys(files: readonly string[], option = 'auth.token.publicKeyFiles'): Promise<VerifyingKey[]> {
  const out: VerifyingKey[] = [];
  for (const file of files) {
    const text = await readText(file, option);
    const blocks = text.match(/-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?-----END \1-----/g) ?? [];
    if (blocks.length === 0) throw new ConfigError(`${option}: ${file} holds no PEM block`);
    for (const block of blocks) {
      let key: KeyObject;
      try {
        key = block.includes('CERTIFICATE') ? new X509Certificate(block).publicKey : createPublicKey(block);
      } catch (err) {
        throw new ConfigError(`${option}: ${file}: not a public key or certificate: ${(err as Error).message}`);
      }
      const alg = algorithmOf(key);
      if (!alg) throw new ConfigError(`${option}: ${file}: need RSA or EC P-256 keys (RS256/ES256), got ${describeKey(key)}`);
      out.push({ key, alg, kid: await thumbprint(key), own: false });
    }
  }
  return out;
}

function describeKey(key: KeyObject): string {
  const curve = key.asymmetricKeyDetails?.namedCurve;
  return `${key.asymmetricKeyType ?? key.type}${curve ? ` (${curve})` : ''}`;
}

export interface IssuedToken {
  readonly token: string;
  readonly expiresInSeconds: number;
  readonly issuedAt: Date;
}

export class TokenIssuer {
  readonly #key: SigningKey;
  readonly #issuer: string;
  readonly #expirySeconds: number;

  constructor(key: SigningKey, issuer: string, expiryMs: number) {
    this.#key = key;
    this.#issuer = issuer;
    this.#expirySeconds = Math.max(1, Math.round(expiryMs / 1000));
  }

  /** The key that verifies this issuer's tokens. */
  get verifyingKey(): VerifyingKey {
    return { key: this.#key.publicKey, alg: this.#key.alg, kid: this.#key.kid, own: true };
  }

  /** Signs a token for `subject` ('' for anonymous) to present to `audience` (a service). */
  async issue(subject: string, audience: string, access: readonly ResourceActions[]): Promise<IssuedToken> {
    const now = Math.floor(Date.now() / 1000);
    const token = await new SignJWT({ access: access.map((a) => ({ type: a.type, name: a.name, actions: [...a.actions] })) })
      .setProtectedHeader({ alg: this.#key.alg, typ: 'JWT', kid: this.#key.kid })
      .setIssuer(this.#issuer)
      .setSubject(subject)
      .setAudience(audience)
      .setIssuedAt(now)
      .setNotBefore(now)
      .setExpirationTime(now + this.#expirySeconds)
      .setJti(randomUUID())
      .sign(this.#key.privateKey);
    return { token, expiresInSeconds: this.#expirySeconds, issuedAt: new Date(now * 1000) };
  }
}

export interface VerifiedToken {
  /** `sub`; '' for an anonymous token. */
  readonly subject: string;
  readonly access: readonly ResourceActions[];
  /** Signed by Hoist's own key. */
  readonly own: boolean;
}

/** Clocks of the issuer and the registry may differ a little (exp and nbf). */
const CLOCK_TOLERANCE_SECONDS = 30;

export class TokenVerifier {
  readonly #keys: readonly VerifyingKey[];
  readonly #issuer: string;

  constructor(keys: readonly VerifyingKey[], issuer: string) {
    this.#keys = keys;
    this.#issuer = issuer;
  }

  /**
   * Checks signature (RS256/ES256 only), `iss`, `aud` (must name `audience`), `exp`
   * (required) and `nbf`, and the shape of `access`. Resolves undefined for any token that
   * does not pass; the reason is not the client's business.
   */
  async verify(token: string, audience: string): Promise<VerifiedToken | undefined> {
    let kid: string | undefined;
    try {
      kid = decodeProtectedHeader(token).kid;
    } catch {
      return undefined;
    }
    const byKid = kid === undefined ? [] : this.#keys.filter((k) => k.kid === kid);
    // Issuers name keys their own way (distribution's libtrust key ids): without a match, try each.
    for (const k of byKid.length > 0 ? byKid : this.#keys) {
      let payload: JWTPayload;
      try {
        ({ payload } = await jwtVerify(token, k.key, {
          algorithms: [k.alg],
          issuer: this.#issuer,
          audience,
          requiredClaims: ['exp'],
          clockTolerance: CLOCK_TOLERANCE_SECONDS,
        }));
      } catch {
        continue;
      }
      const access = parseAccess(payload['access']);
      if (access === undefined) return undefined;
      return { subject: typeof payload.sub === 'string' ? payload.sub : '', access, own: k.own };
    }
    return undefined;
  }
}

/** The `access` claim; absent is no access, a malformed one makes the token invalid. */
function parseAccess(claim: unknown): ResourceActions[] | undefined {
  if (claim === undefined || claim === null) return [];
  if (!Array.isArray(claim)) return undefined;
  const out: ResourceActions[] = [];
  for (const entry of claim as unknown[]) {
    if (typeof entry !== 'object' || entry === null) return undefined;
    const { type, name, actions } = entry as Record<string, unknown>;
    if (typeof type !== 'string' || typeof name !== 'string' || !Array.isArray(actions) || !actions.every((a) => typeof a === 'string')) {
      return undefined;
    }
    out.push({ type, name, actions: actions as string[] });
  }
  return out;
}
