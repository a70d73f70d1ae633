import { readFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import { ConfigError, type ProxyConfig, type TestSettings } from '../config.js';
import type { MirrorFactory } from '../registry/mirror.js';
import { liveClientBytes } from './blob-flight.js';
import { PullThroughCache } from './cache.js';
import { UpstreamClient } from './upstream.js';

/**
 * A `proxy` section (the default registry's or a namespace's) made into what the registry
 * core takes: the password file is read here, once, at start-up; a file that cannot be read
 * stops start-up naming the option.
 */
export interface LoadedMirror {
  readonly factory: MirrorFactory;
  /** Stops the cache's fetches (shutdown), once the registry made it. */
  close(): void;
  /** Upstream blob fetches in flight (metrics). */
  blobFetches(): number;
}

/** Bytes of upstream blob fetches that their clients hold unread now, over every cache (metrics). */
export const proxyClientBufferedBytes = liveClientBytes;

export async function loadMirror(proxy: ProxyConfig, option: string, log: Logger, test: TestSettings = {}): Promise<LoadedMirror> {
  let password = proxy.password;
  if (proxy.passwordFile !== undefined) {
    try {
      password = (await readFile(proxy.passwordFile, 'utf8')).replace(/\r?\n$/, '');
    } catch (err) {
      throw new ConfigError(`${option}.passwordFile: cannot read ${proxy.passwordFile}: ${(err as Error).message}`);
    }
  }
  const plog = log.child({ component: 'proxy', upstream: new URL(proxy.remoteUrl).host });
  const upstream = new UpstreamClient({ remoteUrl: proxy.remoteUrl, username: proxy.username, password, log: plog, maxMetadataRequests: proxy.maxMetadataRequests });
  let cache: PullThroughCache | undefined;
  return {
    factory: (core) => (cache = new PullThroughCache(core, { upstream, tagTtlMs: proxy.tagTtl, ttlMs: proxy.ttl, maxBlobFetches: proxy.maxBlobFetches, progressWindowMs: test.proxyBlobWindowMs, log: plog })),
    close: () => cache?.close(),
    blobFetches: () => cache?.blobFetches ?? 0,
  };
}
