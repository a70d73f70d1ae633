import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../../src/config.js';
import { mirrorGraceMs, MirrorExpiry, mirrorsOf, pullRefreshMs } from '../../../src/gc/mirror.js';
import { ExpiryPolicy } from '../../../src/registry/expiry.js';

const DAY = 86_400_000;
const at = (ms: number): string => new Date(ms).toISOString();

describe('collecting a cache (gc/mirror.ts)', () => {
  it('a tag expires ttl after the upstream last confirmed it (updatedAt)', () => {
    const e = new MirrorExpiry(new ExpiryPolicy(), 7 * DAY);
    const confirmed = Date.parse('2026-01-01T00:00:00Z');
    expect(e.tagExpiresAt('library/alpine', { updatedAt: at(confirmed) })).toBe(confirmed + 7 * DAY);
    expect(e.isExpired('library/alpine', { updatedAt: at(confirmed) }, confirmed + 7 * DAY - 1)).toBe(false);
    expect(e.isExpired('library/alpine', { updatedAt: at(confirmed) }, confirmed + 7 * DAY)).toBe(true);
  });

  it('a configured expiration or a label that comes earlier wins, also per namespace', () => {
    const e = new MirrorExpiry(new ExpiryPolicy({ namespaces: { ci: DAY } }), 7 * DAY);
    const confirmed = Date.parse('2026-01-01T00:00:00Z');
    expect(e.tagExpiresAt('a', { updatedAt: at(confirmed), expiresAt: at(confirmed + 1000) })).toBe(confirmed + 1000);
    expect(e.forNamespace('ci').tagExpiresAt('a', { updatedAt: at(confirmed) })).toBe(confirmed + DAY);
    expect(e.forNamespace('other').tagExpiresAt('a', { updatedAt: at(confirmed) })).toBe(confirmed + 7 * DAY);
    expect(e.forNamespace('ci').expirationFor('a')).toBe(DAY);
  });

  it('grace: the ttl plus the lag of pull touches (a tenth of the ttl, at most an hour)', () => {
    expect(pullRefreshMs(10_000)).toBe(1000);
    expect(pullRefreshMs(7 * DAY)).toBe(3_600_000);
    expect(mirrorGraceMs(7 * DAY)).toBe(7 * DAY + 3_600_000);
  });

  it('finds the caches of a configuration: the default registry as \'\', namespaces by name', () => {
    const cfg = loadConfig({
      overrides: {
        proxy: { remoteUrl: 'https://registry-1.docker.io', ttl: '3d' },
        namespaces: [{ name: 'ghcr', host: 'ghcr.example', proxy: { remoteUrl: 'https://ghcr.io' } }, { name: 'own', host: 'own.example' }],
      },
    });
    expect([...mirrorsOf(cfg)]).toEqual([['', { ttlMs: 3 * DAY }], ['ghcr', { ttlMs: 7 * DAY }]]);
  });
});
