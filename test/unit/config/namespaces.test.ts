import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../../src/config.js';
import { configError } from '../../helpers/config.js';

describe('config namespaces', () => {
  it('defaults to none', () => {
    expect(loadConfig().namespaces).toEqual([]);
  });

  it('takes a list of names with a host and/or a path prefix', () => {
    const cfg = loadConfig({
      overrides: {
        namespaces: [
          { name: 'team-a', host: 'A.Example.com' },
          { name: 'team-b', pathPrefix: '/team-b/' },
          { name: 'c', host: '10.0.0.7', pathPrefix: 'org/c' },
        ],
      },
    });
    expect(cfg.namespaces).toEqual([
      { name: 'team-a', host: 'a.example.com' },
      { name: 'team-b', pathPrefix: 'team-b' },
      { name: 'c', host: '10.0.0.7', pathPrefix: 'org/c' },
    ]);
    expect(Object.isFrozen(cfg.namespaces[0])).toBe(true);
  });

  it('reads HOIST_NAMESPACES as JSON', () => {
    const cfg = loadConfig({ env: { HOIST_NAMESPACES: '[{"name":"a","host":"a.example"}]' } });
    expect(cfg.namespaces).toEqual([{ name: 'a', host: 'a.example' }]);
    expect(configError({ env: { HOIST_NAMESPACES: 'a=a.example' } }).message).toMatch(/namespaces \(from HOIST_NAMESPACES\): expected a JSON list/);
  });

  it.each<[string, unknown, RegExp]>([
    ['an unreachable namespace', [{ name: 'a' }], /needs a host or a pathPrefix/],
    ['a name that is not a path segment', [{ name: 'A/b', host: 'a.example' }], /namespaces\.0\.name/],
    ['a host with a port', [{ name: 'a', host: 'a.example:5000' }], /namespaces\.0\.host/],
    ['a prefix starting with v2', [{ name: 'a', pathPrefix: 'v2' }], /must not start with v2/],
    ['a prefix with ..', [{ name: 'a', pathPrefix: 'x/../y' }], /namespaces\.0\.pathPrefix/],
    ['an empty prefix', [{ name: 'a', pathPrefix: '/' }], /namespaces\.0\.pathPrefix/],
    ['an unknown key', [{ name: 'a', host: 'a.example', bucket: 'x' }], /bucket/],
    ['two namespaces of one name', [{ name: 'a', host: 'a.example' }, { name: 'a', host: 'b.example' }], /name "a" is used by two namespaces/],
    ['two namespaces on one host', [{ name: 'a', host: 'x.example' }, { name: 'b', host: 'X.example' }], /host "x.example" is used by two/],
    ['two namespaces on one prefix', [{ name: 'a', pathPrefix: 'p' }, { name: 'b', pathPrefix: '/p' }], /pathPrefix "p" is used by two/],
    ['a prefix inside another namespace\'s /v2/', [{ name: 'outer', pathPrefix: 'x' }, { name: 'inner', pathPrefix: 'x/v2' }], /namespaces\.1\.pathPrefix.*"x\/v2" would take repositories of namespace "outer"/],
    ['a prefix deeper inside another namespace\'s /v2/', [{ name: 'inner', pathPrefix: 'x/v2/team' }, { name: 'outer', pathPrefix: 'x' }], /namespaces\.0\.pathPrefix.*would take repositories of namespace "outer"/],
  ])('refuses %s', (_label, namespaces, message) => {
    expect(configError({ overrides: { namespaces } }).message).toMatch(message);
  });
});
