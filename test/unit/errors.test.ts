import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import * as errors from '../../src/errors.js';
import {
  ClientAbortError, ErrorCodes, RangeNotSatisfiableError, RegistryError, toRegistryError, UploadRangeError, type ErrorCode,
} from '../../src/errors.js';

const codes = Object.keys(ErrorCodes) as ErrorCode[];

/** The rows of README.md's "Error codes" table: code → HTTP status. */
function documentedCodes(): Map<string, number> {
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  const section = /^#+\s*Error codes\s*$([\s\S]*?)(?=^#+\s|(?![\s\S]))/im.exec(readme);
  expect(section, 'README.md has an "Error codes" section').not.toBeNull();
  const rows = new Map<string, number>();
  for (const m of section![1]!.matchAll(/^\|\s*`?([A-Z_]+)`?\s*\|\s*(\d{3})\s*\|/gm)) rows.set(m[1]!, Number(m[2]));
  return rows;
}

describe('ErrorCodes', () => {
  it('is exported from the errors module', () => {
    expect(errors.ErrorCodes).toBe(ErrorCodes);
    expect(codes.length).toBeGreaterThan(0);
  });

  it.each(codes)('%s is named after its key, with a message and a 4xx/5xx status', (code) => {
    expect(code).toMatch(/^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*$/);
    const entry = ErrorCodes[code];
    expect(typeof entry.message).toBe('string');
    expect(entry.message.length).toBeGreaterThan(0);
    expect(Number.isInteger(entry.status)).toBe(true);
    expect(entry.status).toBeGreaterThanOrEqual(400);
    expect(entry.status).toBeLessThanOrEqual(599);
    const err = new RegistryError(code);
    expect(err.code).toBe(code);
    expect(err.status).toBe(entry.status);
    expect(err.message).toBe(entry.message);
  });

  it('has every code of the distribution spec', () => {
    // distribution-spec v1.1 "Error Codes", code-1 … code-14.
    for (const code of [
      'BLOB_UNKNOWN', 'BLOB_UPLOAD_INVALID', 'BLOB_UPLOAD_UNKNOWN', 'DIGEST_INVALID', 'MANIFEST_BLOB_UNKNOWN',
      'MANIFEST_INVALID', 'MANIFEST_UNKNOWN', 'NAME_INVALID', 'NAME_UNKNOWN', 'SIZE_INVALID', 'UNAUTHORIZED',
      'DENIED', 'UNSUPPORTED', 'TOOMANYREQUESTS',
    ]) {
      expect(codes).toContain(code);
    }
  });

  it('documents every code, with its status, in README.md', () => {
    const documented = documentedCodes();
    for (const code of codes) {
      expect(documented.get(code), `README.md error table row for ${code}`).toBe(ErrorCodes[code].status);
    }
    expect([...documented.keys()].sort()).toEqual([...codes].sort());
  });
});

describe('RegistryError', () => {
  it('carries a stable code, name, detail and cause', () => {
    const cause = new Error('disk on fire');
    const err = new RegistryError('BLOB_UNKNOWN', { detail: { digest: 'sha256:x' }, cause });
    expect(err).toBeInstanceOf(Error);
    expect(err.name).toBe('RegistryError');
    expect(err.code).toBe('BLOB_UNKNOWN');
    expect(err.status).toBe(404);
    expect(err.detail).toEqual({ digest: 'sha256:x' });
    expect(err.cause).toBe(cause);
    expect(err.message).toBe(ErrorCodes.BLOB_UNKNOWN.message);
  });

  it('takes a message that overrides the table for this instance only', () => {
    expect(new RegistryError('DIGEST_INVALID', { message: 'invalid digest' }).message).toBe('invalid digest');
    expect(new RegistryError('DIGEST_INVALID').message).toBe(ErrorCodes.DIGEST_INVALID.message);
  });

  it('has no cause unless one is given', () => {
    const err = new RegistryError('DENIED');
    expect(err.cause).toBeUndefined();
    expect('cause' in err).toBe(false);
  });
});

describe('UploadRangeError', () => {
  it('is RANGE_INVALID carrying the current offset', () => {
    const err = new UploadRangeError('library/ubuntu', 'id-1', 1234);
    expect(err).toBeInstanceOf(RegistryError);
    expect(err.code).toBe('RANGE_INVALID');
    expect(err.status).toBe(416);
    expect(err.offset).toBe(1234);
    expect(err.uploadId).toBe('id-1');
    expect(err.repository).toBe('library/ubuntu');
    expect(err.detail).toEqual({ offset: 1234 });
    expect(new UploadRangeError('r', 'i', 0, 'custom').message).toBe('custom');
  });
});

describe('RangeNotSatisfiableError', () => {
  it('is RANGE_INVALID carrying the blob size', () => {
    const err = new RangeNotSatisfiableError(99);
    expect(err.code).toBe('RANGE_INVALID');
    expect(err.size).toBe(99);
    expect(err.detail).toEqual({ size: 99 });
  });
});

describe('ClientAbortError', () => {
  it('is not a RegistryError', () => {
    const err = new ClientAbortError();
    expect(err.name).toBe('ClientAbortError');
    expect(err).not.toBeInstanceOf(RegistryError);
    expect(err.message).toMatch(/aborted/);
  });
});

describe('toRegistryError', () => {
  it('passes RegistryErrors and subclasses through unchanged', () => {
    const err = new RegistryError('NAME_INVALID');
    expect(toRegistryError(err)).toBe(err);
    const range = new UploadRangeError('r', 'i', 5);
    expect(toRegistryError(range)).toBe(range);
  });

  it.each([
    ['an Error', new Error('ENOSPC: no space left on device')],
    ['a TypeError', new TypeError('x is not a function')],
    ['a string', 'boom'],
    ['undefined', undefined],
    ['a ClientAbortError', new ClientAbortError()],
  ])('turns %s into UNKNOWN/500, keeping it as the cause', (_label, thrown) => {
    const err = toRegistryError(thrown);
    expect(err).toBeInstanceOf(RegistryError);
    expect(err.code).toBe('UNKNOWN');
    expect(err.status).toBe(500);
    expect(err.cause).toBe(thrown);
    // Internals stay in the cause: the message and detail are the table's.
    expect(err.message).toBe(ErrorCodes.UNKNOWN.message);
    expect(err.detail).toBeUndefined();
  });
});
