import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeJwt, decodeProtectedHeader } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../../src/config.js';
import { ephemeralSigningKey, loadSigningKey, loadVerifyingKeys, TokenIssuer, TokenVerifier } from '../../../src/auth/tokens.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hoist-tokens-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function pem(name: string, text: string | Buffer): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, text);
  return path;
}

const access = [{ type: 'repository', name: 'a/b', actions: ['pull'] }];

describe('TokenIssuer and TokenVerifier', () => {
  it.each([
    ['EC P-256 (PKCS#8)', 'ES256', () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' })],
    ['EC P-256 (SEC1)', 'ES256', () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'sec1', format: 'pem' })],
    ['RSA (PKCS#1)', 'RS256', () => generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs1', format: 'pem' })],
  ])('signs with %s as %s, and verifies its own tokens', async (name, alg, make) => {
    const key = await loadSigningKey(await pem(`${name}.key`, make()));
    expect(key.alg).toBe(alg);
    const issuer = new TokenIssuer(key, 'hoist', 60_000);
    const t = await issuer.issue('alice', 'svc', access);
    expect(decodeProtectedHeader(t.token)).toEqual({ alg, typ: 'JWT', kid: key.kid });
    expect(decodeJwt(t.token)).toMatchObject({ iss: 'hoist', sub: 'alice', aud: 'svc', access });
    const verifier = new TokenVerifier([issuer.verifyingKey], 'hoist');
    expect(await verifier.verify(t.token, 'svc')).toEqual({ subject: 'alice', access, own: true });
    expect(await verifier.verify(t.token, 'other')).toBeUndefined();
    expect(await new TokenVerifier([issuer.verifyingKey], 'someone-else').verify(t.token, 'svc')).toBeUndefined();
  });

  it('refuses keys it cannot sign RS256 or ES256 with, naming the option', async () => {
    const ed = await pem('ed.key', generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }));
    await expect(loadSigningKey(ed)).rejects.toThrow(/auth\.token\.privateKeyFile: .*need an RSA or EC P-256 key .*ed25519/);
    const p384 = await pem('p384.key', generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
    await expect(loadSigningKey(p384)).rejects.toThrow(/secp384r1/);
    await expect(loadSigningKey(await pem('junk.key', 'junk'))).rejects.toBeInstanceOf(ConfigError);
    await expect(loadSigningKey(join(dir, 'missing'))).rejects.toThrow(/auth\.token\.privateKeyFile: cannot read/);
  });

  it('loads public keys and certificate bundles; refuses files without them', async () => {
    const a = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }) as string;
    const b = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ type: 'spki', format: 'pem' }) as string;
    const keys = await loadVerifyingKeys([await pem('bundle.pem', `${a}\n${b}`)]);
    expect(keys.map((k) => k.alg)).toEqual(['ES256', 'RS256']);
    await expect(loadVerifyingKeys([await pem('empty.pem', 'nothing')])).rejects.toThrow(/auth\.token\.publicKeyFiles: .*holds no PEM block/);
  });

  it('an ephemeral key is ES256', async () => {
    expect((await ephemeralSigningKey()).alg).toBe('ES256');
  });
});
