import { describe, expect, it } from 'vitest';
import type { HeaderMap, OutgoingResponse } from '../../../src/http/adapter.js';
import { hostName, NamespaceRouter, withPath, withPathPrefix, type Namespace } from '../../../src/http/namespaces.js';
import type { Registry } from '../../../src/registry/registry.js';

// Registries are only passed through: distinct objects are enough to tell them apart.
const registry = (label: string): Registry => ({ label }) as unknown as Registry;
const DEFAULT = registry('default');
const A = registry('a');
const B = registry('b');
const C = registry('c');

const NAMESPACES: Namespace[] = [
  { name: 'a', host: 'a.example', registry: A },
  { name: 'b', pathPrefix: 'team-b', registry: B },
  { name: 'c', host: 'c.example', pathPrefix: 'org/team-c', registry: C },
];

describe('NamespaceRouter', () => {
  const router = new NamespaceRouter(DEFAULT, NAMESPACES);

  it.each<[string | undefined, string, Registry, string, string]>([
    ['a.example', '/v2/app/manifests/v1', A, '/v2/app/manifests/v1', ''],
    ['A.Example:5000', '/v2/', A, '/v2/', ''],
    ['a.example.', '/v2/app/tags/list', A, '/v2/app/tags/list', ''],
    ['c.example:443', '/v2/x/blobs/uploads/', C, '/v2/x/blobs/uploads/', ''],
    ['127.0.0.1:5000', '/team-b/v2/app/manifests/v1', B, '/v2/app/manifests/v1', '/team-b'],
    ['a.example', '/team-b/v2/', B, '/v2/', '/team-b'],
    [undefined, '/team-b/v2', B, '/v2', '/team-b'],
    ['localhost', '/org/team-c/v2/_catalog', C, '/v2/_catalog', '/org/team-c'],
    ['127.0.0.1:5000', '/v2/app/manifests/v1', DEFAULT, '/v2/app/manifests/v1', ''],
    [undefined, '/v2/', DEFAULT, '/v2/', ''],
    ['b.example', '/v2/', DEFAULT, '/v2/', ''],
    ['sub.a.example', '/v2/', DEFAULT, '/v2/', ''],
    // Not a prefix match: the segment must be whole, and followed by /v2.
    ['x', '/team-bb/v2/', DEFAULT, '/team-bb/v2/', ''],
    ['x', '/team-b/v3/', DEFAULT, '/team-b/v3/', ''],
    ['x', '/v2/team-b/v2/manifests/x', DEFAULT, '/v2/team-b/v2/manifests/x', ''],
  ])('Host %s, %s → %o at %s', (host, path, expected, routed, prefix) => {
    const r = router.resolve(host, path);
    expect(r.registry).toBe(expected);
    expect(r.path).toBe(routed);
    expect(r.prefix).toBe(prefix);
    expect(r.name).toBe(NAMESPACES.find((n) => n.registry === expected)?.name);
  });

  it('without namespaces, everything goes to the default registry', () => {
    const r = new NamespaceRouter(DEFAULT, []).resolve('a.example', '/team-b/v2/');
    expect(r).toEqual({ registry: DEFAULT, path: '/team-b/v2/', prefix: '' });
  });
});

describe('hostName', () => {
  it.each([
    ['registry.example.com', 'registry.example.com'],
    ['Registry.Example.COM:5000', 'registry.example.com'],
    ['localhost:5000', 'localhost'],
    ['127.0.0.1:5000', '127.0.0.1'],
    ['[::1]:5000', '[::1]'],
    ['[::1]', '[::1]'],
    ['example.com.', 'example.com'],
  ])('%s → %s', (host, name) => {
    expect(hostName(host)).toBe(name);
  });
});

describe('withPathPrefix', () => {
  function recorder(): { res: OutgoingResponse; sent: HeaderMap[] } {
    const sent: HeaderMap[] = [];
    const res: OutgoingResponse = {
      aborted: false,
      started: false,
      onAbort: () => undefined,
      send: (_s, headers) => void sent.push(headers),
      stream: async (_s, headers) => void sent.push(headers),
    };
    return { res, sent };
  }

  it('puts the prefix in front of Location and Link paths, and leaves absolute URLs alone', async () => {
    const { res, sent } = recorder();
    const r = withPathPrefix(res, '/team-b');
    r.send(202, { location: '/v2/app/blobs/uploads/123', range: '0-0' });
    r.send(200, { link: '</v2/app/tags/list?n=2&last=b>; rel="next"' });
    r.send(307, { location: 'https://s3.example/bucket/blob?X-Amz-Signature=abc' });
    await r.stream(200, { location: '/v2/app/blobs/sha256:x' }, undefined as never, 0);
    expect(sent).toEqual([
      { location: '/team-b/v2/app/blobs/uploads/123', range: '0-0' },
      { link: '</team-b/v2/app/tags/list?n=2&last=b>; rel="next"' },
      { location: 'https://s3.example/bucket/blob?X-Amz-Signature=abc' },
      { location: '/team-b/v2/app/blobs/sha256:x' },
    ]);
  });

  it('reports aborted and started as they are now', () => {
    const state = { aborted: false, started: false };
    const res = { get aborted() { return state.aborted; }, get started() { return state.started; } } as OutgoingResponse;
    const r = withPathPrefix(res, '/p');
    expect([r.aborted, r.started]).toEqual([false, false]);
    state.aborted = true;
    state.started = true;
    expect([r.aborted, r.started]).toEqual([true, true]);
  });
});

describe('withPath', () => {
  it('changes the path only', async () => {
    const query = new URLSearchParams('n=1');
    const req = {
      method: 'GET', path: '/team-b/v2/x/tags/list', rawQuery: 'n=1', query, remoteAddress: '127.0.0.1',
      header: (n: string) => (n === 'host' ? 'h' : undefined), headers: () => ({ host: 'h' }), readBody: async () => 7,
    };
    const r = withPath(req, '/v2/x/tags/list');
    expect(r.path).toBe('/v2/x/tags/list');
    expect([r.method, r.rawQuery, r.query, r.remoteAddress, r.header('host'), r.headers()]).toEqual(['GET', 'n=1', query, '127.0.0.1', 'h', { host: 'h' }]);
    expect(await r.readBody({ write: () => true, drained: async () => undefined })).toBe(7);
  });
});
