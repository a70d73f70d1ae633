import { describe, expect, it } from 'vitest';
import { parseChallenge } from '../../../src/proxy/challenge.js';

describe('parseChallenge (WWW-Authenticate of an upstream registry)', () => {
  it('reads a Docker Hub bearer challenge', () => {
    expect(parseChallenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"')).toEqual({
      scheme: 'bearer',
      params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/alpine:pull' },
    });
  });

  it('reads Basic, token values without quotes, escapes, spaces around commas, and the error of an insufficient scope', () => {
    expect(parseChallenge('Basic realm="Registry Realm"')).toEqual({ scheme: 'basic', params: { realm: 'Registry Realm' } });
    expect(parseChallenge('bearer Realm=http://h/token , service=h,error="insufficient_scope", scope="a \\"b\\""')).toEqual({
      scheme: 'bearer',
      params: { realm: 'http://h/token', service: 'h', error: 'insufficient_scope', scope: 'a "b"' },
    });
  });

  it('gives undefined for nothing, and the scheme alone for a challenge without parameters', () => {
    expect(parseChallenge(undefined)).toBeUndefined();
    expect(parseChallenge('')).toBeUndefined();
    expect(parseChallenge('Negotiate')).toEqual({ scheme: 'negotiate', params: {} });
  });
});
