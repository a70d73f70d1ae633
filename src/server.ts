import type { Logger } from 'pino';
import type { Config, TestSettings } from './config.js';
import type { FrontEnd } from './http/adapter.js';
import { loadSecurity } from './http/auth-setup.js';
import { createFrontEnd, FrontEndUnfitError } from './http/frontend.js';
import { createHandler } from './http/handlers.js';
import type { Namespace } from './http/namespaces.js';
import { startGcSchedule, startSweepWatch } from './gc/schedule.js';
import { ReadinessCheck } from './health.js';
import { MetricsListener } from './metrics/listener.js';
import { HoistMetrics } from './metrics/metrics.js';
import { MirrorExpiry } from './gc/mirror.js';
import { loadMirror, proxyClientBufferedBytes, type LoadedMirror } from './proxy/setup.js';
import { ExpiryPolicy } from './registry/expiry.js';
import { HashPool } from './engine/hash-pool.js';
import { Registry } from './registry/registry.js';
import { SlabPool } from './engine/slab-pool.js';
import { createDriver, type StorageDriver } from './storage/index.js';
import { InstrumentedDriver } from './storage/instrumented.js';
import { PrefixedDriver } from './storage/prefixed.js';

export interface RunningServer {
  readonly frontend: FrontEnd;
  readonly port: number;
  readonly registry: Registry;
  /** The metrics listener's port, when `metrics.listen` is set. */
  readonly metricsPort: number | undefined;
  /** Stops accepting, lets in-flight requests finish within the configured bound, releases everything. */
  close(): Promise<void>;
  /** SIGHUP: reads the htpasswd file and the TLS certificate and key again (the old stay on error). */
  reload(): Promise<void>;
}

/** Wires config → storage driver → hashing pool → registry core → HTTP front end. */
export async function startServer(config: Readonly<Config>, log: Logger, test: TestSettings = {}): Promise<RunningServer> {
  // Files of auth and tls first: a bad one stops start-up before anything else starts.
  const security = await loadSecurity(config, log);
  // Pull-through caches (src/proxy/): their password files are read now, with the others.
  const mirrors = new Map<string | undefined, LoadedMirror>();
  if (config.proxy) mirrors.set(undefined, await loadMirror(config.proxy, 'proxy', log, test));
  for (const [i, n] of config.namespaces.entries()) if (n.proxy) mirrors.set(n.name, await loadMirror(n.proxy, `namespaces.${i}.proxy`, log, test));
  const u = config.uploads;
  const slabs = new SlabPool(u.chunkBytes, u.maxBufferedBytes);
  // Tasks past this bound wait in the pool's own line (HashPool #tasks): one per slab, and
  // room for the tasks that hold none (digests, rebuilds, S3 parts' SHA-256).
  const hashPool = new HashPool({ threads: u.hashThreads, maxQueue: slabs.maxSlabs * 2 + 64 });
  let driver: StorageDriver;
  try {
    // S3 parts are signed with their SHA-256, computed by the hashing workers straight from
    // the part's shared buffer rather than on this thread (s3/writer.ts signedPayload).
    driver = await createDriver(config.storage, { payloadHash: (bytes) => hashPool.oneShot(bytes, 'sha256', 'hex') });
  } catch (err) {
    await hashPool.close();
    throw err;
  }
  // Every storage call reports on a diagnostics channel (metrics); below the namespaces'
  // prefixes, so each is counted once.
  driver = new InstrumentedDriver(driver);
  const readiness = new ReadinessCheck(driver, {
    onChange: (now, err) =>
      now.ready ? log.info('ready: storage answers again') : log.warn({ err, reason: now.reason }, 'not ready: storage check failed'),
  });
  const expiry = new ExpiryPolicy(config.gc.expiration);
  const registryOn = (d: StorageDriver, namespace?: string): Registry => {
    const mirror = mirrors.get(namespace);
    const proxy = namespace === undefined ? config.proxy : config.namespaces.find((n) => n.name === namespace)?.proxy;
    return new Registry({
      driver: d,
      hashPool,
      slabs,
      maxSessionBufferedBytes: u.maxSessionBufferedBytes,
      maxBlobBytes: u.maxBlobBytes,
      maxManifestBytes: config.manifests.maxBytes,
      // A cache's tags expire by last confirmation as its collections see them (gc/mirror.ts).
      expiry: proxy ? new MirrorExpiry(expiry.forNamespace(namespace), proxy.ttl) : expiry.forNamespace(namespace),
      mirror: mirror?.factory,
      uploadLock: {
        // The request was answered as its work went; the lock is deleted again in the background,
        // and taken over by this server's next request on the upload (engine/upload-lock.ts).
        onReleaseFailed: (lock, err) => log.warn({ err, lock, namespace }, 'upload lock not deleted after its request; retrying in the background'),
      },
    });
  };
  const registry = registryOn(driver);
  // Each namespace is a registry of its own on its own part of the store; they share the
  // hashing pool and the buffer budget, which bound the process, not a registry.
  const namespaces: Namespace[] = config.namespaces.map((n) => ({
    name: n.name,
    host: n.host,
    pathPrefix: n.pathPrefix,
    registry: registryOn(new PrefixedDriver(driver, `/namespaces/${n.name}`), n.name),
  }));
  const handler = createHandler({
    registry, namespaces, log, maxManifestBytes: config.manifests.maxBytes, minChunkBytes: u.minChunkBytes, gate: security.gate, readiness,
  });
  const frontend = await createFrontEnd(config.frontend, handler, {
    maxBodyBytes: u.maxBlobBytes,
    maxHeaderBytes: config.limits.maxHeaderBytes,
    idleTimeoutMs: config.limits.idleTimeout,
    tls: security.tls,
    // One line, as handlers.ts writes for every request it answers.
    onRefused: (r) => log.info({ method: r.method, path: r.path.slice(0, 200), status: r.status, ...(r.code ? { code: r.code } : {}) }, 'request refused'),
    onFallback: (err) =>
      err instanceof FrontEndUnfitError
        ? log.info({ reason: err.message }, 'using the node:http front end')
        : log.warn({ err }, 'uWebSockets.js did not load; using the node:http front end'),
  });
  // Metrics first, so that the first request is counted and the listener is up (and its
  // port logged) by the time the registry says it is listening.
  let metrics: { registry: HoistMetrics; listener: MetricsListener; port: number } | undefined;
  if (config.metrics.listen) {
    const registries = [registry, ...namespaces.map((n) => n.registry)];
    const m = new HoistMetrics({
      hashPool, slabs, frontend, storage: driver.name,
      readBufferBytes: () => driver.readBuffers?.inUseBytes ?? 0,
      writeBufferBytes: () => ({ inUse: driver.writeBuffers?.inUseBytes ?? 0, held: driver.writeBuffers?.heldBytes ?? 0 }),
      uploadsInProgress: () => registries.reduce((n, r) => n + r.uploadsInProgress, 0),
      proxyBlobFetches: () => [...mirrors.values()].reduce((n, m) => n + m.blobFetches(), 0),
      proxyClientBufferedBytes,
    });
    const listener = new MetricsListener(m, readiness);
    try {
      const { host, port } = config.metrics.listen;
      metrics = { registry: m, listener, port: await listener.listen(host, port) };
      log.info({ host, port: metrics.port }, 'metrics listening');
    } catch (err) {
      m.close();
      await frontend.close(0);
      await hashPool.close();
      await driver.close();
      throw err;
    }
  }
  const port = await frontend.listen(config.listen.host, config.listen.port);
  log.info(
    { host: config.listen.host, port, frontend: frontend.kind, storage: driver.name, hashThreads: hashPool.threads, chunkBytes: u.chunkBytes,
      ...(namespaces.length > 0 ? { namespaces: namespaces.map((n) => n.name) } : {}), tls: security.tls !== undefined, auth: security.authMode,
      ...(mirrors.size > 0 ? { mirrors: [...mirrors.keys()].map((n) => n ?? '(default)') } : {}) },
    'listening',
  );
  const gc = startGcSchedule(config, driver, log);
  const sweepWatch = startSweepWatch(config, driver, log, test.sweepWatchMs);
  let closing: Promise<void> | undefined;
  return {
    frontend,
    port,
    registry,
    metricsPort: metrics?.port,
    reload: () => security.reload(frontend),
    close: () =>
      (closing ??= (async () => {
        const t0 = Date.now();
        // Probes say so at once, so that load balancers stop sending before the port closes.
        readiness.shuttingDown();
        const gcStopped = Promise.all([gc?.stop(), sweepWatch?.stop()]);
        await frontend.close(config.shutdownTimeoutMs, () => handler.cutting());
        // Fetches no client waits for any more would outlive the hashing pool.
        for (const m of mirrors.values()) m.close();
        // Requests cut off at the deadline flush what they received, so their uploads resume.
        await handler.drain(Math.max(1000, config.shutdownTimeoutMs - (Date.now() - t0)));
        await gcStopped;
        // Their presences go, so that a collection does not wait for this server (gc/guard.ts).
        await Promise.all([registry, ...namespaces.map((n) => n.registry)].map((r) => r.close().catch(() => undefined)));
        await hashPool.close();
        await driver.close();
        // Last: scrapes see the shutdown through.
        await metrics?.listener.close();
        metrics?.registry.close();
      })()),
  };
}
