import { afterAll, beforeAll, expect, it } from 'vitest';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDockerRegistry, type DockerRegistry } from '../helpers/docker-registry.js';
import { makeImage, pushBlob, pushManifest, type Image } from '../helpers/oci.js';
import { describeS3, s3ServerEnv, startRecordingProxy, useTestBucket, type RecordingProxy, type S3Call } from '../helpers/s3-http.js';
import { s3StorageUrl } from '../helpers/s3.js';
import { tempDir } from '../helpers/http.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * Issue 11: on S3 a manifest PUT cost about three times the round trips of docker-registry's
 * (2.8, the reference), most of them online garbage collection's bookkeeping: an in-flight
 * registration, a lease check, a touched marker per digest, a registration delete (itself a
 * HEAD and three listings), plus the manifest's bytes stored as a blob (a record and a data
 * object) beside its revision, and the config blob looked up twice. 23 requests where
 * docker-registry makes 8.
 *
 * Both registries store into the same radosgw through a proxy that records every request,
 * and push images (a config and one layer) five ways: a new manifest under a new tag, the
 * same manifest under another new tag, a new manifest under an existing tag, a tag pushed
 * again unchanged, and a known manifest under a tag that named another. In each, Hoist must
 * make no more requests than docker-registry, and none for garbage collection while no
 * collection runs. Where they go differs: Hoist checks each blob's data as well as its
 * record (issue 10: a record without data is no blob), 3 requests a blob where
 * docker-registry makes 2, and writes one object for the manifest where docker-registry
 * writes two, and one for the tag where it writes two links. (A tag that may expire is read
 * before it is rewritten, so that pushing it again keeps its expiry: one request more, in
 * repositories with expiry only; these have none.)
 * (Hoist's server looks at the GC lease once a second whatever it does, a HEAD each time,
 * and rewrites its presence once a minute; those are left out and reported.)
 */

interface Case {
  readonly what: string;
  readonly tag: string;
  readonly image: 'first' | 'second';
}

const CASES: Case[] = [
  { what: 'new manifest, new tag', tag: 'a', image: 'first' },
  { what: 'same manifest, another new tag', tag: 'b', image: 'first' },
  { what: 'new manifest, existing tag moved', tag: 'a', image: 'second' },
  { what: 'same manifest, same tag again', tag: 'a', image: 'second' },
  { what: 'known manifest, existing tag moved', tag: 'b', image: 'second' },
];

describeS3('issue 11: S3 requests per manifest PUT, Hoist against docker-registry', (env) => {
  const bucket = useTestBucket(env, 'issue11');
  let proxy: RecordingProxy;
  let dr: DockerRegistry;
  let drDir: Awaited<ReturnType<typeof tempDir>> | undefined;
  let hoist: TestServer;
  const counts: Record<string, Record<string, number>> = { 'docker-registry': {}, hoist: {} };
  const gcCalls: S3Call[] = [];
  let polls = 0;

  beforeAll(async () => {
    proxy = await startRecordingProxy(env, () => bucket.name);
    const through = { ...env, endpoint: proxy.endpoint };
    drDir = await tempDir('hoist-issue11-dr-');
    dr = await startDockerRegistry({ dir: drDir.path, s3: { endpoint: proxy.endpoint, bucket: bucket.name, rootDirectory: '/dr' } });
    hoist = await startServer({ storage: s3StorageUrl(through, bucket.name, 'hoist'), env: s3ServerEnv() });
  });

  afterAll(async () => {
    if (hoist) expect(await hoist.stop()).toBe(0);
    await dr?.stop();
    await drDir?.cleanup();
    await proxy?.close();
    const rows = CASES.map((c) => `  ${c.what.padEnd(38)} hoist ${String(counts.hoist![c.what]).padStart(2)}   docker-registry ${counts['docker-registry']![c.what]}`);
    console.log(`[issue 11] S3 requests per manifest PUT (config + 1 layer):\n${rows.join('\n')}\n  (the Hoist server's lease polls and heartbeats meanwhile, left out: ${polls})`);
  });

  /** The Hoist server's own requests, whatever it does: its lease polls and presence heartbeats. */
  const background = (k: S3Call): boolean => (k.op === 'HEAD' && k.key === 'hoist/gc/lease') || (k.op === 'PutObject' && k.key.startsWith('hoist/gc/servers/'));

  /**
   * Requests recorded after one push's response and before the next push began: none but the
   * background ones, or a server answered before its storage work was done (checked last).
   */
  const trailing: S3Call[] = [];
  let lastEnd: number | undefined;

  /**
   * The requests a push caused: those made until its response was in. The proxy records a
   * request when it arrives, so every request the server awaited before answering is there
   * by then, however slow a loaded machine makes it; nothing is counted by a quiet period.
   */
  async function requestsOf(fn: () => Promise<unknown>): Promise<S3Call[]> {
    const from = proxy.calls.length;
    if (lastEnd !== undefined) trailing.push(...proxy.calls.slice(lastEnd, from));
    await fn();
    lastEnd = proxy.calls.length;
    return proxy.calls.slice(from, lastEnd);
  }

  for (const who of ['docker-registry', 'hoist'] as const) {
    it(`${who}: counts the requests of each push`, async () => {
      const url = who === 'hoist' ? hoist.url : dr.url;
      const images: Record<Case['image'], Image> = { first: makeImage({ layerSizesBytes: [1000] }), second: makeImage({ layerSizesBytes: [1000] }) };
      for (const img of Object.values(images)) for (const b of [img.config, ...img.layers]) await pushBlob(url, 'issue11/app', b.bytes);
      for (const c of CASES) {
        const img = images[c.image];
        const calls = await requestsOf(() => pushManifest(url, 'issue11/app', c.tag, img.manifestBytes, img.mediaType));
        // docker-registry's stats are bucket listings (no key), so every request counts but
        // the Hoist server's background ones.
        polls += calls.filter(background).length;
        const counted = calls.filter((k) => !background(k));
        if (who === 'hoist') gcCalls.push(...counted.filter((k) => k.key.startsWith('hoist/gc/') || k.key.endsWith('.touched')));
        counts[who]![c.what] = counted.length;
      }
      // What trails the last push, had it any, would come within a moment. (A check only: a
      // late request makes this wait longer, never a count wrong.)
      for (let seen = -1; seen !== proxy.calls.length;) {
        seen = proxy.calls.length;
        await sleep(300);
      }
      trailing.push(...proxy.calls.slice(lastEnd));
      lastEnd = undefined;
      expect(trailing.filter((k) => !background(k)), 'requests after a push was answered').toEqual([]);
      trailing.length = 0;
    });
  }

  it('hoist makes no more requests than docker-registry in any of the five, and none for garbage collection', () => {
    for (const c of CASES) expect(counts.hoist![c.what], c.what).toBeLessThanOrEqual(counts['docker-registry']![c.what]!);
    expect(gcCalls).toEqual([]);
  });
});
