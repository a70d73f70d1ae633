import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../../src/config.js';

/** The `auth`, `limits` and `tls` options: defaults, environment overrides, and errors that name the option. */

describe('auth, limits and tls options', () => {
  it('default: no auth, no TLS, limits that change nothing for well-behaved clients', () => {
    const c = loadConfig({});
    expect(c.auth).toBeUndefined();
    expect(c.tls).toBeUndefined();
    expect(c.limits).toEqual({ maxUrlBytes: 8192, maxHeaderBytes: 16384, idleTimeout: 60_000, maxConcurrentUploads: 0, requestsPerSecond: 0, burst: 0 });
  });

  it('every option has an environment variable; lists and rules come as JSON (or a comma list of files)', () => {
    const c = loadConfig({
      env: {
        HOIST_AUTH_HTPASSWD: '/etc/hoist/htpasswd',
        HOIST_AUTH_TOKEN_REALM: 'https://registry.example/token',
        HOIST_AUTH_TOKEN_SERVICE: 'registry.example',
        HOIST_AUTH_TOKEN_ISSUER: 'auth.example',
        HOIST_AUTH_TOKEN_PRIVATE_KEY_FILE: '/k.pem',
        HOIST_AUTH_TOKEN_PUBLIC_KEY_FILES: '/a.pem, /b.pem',
        HOIST_AUTH_TOKEN_EXPIRY: '10m',
        HOIST_AUTH_GROUPS: '{"ops":["alice"]}',
        HOIST_AUTH_ACCESS: '[{"repository":"team-a/*","groups":["ops"],"actions":["pull"]}]',
        HOIST_LIMITS_MAX_CONCURRENT_UPLOADS: '4',
        HOIST_LIMITS_REQUESTS_PER_SECOND: '2.5',
        HOIST_LIMITS_BURST: '10',
        HOIST_LIMITS_IDLE_TIMEOUT: '30s',
        HOIST_TLS_CERT_FILE: '/c.pem',
        HOIST_TLS_KEY_FILE: '/k.pem',
      },
    });
    expect(c.auth).toEqual({
      htpasswd: '/etc/hoist/htpasswd',
      token: { realm: 'https://registry.example/token', service: 'registry.example', issuer: 'auth.example', privateKeyFile: '/k.pem', publicKeyFiles: ['/a.pem', '/b.pem'], expiry: 600_000 },
      groups: { ops: ['alice'] },
      access: [{ repository: 'team-a/*', users: [], groups: ['ops'], actions: ['pull'] }],
    });
    expect(c.limits).toMatchObject({ maxConcurrentUploads: 4, requestsPerSecond: 2.5, burst: 10, idleTimeout: 30_000 });
    expect(c.tls).toEqual({ certFile: '/c.pem', keyFile: '/k.pem' });
  });

  it.each([
    [{ auth: {} }, /auth: needs htpasswd, token, or both/],
    [{ auth: { htpasswd: 'f', access: [{ repository: 'Team/*', users: ['a'], actions: ['pull'] }] } }, /auth\.access\.0\.repository: a repository name or pattern/],
    [{ auth: { htpasswd: 'f', access: [{ repository: 'a', actions: ['pull'] }] } }, /auth\.access\.0: needs users/],
    [{ auth: { htpasswd: 'f', access: [{ repository: 'a', users: ['x'], actions: ['write'] }] } }, /auth\.access\.0\.actions\.0/],
    [{ auth: { htpasswd: 'f', token: { service: 'has space' } } }, /auth\.token\.service: no spaces, quotes or backslashes/],
    [{ auth: { htpasswd: 'f', token: { realm: 'ftp://x/token' } } }, /auth\.token\.realm/],
    [{ auth: { htpasswd: 'f', extra: 1 } }, /Unrecognized key/],
    [{ tls: { certFile: 'c' } }, /tls\.keyFile: Required/],
    [{ limits: { maxUrlBytes: 10 } }, /limits\.maxUrlBytes/],
    // Found by probing: a rule under a namespace or group nobody defined (a typo) started the
    // server and granted nothing.
    [{ auth: { htpasswd: 'f', access: [{ repository: 'x/*', namespace: 'nosuchns', users: ['a'], actions: ['pull'] }] } }, /auth\.access: rule 1 names namespace "nosuchns", which no namespace is \(namespaces: none\)/],
    [{ namespaces: [{ name: 'team-a', host: 'a.example' }], auth: { htpasswd: 'f', access: [{ repository: '*', users: ['a'], actions: ['pull'] }, { repository: '*', namespace: 'team-b', users: ['a'], actions: ['pull'] }] } }, /rule 2 names namespace "team-b", which no namespace is \(namespaces: team-a\)/],
    [{ auth: { htpasswd: 'f', groups: { ops: ['a'] }, access: [{ repository: 'y/*', groups: ['ops', 'nosuchgroup'], actions: ['pull'] }] } }, /auth\.access, auth\.groups: rule 1 names group "nosuchgroup", which auth\.groups does not define \(groups: ops\)/],
  ])('%j → ConfigError naming the option', (overrides, message) => {
    expect(() => loadConfig({ overrides })).toThrow(ConfigError);
    expect(() => loadConfig({ overrides })).toThrow(message);
  });

  // Found by probing (2026-12-03): a SyntaxError escaped, and the CLI printed its stack.
  it('bad JSON in HOIST_AUTH_TOKEN_PUBLIC_KEY_FILES (or publicKeyFiles) → ConfigError naming the option', () => {
    const env = { HOIST_AUTH_HTPASSWD: 'f', HOIST_AUTH_TOKEN_REALM: 'https://r.example/token', HOIST_AUTH_TOKEN_SERVICE: 's', HOIST_AUTH_TOKEN_ISSUER: 'i', HOIST_AUTH_TOKEN_PRIVATE_KEY_FILE: '/k.pem' };
    expect(() => loadConfig({ env: { ...env, HOIST_AUTH_TOKEN_PUBLIC_KEY_FILES: '[bad' } })).toThrow(ConfigError);
    expect(() => loadConfig({ env: { ...env, HOIST_AUTH_TOKEN_PUBLIC_KEY_FILES: '[bad' } })).toThrow(/auth\.token\.publicKeyFiles.*JSON list of file names/);
    const overrides = { auth: { htpasswd: 'f', token: { realm: 'https://r.example/token', service: 's', issuer: 'i', privateKeyFile: '/k.pem', publicKeyFiles: '["a.pem"' } } };
    expect(() => loadConfig({ overrides })).toThrow(ConfigError);
  });

  it('bad JSON in HOIST_AUTH_ACCESS says what it expected', () => {
    expect(() => loadConfig({ env: { HOIST_AUTH_HTPASSWD: 'f', HOIST_AUTH_ACCESS: '[{' } })).toThrow(/auth\.access.*expected JSON/);
  });
});
