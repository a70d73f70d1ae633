import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBlobUpstream, UpstreamBlobs, type BlobUpstream } from '../helpers/blob-upstream.js';
import { request, tempDir } from '../helpers/http.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * Blob HEADs a pull-through cache sends its upstream were one per client request: 20 HEADs
 * at once of a blob the cache does not hold sent the upstream 20 HEADs (so do GETs of a blob
 * stored for another repository, each asking whether this one has it too). Nothing bounded
 * them, as proxy.maxBlobFetches bounds the fetches. Now requests of one blob through one
 * repository at the same time share one upstream HEAD.
 */
const blobs = new UpstreamBlobs();
/** Upstream HEADs, by `<repo> <digest>`. */
const heads = new Map<string, number>();

let upstream: BlobUpstream;
let mirror: TestServer;
let cleanup: () => Promise<void>;

beforeAll(async () => {
  upstream = await startBlobUpstream(blobs, ({ req, res, repo, digest, bytes }) => {
    if (req.method === 'HEAD') heads.set(`${repo} ${digest}`, (heads.get(`${repo} ${digest}`) ?? 0) + 1);
    // Slow to answer, so that the cache's requests overlap.
    setTimeout(() => {
      res.writeHead(200, { 'content-length': String(bytes.byteLength), 'content-type': 'application/octet-stream' });
      res.end(req.method === 'HEAD' ? undefined : bytes);
    }, 300);
  });
  let dir: string;
  ({ path: dir, cleanup } = await tempDir('hoist-blob-heads-'));
  mirror = await startServer({ storage: `fs:${dir}`, frontend: 'node', env: { HOIST_PROXY_REMOTE_URL: upstream.url } });
});

afterAll(async () => {
  await mirror?.stop();
  upstream?.close();
  await cleanup?.();
});

describe('blob HEADs to the upstream of a pull-through cache', () => {
  it('20 HEADs at once of a blob it does not hold send one upstream HEAD; another repository gets its own', async () => {
    const blob = blobs.newBlob(10_000);
    const replies = await Promise.all([
      ...Array.from({ length: 20 }, () => request(mirror.url, `/v2/a/img/blobs/${blob.digest}`, { method: 'HEAD' })),
      request(mirror.url, `/v2/b/img/blobs/${blob.digest}`, { method: 'HEAD' }),
    ]);
    for (const r of replies) {
      expect(r.status).toBe(200);
      expect(r.header('content-length')).toBe('10000');
    }
    expect(heads.get(`a/img ${blob.digest}`)).toBe(1);
    expect(heads.get(`b/img ${blob.digest}`)).toBe(1);
    // Once answered, the next HEAD asks again (nothing is kept: the upstream may drop the blob).
    expect((await request(mirror.url, `/v2/a/img/blobs/${blob.digest}`, { method: 'HEAD' })).status).toBe(200);
    expect(heads.get(`a/img ${blob.digest}`)).toBe(2);
  });
});
