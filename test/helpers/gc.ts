import { createHash, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { ExpiryPolicy, type ExpirationSettings } from '../../src/registry/expiry.js';
import { collectGarbage, type GcOptions, type GcReport } from '../../src/gc/collector.js';
import type { HashPool } from '../../src/engine/hash-pool.js';
import { MEDIA_TYPES } from '../../src/registry/manifest-schema.js';
import { decodeRevision } from '../../src/registry/manifests.js';
import { paths } from '../../src/registry/paths.js';
import { parseDigest } from '../../src/registry/reference.js';
import { Registry } from '../../src/registry/registry.js';
import { SlabPool } from '../../src/engine/slab-pool.js';
import { isPathNotFound, type StorageDriver } from '../../src/storage/driver.js';
import { runCli, type CliResult } from './server.js';
import { bodyOf } from './uploads.js';

/**
 * A registry core on a test driver, with the pushes GC tests need (images, indexes,
 * referrers), as a client makes them: blobs first, then the manifest. Digests are of random
 * content, so every image is new.
 *
 *   const t = new GcFixture(new MemoryDriver(), pool);
 *   const img = await t.pushImage('a', 'v1');
 *   const report = await t.gc();
 */

const LAYER = 'application/vnd.oci.image.layer.v1.tar';

/** As a reference: push the manifest by its own digest (untagged). */
export const BY_DIGEST = '@digest';

export const sha256 = (b: Uint8Array | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export interface PushedImage {
  readonly repo: string;
  readonly digest: string;
  readonly bytes: Buffer;
  readonly config: string;
  readonly layers: string[];
}

export interface ImageOptions {
  /** Layers to reuse (already pushed to this repository), by content. */
  shared?: Buffer[];
  layerCount?: number;
  labels?: Record<string, string>;
  subject?: { digest: string; size: number; mediaType: string };
  artifactType?: string;
}

export class GcFixture {
  readonly driver: StorageDriver;
  readonly registry: Registry;

  constructor(driver: StorageDriver, hashPool: HashPool, expiration?: ExpirationSettings) {
    this.driver = driver;
    this.registry = new Registry({
      driver,
      hashPool,
      slabs: new SlabPool(64 * 1024, 4 << 20),
      maxSessionBufferedBytes: 192 * 1024,
      maxBlobBytes: 0,
      maxManifestBytes: 1 << 20,
      ...(expiration ? { expiry: new ExpiryPolicy(expiration) } : {}),
      // Collections in these tests start right after pushes: the server sees them at once.
      gc: { pollMs: 10 },
    });
  }

  /** Stops the registry's part in garbage collection (its presence goes). */
  close(): Promise<void> {
    return this.registry.close();
  }

  async pushBlob(repo: string, bytes: Uint8Array): Promise<string> {
    const digest = sha256(bytes);
    await this.registry.putBlob(repo, digest, bytes.length, bodyOf(bytes));
    return digest;
  }

  /** An image with `layerCount` random layers (plus `shared` ones), a config, a manifest under `reference`. */
  async pushImage(repo: string, reference: string, o: ImageOptions = {}): Promise<PushedImage> {
    const layerBytes = [...(o.shared ?? []), ...Array.from({ length: o.layerCount ?? 2 }, () => randomBytes(300))];
    const layers: Array<{ mediaType: string; digest: string; size: number }> = [];
    for (const b of layerBytes) layers.push({ mediaType: LAYER, digest: await this.pushBlob(repo, b), size: b.length });
    const config = Buffer.from(JSON.stringify({
      architecture: 'amd64', os: 'linux', nonce: randomBytes(8).toString('hex'),
      config: o.labels ? { Labels: o.labels } : {},
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
    }));
    const configDigest = await this.pushBlob(repo, config);
    const manifest = Buffer.from(JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.ociManifest,
      ...(o.artifactType ? { artifactType: o.artifactType } : {}),
      config: { mediaType: MEDIA_TYPES.ociImageConfig, digest: configDigest, size: config.length },
      layers,
      ...(o.subject ? { subject: o.subject } : {}),
    }));
    const record = await this.registry.putManifest(repo, reference === BY_DIGEST ? sha256(manifest) : reference, MEDIA_TYPES.ociManifest, manifest);
    return { repo, digest: record.digest, bytes: manifest, config: configDigest, layers: layers.map((l) => l.digest) };
  }

  async pushIndex(repo: string, reference: string, children: PushedImage[]): Promise<PushedImage> {
    const index = Buffer.from(JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.ociIndex,
      manifests: children.map((c, i) => ({ mediaType: MEDIA_TYPES.ociManifest, digest: c.digest, size: c.bytes.length, platform: { architecture: `arch${i}`, os: 'linux' } })),
    }));
    const record = await this.registry.putManifest(repo, reference === BY_DIGEST ? sha256(index) : reference, MEDIA_TYPES.ociIndex, index);
    return { repo, digest: record.digest, bytes: index, config: '', layers: [] };
  }

  /**
   * A collection, grace 0 unless given. It starts a few milliseconds after the last push:
   * a marker written in the very millisecond a collection starts counts as fresh.
   */
  async gc(o: Partial<GcOptions> = {}): Promise<GcReport> {
    await sleep(3);
    return collectGarbage({ driver: this.driver, graceMs: 0, staleUploadAfterMs: 3_600_000, leaseTtlMs: 60_000, ...o });
  }

  /** Whether the blob's record and data are both stored. */
  async blobStored(digest: string): Promise<boolean> {
    const record = await this.#read(paths.blobRecord(parseDigest(digest)));
    if (!record) return false;
    return (await this.#read((JSON.parse(record.toString('utf8')) as { data: string }).data)) !== undefined;
  }

  /** Whether the manifest's revision is stored with its bytes (in it, or for the old layout as a blob). */
  async manifestStored(repo: string, digest: string): Promise<boolean> {
    const raw = await this.#read(paths.manifestRevision(repo, parseDigest(digest)));
    if (!raw) return false;
    return decodeRevision(raw).bytes !== undefined || this.blobStored(digest);
  }

  async linked(repo: string, digest: string): Promise<boolean> {
    return (await this.#read(paths.layerLink(repo, parseDigest(digest)))) !== undefined;
  }

  /** Every blob of an image, and its manifest, is stored. */
  async imageStored(img: PushedImage): Promise<boolean> {
    for (const d of [...(img.config ? [img.config] : []), ...img.layers]) if (!(await this.blobStored(d))) return false;
    return this.manifestStored(img.repo, img.digest);
  }

  async #read(path: string): Promise<Buffer | undefined> {
    try {
      return await this.driver.getContent(path);
    } catch (err) {
      if (isPathNotFound(err)) return undefined;
      throw err;
    }
  }
}

export type { CliResult } from './server.js';

/** Runs the built `hoist gc` with `args`, as an operator does while servers run (see runCli). */
export function runGcCli(args: string[], env: Record<string, string> = {}, timeoutMs = 120_000): Promise<CliResult> {
  return runCli(['gc', ...args], env, timeoutMs);
}
