import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Auth, type AuthOptions } from '../../../src/auth/auth.js';

let dir: string;
let htpasswd: string;
let publicKeyFile: string;
const basic = (u: string, p: string): string => `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}`;
const token = (o: Partial<NonNullable<AuthOptions['token']>> = {}): AuthOptions['token'] => ({ service: 'hoist', issuer: 'hoist', publicKeyFiles: [], expiryMs: 60_000, ...o });

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hoist-auth-unit-'));
  htpasswd = join(dir, 'htpasswd');
  await writeFile(htpasswd, `alice:${bcrypt.hashSync('pw', 4)}\n`);
  publicKeyFile = join(dir, 'ext.pub');
  await writeFile(publicKeyFile, generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('Auth.authenticate', () => {
  it('no header and empty Basic credentials are anonymous; a good password is the user; the rest is invalid', async () => {
    const auth = await Auth.load({ htpasswd, groups: {} });
    expect(auth.mode).toBe('basic');
    expect(await auth.authenticate(undefined, undefined)).toEqual({ kind: 'anonymous' });
    expect(await auth.authenticate(basic('', ''), undefined)).toEqual({ kind: 'anonymous' });
    expect(await auth.authenticate(basic('alice', 'pw'), undefined)).toEqual({ kind: 'user', user: 'alice' });
    for (const h of [basic('alice', 'x'), basic('', 'pw'), 'Basic', 'Basic %%%', 'Bearer x', 'Negotiate abc']) {
      expect(await auth.authenticate(h, undefined), h).toBe('invalid');
    }
  });

  it('with tokens only from another issuer, passwords are no credential, and the realm is required', async () => {
    await expect(Auth.load({ groups: {}, token: token({ publicKeyFiles: [publicKeyFile] }) })).rejects.toThrow(/auth\.token\.realm: required/);
    const auth = await Auth.load({ groups: {}, token: token({ publicKeyFiles: [publicKeyFile], realm: 'https://auth.example/token' }) });
    expect(auth.mode).toBe('bearer');
    expect(auth.issues).toBe(false);
    expect(await auth.authenticate(basic('alice', 'pw'), undefined)).toBe('invalid');
    expect(await auth.issue('alice', 'hoist', [])).toBeUndefined();
  });
});

describe('Auth services and decisions', () => {
  it('a namespace has service <service>/<namespace>; other services are not ours', async () => {
    const auth = await Auth.load({ htpasswd, groups: {}, token: token() }, ['team-b']);
    expect(auth.ephemeralKey).toBe(true);
    expect(auth.service(undefined)).toBe('hoist');
    expect(auth.service('team-b')).toBe('hoist/team-b');
    expect(auth.namespaceOf('hoist')).toBeUndefined();
    expect(auth.namespaceOf('hoist/team-b')).toBe('team-b');
    expect(auth.namespaceOf('hoist/team-c')).toBeNull();
    expect(auth.namespaceOf('other')).toBeNull();
  });

  it('Basic users the rules refuse are denied; anonymous users are asked to log in', async () => {
    const auth = await Auth.load({ htpasswd, groups: {}, access: [{ repository: 'a', users: ['bob'], groups: [], actions: ['pull'] }] });
    const need = { type: 'repository', name: 'a', action: 'pull' } as const;
    expect(auth.decide({ kind: 'user', user: 'alice' }, undefined, need)).toBe('deny');
    expect(auth.decide({ kind: 'user', user: 'bob' }, undefined, need)).toBe('allow');
    expect(auth.decide({ kind: 'anonymous' }, undefined, need)).toBe('login');
  });
});
