import { GetObjectCommand } from '@aws-sdk/client-s3';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  commitUpload, expectBlob, expectStatus, openRequest, patchChunk, pathOf, pieces, rawGet, repoNamer, request, startUpload,
  uploadRange, uploadStatus, waitForLog, withQuery, type RawReply, type Reply,
} from '../helpers/http.js';
import { makeImage, pushBlob, pushImage, randomBlob, sha256 } from '../helpers/oci.js';
import {
  describeS3, headObject, keyMap, MiB, PART_BYTES as PART, partSizes, s3ServerEnv, startRecordingProxy, uploadKeys,
  uploadsOf, useTestBucket, type RecordingProxy, type S3Call, type TestBucket,
} from '../helpers/s3-http.js';
import type { Fault } from '../helpers/faulty-proxy.js';
import { listUploads, s3StorageUrl } from '../helpers/s3.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * Hoist on S3 storage, end to end over HTTP against a real S3 server (radosgw), looking at
 * the bucket directly (ListParts, ListMultipartUploads, ListObjects) and at the S3 requests
 * Hoist sends (through a recording proxy) to check what the S3 driver promises:
 *
 *   - an upload session is one multipart upload, started on its first bytes, whose non-final
 *     parts are all exactly partSize however the client cuts its PATCHes; bytes that don't
 *     fill a part wait in staging pieces, each staged once and never read back by the
 *     instance that holds the upload, never in a complete/re-create/copy cycle; a first
 *     PATCH of 5 MiB or more sets the part size, so PATCHes of that size stage nothing;
 *   - empty PATCHes and body-less PUTs store nothing; commit completes the multipart upload
 *     in place (the blob's data is the key the parts went to; nothing is copied);
 *   - two instances on one bucket can take turns on one upload and both serve the result;
 *   - cancel aborts the multipart upload; a client that hangs up can resume;
 *   - blob GETs stream with Range support, or redirect to a presigned URL (redirect=true);
 *   - S3 faults: transient ones are retried; a store that stalls, resets or answers 503 gives
 *     the client a 503 UNAVAILABLE within the driver's deadlines, and leaves the upload
 *     resumable from its last acknowledged offset;
 *   - a missing bucket or bad credentials stop start-up with a clear message.
 *
 * Every storage URL uses partSize=5MiB (S3's minimum) so multipart uploads need only a few MiB.
 */

const repo = repoNamer('s3');

/** A server error with the spec's error envelope (distribution-spec "Error Codes"). */
function expect5xx(r: Reply, what: string): void {
  const context = `${what} → HTTP ${r.status} ${r.text().slice(0, 300)}`;
  expect(r.status, context).toBeGreaterThanOrEqual(500);
  expect(r.status, context).toBeLessThan(600);
  expect(r.header('content-type') ?? '', context).toMatch(/^application\/json\b/);
  const errors = r.json<{ errors?: Array<{ code?: unknown; message?: unknown }> }>().errors;
  expect(Array.isArray(errors) && errors.length > 0, context).toBe(true);
  for (const e of errors!) {
    expect(e.code, context).toMatch(/^[A-Z_]+$/);
    expect(typeof e.message, context).toBe('string');
  }
}

/** A GET with node:http and no registry credentials (a presigned URL carries its own). */
function plainGet(url: string, headers: Record<string, string> = {}): Promise<RawReply> {
  const u = new URL(url);
  return rawGet(u.origin, `${u.pathname}${u.search}`, headers);
}

const ops = (calls: S3Call[], op: string, key?: string): S3Call[] =>
  calls.filter((c) => c.op === op && (key === undefined || c.key === key));

const startS3Server = (storage: string, extraEnv: Record<string, string> = {}): Promise<TestServer> =>
  startServer({ storage, frontend: 'node', env: { ...s3ServerEnv(), ...extraEnv } });

describeS3('Hoist on S3 storage (node front end, radosgw)', (env) => {
  const bucket: TestBucket = useTestBucket(env, 'http');
  const servers: TestServer[] = [];
  const proxies: RecordingProxy[] = [];

  async function start(storage: string, extraEnv: Record<string, string> = {}): Promise<TestServer> {
    const s = await startS3Server(storage, extraEnv);
    servers.push(s);
    return s;
  }

  async function proxy(decide?: Parameters<typeof startRecordingProxy>[2]): Promise<RecordingProxy> {
    const p = await startRecordingProxy(env, () => bucket.name, decide);
    proxies.push(p);
    return p;
  }

  afterAll(async () => {
    for (const s of servers) await s.kill();
    for (const p of proxies) await p.close();
  });

  /** What the bucket holds for one upload: its multipart uploads, their parts, its staged pieces, its data object. */
  async function look(prefix: string, uploadId: string) {
    const k = uploadKeys(prefix, uploadId);
    const c = bucket.client;
    const uploads = await uploadsOf(c, bucket.name, k.data);
    const parts = uploads.length === 1 ? await partSizes(c, bucket.name, k.data, uploads[0]!) : [];
    const tails = await keyMap(c, bucket.name, k.tailPrefix);
    const state = await headObject(c, bucket.name, k.state);
    const pieces = state
      ? (JSON.parse(await (await c.send(new GetObjectCommand({ Bucket: bucket.name, Key: k.state }))).Body!.transformToString()) as { pieces: Array<{ n: number; bytes: number }> }).pieces
      : [];
    const data = await headObject(c, bucket.name, k.data);
    return { keys: k, uploads, parts, tails, pieces, state, data };
  }

  /**
   * Every non-final part is exactly the part size: `offset` bytes stored are floor(offset/PART)
   * parts, and the rest in the staged pieces the state names, which are all the staging
   * objects there are (those that went into parts are gone).
   */
  function expectPartsAndTail(s: Awaited<ReturnType<typeof look>>, offset: number, what: string): void {
    expect(s.parts, `${what}: part sizes (ListParts) at offset ${offset}`).toEqual(Array(Math.floor(offset / PART)).fill(PART));
    const staged = Object.fromEntries(s.pieces.map((p) => [`${s.keys.tailPrefix}${p.n}`, p.bytes]));
    expect(s.tails, `${what}: staging objects at offset ${offset}`).toEqual(staged);
    expect(s.pieces.reduce((n, p) => n + p.bytes, 0), `${what}: bytes staged at offset ${offset}`).toBe(offset % PART);
    expect(s.data, `${what}: no data object before commit`).toBeUndefined();
  }

  describe('uploads through a recording proxy', () => {
    let rec: RecordingProxy;
    let server: TestServer;
    let base: string;
    const PREFIX = 'main';

    beforeAll(async () => {
      rec = await proxy();
      server = await start(bucket.url(PREFIX, { endpoint: rec.endpoint }));
      base = server.url;
    });

    it('one upload session is one multipart upload, started on its first bytes, with every non-final part exactly partSize however the PATCHes are cut', async () => {
      const name = repo('parts');
      // 1 MiB and odd-sized chunks, one exactly a part, then a streamed chunked PATCH.
      const sizes = [MiB, MiB, 777_777, 3 * MiB + 5, 1, PART, 6 * MiB + 13, 65_537, MiB, 4099, 2 * MiB + 1];
      const streamed = 3 * MiB + 1234;
      const total = sizes.reduce((a, b) => a + b, 0) + streamed;
      const data = randomBlob(total);
      const up = await startUpload(base, name);

      // POST stores no byte: no multipart upload, no data object, no staging object.
      let s = await look(PREFIX, up.id);
      expect(s.uploads, 'multipart uploads after POST').toEqual([]);
      expect(s.state, 'writer state after POST').toBeUndefined();
      expect(s.tails).toEqual({});
      expect(s.data).toBeUndefined();

      const sessionCalls: S3Call[] = [];
      let location = up.location;
      let offset = 0;
      let uploadId: string | undefined;
      let firstSeenAt: number | undefined;
      for (const [i, size] of [...sizes, streamed].entries()) {
        const chunk = data.subarray(offset, offset + size);
        const { result: r, calls } = await rec.during(() =>
          i < sizes.length
            ? patchChunk(base, location, chunk, offset)
            : request(base, location, { method: 'PATCH', body: pieces(chunk, 333_333) }),
        );
        sessionCalls.push(...calls);
        expectStatus(r, 202, `PATCH #${i} (${size} bytes at ${offset})`);
        offset += size;
        expect(r.header('range')).toBe(uploadRange(offset));
        location = pathOf(base, r.header('location')!);

        s = await look(PREFIX, up.id);
        // The multipart upload starts with the first bytes that fill a part: before that they
        // wait in the staging tail, so a blob smaller than one part (configs, small layers)
        // costs one PutObject at commit instead of create + part + complete.
        expect(s.uploads.length, `multipart uploads of ${s.keys.data} after PATCH #${i} (${offset} bytes stored)`).toBe(offset >= PART ? 1 : 0);
        if (uploadId === undefined && s.uploads.length > 0) {
          uploadId = s.uploads[0];
          firstSeenAt = offset;
        }
        if (uploadId !== undefined) expect(s.uploads, `after PATCH #${i}: the same multipart upload throughout`).toEqual([uploadId]);
        expectPartsAndTail(s, offset, `after PATCH #${i}`);
        // No complete / re-create / copy cycle: the data key is only ever sent parts.
        const cycle = calls.filter((c) => c.key === s.keys.data && ['CompleteMultipartUpload', 'AbortMultipartUpload', 'PutObject', 'GET'].includes(c.op));
        expect(cycle, `after PATCH #${i}`).toEqual([]);
      }
      expect(firstSeenAt, 'the multipart upload exists once there are bytes').toBeDefined();
      const firstFull = [...sizes, streamed].reduce<number[]>((acc, n) => [...acc, (acc.at(-1) ?? 0) + n], []).find((o) => o >= PART);
      expect(firstSeenAt, 'bytes stored when the multipart upload first appeared').toBe(firstFull);

      // Before the final PUT: exactly one CreateMultipartUpload, and each full part uploaded once
      // (no re-upload, no UploadPartCopy, which the proxy also counts as UploadPart).
      expect(ops(sessionCalls, 'CreateMultipartUpload', s.keys.data)).toHaveLength(1);
      expect(ops(sessionCalls, 'UploadPart', s.keys.data)).toHaveLength(Math.floor(total / PART));
      expect(sessionCalls.filter((c) => c.op === 'UploadPart' && c.key !== s.keys.data)).toEqual([]);
      expect(await partSizes(bucket.client, bucket.name, s.keys.data, uploadId!)).toEqual(Array(Math.floor(total / PART)).fill(PART));

      const { calls: putCalls } = await rec.during(() => commitUpload(base, location, data, name));
      // The PUT sends the staged tail as the last (short) part and completes in place.
      expect(ops(putCalls, 'UploadPart', s.keys.data)).toHaveLength(total % PART === 0 ? 0 : 1);
      expect(ops(putCalls, 'CompleteMultipartUpload', s.keys.data)).toHaveLength(1);
      expect(ops(putCalls, 'CreateMultipartUpload')).toEqual([]);
      expect(ops(putCalls, 'PutObject', s.keys.data)).toEqual([]);

      s = await look(PREFIX, up.id);
      expect(s.uploads, 'no multipart upload left after commit').toEqual([]);
      expect(s.state, 'no writer state left after commit').toBeUndefined();
      expect(s.tails, 'no staging piece left after commit').toEqual({});
      expect(s.data?.size).toBe(total);
      expect(s.data?.etag).toMatch(new RegExp(`-${Math.ceil(total / PART)}"$`));
      await expectBlob(base, name, data);
    });

    it('PATCHes that never line up with the part size leave a staging tail; no complete/re-create/copy cycle', async () => {
      const name = repo('tails');
      const chunk = 3 * MiB + 1;
      const count = 7;
      const data = randomBlob(chunk * count + 17);
      const up = await startUpload(base, name);
      let location = up.location;
      let offset = 0;
      const ids = new Set<string>();
      const all: S3Call[] = [];
      for (let i = 0; i < count; i++) {
        const { result: r, calls } = await rec.during(() => patchChunk(base, location, data.subarray(offset, offset + chunk), offset));
        all.push(...calls);
        expectStatus(r, 202, `PATCH #${i}`);
        offset += chunk;
        location = pathOf(base, r.header('location')!);
        const s = await look(PREFIX, up.id);
        for (const id of s.uploads) ids.add(id);
        expect(s.uploads.length, `multipart uploads after PATCH #${i}`).toBeLessThanOrEqual(1);
        expectPartsAndTail(s, offset, `after PATCH #${i}`);
        expect(s.state, 'the writer state is kept between PATCHes').toBeDefined();
      }
      const { keys } = await look(PREFIX, up.id);
      expect(ids.size, `multipart upload ids seen: ${[...ids].join(', ')}`).toBe(1);
      expect(ops(all, 'CreateMultipartUpload', keys.data)).toHaveLength(1);
      expect(ops(all, 'CompleteMultipartUpload')).toEqual([]);
      expect(ops(all, 'AbortMultipartUpload')).toEqual([]);
      expect(ops(all, 'UploadPart', keys.data)).toHaveLength(Math.floor(offset / PART));
      // The data key is never read back (no download-and-reupload), and never written whole.
      expect(all.filter((c) => c.key === keys.data && (c.op === 'GET' || c.op === 'PutObject'))).toEqual([]);
      // Each tail written is smaller than a part: tails are staged in their own objects.
      expect(all.filter((c) => c.op === 'PutObject' && c.key.startsWith(keys.tailPrefix)).length).toBeGreaterThan(0);

      const r = await patchChunk(base, location, data.subarray(offset), offset);
      expectStatus(r, 202);
      await commitUpload(base, pathOf(base, r.header('location')!), data, name);
      await expectBlob(base, name, data);
    });

    it('an empty PATCH or a PUT with no body uploads no part and writes no object; an upload whose bytes are all in parts completes', async () => {
      const name = repo('empty');
      const data = randomBlob(2 * PART);
      const up = await startUpload(base, name);
      const { keys } = await look(PREFIX, up.id);
      const everything = () => keyMap(bucket.client, bucket.name, `${PREFIX}/`);

      // On a fresh upload, an empty PATCH stores nothing at all.
      let before = await everything();
      const e0 = await rec.during(() => request(base, up.location, { method: 'PATCH', headers: { 'content-length': 0 } }));
      expectStatus(e0.result, 202, 'empty PATCH on a fresh upload');
      expect(e0.result.header('range')).toBe('0-0');
      expect(await everything()).toEqual(before);
      // (Every PATCH takes and drops the upload's lock, `_uploads/<id>.lock`: no write of the upload's.)
      const unlocked = (calls: S3Call[]): S3Call[] => calls.filter((c) => !c.key.endsWith(`/_uploads/${up.id}.lock`));
      expect(unlocked(e0.calls).filter((c) => ['UploadPart', 'PutObject', 'CreateMultipartUpload'].includes(c.op))).toEqual([]);
      expect(await uploadsOf(bucket.client, bucket.name, keys.data)).toEqual([]);

      // Exactly two parts' worth, in 1 MiB PATCHes: all bytes are in parts, no tail.
      let location = up.location;
      for (const [i, piece] of pieces(data, MiB).entries()) {
        const r = await patchChunk(base, location, piece, i * MiB);
        expectStatus(r, 202, `PATCH #${i}`);
        location = pathOf(base, r.header('location')!);
      }
      let s = await look(PREFIX, up.id);
      expectPartsAndTail(s, data.byteLength, 'after 10 PATCHes of 1 MiB');
      const uploadIds = s.uploads;
      expect(uploadIds).toHaveLength(1);

      // Empty PATCHes, with Content-Length: 0 and as a chunked body with no chunks.
      for (const [label, opts] of [
        ['Content-Length: 0', { headers: { 'content-length': 0 } }],
        ['chunked, no chunks', { body: [] as Uint8Array[] }],
      ] as const) {
        before = await everything();
        const { result: r, calls } = await rec.during(() => request(base, location, { method: 'PATCH', ...opts }));
        expectStatus(r, 202, `empty PATCH (${label})`);
        expect(r.header('range')).toBe(uploadRange(data.byteLength));
        const writes = unlocked(calls).filter((c) => ['UploadPart', 'PutObject', 'CreateMultipartUpload', 'CompleteMultipartUpload', 'AbortMultipartUpload', 'DELETE', 'DeleteObjects'].includes(c.op));
        expect(writes, `S3 writes during an empty PATCH (${label})`).toEqual([]);
        expect(await everything(), `objects after an empty PATCH (${label})`).toEqual(before);
        s = await look(PREFIX, up.id);
        expect(s.uploads).toEqual(uploadIds);
        expect(s.parts).toEqual([PART, PART]);
      }

      // PUT with no body: no part, no staged object; the two parts are completed as they are.
      const { calls } = await rec.during(() => commitUpload(base, location, data, name));
      expect(ops(calls, 'UploadPart'), 'parts uploaded by a body-less PUT').toEqual([]);
      expect(calls.filter((c) => c.op === 'PutObject' && (c.key === keys.data || c.key.startsWith(keys.staging))), 'data or staging objects written by a body-less PUT').toEqual([]);
      expect(ops(calls, 'CompleteMultipartUpload', keys.data)).toHaveLength(1);
      s = await look(PREFIX, up.id);
      expect(s.uploads).toEqual([]);
      expect(s.data?.size).toBe(data.byteLength);
      expect(s.data?.etag).toMatch(/-2"$/);
      await expectBlob(base, name, data);

      // PUT ?digest= with Content-Length: 0 right after the last PATCH (the common client shape),
      // on an upload whose last PATCH ended exactly on a part boundary.
      const other = repo('empty-put');
      const up2 = await startUpload(base, other);
      const one = randomBlob(PART);
      const p = await request(base, up2.location, { method: 'PATCH', body: one });
      expectStatus(p, 202);
      const put = await rec.during(() => request(base, withQuery(pathOf(base, p.header('location')!), 'digest', sha256(one)), { method: 'PUT', headers: { 'content-length': 0 } }));
      expectStatus(put.result, 201);
      expect(ops(put.calls, 'UploadPart')).toEqual([]);
      await expectBlob(base, other, one);
    });

    it('the first PATCH of a fresh upload looks for stored bytes once and removes nothing', async () => {
      const name = repo('fresh');
      const up = await startUpload(base, name);
      const { keys } = await look(PREFIX, up.id);
      const { result, calls } = await rec.during(() => request(base, up.location, { method: 'PATCH', body: randomBlob(MiB) }));
      expectStatus(result, 202, 'first PATCH');
      // One look for a committed object and one for a writer's state: both absent. Then no
      // DeleteObject of either, and no second look before the first bytes are written.
      // (The proxy names HEAD, GET and DELETE of an object by their methods.)
      expect(ops(calls, 'HEAD', keys.data)).toHaveLength(1);
      expect(ops(calls, 'GET', keys.state)).toHaveLength(1);
      expect(calls.filter((c) => (c.key === keys.data || c.key === keys.state) && c.op === 'DELETE')).toEqual([]);
      const s = await look(PREFIX, up.id);
      expect(s.pieces.reduce((n, p) => n + p.bytes, 0)).toBe(MiB);
    });

    it('commit does not copy: the blob is the key the parts were uploaded to, and no other full-size object appears', async () => {
      const name = repo('nocopy');
      const data = randomBlob(12 * MiB + 99);
      const up = await startUpload(base, name);
      const { keys } = await look(PREFIX, up.id);
      const session = await rec.during(async () => {
        let location = up.location;
        for (const [from, to] of [[0, 4 * MiB], [4 * MiB, 8 * MiB + 3], [8 * MiB + 3, data.byteLength]] as const) {
          const r = await patchChunk(base, location, data.subarray(from, to), from);
          expectStatus(r, 202);
          location = pathOf(base, r.header('location')!);
        }
        const before = await keyMap(bucket.client, bucket.name, `${PREFIX}/`);
        const put = await rec.during(() => commitUpload(base, location, data, name));
        return { before, putCalls: put.calls };
      });
      const partKeys = new Set(ops(session.calls, 'UploadPart').map((c) => c.key));
      expect([...partKeys], 'keys that received parts').toEqual([keys.data]);
      // A copy would show as PutObject or UploadPart (UploadPartCopy) to another key, or a
      // GET of the whole data.
      const { putCalls } = session.result;
      expect(putCalls.filter((c) => c.op === 'UploadPart' && c.key !== keys.data)).toEqual([]);
      expect(putCalls.filter((c) => c.op === 'GET' && c.key === keys.data)).toEqual([]);

      // The blob record names the upload's data path.
      const hex = sha256(data).slice('sha256:'.length);
      const recordKey = `${PREFIX}/blobs/sha256/${hex.slice(0, 2)}/${hex}`;
      const record = JSON.parse(await (await bucket.client.send(new GetObjectCommand({ Bucket: bucket.name, Key: recordKey }))).Body!.transformToString()) as { data: string; size: number };
      expect(record).toEqual({ data: `/blobs/data/${up.id}`, size: data.byteLength });

      const after = await keyMap(bucket.client, bucket.name, `${PREFIX}/`);
      // (Earlier tests' blobs share the prefix: only what this commit added counts.)
      const large = Object.entries(after).filter(([k, size]) => size >= data.byteLength && !(k in session.result.before)).map(([k]) => k);
      expect(large, 'new objects at least as large as the blob').toEqual([keys.data]);
      const added = Object.keys(after).filter((k) => !(k in session.result.before)).sort();
      expect(added.filter((k) => k.startsWith(`${PREFIX}/blobs/data/`)), 'new data objects').toEqual([keys.data]);
      expect(added).toEqual(expect.arrayContaining([recordKey, keys.data, `${PREFIX}/repositories/${name}/_layers/sha256/${hex}`]));
      // Besides the data, only the registry's small records (blob record, link, markers).
      const bigRecords = added.filter((k) => k !== keys.data && after[k]! > 64 * 1024).map((k) => `${k} (${after[k]} bytes)`);
      expect(bigRecords, 'new objects other than the data larger than 64 KiB').toEqual([]);
      expect((await headObject(bucket.client, bucket.name, keys.data))?.etag).toMatch(/-3"$/);
      await expectBlob(base, name, data);

      // A monolithic push (POST ?digest= with the body) also lands in one place only.
      const mono = randomBlob(11 * MiB + 7);
      const other = repo('nocopy-mono');
      const r = await request(base, `/v2/${other}/blobs/uploads/?digest=${sha256(mono)}`, { method: 'POST', body: mono });
      expectStatus(r, 201);
      const all = await keyMap(bucket.client, bucket.name, `${PREFIX}/`);
      expect(Object.entries(all).filter(([, size]) => size === mono.byteLength)).toHaveLength(1);
      await expectBlob(base, other, mono);
    });

    it('cancel (DELETE) aborts the multipart upload and removes its staging objects', async () => {
      const name = repo('cancel');
      const up = await startUpload(base, name);
      const r = await request(base, up.location, { method: 'PATCH', body: randomBlob(PART + 12_345) });
      expectStatus(r, 202);
      let s = await look(PREFIX, up.id);
      expect(s.uploads).toHaveLength(1);
      expect(s.state).toBeDefined();
      expect(Object.values(s.tails)).toEqual([12_345]);
      const recordKey = `${PREFIX}/repositories/${name}/_uploads/${up.id}`;
      expect(await headObject(bucket.client, bucket.name, recordKey)).toBeDefined();

      const d = await rec.during(() => request(base, up.location, { method: 'DELETE' }));
      expectStatus(d.result, 204);
      expect(ops(d.calls, 'AbortMultipartUpload', s.keys.data)).toHaveLength(1);
      s = await look(PREFIX, up.id);
      expect(s.uploads).toEqual([]);
      expect(s.state).toBeUndefined();
      expect(s.tails).toEqual({});
      expect(s.data).toBeUndefined();
      expect(await headObject(bucket.client, bucket.name, recordKey)).toBeUndefined();
      const leftovers = Object.keys(await keyMap(bucket.client, bucket.name, `${PREFIX}/`)).filter((k) => k.includes(up.id));
      expect(leftovers).toEqual([]);
      expect((await listUploads(bucket.client, bucket.name, `${PREFIX}/`)).filter((u) => u.key.includes(up.id))).toEqual([]);
      expect((await request(base, up.location)).status).toBe(404);

      // An upload cancelled before any byte leaves nothing either.
      const empty = await startUpload(base, name);
      expectStatus(await request(base, empty.location, { method: 'DELETE' }), 204);
      expect(Object.keys(await keyMap(bucket.client, bucket.name, `${PREFIX}/`)).filter((k) => k.includes(empty.id))).toEqual([]);
    });

    it('a client that disconnects mid-PATCH leaves a consistent upload it can resume and commit', async () => {
      const name = repo('disconnect');
      const data = randomBlob(14 * MiB + 11);
      const { location, id } = await startUpload(base, name);
      const o = openRequest(base, location, {
        method: 'PATCH',
        headers: { 'content-type': 'application/octet-stream', 'content-length': data.byteLength },
      });
      let sent = 0;
      for (const piece of pieces(data.subarray(0, 7 * MiB + 3), 256 * 1024)) {
        await o.write(piece);
        sent += piece.byteLength;
      }
      await sleep(300);
      o.req.destroy();
      await expect(o.reply).rejects.toThrow();
      await waitForLog(server, 'the aborted PATCH to finish', (l) => l.msg === 'request' && l.method === 'PATCH' && l.uploadId === id, 30_000);
      const offset = await uploadStatus(base, location);
      expect(offset).toBeLessThanOrEqual(sent);
      expect(await uploadStatus(base, location)).toBe(offset);
      const s = await look(PREFIX, id);
      expect(s.uploads.length).toBeLessThanOrEqual(1);
      expectPartsAndTail(s, offset, 'after the disconnect');

      const r = await patchChunk(base, location, data.subarray(offset), offset);
      expectStatus(r, 202, `PATCH from ${offset}`);
      expect(r.header('range')).toBe(uploadRange(data.byteLength));
      await commitUpload(base, pathOf(base, r.header('location')!), data, name);
      await expectBlob(base, name, data);
    });

    it('1 MiB PATCHes send each byte to S3 at most twice and never read staged bytes back', async () => {
      const name = repo('small-patches');
      const data = randomBlob(12 * MiB + 4321);
      const up = await startUpload(base, name);
      const { keys } = await look(PREFIX, up.id);
      const { calls } = await rec.during(async () => {
        let location = up.location;
        for (const [i, piece] of pieces(data, MiB).entries()) {
          const r = await patchChunk(base, location, piece, i * MiB);
          expectStatus(r, 202, `PATCH #${i}`);
          location = pathOf(base, r.header('location')!);
        }
        await commitUpload(base, location, data, name);
      });
      const mine = calls.filter((c) => c.key === keys.data || c.key.startsWith(keys.tailPrefix));
      const sent = mine.filter((c) => c.op === 'UploadPart' || c.op === 'PutObject').reduce((n, c) => n + c.bytes, 0);
      expect(sent / data.byteLength, `bytes sent to S3 for the data, over the blob's ${data.byteLength}`).toBeLessThanOrEqual(2.2);
      expect(mine.filter((c) => c.op === 'GET' && c.key.startsWith(keys.tailPrefix)), 'staged pieces read back').toEqual([]);
      // Each piece was written once.
      const written = mine.filter((c) => c.op === 'PutObject' && c.key.startsWith(keys.tailPrefix)).map((c) => c.key);
      expect(new Set(written).size).toBe(written.length);
      await expectBlob(base, name, data);
    });

    it('a first PATCH of 5 MiB or more sets the part size: PATCHes of that size are parts, and only a short last one is staged', async () => {
      // Part buffers of 8 MiB; PATCHes of 6 MiB.
      const hinted = await start(bucket.url('hinted', { endpoint: rec.endpoint, partSize: '8MiB' }));
      const name = repo('hinted');
      const data = randomBlob(4 * 6 * MiB + MiB + 1);
      const up = await startUpload(hinted.url, name);
      const keys = uploadKeys('hinted', up.id);
      const { calls } = await rec.during(async () => {
        let location = up.location;
        for (let from = 0; from < data.byteLength; from += 6 * MiB) {
          const r = await patchChunk(hinted.url, location, data.subarray(from, from + 6 * MiB), from);
          expectStatus(r, 202, `PATCH at ${from}`);
          location = pathOf(hinted.url, r.header('location')!);
        }
        expect(await partSizes(bucket.client, bucket.name, keys.data, (await uploadsOf(bucket.client, bucket.name, keys.data))[0]!)).toEqual(Array(4).fill(6 * MiB));
        await commitUpload(hinted.url, location, data, name);
      });
      expect(ops(calls, 'UploadPart', keys.data).map((c) => c.bytes)).toEqual([...Array(4).fill(6 * MiB), MiB + 1]);
      expect(calls.filter((c) => c.op === 'PutObject' && c.key.startsWith(keys.tailPrefix)).map((c) => c.bytes)).toEqual([MiB + 1]);
      expect((await headObject(bucket.client, bucket.name, keys.data))?.etag).toMatch(/-5"$/);
      await expectBlob(hinted.url, name, data);
      expect(await hinted.stop()).toBe(0);
    });

    it('GET streams the blob from S3, with Range reads across part boundaries', async () => {
      const name = repo('range');
      const data = randomBlob(3 * PART + 77);
      const up = await startUpload(base, name);
      const r = await request(base, up.location, { method: 'PATCH', body: pieces(data, 1_000_003) });
      expectStatus(r, 202);
      await commitUpload(base, pathOf(base, r.header('location')!), data, name);
      await expectBlob(base, name, data);
      const digest = sha256(data);
      const size = data.byteLength;
      for (const [range, first, last] of [
        [`bytes=${PART - 10}-${2 * PART + 10}`, PART - 10, 2 * PART + 10],
        ['bytes=0-0', 0, 0],
        [`bytes=${3 * PART}-`, 3 * PART, size - 1],
        ['bytes=-100', size - 100, size - 1],
        [`bytes=${size - 5}-${size + 1000}`, size - 5, size - 1],
      ] as const) {
        const g = await request(base, `/v2/${name}/blobs/${digest}`, { headers: { range } });
        expectStatus(g, 206, range);
        expect(g.header('content-range')).toBe(`bytes ${first}-${last}/${size}`);
        expect(g.header('content-length')).toBe(String(last - first + 1));
        expect(sha256(g.body), range).toBe(sha256(data.subarray(first, last + 1)));
      }
      const bad = await request(base, `/v2/${name}/blobs/${digest}`, { headers: { range: `bytes=${size}-` } });
      expect(bad.status).toBe(416);
      expect(bad.header('content-range')).toBe(`bytes */${size}`);
      const h = await request(base, `/v2/${name}/blobs/${digest}`, { method: 'HEAD' });
      expectStatus(h, 200);
      expect(h.header('content-length')).toBe(String(size));
      expect(h.header('docker-content-digest')).toBe(digest);
    });

    it('with redirect=true, GET answers 307 to a presigned URL that serves the exact bytes, Range included', async () => {
      const name = repo('redirect');
      const data = randomBlob(2 * PART + 4321);
      const digest = sha256(data);
      await pushBlob(base, name, data);
      // A second instance on the same prefix, talking to S3 directly, with redirects on.
      const redirecting = await start(bucket.url(PREFIX, { redirect: 'true' }));
      const g = await request(redirecting.url, `/v2/${name}/blobs/${digest}`);
      expectStatus(g, 307);
      expect(g.header('docker-content-digest')).toBe(digest);
      const location = g.header('location') ?? '';
      const url = new URL(location);
      expect(`${url.protocol}//${url.host}`).toBe(new URL(env.endpoint).origin);
      expect(url.searchParams.get('X-Amz-Signature')).toBeTruthy();
      expect(url.pathname).toMatch(new RegExp(`^/${bucket.name}/${PREFIX}/blobs/data/[0-9a-f-]{36}$`));

      const full = await plainGet(location);
      expect(full.status).toBe(200);
      expect(full.body.byteLength).toBe(data.byteLength);
      expect(sha256(full.body)).toBe(digest);
      const first = PART - 3;
      const last = PART + 100;
      const part = await plainGet(location, { range: `bytes=${first}-${last}` });
      expect(part.status).toBe(206);
      expect(part.headers['content-range']).toBe(`bytes ${first}-${last}/${data.byteLength}`);
      expect(part.body.equals(data.subarray(first, last + 1))).toBe(true);

      // A ranged GET is redirected too; the client sends its Range to the presigned URL.
      const ranged = await request(redirecting.url, `/v2/${name}/blobs/${digest}`, { headers: { range: 'bytes=0-9' } });
      expectStatus(ranged, 307);
      const followed = await plainGet(ranged.header('location')!, { range: 'bytes=0-9' });
      expect(followed.status).toBe(206);
      expect(followed.body.equals(data.subarray(0, 10))).toBe(true);
      // HEAD answers from the registry (src/http/handlers.ts getBlob): nothing to fetch, so no redirect.
      const h = await request(redirecting.url, `/v2/${name}/blobs/${digest}`, { method: 'HEAD' });
      expectStatus(h, 200, 'HEAD with redirect=true');
      expect(h.header('content-length')).toBe(String(data.byteLength));
      expect(h.header('docker-content-digest')).toBe(digest);
      // Unknown blobs are still 404, not a redirect to nothing.
      expect((await request(redirecting.url, `/v2/${name}/blobs/${sha256('nope')}`)).status).toBe(404);
      expect(await redirecting.stop()).toBe(0);
    });
  });

  describe('two instances on one bucket', () => {
    let a: TestServer;
    let b: TestServer;
    const PREFIX = 'shared';

    beforeAll(async () => {
      [a, b] = await Promise.all([start(bucket.url(PREFIX)), start(bucket.url(PREFIX))]);
    });

    it('alternating the PATCHes of one upload between them commits a blob both then serve', async () => {
      const name = repo('two');
      const sizes = [MiB + 3, 6 * MiB, 300 * 1024, 7 * MiB + 5, 11, PART, 2 * MiB + 999];
      const data = randomBlob(sizes.reduce((x, y) => x + y, 0));
      const up = await startUpload(a.url, name);
      let location = up.location;
      let offset = 0;
      let uploadId: string | undefined;
      for (const [i, size] of sizes.entries()) {
        const s = i % 2 === 0 ? a : b;
        const r = await patchChunk(s.url, location, data.subarray(offset, offset + size), offset);
        expectStatus(r, 202, `PATCH #${i} on ${s === a ? 'A' : 'B'}`);
        offset += size;
        expect(r.header('range')).toBe(uploadRange(offset));
        location = pathOf(s.url, r.header('location')!);
        // The other instance sees the same offset.
        expect(await uploadStatus((s === a ? b : a).url, location)).toBe(offset);
        const st = await look(PREFIX, up.id);
        expectPartsAndTail(st, offset, `after PATCH #${i}`);
        if (st.uploads.length > 0) {
          uploadId ??= st.uploads[0];
          expect(st.uploads, 'one multipart upload, whichever instance writes').toEqual([uploadId]);
        }
      }
      // Commit on the instance that did not write last.
      const committer = sizes.length % 2 === 0 ? b : a;
      const other = committer === a ? b : a;
      await commitUpload(committer.url, location, data, name);
      await expectBlob(a.url, name, data);
      await expectBlob(b.url, name, data);
      const h = await request(other.url, `/v2/${name}/blobs/${sha256(data)}`, { method: 'HEAD' });
      expectStatus(h, 200);
      expect(h.header('content-length')).toBe(String(data.byteLength));
      expect((await look(PREFIX, up.id)).uploads).toEqual([]);
    });

    it('POST on one, PATCH on the other: status on the first shows the right Range; streamed PATCH, PUT and cancel work across them', async () => {
      const name = repo('cross');
      const data = randomBlob(9 * MiB + 5);
      const up = await startUpload(a.url, name);
      const split = 2 * MiB + 7;
      const r1 = await patchChunk(b.url, up.location, data.subarray(0, split), 0);
      expectStatus(r1, 202);
      const s = await request(a.url, up.location);
      expectStatus(s, 204);
      expect(s.header('range')).toBe(uploadRange(split));
      expect(s.header('docker-upload-uuid')).toBe(up.id);
      // A streamed PATCH (no Content-Range) on A continues where B left off.
      const r2 = await request(a.url, up.location, { method: 'PATCH', body: pieces(data.subarray(split, 6 * MiB), 500_001) });
      expectStatus(r2, 202);
      expect(r2.header('range')).toBe(uploadRange(6 * MiB));
      expect(await uploadStatus(b.url, up.location)).toBe(6 * MiB);
      // An out-of-order chunk on B is refused with A's offset.
      const bad = await patchChunk(b.url, up.location, data.subarray(0, 10), 0);
      expect(bad.status).toBe(416);
      expect(bad.header('range')).toBe(uploadRange(6 * MiB));
      // The last chunk rides on the PUT, on B.
      const put = await request(b.url, withQuery(up.location, 'digest', sha256(data)), {
        method: 'PUT',
        headers: { 'content-range': `${6 * MiB}-${data.byteLength - 1}` },
        body: data.subarray(6 * MiB),
      });
      expectStatus(put, 201);
      await expectBlob(a.url, name, data);
      await expectBlob(b.url, name, data);

      // Cancel on one instance ends the upload for both.
      const gone = await startUpload(b.url, name);
      expectStatus(await patchChunk(a.url, gone.location, randomBlob(PART + 1), 0), 202);
      expectStatus(await request(b.url, gone.location, { method: 'DELETE' }), 204);
      expect((await request(a.url, gone.location)).status).toBe(404);
      expect((await look(PREFIX, gone.id)).uploads).toEqual([]);
    });
  });

  describe('S3 faults', () => {
    it('transient faults (503 SlowDown, 500, connection resets) are retried: pushes succeed', async () => {
      let faulting = false;
      let n = 0;
      const lastFaulted = new Set<string>();
      const perOp = new Map<string, number>();
      // SlowDown is retried after a longer backoff (the SDK's throttling delay): fewer of those.
      const kinds = ['internal', 'reset', 'slowdown', 'internal', 'reset', 'internal'] as const;
      // The 1st, 4th, 7th... request of each kind fails once (its retry passes), whatever it
      // is; the SDK's retries must get each through.
      const rec = await proxy((op, _n, url) => {
        if (!faulting) return undefined;
        const id = `${op} ${url.pathname}${url.search}`;
        if (lastFaulted.delete(id)) return undefined; // the retry of a faulted request passes
        const k = (perOp.get(op) ?? 0) + 1;
        perOp.set(op, k);
        if (k % 3 !== 1) return undefined;
        lastFaulted.add(id);
        return kinds[n++ % kinds.length];
      });
      const server = await start(bucket.url('faults', { endpoint: rec.endpoint }));
      faulting = true;

      const name = repo('faults');
      const data = randomBlob(13 * MiB + 77);
      const up = await startUpload(server.url, name);
      let location = up.location;
      for (const [from, to] of [[0, MiB + 1], [MiB + 1, 7 * MiB], [7 * MiB, data.byteLength]] as const) {
        const r = await patchChunk(server.url, location, data.subarray(from, to), from);
        expectStatus(r, 202, `PATCH ${from}-${to - 1}`);
        location = pathOf(server.url, r.header('location')!);
      }
      await commitUpload(server.url, location, data, name);
      const mono = randomBlob(300_001);
      await pushBlob(server.url, name, mono);
      await pushImage(server.url, name, 'v1', makeImage({ layerSizesBytes: [4096, PART + 3] }));
      faulting = false;

      const faulted = rec.calls.filter((c) => c.fault);
      for (const kind of ['slowdown', 'internal', 'reset']) {
        expect(faulted.filter((c) => c.fault === kind).length, `${kind} faults injected`).toBeGreaterThan(0);
      }
      for (const op of ['UploadPart', 'PutObject', 'CreateMultipartUpload', 'CompleteMultipartUpload', 'GET']) {
        expect(faulted.filter((c) => c.op === op).length, `faults injected into ${op}`).toBeGreaterThan(0);
      }
      await expectBlob(server.url, name, data);
      await expectBlob(server.url, name, mono);
      expectStatus(await request(server.url, `/v2/${name}/manifests/v1`), 200);
      // Nothing left half-done in the bucket.
      expect(await listUploads(bucket.client, bucket.name, 'faults/')).toEqual([]);
      expect(Object.keys(await keyMap(bucket.client, bucket.name, 'faults/_s3/'))).toEqual([]);
      expect(await server.stop()).toBe(0);
    });

    it('a store that stalls, resets or answers 503 gives the client 503 UNAVAILABLE; the upload resumes from its last acknowledged offset', async () => {
      let fault: Fault;
      const rec = await proxy(() => fault);
      // 1 s without progress fails a store request (retries within 2 s), so the test is quick.
      const server = await start(bucket.url('deadline', { endpoint: rec.endpoint, timeout: '1s' }));
      for (const kind of ['stall', 'reset', 'unavailable'] as const) {
        const name = repo(`deadline-${kind}`);
        const data = randomBlob(13 * MiB + 5);
        const up = await startUpload(server.url, name);
        const first = 6 * MiB + 1;
        expectStatus(await patchChunk(server.url, up.location, data.subarray(0, first), 0), 202);

        fault = kind;
        const failed = await patchChunk(server.url, up.location, data.subarray(first, first + 6 * MiB), first);
        expect5xx(failed, `PATCH while the store ${kind}s`);
        expect(failed.status, `PATCH while the store ${kind}s`).toBe(503);
        expect(failed.json<{ errors: Array<{ code: string }> }>().errors[0]!.code).toBe('UNAVAILABLE');
        const st = await request(server.url, up.location);
        expect(st.status, `upload status while the store ${kind}s`).toBe(503);
        fault = undefined;

        expect(await uploadStatus(server.url, up.location), `offset after the store ${kind}ed`).toBe(first);
        const r = await patchChunk(server.url, up.location, data.subarray(first), first);
        expectStatus(r, 202, `PATCH from ${first} after the store ${kind}ed`);
        await commitUpload(server.url, up.location, data, name);
        await expectBlob(server.url, name, data);
      }
      expect(await server.stop()).toBe(0);
    });

    // The data was stored and its digest checked, and the blob record or the repository's link
    // then failed: the 503 said "try again", but the upload was already gone (404
    // BLOB_UPLOAD_UNKNOWN to the retry) and the client had to push the blob all over again.
    // Kept only while no blob record names the data: once one does, the data is the blob's,
    // and a cancel (or a PATCH, a wrong digest, a sweep) of the upload would delete it under
    // every repository linked to it (found by probing the first version of this mend).
    it('a PUT whose blob record or link the store fails answers 503; the same PUT again links the blob, unless a record names the data already', async () => {
      let failing: ((key: string) => boolean) | undefined;
      const rec = await proxy((op, _n, url) => (op === 'PutObject' && failing?.(decodeURIComponent(url.pathname)) ? 'unavailable' : undefined));
      const server = await start(bucket.url('adopt-fails', { endpoint: rec.endpoint, timeout: '1s' }));
      const record = (key: string): boolean => /\/blobs\/sha256\/[0-9a-f]{2}\/[0-9a-f]{64}$/.test(key);
      const link = (key: string): boolean => key.includes('/_layers/');
      // A blob another repository holds already: the upload's data is a duplicate, deleted once linked.
      const shared = randomBlob(6 * MiB + 3);
      await pushBlob(server.url, repo('adopt-fails-first'), shared);
      const failedPut = async (label: string, fails: (key: string) => boolean, data: Buffer): Promise<{ name: string; location: string }> => {
        const name = repo('adopt-fails');
        const up = await startUpload(server.url, name);
        expectStatus(await patchChunk(server.url, up.location, data, 0), 202);
        failing = fails;
        const failed = await request(server.url, withQuery(up.location, 'digest', sha256(data)), { method: 'PUT' });
        expect(failed.status, `PUT while the ${label} fails`).toBe(503);
        failing = undefined;
        return { name, location: up.location };
      };
      for (const [label, fails, data] of [['record', record, randomBlob(6 * MiB + 1)], ['link of a duplicate', link, shared]] as const) {
        const up = await failedPut(label, fails, data);
        expect(await uploadStatus(server.url, up.location), `the upload after its ${label} failed`).toBe(data.length);
        await commitUpload(server.url, up.location, data, up.name);
        await expectBlob(server.url, up.name, data);
      }
      // The record went in, the link did not: the data is the blob's now.
      const fresh = randomBlob(6 * MiB + 2);
      const up = await failedPut('link', link, fresh);
      expect((await request(server.url, up.location)).status, 'the upload once a record names its data').toBe(404);
      const other = repo('adopt-fails-other');
      await pushBlob(server.url, other, fresh);
      expect((await request(server.url, up.location, { method: 'DELETE' })).status).toBe(404);
      await expectBlob(server.url, other, fresh);
      await pushBlob(server.url, up.name, fresh);
      await expectBlob(server.url, up.name, fresh);
      expect(await server.stop()).toBe(0);
    });

    it('during an S3 outage the client gets a 5xx OCI error; after it heals the upload resumes and commits', async () => {
      let outage = false;
      // 500 InternalError (the SDK retries it with short backoff; SlowDown's is longer).
      const rec = await proxy(() => (outage ? 'internal' : undefined));
      const server = await start(bucket.url('outage', { endpoint: rec.endpoint }));
      const name = repo('outage');
      const data = randomBlob(20 * MiB + 9);
      const up = await startUpload(server.url, name);
      const first = 6 * MiB + 1;
      const r1 = await patchChunk(server.url, up.location, data.subarray(0, first), 0);
      expectStatus(r1, 202);

      // Everything fails: a whole PATCH, the status, and a PUT.
      outage = true;
      const failed = await patchChunk(server.url, up.location, data.subarray(first, first + 6 * MiB), first).catch((err: Error) => err);
      expect(failed, 'the client gets a reply, not a dropped connection').not.toBeInstanceOf(Error);
      expect5xx(failed as Reply, 'PATCH during the outage');
      expect5xx(await request(server.url, up.location), 'GET upload status during the outage');
      expect5xx(await request(server.url, withQuery(up.location, 'digest', sha256(data)), { method: 'PUT' }), 'PUT during the outage');
      outage = false;

      expect(await uploadStatus(server.url, up.location), 'status after the outage').toBe(first);
      let st = await look('outage', up.id);
      expectPartsAndTail(st, first, 'after the outage');
      expect(st.uploads).toHaveLength(1);

      // The outage starts in the middle of a PATCH, once the server is writing parts.
      const mid = first + 7 * MiB;
      const o = openRequest(server.url, up.location, {
        method: 'PATCH',
        headers: { 'content-range': `${first}-${mid - 1}`, 'content-length': mid - first },
      });
      let sent = 0;
      let i = 0;
      for (const piece of pieces(data.subarray(first, mid), 512 * 1024)) {
        if (i++ === 4) outage = true; // 2 MiB in: the first full part is still to come
        try {
          await o.write(piece);
        } catch {
          break;
        }
        sent += piece.byteLength;
      }
      o.req.end();
      // The server answers 5xx; whether the client reads it depends on whether the reset of
      // the connection it was still writing to arrives first. The server's log says what it sent.
      const reply = await o.reply.catch(() => undefined);
      if (reply) expect5xx(reply, 'PATCH cut by the outage');
      const cut = await waitForLog(server, 'the PATCH cut by the outage to finish', (l) => l.msg === 'request' && l.method === 'PATCH' && l.uploadId === up.id && l.status !== 202, 60_000);
      expect(cut.status, 'status the server sent for the PATCH cut by the outage').toBeGreaterThanOrEqual(500);
      expect(cut.status).toBeLessThan(600);
      outage = false;

      const offset = await uploadStatus(server.url, up.location);
      expect(offset).toBeGreaterThanOrEqual(first);
      expect(offset).toBeLessThanOrEqual(first + sent);
      st = await look('outage', up.id);
      expectPartsAndTail(st, offset, 'after the mid-PATCH outage');
      expect(st.uploads.length).toBeLessThanOrEqual(1);
      const r = await patchChunk(server.url, up.location, data.subarray(offset), offset);
      expectStatus(r, 202, `PATCH from ${offset} after the outage`);
      await commitUpload(server.url, up.location, data, name);
      await expectBlob(server.url, name, data);
      expect(await listUploads(bucket.client, bucket.name, 'outage/')).toEqual([]);
      expect(await server.stop()).toBe(0);
    });
  });

  describe('start-up', () => {
    it('a missing bucket stops start-up with a message naming the bucket', async () => {
      const missing = `hoist-missing-${Date.now().toString(36)}`;
      const err = await startS3Server(s3StorageUrl(env, missing, 'x')).then(() => undefined, (e: Error) => e);
      expect(err?.message).toMatch(/exited with code [1-9]/);
      expect(err?.message).toContain(`S3 bucket "${missing}" does not exist`);
    });

    it('bad credentials stop start-up with a message naming the credentials', async () => {
      const err = await startS3Server(bucket.url('creds'), { AWS_SECRET_ACCESS_KEY: 'not-the-secret' }).then(() => undefined, (e: Error) => e);
      expect(err?.message).toMatch(/exited with code [1-9]/);
      expect(err?.message).toMatch(/credentials/i);
      expect(err?.message).toContain(bucket.name);
      const unknown = await startS3Server(bucket.url('creds'), { AWS_ACCESS_KEY_ID: 'nobody' }).then(() => undefined, (e: Error) => e);
      expect(unknown?.message).toMatch(/exited with code [1-9]/);
      expect(unknown?.message).toMatch(/credentials/i);
    });
  });
});
