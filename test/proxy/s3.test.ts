import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startDockerRegistry, type DockerRegistry } from '../helpers/docker-registry.js';
import { tempDir, waitForLog } from '../helpers/http.js';
import { rawGet, tapUpstream, type UpstreamTap } from '../helpers/mirror.js';
import { makeImage, pushImage, sha256, type Image } from '../helpers/oci.js';
import { listAllKeys, listUploads } from '../helpers/s3.js';
import { describeS3, s3ServerEnv, useTestBucket } from '../helpers/s3-http.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * The pull-through cache on S3 (radosgw, 5 MiB parts): blobs fetched into multipart uploads
 * while clients stream them, the slow client served the rest from the committed object, a
 * lying upstream leaving no object and no multipart upload behind, and the warm pull.
 */
describeS3('pull-through cache on S3', (env) => {
  const bucket = useTestBucket(env, 'mirror');
  let work: string;
  let cleanup: () => Promise<void>;
  let upstream: DockerRegistry;
  let tap: UpstreamTap;
  let mirror: TestServer;
  const img: Image = makeImage({ layerSizesBytes: [23 * 1024 * 1024 + 11, 300_000] });

  beforeAll(async () => {
    ({ path: work, cleanup } = await tempDir('hoist-mirror-s3-'));
    upstream = await startDockerRegistry({ dir: join(work, 'upstream') });
    tap = await tapUpstream(upstream.url);
    await pushImage(upstream.url, 'library/app', 'v1', img);
    mirror = await startServer({ storage: bucket.url('cache'), frontend: 'node', env: { ...s3ServerEnv(), HOIST_PROXY_REMOTE_URL: tap.endpoint, HOIST_LOG_LEVEL: 'debug' } });
  });

  afterAll(async () => {
    await mirror?.stop();
    await tap?.close();
    await upstream?.stop();
    await cleanup?.();
  });

  it('four clients, one of them stalled past the live window, get a 23 MiB layer fetched once into a multipart upload', async () => {
    const d = img.layers[0]!.descriptor.digest;
    const path = `/v2/library/app/blobs/${d}`;
    // The slow one reads nothing until the fetch is done: it falls behind and reads the rest back from S3.
    let resumeSlow!: () => void;
    const slow = rawGet(mirror.url, path, {}, (res) => {
      res.pause();
      resumeSlow = () => res.resume();
    });
    const fast = await Promise.all([1, 2, 3].map(() => rawGet(mirror.url, path)));
    await waitForLog(mirror, 'the slow client left behind', (l) => l.msg === 'client fell behind a blob fetch: it continues from storage' && l.digest === d);
    await waitForLog(mirror, 'the blob stored', (l) => l.msg === 'blob fetched from upstream and stored' && l.digest === d);
    resumeSlow();
    for (const r of [...fast, await slow]) {
      expect(r.complete).toBe(true);
      expect(sha256(r.body)).toBe(d);
    }
    expect(tap.count('GET', `/blobs/${d}`)).toBe(1);
  });

  it('an upstream that lies leaves no object and no multipart upload behind', async () => {
    const liar = makeImage({ layerSizesBytes: [12 * 1024 * 1024] });
    await pushImage(upstream.url, 'library/liar', 'v1', liar);
    const d = liar.layers[0]!.descriptor.digest;
    const before = (await listAllKeys(bucket.client, bucket.name, 'cache/blobs/data/')).map((k) => k.key);
    tap.faults.set(`/blobs/${d}`, { corruptAt: 11 * 1024 * 1024 });
    const r = await rawGet(mirror.url, `/v2/library/liar/blobs/${d}`);
    expect(r.complete).toBe(false);
    await waitForLog(mirror, 'the digest warning', (l) => l.msg === 'upstream sent a blob that does not match its digest: not stored, clients cut off' && l.digest === d);
    const after = (await listAllKeys(bucket.client, bucket.name, 'cache/blobs/data/')).map((k) => k.key);
    expect(after).toEqual(before);
    expect(await listUploads(bucket.client, bucket.name, 'cache/')).toEqual([]);
    expect((await listAllKeys(bucket.client, bucket.name, `cache/blobs/sha256/${d.slice(7, 9)}/`)).map((k) => k.key)).not.toContain(`cache/blobs/sha256/${d.slice(7, 9)}/${d.slice(7)}`);
  });

  it('serves the warm pull from S3 without asking the upstream', async () => {
    const blobs = [img.config, ...img.layers].map((b) => b.descriptor.digest);
    for (const d of blobs) expect(sha256((await rawGet(mirror.url, `/v2/library/app/blobs/${d}`)).body)).toBe(d);
    const before = tap.requests.length;
    for (const d of blobs) expect(sha256((await rawGet(mirror.url, `/v2/library/app/blobs/${d}`)).body)).toBe(d);
    expect(tap.requests.slice(before)).toEqual([]);
  });
});
