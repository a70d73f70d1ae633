import type { StorageDriver } from '../storage/driver.js';
import type { UploadEngine } from '../engine/uploads.js';
import type { GcGuard } from '../gc/guard.js';
import type { BlobDescriptor, BlobRead, BlobStore, ByteRange } from './blobs.js';
import type { Manifest, ManifestRecord, ManifestStore, Page } from './manifests.js';
import type { Digest, Reference } from './reference.js';

/**
 * A registry that mirrors another one (a pull-through cache, src/proxy/): the registry core
 * hands it its pulls, with names, references and digests already validated, and refuses
 * every push and delete itself (UNSUPPORTED, as distribution's proxy mode does). The core
 * knows nothing more of it; the mirror stores what it fetches through the same stores.
 */
export interface Mirror {
  getManifest(repo: string, reference: Reference): Promise<Manifest>;
  statManifest(repo: string, reference: Reference): Promise<ManifestRecord>;
  statBlob(repo: string, digest: Digest): Promise<BlobDescriptor>;
  readBlob(repo: string, digest: Digest, range: ByteRange | undefined): Promise<BlobRead>;
  listTags(repo: string, n: number | undefined, last: string | undefined): Promise<Page<string>>;
}

/** What the core lends a mirror: its storage, stores, upload engine and GC guard. */
export interface MirrorCore {
  readonly driver: StorageDriver;
  readonly blobs: BlobStore;
  readonly manifests: ManifestStore;
  readonly uploads: UploadEngine;
  readonly guard: GcGuard;
  readonly maxManifestBytes: number;
}

export type MirrorFactory = (core: MirrorCore) => Mirror;
