import { resolve } from 'node:path';
import type { StorageDriver } from './driver.js';
import { FsDriver } from './fs.js';
import { MemoryDriver } from './memory.js';
import type { PayloadHashFunction } from './s3/driver.js';

export * from './driver.js';
export { FsDriver, MemoryDriver };

export interface CreateDriverOptions {
  /** Base for relative `fs:` paths; defaults to process.cwd(). */
  cwd?: string;
  /**
   * s3: the SHA-256 each part is signed with, computed off the main thread; the server
   * passes its hashing pool's `oneShot(bytes, 'sha256', 'hex')`. Without it the driver
   * hashes inline.
   */
  payloadHash?: PayloadHashFunction;
  /**
   * The store must exist already: fs does not create a missing root directory (`hoist gc`,
   * where a mistyped path would otherwise collect an empty store and report success).
   */
  existing?: boolean;
}

/**
 * Opens the driver a storage URL (config `storage`) names:
 *
 *   fs:./data, fs:data, fs:/var/lib/hoist   files under a directory, created if missing (unless `existing`);
 *                                           relative paths are relative to the working directory
 *   memory:                                 this process's memory; gone when it exits
 *   s3://BUCKET/PREFIX?endpoint=URL&...     objects in an S3 bucket under PREFIX; options in
 *                                           src/storage/s3/url.ts; credentials from the SDK's
 *                                           standard chain. Start-up fails with a clear message
 *                                           when the bucket is missing or the credentials fail.
 */
export async function createDriver(storageUrl: string, opts: CreateDriverOptions = {}): Promise<StorageDriver> {
  const colon = storageUrl.indexOf(':');
  const scheme = colon === -1 ? '' : storageUrl.slice(0, colon);
  const rest = storageUrl.slice(colon + 1);
  switch (scheme) {
    case 'fs':
      if (rest === '') throw new Error(`storage ${JSON.stringify(storageUrl)}: expected fs:PATH, e.g. fs:./data`);
      return FsDriver.open({ rootDirectory: resolve(opts.cwd ?? process.cwd(), rest), createRoot: !opts.existing });
    case 'memory':
      if (rest !== '') throw new Error(`storage ${JSON.stringify(storageUrl)}: memory: takes no path`);
      return new MemoryDriver();
    case 's3': {
      // Loaded only when used: the AWS SDK costs start-up time that fs and memory don't need.
      // src/storage/s3/ is the only module that imports @aws-sdk (STYLE.md).
      const [{ parseS3Url }, { S3Driver }] = await Promise.all([import('./s3/url.js'), import('./s3/driver.js')]);
      return S3Driver.open({ ...parseS3Url(storageUrl), payloadHash: opts.payloadHash });
    }
    default:
      throw new Error(`unsupported storage ${JSON.stringify(storageUrl)}: expected fs:PATH, memory: or s3://BUCKET/PREFIX`);
  }
}
