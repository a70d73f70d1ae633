import { describe, expect, it } from 'vitest';
import { locations, matchRoute, ROUTES, type RouteName } from '../../../src/http/routes.js';

const DIGEST = 'sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4';
const UPLOAD_ID = '0b6c3a4e-5f1d-4c2b-9a8e-7d6f5e4c3b2a';

/** Paths each route must match, with the name and parameter it must extract (distribution-spec "Endpoints"). */
const EXAMPLES: Record<RouteName, Array<[path: string, name: string, param: string]>> = {
  base: [
    ['/v2/', '', ''],
    ['/v2', '', ''],
  ],
  catalog: [['/v2/_catalog', '', '']],
  tags: [
    ['/v2/ubuntu/tags/list', 'ubuntu', ''],
    ['/v2/library/ubuntu/tags/list', 'library/ubuntu', ''],
    ['/v2/a/b/c/d/tags/list', 'a/b/c/d', ''],
  ],
  manifest: [
    ['/v2/ubuntu/manifests/latest', 'ubuntu', 'latest'],
    ['/v2/library/ubuntu/manifests/22.04', 'library/ubuntu', '22.04'],
    [`/v2/library/ubuntu/manifests/${DIGEST}`, 'library/ubuntu', DIGEST],
    // A repository may be named like a route segment: the greedy name takes it.
    ['/v2/a/manifests/manifests/latest', 'a/manifests', 'latest'],
  ],
  uploads: [
    ['/v2/ubuntu/blobs/uploads/', 'ubuntu', ''],
    ['/v2/library/ubuntu/blobs/uploads/', 'library/ubuntu', ''],
    ['/v2/library/ubuntu/blobs/uploads', 'library/ubuntu', ''],
  ],
  upload: [
    [`/v2/ubuntu/blobs/uploads/${UPLOAD_ID}`, 'ubuntu', UPLOAD_ID],
    [`/v2/a/b/c/blobs/uploads/${UPLOAD_ID}`, 'a/b/c', UPLOAD_ID],
  ],
  blob: [
    [`/v2/ubuntu/blobs/${DIGEST}`, 'ubuntu', DIGEST],
    [`/v2/library/ubuntu/blobs/${DIGEST}`, 'library/ubuntu', DIGEST],
    [`/v2/x/blobs/uploads/blobs/${DIGEST}`, 'x/blobs/uploads', DIGEST],
  ],
  referrers: [
    [`/v2/ubuntu/referrers/${DIGEST}`, 'ubuntu', DIGEST],
    [`/v2/library/ubuntu/referrers/${DIGEST}`, 'library/ubuntu', DIGEST],
  ],
  token: [['/token', '', '']],
  healthz: [['/healthz', '', '']],
  readyz: [['/readyz', '', '']],
};

describe('ROUTES', () => {
  it('have unique names, and examples for every one', () => {
    const names = ROUTES.map((r) => r.name);
    expect(new Set(names).size).toBe(names.length);
    expect(Object.keys(EXAMPLES).sort()).toEqual([...names].sort());
  });

  it('allow the methods of the spec', () => {
    const methods = Object.fromEntries(ROUTES.map((r) => [r.name, [...r.methods].sort()]));
    expect(methods).toEqual({
      base: ['GET', 'HEAD'],
      catalog: ['GET'],
      tags: ['GET'],
      manifest: ['DELETE', 'GET', 'HEAD', 'PUT'],
      uploads: ['POST'],
      upload: ['DELETE', 'GET', 'HEAD', 'PATCH', 'PUT'],
      blob: ['DELETE', 'GET', 'HEAD'],
      referrers: ['GET'],
      token: ['GET'],
      healthz: ['GET', 'HEAD'],
      readyz: ['GET', 'HEAD'],
    });
  });

  for (const route of ROUTES) {
    it.each(EXAMPLES[route.name])(`${route.name} matches %s`, (path, name, param) => {
      const m = matchRoute(path);
      expect(m?.route.name).toBe(route.name);
      expect(m?.route).toBe(route);
      expect(m?.name).toBe(name);
      expect(m?.param).toBe(param);
    });
  }

  it.each([
    '/',
    '/v1/',
    '/v2//',
    '/v2x',
    '/v2/ubuntu',
    '/v2/ubuntu/manifests/',
    '/v2/ubuntu/manifests/a/b',
    '/v2/ubuntu/blobs/',
    '/v2/ubuntu/tags/list/',
    '/v2/ubuntu/referrers/',
    '/v2/_catalog/x',
    '/v2/tags/list',
    '/v2/blobs/uploads/',
    '/v2/ubuntu/unknown/x',
    '/healthz/',
    '/v2/healthz',
    '/readyz/x',
  ])('match nothing for %s', (path) => {
    expect(matchRoute(path)).toBeUndefined();
  });
});

describe('matchRoute precedence', () => {
  it('takes /blobs/uploads/ as the uploads route, not a blob named "uploads"', () => {
    expect(matchRoute('/v2/ubuntu/blobs/uploads')?.route.name).toBe('uploads');
    expect(matchRoute('/v2/ubuntu/blobs/uploads/')?.route.name).toBe('uploads');
    // The blob route alone would have taken it as the digest "uploads".
    const blob = ROUTES.find((r) => r.name === 'blob')!;
    expect(blob.pattern.test('/v2/ubuntu/blobs/uploads')).toBe(true);
  });

  it('takes /blobs/uploads/<id> as the upload route', () => {
    const m = matchRoute(`/v2/library/ubuntu/blobs/uploads/${UPLOAD_ID}`);
    expect(m?.route.name).toBe('upload');
    expect(m?.name).toBe('library/ubuntu');
  });

  it('lists the upload routes before the blob route', () => {
    const index = (name: RouteName) => ROUTES.findIndex((r) => r.name === name);
    expect(index('uploads')).toBeLessThan(index('blob'));
    expect(index('upload')).toBeLessThan(index('blob'));
  });
});

describe('matchRoute decoding', () => {
  it('decodes a percent-encoded ":" in a digest parameter', () => {
    const hex = DIGEST.slice('sha256:'.length);
    for (const encoded of [`sha256%3A${hex}`, `sha256%3a${hex}`]) {
      expect(matchRoute(`/v2/ubuntu/blobs/${encoded}`)).toMatchObject({ name: 'ubuntu', param: DIGEST });
      expect(matchRoute(`/v2/ubuntu/manifests/${encoded}`)).toMatchObject({ name: 'ubuntu', param: DIGEST });
      expect(matchRoute(`/v2/ubuntu/referrers/${encoded}`)).toMatchObject({ name: 'ubuntu', param: DIGEST });
    }
  });

  it('does not decode names', () => {
    expect(matchRoute('/v2/library%2Fubuntu/manifests/latest')).toMatchObject({ route: { name: 'manifest' }, name: 'library%2Fubuntu' });
    expect(matchRoute('/v2/%2e%2e/manifests/latest')).toMatchObject({ name: '%2e%2e' });
    expect(matchRoute('/v2/a%3Ab/blobs/uploads/')).toMatchObject({ route: { name: 'uploads' }, name: 'a%3Ab' });
    expect(matchRoute('/v2/%61/tags/list')).toMatchObject({ name: '%61' });
  });

  it('keeps a malformed escape in a parameter as it is', () => {
    expect(matchRoute('/v2/ubuntu/manifests/%zz')).toMatchObject({ param: '%zz' });
    expect(matchRoute('/v2/ubuntu/blobs/sha256%3')).toMatchObject({ param: 'sha256%3' });
  });

  it('decodes only once', () => {
    expect(matchRoute('/v2/ubuntu/manifests/sha256%253Aabc')).toMatchObject({ param: 'sha256%3Aabc' });
  });
});

describe('locations', () => {
  it('builds paths that route back to themselves', () => {
    expect(locations.upload('library/ubuntu', UPLOAD_ID)).toBe(`/v2/library/ubuntu/blobs/uploads/${UPLOAD_ID}`);
    expect(matchRoute(locations.upload('library/ubuntu', UPLOAD_ID))).toMatchObject({ route: { name: 'upload' }, name: 'library/ubuntu', param: UPLOAD_ID });
    expect(matchRoute(locations.blob('a/b', DIGEST))).toMatchObject({ route: { name: 'blob' }, name: 'a/b', param: DIGEST });
    expect(matchRoute(locations.manifest('a/b', DIGEST))).toMatchObject({ route: { name: 'manifest' }, name: 'a/b', param: DIGEST });
  });
});
