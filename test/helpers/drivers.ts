import { randomUUID } from 'node:crypto';
import { afterAll, describe } from 'vitest';
import { createDriver, type StorageDriver } from '../../src/storage/index.js';
import { tempDir } from './http.js';
import { describeS3, useTestBucket } from './s3-http.js';

/**
 * Declares `body` three times, as `${title}: memory`, `: fs` and `: S3`, each given a way to
 * open a fresh driver of that kind: fs in a temporary directory of its own (removed once the
 * block is done), S3 under a prefix of its own in a test bucket (the S3 block fails, never
 * skips, without an S3 server: describeS3). For the gc suites, whose races must hold on every
 * driver.
 */
export function describeOnEveryDriver(title: string, label: string, body: (open: () => Promise<StorageDriver>) => void): void {
  describe(`${title}: memory`, () => {
    body(() => createDriver('memory:'));
  });
  describe(`${title}: fs`, () => {
    const dirs: Array<Awaited<ReturnType<typeof tempDir>>> = [];
    afterAll(async () => {
      for (const d of dirs.splice(0)) await d.cleanup();
    });
    body(async () => {
      const dir = await tempDir(`hoist-${label}-`);
      dirs.push(dir);
      return createDriver(`fs:${dir.path}`);
    });
  });
  describeS3(`${title}: S3`, (env) => {
    const bucket = useTestBucket(env, label);
    body(() => createDriver(bucket.url(randomUUID().slice(0, 8))));
  });
}
