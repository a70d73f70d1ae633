import { createHash } from 'node:crypto';
import { beforeEach, describe, expect, it } from 'vitest';
import { RegistryError } from '../../../src/errors.js';
import { BlobStore } from '../../../src/registry/blobs.js';
import { lexical, ManifestStore, paginate } from '../../../src/registry/manifests.js';
import { parseReference } from '../../../src/registry/reference.js';
import { MemoryDriver } from '../../../src/storage/memory.js';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';

const sha = (b: Buffer, algorithm = 'sha256') => `${algorithm}:${createHash(algorithm).update(b).digest('hex')}`;

function manifest(extra: Record<string, unknown> = {}): Buffer {
  return Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, layers: [], ...extra }));
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(RegistryError);
  return (err as RegistryError).code;
}

describe('paginate', () => {
  const all = ['a', 'b', 'c', 'd', 'e'];

  it.each<[number | undefined, string | undefined, string[], string | undefined]>([
    [undefined, undefined, all, undefined],
    [2, undefined, ['a', 'b'], 'b'],
    [2, 'b', ['c', 'd'], 'd'],
    [2, 'd', ['e'], undefined],
    [5, undefined, all, undefined],
    [10, undefined, all, undefined],
    [undefined, 'c', ['d', 'e'], undefined],
    [2, 'bb', ['c', 'd'], 'd'],
    [2, 'e', [], undefined],
    [2, 'z', [], undefined],
    [0, undefined, [], undefined],
  ])('n=%s last=%s → %j next=%s', (n, last, items, next) => {
    const page = paginate(all, n, last);
    expect(page.items).toEqual(items);
    expect(page.next).toBe(next);
  });

  it('orders byte-wise, not by locale', () => {
    expect(['b', 'B', 'a', '_', '1'].sort(lexical)).toEqual(['1', 'B', '_', 'a', 'b']);
  });
});

describe('ManifestStore', () => {
  let driver: MemoryDriver;
  let manifests: ManifestStore;

  beforeEach(() => {
    driver = new MemoryDriver();
    manifests = new ManifestStore({ driver, blobs: new BlobStore(driver), maxBytes: 4096 });
  });

  it('stores a manifest by tag, exactly as pushed, and finds it by tag and digest', async () => {
    const bytes = manifest();
    const record = await manifests.put('repo', parseReference('v1'), OCI_MANIFEST, bytes);
    expect(record).toMatchObject({ digest: sha(bytes), mediaType: OCI_MANIFEST, size: bytes.length });
    for (const ref of ['v1', sha(bytes)]) {
      const got = await manifests.get('repo', parseReference(ref));
      expect(got.bytes).toEqual(bytes);
      expect(got.digest).toBe(sha(bytes));
    }
    expect(await codeOf(manifests.get('other', parseReference('v1')))).toBe('MANIFEST_UNKNOWN');
    expect(await codeOf(manifests.get('other', parseReference(sha(bytes))))).toBe('MANIFEST_UNKNOWN');
  });

  it('checks a pushed digest against the bytes, in its own algorithm', async () => {
    const bytes = manifest();
    expect((await manifests.put('repo', parseReference(sha(bytes, 'sha512')), OCI_MANIFEST, bytes)).digest).toBe(sha(bytes, 'sha512'));
    expect(await codeOf(manifests.put('repo', parseReference(sha(manifest({ x: 1 }))), OCI_MANIFEST, bytes))).toBe('DIGEST_INVALID');
  });

  it('takes the media type from Content-Type, else from the document', async () => {
    const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [] }));
    expect((await manifests.put('repo', parseReference('a'), `${OCI_INDEX}; charset=utf-8`, index)).mediaType).toBe(OCI_INDEX);
    expect((await manifests.put('repo', parseReference('b'), undefined, manifest())).mediaType).toBe(OCI_MANIFEST);
    expect((await manifests.put('repo', parseReference('c'), 'application/octet-stream', manifest())).mediaType).toBe(OCI_MANIFEST);
    const bare = Buffer.from('{"schemaVersion":2}');
    expect(await codeOf(manifests.put('repo', parseReference('d'), undefined, bare))).toBe('MANIFEST_INVALID');
  });

  it.each([
    ['not JSON', Buffer.from('{nope')],
    ['a JSON array', Buffer.from('[]')],
    ['schema 1', Buffer.from('{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+json"}')],
    ['too large', manifest({ pad: 'x'.repeat(5000) })],
  ])('rejects a manifest that is %s with MANIFEST_INVALID', async (_label, bytes) => {
    expect(await codeOf(manifests.put('repo', parseReference('t'), OCI_MANIFEST, bytes))).toBe('MANIFEST_INVALID');
  });

  it('moves a tag to a new manifest', async () => {
    const one = manifest({ n: 1 });
    const two = manifest({ n: 2 });
    await manifests.put('repo', parseReference('latest'), OCI_MANIFEST, one);
    await manifests.put('repo', parseReference('latest'), OCI_MANIFEST, two);
    expect((await manifests.stat('repo', parseReference('latest'))).digest).toBe(sha(two));
    // The old manifest stays reachable by digest.
    expect((await manifests.stat('repo', parseReference(sha(one)))).digest).toBe(sha(one));
  });

  it('deletes a tag alone, or a manifest with every tag pointing at it', async () => {
    const one = manifest({ n: 1 });
    const two = manifest({ n: 2 });
    await manifests.put('repo', parseReference('a'), OCI_MANIFEST, one);
    await manifests.put('repo', parseReference('b'), OCI_MANIFEST, one);
    await manifests.put('repo', parseReference('c'), OCI_MANIFEST, two);
    await manifests.delete('repo', parseReference('a'));
    expect((await manifests.tags('repo', undefined, undefined)).items).toEqual(['b', 'c']);
    expect((await manifests.stat('repo', parseReference(sha(one)))).digest).toBe(sha(one));
    await manifests.delete('repo', parseReference(sha(one)));
    expect((await manifests.tags('repo', undefined, undefined)).items).toEqual(['c']);
    expect(await codeOf(manifests.stat('repo', parseReference(sha(one))))).toBe('MANIFEST_UNKNOWN');
    expect(await codeOf(manifests.delete('repo', parseReference(sha(one))))).toBe('MANIFEST_UNKNOWN');
    expect(await codeOf(manifests.delete('repo', parseReference('a')))).toBe('MANIFEST_UNKNOWN');
  });

  it('lists tags in lexical order with pagination', async () => {
    for (const tag of ['v2', 'V1', 'latest', '1.0', '_x']) await manifests.put('repo', parseReference(tag), OCI_MANIFEST, manifest());
    expect((await manifests.tags('repo', undefined, undefined)).items).toEqual(['1.0', 'V1', '_x', 'latest', 'v2']);
    expect(await manifests.tags('repo', 2, 'V1')).toEqual({ items: ['_x', 'latest'], next: 'latest' });
    expect(await manifests.tags('empty', undefined, undefined)).toEqual({ items: [] });
  });
});
