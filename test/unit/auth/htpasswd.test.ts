import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Htpasswd } from '../../../src/auth/htpasswd.js';
import { ConfigError } from '../../../src/config.js';

let dir: string;
const hash = (pw: string, prefix = '$2y$'): string => bcrypt.hashSync(pw, 4).replace(/^\$2[aby]\$/, prefix);

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hoist-htpasswd-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function file(text: string): Promise<string> {
  const path = join(dir, `f${Math.random()}`);
  await writeFile(path, text);
  return path;
}

describe('Htpasswd', () => {
  it('verifies bcrypt hashes of every prefix; comments, blank lines and CRLF are fine; a password may hold ":"', async () => {
    const h = await Htpasswd.load(await file(`# users\r\n\r\nalice:${hash('a:b c')}\r\nbob:${hash('pw', '$2a$')}\ncarol:${hash('pw', '$2b$')}\n`));
    expect(h.size).toBe(3);
    expect(await h.verify('alice', 'a:b c')).toBe(true);
    expect(await h.verify('alice', 'a:b')).toBe(false);
    expect(await h.verify('bob', 'pw')).toBe(true);
    expect(await h.verify('carol', 'pw')).toBe(true);
    expect(await h.verify('mallory', 'pw')).toBe(false);
    // Remembered: still right the second time.
    expect(await h.verify('alice', 'a:b c')).toBe(true);
  });

  it.each([
    ['a missing file', null, /auth\.htpasswd: cannot read/],
    ['an MD5 (apr1) hash', 'alice:$apr1$abc$def\n', /line 1: the hash of "alice" is not bcrypt/],
    ['a SHA-1 hash', 'a:x\nalice:{SHA}abc=\n', /line 1: the hash of "a" is not bcrypt/],
    ['a plain-text password', 'alice:secret\n', /not bcrypt/],
    ['no colon', 'alice\n', /line 1: expected user:bcrypt-hash/],
    ['a user twice', `alice:${hash('x')}\nalice:${hash('y')}\n`, /line 2: "alice" appears twice/],
  ])('refuses %s, naming the option and line', async (_, text, message) => {
    const path = text === null ? join(dir, 'missing') : await file(text);
    const err = await Htpasswd.load(path).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toMatch(message);
  });

  it('reload() reads the file again and forgets remembered passwords; a broken file keeps the old users', async () => {
    const path = await file(`alice:${hash('old')}\n`);
    const h = await Htpasswd.load(path);
    expect(await h.verify('alice', 'old')).toBe(true);
    await writeFile(path, `alice:${hash('new')}\n`);
    await h.reload();
    expect(await h.verify('alice', 'old')).toBe(false);
    expect(await h.verify('alice', 'new')).toBe(true);
    await writeFile(path, 'alice:plain\n');
    await expect(h.reload()).rejects.toThrow(/not bcrypt/);
    expect(await h.verify('alice', 'new')).toBe(true);
  });
});
