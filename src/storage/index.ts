import { resolve } from 'node:path';
import type { StorageDriver } from './driver.js';
import { FsDriver } from './fs.js';
import { MemoryDriver } from './memory.js';

export * from './driver.js';
export { FsDriver, MemoryDriver };

export interface CreateDriverOptions {
  /** Base for relative `fs:` paths; defaults to process.cwd(). */
  cwd?: string;
}

/**
 * Opens the driver a storage URL (config `storage`) names:
 *
 *   fs:./data, fs:data, fs:/var/lib/hoist   files under a directory, created if missing;
 *                                           relative paths are relative to the working directory
 *   memory:                                 this process's memory; gone when it exits
 *   s3://BUCKET/PREFIX?...                  (not built yet)
 */
export async function createDriver(storageUrl: string, opts: CreateDriverOptions = {}): Promise<StorageDriver> {
  const colon = storageUrl.indexOf(':');
  const scheme = colon === -1 ? '' : storageUrl.slice(0, colon);
  const rest = storageUrl.slice(colon + 1);
  switch (scheme) {
    case 'fs':
      if (rest === '') throw new Error(`storage ${JSON.stringify(storageUrl)}: expected fs:PATH, e.g. fs:./data`);
      return FsDriver.open({ rootDirectory: resolve(opts.cwd ?? process.cwd(), rest) });
    case 'memory':
      if (rest !== '') throw new Error(`storage ${JSON.stringify(storageUrl)}: memory: takes no path`);
      return new MemoryDriver();
    case 's3':
      // S3 DRIVER GOES HERE (its own issue): parse storageUrl and return the driver from
      // src/storage/s3/, the only module that may import @aws-sdk (STYLE.md).
      throw new Error('the s3 storage driver is not built yet; use fs:PATH or memory:');
    default:
      throw new Error(`unsupported storage ${JSON.stringify(storageUrl)}: expected fs:PATH, memory: or s3://BUCKET/PREFIX`);
  }
}
