import { describe, expect, it } from 'vitest';
import { AccessPolicy, globToRegExp } from '../../../src/auth/access.js';

describe('globToRegExp', () => {
  it.each([
    ['team-a/*', 'team-a/app', true],
    ['team-a/*', 'team-a/x/y', true],
    ['team-a/*', 'team-a', false],
    ['team-a/*', 'team-ab/app', false],
    ['*', 'anything/at/all', true],
    ['*/cache', 'ci/cache', true],
    ['*/cache', 'ci/cache/x', false],
    ['a.b', 'axb', false],
    ['exact', 'exact', true],
  ])('%s matches %s: %s', (pattern, name, expected) => {
    expect(globToRegExp(pattern).test(name)).toBe(expected);
  });
});

describe('AccessPolicy', () => {
  const policy = new AccessPolicy([
    { repository: '*', users: ['root'], groups: [], actions: ['pull', 'push', 'delete'] },
    { repository: 'team-a/*', users: [], groups: ['team-a'], actions: ['pull', 'push'] },
    { repository: 'public/*', users: ['anonymous'], groups: [], actions: ['pull'] },
    { repository: 'shared/*', users: ['*'], groups: [], actions: ['pull'] },
    { repository: 'ns-only/*', users: ['carol'], groups: [], actions: ['push'], namespace: 'team-b' },
  ], { 'team-a': ['carol'] });

  it('unions the rules that match, by user, group, * and anonymous', () => {
    expect([...policy.actions('carol', undefined, 'team-a/app')].sort()).toEqual(['pull', 'push']);
    expect([...policy.actions('root', undefined, 'team-a/app')].sort()).toEqual(['delete', 'pull', 'push']);
    expect([...policy.actions('carol', undefined, 'public/x')]).toEqual(['pull']);
    expect([...policy.actions(undefined, undefined, 'public/x')]).toEqual(['pull']);
    expect([...policy.actions(undefined, undefined, 'shared/x')]).toEqual([]);
    expect([...policy.actions('dave', undefined, 'shared/x')]).toEqual(['pull']);
    expect([...policy.actions('dave', undefined, 'team-a/app')]).toEqual([]);
  });

  it('a rule with a namespace applies there only', () => {
    expect(policy.may('carol', 'team-b', 'ns-only/x', 'push')).toBe(true);
    expect(policy.may('carol', undefined, 'ns-only/x', 'push')).toBe(false);
    expect(policy.may('carol', 'team-c', 'ns-only/x', 'push')).toBe(false);
  });

  it('the catalog needs pull on every repository (a * rule)', () => {
    expect(policy.mayListCatalog('root', undefined)).toBe(true);
    expect(policy.mayListCatalog('carol', undefined)).toBe(false);
    expect(policy.mayListCatalog(undefined, undefined)).toBe(false);
  });

  it('without rules: every authenticated user may do everything, anonymous users nothing', () => {
    const open = new AccessPolicy(undefined);
    expect([...open.actions('anyone', undefined, 'a/b')].sort()).toEqual(['delete', 'pull', 'push']);
    expect([...open.actions(undefined, undefined, 'a/b')]).toEqual([]);
    expect(open.mayListCatalog('anyone', undefined)).toBe(true);
  });
});
