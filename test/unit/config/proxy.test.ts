import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../../src/config.js';
import { configError } from '../../helpers/config.js';

describe('config proxy (pull-through cache)', () => {
  it('is off by default', () => {
    expect(loadConfig().proxy).toBeUndefined();
  });

  it('takes the upstream URL, with tagTtl 5m, ttl 7d, maxBlobFetches 64 and maxMetadataRequests 32 by default', () => {
    expect(loadConfig({ overrides: { proxy: { remoteUrl: 'https://registry-1.docker.io/' } } }).proxy).toEqual({
      remoteUrl: 'https://registry-1.docker.io',
      tagTtl: 300_000,
      ttl: 7 * 86_400_000,
      maxBlobFetches: 64,
      maxMetadataRequests: 32,
    });
  });

  it('reads HOIST_PROXY_* and a namespace\'s proxy (HOIST_NAMESPACES)', () => {
    const cfg = loadConfig({
      env: {
        HOIST_PROXY_REMOTE_URL: 'http://upstream:5000',
        HOIST_PROXY_USERNAME: 'me',
        HOIST_PROXY_PASSWORD_FILE: '/run/secrets/upstream',
        HOIST_PROXY_TAG_TTL: '30s',
        HOIST_PROXY_TTL: '2d',
        HOIST_PROXY_MAX_BLOB_FETCHES: '16',
        HOIST_PROXY_MAX_METADATA_REQUESTS: '8',
        HOIST_NAMESPACES: '[{"name":"ghcr","host":"ghcr.mirror.example","proxy":{"remoteUrl":"https://ghcr.io"}}]',
      },
    });
    expect(cfg.proxy).toEqual({ remoteUrl: 'http://upstream:5000', username: 'me', passwordFile: '/run/secrets/upstream', tagTtl: 30_000, ttl: 172_800_000, maxBlobFetches: 16, maxMetadataRequests: 8 });
    expect(cfg.namespaces[0]!.proxy).toEqual({ remoteUrl: 'https://ghcr.io', tagTtl: 300_000, ttl: 604_800_000, maxBlobFetches: 64, maxMetadataRequests: 32 });
  });

  it.each<[string, object, RegExp]>([
    ['a URL that is not http(s)', { remoteUrl: 'ftp://x' }, /proxy\.remoteUrl: an http\(s\) URL/],
    ['a URL with a query', { remoteUrl: 'https://x/?a=b' }, /proxy\.remoteUrl/],
    ['credentials in the URL', { remoteUrl: 'https://me:secret@x' }, /credentials go in username and password/],
    ['no URL', { username: 'a', password: 'b' }, /proxy\.remoteUrl/],
    ['a password and a password file', { remoteUrl: 'https://x', username: 'a', password: 'b', passwordFile: '/f' }, /password and passwordFile exclude each other/],
    ['a user without a password', { remoteUrl: 'https://x', username: 'a' }, /username needs a password/],
    ['a password without a user', { remoteUrl: 'https://x', password: 'b' }, /username needs a password/],
    ['a ttl under a second', { remoteUrl: 'https://x', ttl: '10ms' }, /proxy\.ttl: at least 1s/],
    ['no blob fetches at all', { remoteUrl: 'https://x', maxBlobFetches: 0 }, /proxy\.maxBlobFetches/],
    ['a fraction of a blob fetch', { remoteUrl: 'https://x', maxBlobFetches: 1.5 }, /proxy\.maxBlobFetches/],
    ['no metadata requests at all', { remoteUrl: 'https://x', maxMetadataRequests: 0 }, /proxy\.maxMetadataRequests/],
    ['an unknown key', { remoteUrl: 'https://x', mirror: true }, /mirror/],
  ])('refuses %s', (_label, proxy, message) => {
    expect(configError({ overrides: { proxy } }).message).toMatch(message);
  });

  it('takes the README\'s example as it is written', () => {
    const readme = readFileSync(new URL('../../../README.md', import.meta.url), 'utf8');
    const section = /^### Pull-through cache \(mirror\)$([\s\S]*?)^### /m.exec(readme)?.[1] ?? '';
    const yaml = /```yaml\n([\s\S]*?)```/.exec(section)?.[1];
    expect(yaml, 'a YAML example in README "Pull-through cache (mirror)"').toBeDefined();
    const dir = mkdtempSync(join(tmpdir(), 'hoist-readme-proxy-'));
    try {
      writeFileSync(join(dir, 'hoist.yaml'), yaml!);
      const cfg = loadConfig({ file: join(dir, 'hoist.yaml') });
      expect(cfg.proxy).toEqual({
        remoteUrl: 'https://registry-1.docker.io', username: 'ci-puller', passwordFile: '/run/secrets/dockerhub', tagTtl: 300_000, ttl: 604_800_000, maxBlobFetches: 64, maxMetadataRequests: 32,
      });
      expect(cfg.namespaces[0]).toMatchObject({ name: 'ghcr', host: 'ghcr.mirror.example.com', proxy: { remoteUrl: 'https://ghcr.io' } });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
