import { describe, expect, it } from 'vitest';
import { hostError } from '../../../src/http/host.js';

describe('hostError (RFC 9112 §3.2)', () => {
  it.each([
    'registry.example', 'registry.example:5000', 'REGISTRY.example.', '127.0.0.1:5000', '[::1]', '[2001:db8::7]:443',
    '[::ffff:192.0.2.1]:80', 'a_b~c', 'a%2Eb', "a!$&'()*+,;=b", '',
  ])('takes one Host %j', (host) => {
    expect(hostError([host], '1.1')).toBeUndefined();
  });

  it.each([
    'a b', 'a/b', 'user@a', 'a:', 'a:b', 'a:5000:1', '[::1', '[fe80::1%25eth0]', 'a%zz', 'a"b', 'a\\b', '[v1.x]', 'a?b', 'a#b',
  ])('refuses one Host %j', (host) => {
    expect(hostError([host], '1.1')?.[0]).toBe('NAME_INVALID');
  });

  it('refuses two Host lines, even equal ones, in any version', () => {
    expect(hostError(['a', 'a'], '1.1')?.[1]).toMatch(/2 Host header lines/);
    expect(hostError(['a', 'b'], '1.0')?.[0]).toBe('NAME_INVALID');
  });

  it('wants Host in HTTP/1.1, not in HTTP/1.0', () => {
    expect(hostError([], '1.1')?.[1]).toMatch(/no Host/);
    expect(hostError([], '1.0')).toBeUndefined();
  });

  it('checks the absolute-form authority as well as Host; it may not be empty', () => {
    expect(hostError(['b'], '1.1', 'a.example:5000')).toBeUndefined();
    for (const authority of ['', 'user@a', 'user:pw@a', 'a:']) expect(hostError(['a'], '1.1', authority)?.[1], authority).toMatch(/authority/);
    expect(hostError([], '1.1', 'a')?.[1]).toMatch(/no Host/);
  });
});
