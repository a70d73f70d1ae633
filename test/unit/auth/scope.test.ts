import { describe, expect, it } from 'vitest';
import { CATALOG, formatScopes, grants, parseScopes } from '../../../src/auth/scope.js';

describe('parseScopes', () => {
  it('parses the Docker token spec grammar, several per parameter or one per parameter', () => {
    expect(parseScopes(['repository:team-a/app:pull,push', 'registry:catalog:*', 'repository:a:pull repository:b:push'])).toEqual([
      { type: 'repository', name: 'team-a/app', actions: ['pull', 'push'] },
      { type: 'registry', name: 'catalog', actions: ['*'] },
      { type: 'repository', name: 'a', actions: ['pull'] },
      { type: 'repository', name: 'b', actions: ['push'] },
    ]);
  });

  // Found by probing (2026-12-02): a scope repeated 300 times gave a 24 KB token, refused with
  // 431 when the client sent it back.
  it('merges the scopes of one resource, however often repeated', () => {
    const repeated = Array(300).fill('repository:a:pull').join(' ');
    expect(parseScopes([repeated, 'repository:a:push,pull', 'repository:b:pull'])).toEqual([
      { type: 'repository', name: 'a', actions: ['pull', 'push'] },
      { type: 'repository', name: 'b', actions: ['pull'] },
    ]);
  });

  it('keeps a name with ":" whole, drops a resource class, and skips what does not parse', () => {
    expect(parseScopes(['repository(plugin):localhost:5000/app:pull'])).toEqual([{ type: 'repository', name: 'localhost:5000/app', actions: ['pull'] }]);
    expect(parseScopes(['', 'repository', 'repository:app', ':app:pull', 'repository::pull', 'repository:app:'])).toEqual([]);
  });
});

describe('formatScopes', () => {
  it('one entry per resource; push asks for pull too, as clients do', () => {
    expect(formatScopes([
      { type: 'repository', name: 'a', action: 'push' },
      { type: 'repository', name: 'b', action: 'pull' },
      { type: 'repository', name: 'a', action: 'delete' },
    ])).toBe('repository:a:pull,push,delete repository:b:pull');
    expect(formatScopes([CATALOG])).toBe('registry:catalog:*');
  });
});

describe('grants', () => {
  const access = [{ type: 'repository', name: 'a', actions: ['pull'] }, { type: 'repository', name: 'b', actions: ['*'] }];
  it('matches type, exact name and action; * grants every action', () => {
    expect(grants(access, { type: 'repository', name: 'a', action: 'pull' })).toBe(true);
    expect(grants(access, { type: 'repository', name: 'a', action: 'push' })).toBe(false);
    expect(grants(access, { type: 'repository', name: 'a/b', action: 'pull' })).toBe(false);
    expect(grants(access, { type: 'repository', name: 'b', action: 'delete' })).toBe(true);
    expect(grants(access, CATALOG)).toBe(false);
  });
});
