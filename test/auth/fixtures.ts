import { execFileSync } from 'node:child_process';
import { createHash, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import bcrypt from 'bcryptjs';
import { decodeJwt, decodeProtectedHeader, SignJWT, type JWTPayload } from 'jose';
import { stringify as toYaml } from 'yaml';
import { request, type Reply } from '../helpers/http.js';
import { sha256 } from '../helpers/oci.js';

/**
 * Files and credentials for the access-control tests: an htpasswd file, token keys, TLS
 * certificates (openssl), a YAML config, and tokens signed the way an external issuer would.
 */

/**
 * Writes an htpasswd file of bcrypt hashes (cost 4: fast, and still what `htpasswd -B` writes;
 * `costs` names users to hash at another cost, such as htpasswd -B's default 10).
 */
export async function writeHtpasswd(dir: string, users: Record<string, string>, name = 'htpasswd', costs: Record<string, number> = {}): Promise<string> {
  const path = join(dir, name);
  const lines = Object.entries(users).map(([user, password]) => `${user}:${bcrypt.hashSync(password, costs[user] ?? 4).replace(/^\$2b\$/, '$2y$')}`);
  await writeFile(path, `# test users\n${lines.join('\n')}\n`);
  return path;
}

export async function writeConfig(dir: string, config: object, name = 'hoist.yaml'): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, toYaml(config));
  return path;
}

export function basic(user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
}

export interface KeyPairFiles {
  privateKey: KeyObject;
  publicKey: KeyObject;
  privateKeyFile: string;
  publicKeyFile: string;
}

/** An ES256 (EC P-256) or RS256 (RSA 2048) key pair, written as PEM (PKCS#8 and SPKI). */
export async function writeKeyPair(dir: string, kind: 'ec' | 'rsa', name: string): Promise<KeyPairFiles> {
  const { privateKey, publicKey } = kind === 'ec'
    ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : generateKeyPairSync('rsa', { modulusLength: 2048 });
  const privateKeyFile = join(dir, `${name}.key`);
  const publicKeyFile = join(dir, `${name}.pub`);
  await writeFile(privateKeyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }));
  await writeFile(publicKeyFile, publicKey.export({ type: 'spki', format: 'pem' }));
  return { privateKey, publicKey, privateKeyFile, publicKeyFile };
}

/** A self-signed certificate for 127.0.0.1 (openssl); returns the file names. */
export function writeSelfSigned(dir: string, name: string, cn = '127.0.0.1'): { certFile: string; keyFile: string } {
  const certFile = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
    '-subj', `/CN=${cn}`, '-addext', `subjectAltName=IP:${cn}`, '-keyout', keyFile, '-out', certFile,
  ], { stdio: 'ignore' });
  return { certFile, keyFile };
}

/** Signs a token as an issuer would; `claims` override the defaults (iss hoist, aud hoist, 5 min). */
export async function signToken(
  key: KeyObject, alg: 'ES256' | 'RS256', claims: JWTPayload, header: Record<string, unknown> = {},
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ iss: 'hoist', aud: 'hoist', sub: 'someone', iat: now, nbf: now, exp: now + 300, ...claims })
    .setProtectedHeader({ alg, typ: 'JWT', ...header })
    .sign(key);
}

export interface TokenGrant {
  reply: Reply;
  token: string;
  claims: JWTPayload & { access?: Array<{ type: string; name: string; actions: string[] }> };
  header: ReturnType<typeof decodeProtectedHeader>;
}

/** GET /token?service=…&scope=… with Basic credentials (or none); expects 200. */
export async function fetchToken(
  base: string, scopes: string[], credentials?: [string, string], service = 'hoist', headers: Record<string, string> = {},
): Promise<TokenGrant> {
  const q = new URLSearchParams({ service });
  for (const s of scopes) q.append('scope', s);
  const reply = await request(base, `/token?${q.toString()}`, {
    headers: { ...headers, ...(credentials ? { authorization: basic(...credentials) } : {}) },
  });
  if (reply.status !== 200) throw new Error(`GET /token: HTTP ${reply.status} ${reply.text()}`);
  const body = reply.json<{ token: string; access_token: string; expires_in: number; issued_at: string }>();
  return { reply, token: body.token, claims: decodeJwt(body.token), header: decodeProtectedHeader(body.token) };
}

/** The WWW-Authenticate parameters of a challenge: `Bearer realm="…",service="…"` → { scheme, realm, service, … }. */
export function parseChallenge(header: string | undefined): Record<string, string> {
  if (!header) return {};
  const space = header.indexOf(' ');
  const out: Record<string, string> = { scheme: header.slice(0, space) };
  for (const m of header.slice(space + 1).matchAll(/([a-z_]+)="([^"]*)"/g)) out[m[1]!] = m[2]!;
  return out;
}

/**
 * Pushes a blob (POST, then PUT with the body) with an Authorization header; returns the
 * PUT's reply or the first that failed.
 */
export async function pushBlobAs(base: string, repo: string, bytes: Buffer, authorization?: string): Promise<Reply> {
  const headers: Record<string, string> = authorization ? { authorization } : {};
  const post = await request(base, `/v2/${repo}/blobs/uploads/`, { method: 'POST', headers });
  if (post.status !== 202) return post;
  const location = new URL(post.header('location')!, base);
  location.searchParams.set('digest', sha256(bytes));
  return request(base, `${location.pathname}${location.search}`, {
    method: 'PUT', headers: { ...headers, 'content-type': 'application/octet-stream' }, body: bytes,
  });
}

/** Pushes a config-and-layer image (blobs, then the manifest under `tag`); returns the manifest PUT's reply. */
export async function pushImageAs(base: string, repo: string, tag: string, authorization?: string): Promise<{ reply: Reply; digest: string; layer: Buffer }> {
  const layer = Buffer.from(`layer of ${repo}:${tag} ${Math.random()}`);
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [sha256(layer)] } }));
  for (const b of [layer, config]) {
    const r = await pushBlobAs(base, repo, b, authorization);
    if (r.status !== 201) return { reply: r, digest: '', layer };
  }
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256(layer), size: layer.length }],
  }));
  const reply = await request(base, `/v2/${repo}/manifests/${tag}`, {
    method: 'PUT',
    headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json', ...(authorization ? { authorization } : {}) },
    body: manifest,
  });
  return { reply, digest: sha256(manifest), layer };
}

/**
 * A one-layer OCI image layout tagged v1, written by hand (random layer, so new digests every
 * run). The layer is gzipped, as registries want them: skopeo would otherwise compress it on
 * the way and the pulled digests would differ from these.
 */
export async function writeLayout(dir: string): Promise<string[]> {
  await mkdir(join(dir, 'blobs/sha256'), { recursive: true });
  const put = async (bytes: Buffer): Promise<{ digest: string; size: number }> => {
    const hex = createHash('sha256').update(bytes).digest('hex');
    await writeFile(join(dir, 'blobs/sha256', hex), bytes);
    return { digest: `sha256:${hex}`, size: bytes.length };
  };
  const layer = await put(gzipSync(randomBytes(300_000)));
  const config = await put(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [layer.digest] } })));
  const manifest = await put(Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...layer }],
  })));
  await writeFile(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  await writeFile(join(dir, 'index.json'), JSON.stringify({
    schemaVersion: 2,
    manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'org.opencontainers.image.ref.name': 'v1' } }],
  }));
  return [manifest.digest, config.digest, layer.digest];
}
