import { describe, expect, it } from 'vitest';
import { RegistryError } from '../../../src/errors.js';
import {
  assertName, DIGEST_ALGORITHMS, isValidName, isValidTag, NAME_MAX_LENGTH, parseDigest, parseReference, tryParseDigest,
} from '../../../src/registry/reference.js';

const HEX64 = 'a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4';
const HEX128 = 'cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e';

/** The RegistryError code `fn` throws. */
function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(RegistryError);
    return (err as RegistryError).code;
  }
  throw new Error('expected a RegistryError');
}

describe('repository names', () => {
  it.each([
    'a',
    'ubuntu',
    'library/ubuntu',
    'a/b/c/d/e',
    'my-org/my-app',
    'a--b',
    'a---b',
    'a.b',
    'a_b',
    'a__b',
    'a.b-c_d__e',
    '0',
    '123/456',
    'registry.example.com/team/app',
  ])('accepts %j', (name) => {
    expect(isValidName(name)).toBe(true);
    expect(assertName(name)).toBe(name);
  });

  it.each([
    '',
    'A',
    'Library/ubuntu',
    '_a',
    'a_',
    '-a',
    'a-',
    '.a',
    'a.',
    'a..b',
    'a___b',
    'a._b',
    'a/',
    '/a',
    'a//b',
    '..',
    'a/../b',
    'a/./b',
    'a b',
    'a:b',
    'a@b',
    'a%2fb',
    'a/_layers',
    'caf\u00e9',
    'a\nb',
  ])('rejects %j with NAME_INVALID', (name) => {
    expect(isValidName(name)).toBe(false);
    expect(codeOf(() => assertName(name))).toBe('NAME_INVALID');
  });

  it('bounds the whole name at 255 characters, nested or not', () => {
    expect(NAME_MAX_LENGTH).toBe(255);
    const flat = 'a'.repeat(255);
    expect(isValidName(flat)).toBe(true);
    expect(isValidName(`${flat}a`)).toBe(false);
    // 63 components of 'abc' joined by '/': 63*3 + 62 = 251 characters.
    const nested = Array.from({ length: 63 }, () => 'abc').join('/');
    expect(`${nested}/abc`.length).toBe(255);
    expect(isValidName(`${nested}/abc`)).toBe(true);
    expect(isValidName(`${nested}/abcd`)).toBe(false);
  });

  it('caps the name echoed in NAME_INVALID detail', () => {
    let detail: unknown;
    try {
      assertName('A'.repeat(10_000));
    } catch (err) {
      detail = (err as RegistryError).detail;
    }
    expect((detail as { name: string }).name).toHaveLength(NAME_MAX_LENGTH + 1);
  });
});

describe('tags', () => {
  it.each(['latest', 'v1.0.0', '1', '_', '_private', 'A-Z_a-z.0-9', 'a'.repeat(128), 'sha256'])('accepts %j', (tag) => {
    expect(isValidTag(tag)).toBe(true);
  });

  it.each(['', '.hidden', '-dash', 'a'.repeat(129), 'a/b', 'a:b', 'a b', 'a+b', 'tag\n', 'v1.0@x'])('rejects %j', (tag) => {
    expect(isValidTag(tag)).toBe(false);
  });
});

describe('digests', () => {
  it('knows sha256 (64 hex) and sha512 (128 hex)', () => {
    expect(DIGEST_ALGORITHMS).toEqual({ sha256: 64, sha512: 128 });
  });

  it('parses sha256', () => {
    expect(parseDigest(`sha256:${HEX64}`)).toEqual({ algorithm: 'sha256', hex: HEX64, value: `sha256:${HEX64}` });
  });

  it('parses sha512', () => {
    expect(parseDigest(`sha512:${HEX128}`)).toEqual({ algorithm: 'sha512', hex: HEX128, value: `sha512:${HEX128}` });
  });

  it.each([
    ['no algorithm', HEX64],
    ['empty algorithm', `:${HEX64}`],
    ['empty hex', 'sha256:'],
    ['sha256 one short', `sha256:${HEX64.slice(1)}`],
    ['sha256 one long', `sha256:${HEX64}0`],
    ['sha256 with sha512 length', `sha256:${HEX128}`],
    ['sha512 with sha256 length', `sha512:${HEX64}`],
    ['uppercase hex', `sha256:${HEX64.toUpperCase()}`],
    ['one uppercase hex digit', `sha256:${HEX64.slice(0, 63)}F`],
    ['uppercase algorithm', `SHA256:${HEX64}`],
    ['non-hex', `sha256:${'g'.repeat(64)}`],
    ['unknown algorithm md5', 'md5:d41d8cd98f00b204e9800998ecf8427e'],
    ['unknown algorithm sha384', `sha384:${'a'.repeat(96)}`],
    ['unknown algorithm blake3', `blake3:${HEX64}`],
    ['inherited property name', `toString:${HEX64}`],
    ['__proto__', `__proto__:${HEX64}`],
    ['path traversal', `sha256:../../${HEX64.slice(6)}`],
    ['whitespace', ` sha256:${HEX64}`],
    ['two colons', `sha256:${HEX64.slice(0, 32)}:${HEX64.slice(33)}`],
  ])('rejects %s', (_label, text) => {
    expect(tryParseDigest(text)).toBeUndefined();
    expect(codeOf(() => parseDigest(text))).toBe('DIGEST_INVALID');
  });
});

describe('parseReference', () => {
  it('takes text without ":" as a tag', () => {
    expect(parseReference('latest')).toEqual({ kind: 'tag', tag: 'latest' });
    expect(parseReference('v1.2.3')).toEqual({ kind: 'tag', tag: 'v1.2.3' });
  });

  it('takes text with ":" as a digest', () => {
    expect(parseReference(`sha256:${HEX64}`)).toEqual({
      kind: 'digest',
      digest: { algorithm: 'sha256', hex: HEX64, value: `sha256:${HEX64}` },
    });
    expect(parseReference(`sha512:${HEX128}`)).toMatchObject({ kind: 'digest', digest: { algorithm: 'sha512' } });
  });

  it('rejects an invalid digest with DIGEST_INVALID', () => {
    expect(codeOf(() => parseReference('sha256:abc'))).toBe('DIGEST_INVALID');
    expect(codeOf(() => parseReference(`md5:${'a'.repeat(32)}`))).toBe('DIGEST_INVALID');
    expect(codeOf(() => parseReference('latest:1'))).toBe('DIGEST_INVALID');
  });

  it('rejects an invalid tag with TAG_INVALID', () => {
    expect(codeOf(() => parseReference(''))).toBe('TAG_INVALID');
    expect(codeOf(() => parseReference('.x'))).toBe('TAG_INVALID');
    expect(codeOf(() => parseReference('a'.repeat(129)))).toBe('TAG_INVALID');
    expect(codeOf(() => parseReference('a/b'))).toBe('TAG_INVALID');
  });
});
