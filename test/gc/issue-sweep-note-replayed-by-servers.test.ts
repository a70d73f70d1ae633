import { randomBytes, randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import type { LeaseRecord } from '../../src/gc/lease.js';
import { paths } from '../../src/registry/paths.js';
import { parseDigest } from '../../src/registry/reference.js';
import { createDriver, objectExists, type StorageDriver } from '../../src/storage/index.js';
import { blobRef, GcTestClient, image } from '../helpers/gc-client.js';
import { tempDir, waitFor, waitForLog } from '../helpers/http.js';
import { metricsUrlOf, scrape } from '../helpers/metrics.js';
import { describeS3, s3ServerEnv, useTestBucket } from '../helpers/s3-http.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * A collector killed (kill -9) mid-batch leaves its sweep note, /gc/sweeping (gc/collector.ts
 * J): what it deleted, as it read it, with each digest's touched marker as it first read it.
 * A push that deduplicated onto a blob record of the batch, or pushed one of its manifests
 * again, was answered 201, and the collector's re-read that would have put it back never
 * came. Only the next collection replayed the note, and until then the blob and the manifest
 * answered 404: on S3 with stateless instances, until the next scheduled collection, hours
 * perhaps (never, without gc.schedule).
 *
 * Now every `hoist serve` looks for the note once a minute (HOIST_TEST_GC_SWEEP_WATCH_MS here)
 * and, when the lease is free or expired, takes it, replays the note as a collection would
 * and releases it. A live lease is left alone: its collector is mid-batch.
 *
 * The dead collector is staged in the store: its lease (gen 1, heartbeat 10 minutes ago), the
 * deletes of its batch and its note. The note is written last, so that no look of the server
 * comes between it and the deletes; a replay cannot tell the order.
 */

const WATCH_MS = 200;
/** A hang guard: a loaded 2-core machine with radosgw takes seconds, not this. */
const WAIT_MS = 30_000;

interface Store {
  storage: string;
  env: Record<string, string>;
  driver: StorageDriver;
}

function lease(heartbeatAgoMs: number, owner: string): Buffer {
  const at = new Date(Date.now() - heartbeatAgoMs).toISOString();
  const record: LeaseRecord = { gen: 1, state: 'running', owner, startedAt: at, heartbeatAt: at };
  return Buffer.from(JSON.stringify(record));
}

async function touchOf(driver: StorageDriver, digest: string): Promise<string> {
  return (await driver.getContent(paths.blobTouched(parseDigest(digest)))).toString('utf8');
}

function sweepReplays(server: TestServer): Promise<number | undefined> {
  return scrape(metricsUrlOf(server)).then((s) => s.value('hoist_gc_sweep_replays_total'));
}

function sweepNoteReplayed(open: () => Promise<Store>): void {
  let server: TestServer | undefined;
  let store: Store | undefined;
  afterEach(async () => {
    if (server) expect(await server.stop()).toBe(0);
    server = undefined;
    await store?.driver.close();
  });

  async function start(extraEnv: Record<string, string> = {}): Promise<{ client: GcTestClient; driver: StorageDriver }> {
    store = await open();
    server = await startServer({
      storage: store.storage,
      frontend: 'node',
      env: { ...store.env, HOIST_TEST_GC_SWEEP_WATCH_MS: String(WATCH_MS), HOIST_METRICS_LISTEN: '127.0.0.1:0', ...extraEnv },
    });
    return { client: new GcTestClient(server.url), driver: store.driver };
  }

  /**
   * A collector's batch as it read it: a blob record and a manifest's revision that a client
   * pushes again (201) after that first read, and a blob record nobody vouches for. Returns the
   * note the collector wrote before deleting them, and deletes them as it did.
   */
  async function deadCollectorBatch(client: GcTestClient, driver: StorageDriver) {
    const repo = 'sweep/app';
    const layer = blobRef(randomBytes(40_000));
    const img = image(repo, [layer]);
    const unvouched = randomBytes(20_000);
    const unvouchedDigest = blobRef(unvouched).digest;
    await client.push(img, img.digest);
    await client.uploadMonolithic(repo, unvouched);
    const record = paths.blobRecord(parseDigest(layer.digest));
    const revision = paths.manifestRevision(repo, parseDigest(img.digest));
    const unvouchedRecord = paths.blobRecord(parseDigest(unvouchedDigest));
    // The collector's first reads.
    const entries = [
      { path: record, raw: (await driver.getContent(record)).toString('base64'), d: layer.digest, touch: await touchOf(driver, layer.digest), record: true },
      { path: revision, raw: (await driver.getContent(revision)).toString('base64'), d: img.digest, touch: await touchOf(driver, img.digest) },
      { path: unvouchedRecord, raw: (await driver.getContent(unvouchedRecord)).toString('base64'), d: unvouchedDigest, touch: await touchOf(driver, unvouchedDigest), record: true },
    ];
    // Pushed again meanwhile: the upload deduplicates onto the record, the manifest is stored again.
    await client.uploadMonolithic(repo, layer.bytes);
    await client.expect(`PUT /v2/${repo}/manifests/${img.digest}`, 201, { method: 'PUT', headers: { 'content-type': img.mediaType }, body: img.manifest });
    // The collector's deletes, and then it died.
    for (const e of entries) await driver.delete(e.path);
    expect((await client.fetch(`/v2/${repo}/blobs/${layer.digest}`)).status).toBe(404);
    expect((await client.fetch(`/v2/${repo}/manifests/${img.digest}`, { headers: { accept: img.mediaType } })).status).toBe(404);
    return { repo, layer, img, unvouchedDigest, note: Buffer.from(JSON.stringify({ gen: 1, entries })) };
  }

  it('a note whose collector died is replayed by a server within seconds: what was pushed again is back, the rest stays deleted', async () => {
    const { client, driver } = await start();
    await driver.putContent(paths.gcLease(), lease(10 * 60_000, 'dead-host:4242'));
    const { repo, layer, img, unvouchedDigest, note } = await deadCollectorBatch(client, driver);
    await driver.putContent(paths.gcSweeping(), note);

    await waitFor('the sweep note to be replayed', async () => ((await objectExists(driver, paths.gcSweeping())) ? undefined : true), WAIT_MS);
    const blob = await client.fetch(`/v2/${repo}/blobs/${layer.digest}`);
    expect(blob.status).toBe(200);
    expect(Buffer.from(await blob.arrayBuffer()).equals(layer.bytes)).toBe(true);
    await client.pull(repo, img.digest);
    // Untouched since the collector's first read: its delete stands, as the collector's own re-read would have decided.
    expect(await client.headBlob(repo, unvouchedDigest)).toBe(false);
    // The server took the lease for the replay and released it.
    await waitFor('the lease to be released', async () => ((await objectExists(driver, paths.gcLease())) ? undefined : true), WAIT_MS);
    const line = await waitForLog(server!, 'the replay\'s log line', (r) => r.msg === 'replayed the sweep note of a garbage collector that died mid-batch', WAIT_MS);
    expect(line).toMatchObject({ registry: '(default)', restored: 2 });
    expect(await sweepReplays(server!)).toBe(1);
  }, 120_000);

  it('leaves a note alone while a live collector holds the lease', async () => {
    const { client, driver } = await start({ HOIST_LOG_LEVEL: 'debug' });
    const held = lease(0, 'live-host:4242');
    await driver.putContent(paths.gcLease(), held);
    const { repo, layer, note } = await deadCollectorBatch(client, driver);
    await driver.putContent(paths.gcSweeping(), note);
    // Two looks that found the note and the live lease.
    await waitFor('two looks at the live lease', () => {
      const looks = server!.records().filter((r) => r.msg === 'sweep note left alone: a collection holds the lease');
      return looks.length >= 2 ? looks : undefined;
    }, WAIT_MS);
    expect((await driver.getContent(paths.gcSweeping())).equals(note)).toBe(true);
    expect((await driver.getContent(paths.gcLease())).equals(held)).toBe(true);
    expect((await client.fetch(`/v2/${repo}/blobs/${layer.digest}`)).status).toBe(404);
    expect(await sweepReplays(server!)).toBe(0);
  }, 120_000);
}

describe('a sweep note a dead collector left, replayed by servers: fs', () => {
  const dirs: Array<Awaited<ReturnType<typeof tempDir>>> = [];
  afterEach(async () => {
    for (const d of dirs.splice(0)) await d.cleanup();
  });
  sweepNoteReplayed(async () => {
    const dir = await tempDir('hoist-sweep-watch-');
    dirs.push(dir);
    return { storage: `fs:${dir.path}`, env: {}, driver: await createDriver(`fs:${dir.path}`) };
  });
});

describeS3('a sweep note a dead collector left, replayed by servers: S3', (env) => {
  const bucket = useTestBucket(env, 'sweep-watch');
  sweepNoteReplayed(async () => {
    const url = bucket.url(randomUUID().slice(0, 8));
    return { storage: url, env: s3ServerEnv(), driver: await createDriver(url) };
  });
});
