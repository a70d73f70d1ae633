import { createHash, randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectError, request, socketExchange, tempDir } from '../helpers/http.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * A pull-through cache in front of an upstream that misbehaves, found by probing (2026-12-02):
 *
 * - a blob redirected to another host whose 401 named its own token service: the cache sent
 *   the upstream's username and password there, and kept asking that realm for every later
 *   token, of every repository;
 * - one repository's 401 naming a token service that fails made every uncached pull through
 *   the upstream 503, repositories needing no credentials included, until a restart;
 * - a blob without a Content-Length was fetched without end (8.4 GB before the probe stopped
 *   it), its client waiting without a status line; one announced over uploads.maxBlobBytes was
 *   streamed and then cut;
 * - a manifest over manifests.maxBytes got 400 MANIFEST_INVALID, the client's fault by its
 *   code; it is the upstream's (503).
 *
 * The upstream here is a small HTTP server of the test's own (a real one cannot be made to
 * misbehave so), and so is the host it redirects to.
 */

const USER = 'mirror-user';
const PASSWORD = 'mirror-secret';
const BASIC = `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}`;

const blob = randomBytes(64 * 1024);
const digest = `sha256:${createHash('sha256').update(blob).digest('hex')}`;
const zipped = randomBytes(32 * 1024);
const zippedDigest = `sha256:${createHash('sha256').update(zipped).digest('hex')}`;
/** Served for this digest: other bytes of the same length (one flipped). */
const told = randomBytes(8 * 1024);
const toldDigest = `sha256:${createHash('sha256').update(told).digest('hex')}`;
const big = randomBytes(3 * 1024 * 1024);
const bigDigest = `sha256:${createHash('sha256').update(big).digest('hex')}`;

/** An index of nothing: a manifest the cache stores without any blob. */
const index = Buffer.from('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}');
const indexDigest = `sha256:${createHash('sha256').update(index).digest('hex')}`;
/** What the upstream serves as `junk/*:v1` once `junkTag` says so: a 200 that is no manifest. */
const JUNK = Buffer.from('<html>not a manifest</html>');
const junkDigest = `sha256:${createHash('sha256').update(JUNK).digest('hex')}`;
let junkTag: 'good' | 'junk' = 'good';
/** The upstream's tag `moving/img:v1`: there, deleted, or the upstream down. */
let movingTag: 'there' | 'deleted' | 'down' = 'there';
/** The length of the tokens the upstream's token service hands out for `bigtoken/*`. */
let tokenChars = 100;

let upstream: http.Server;
let elsewhere: http.Server;
/** Authorization headers the other host was sent, by path. */
const elsewhereSaw: string[] = [];
let mirror: TestServer;
/** The same cache on the uWS front end. */
let uwsMirror: TestServer;
let cleanup: () => Promise<void>;
/** The node front end's cache storage (fs). */
let dir: string;

const portOf = (s: http.Server): number => (s.address() as AddressInfo).port;

async function listen(handler: http.RequestListener): Promise<http.Server> {
  // Headers as large as a huge token: the upstream must not refuse what the cache sends.
  const s = http.createServer({ maxHeaderSize: 1024 * 1024 }, handler);
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  return s;
}

beforeAll(async () => {
  elsewhere = await listen((req, res) => {
    elsewhereSaw.push(`${req.url} ${req.headers.authorization ?? '-'}`);
    if (req.url?.startsWith('/token')) {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token: 'from-elsewhere' }));
      return;
    }
    res.writeHead(401, { 'www-authenticate': `Bearer realm="http://127.0.0.1:${portOf(elsewhere)}/token",service="elsewhere"` }).end();
  });
  upstream = await listen((req, res) => {
    const url = req.url ?? '';
    const auth = req.headers.authorization;
    if (url === '/v2/' || url === '/v2') {
      res.writeHead(200).end('{}');
    } else if (url.startsWith('/v2/private/')) {
      // Wants the configured credentials, as Basic (so that the cache sends them from now on).
      if (auth !== BASIC) {
        res.writeHead(401, { 'www-authenticate': 'Basic realm="upstream"' }).end();
        return;
      }
      res.writeHead(302, { location: `http://127.0.0.1:${portOf(elsewhere)}/cdn/${digest}` }).end();
    } else if (url.startsWith('/token-of?')) {
      const token = 't'.repeat(Number(new URL(url, 'http://x').searchParams.get('chars')));
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token, access_token: token, expires_in: 300 }));
    } else if (url.startsWith('/v2/bigtoken/')) {
      if (!/^Bearer t+$/.test(auth ?? '')) {
        res.writeHead(401, { 'www-authenticate': `Bearer realm="http://127.0.0.1:${portOf(upstream)}/token-of?chars=${tokenChars}",service="up"` }).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/vnd.oci.image.index.v1+json', 'docker-content-digest': indexDigest, 'content-length': String(index.byteLength) });
      res.end(req.method === 'HEAD' ? undefined : index);
    } else if (url.startsWith('/v2/manytags/img/tags/list')) {
      // Ignores n and last, and sorts nothing (docker-registry 2.8.2 ignores n too).
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ name: 'manytags/img', tags: ['v3', 'latest', 'V1', '_x', 'v10', 'v2', 'v3'] }));
    } else if (url.startsWith('/v2/pagedtags/img/tags/list')) {
      // Pages of three whether or not n is asked for (Quay's way; the spec lets a registry).
      const after = new URL(url, 'http://x').searchParams.get('last');
      const tags = ['a', 'b', 'c', 'd', 'e'].filter((t) => after === null || t > after).slice(0, 3);
      const more = tags.length === 3 && tags[2] !== 'e';
      res.writeHead(200, { 'content-type': 'application/json', ...(more ? { link: `</v2/pagedtags/img/tags/list?n=3&last=${tags[2]}>; rel="next"` } : {}) });
      res.end(JSON.stringify({ name: 'pagedtags/img', tags }));
    } else if (url.startsWith('/v2/poison/')) {
      res.writeHead(401, { 'www-authenticate': `Bearer realm="http://127.0.0.1:${portOf(upstream)}/no-token-here",service="up"` }).end();
    } else if (url === `/v2/free/img/blobs/${digest}`) {
      res.writeHead(200, { 'content-length': String(blob.byteLength), 'content-type': 'application/octet-stream' }).end(blob);
    } else if (url === `/v2/unsized/img/blobs/${digest}`) {
      // Chunked, no Content-Length: it could go on for ever.
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.write(blob.subarray(0, 1000));
      setTimeout(() => res.end(blob.subarray(1000)), 50);
    } else if (url === `/v2/gzipped/img/blobs/${zippedDigest}`) {
      // Re-encoded although the cache asked for identity: the length is the gzip's.
      const gz = gzipSync(zipped);
      res.writeHead(200, { 'content-encoding': 'gzip', 'content-length': String(gz.byteLength) }).end(gz);
    } else if (url.startsWith('/v2/liar/img/blobs/')) {
      const lie = Buffer.from(told);
      lie[0] = lie[0]! ^ 1;
      res.writeHead(200, { 'content-length': String(lie.byteLength) }).end(lie);
    } else if (url === `/v2/big/img/blobs/${bigDigest}`) {
      res.writeHead(200, { 'content-length': String(big.byteLength) }).end(big);
    } else if (url === '/v2/moving/img/manifests/v1') {
      if (movingTag === 'down') res.writeHead(503).end();
      else if (movingTag === 'deleted') res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"MANIFEST_UNKNOWN"}]}');
      else {
        res.writeHead(200, { 'content-type': 'application/vnd.oci.image.index.v1+json', 'docker-content-digest': indexDigest, 'content-length': String(index.byteLength) });
        res.end(req.method === 'HEAD' ? undefined : index);
      }
    } else if (url === '/v2/junk/img/manifests/v1' || url === '/v2/junk/other/manifests/v1') {
      const good = junkTag === 'good' && url.includes('/img/');
      const bytes = good ? index : JUNK;
      res.writeHead(200, {
        'content-type': 'application/vnd.oci.image.index.v1+json',
        'docker-content-digest': good ? indexDigest : junkDigest,
        'content-length': String(bytes.byteLength),
      });
      res.end(req.method === 'HEAD' ? undefined : bytes);
    } else if (url === '/v2/huge/img/manifests/v1') {
      res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'content-length': String(5 * 1024 * 1024) });
      res.end(Buffer.alloc(5 * 1024 * 1024, 0x20));
    } else {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"NAME_UNKNOWN"}]}');
    }
  });
  ({ path: dir, cleanup } = await tempDir('hoist-hostile-upstream-'));
  uwsMirror = await startServer({
    storage: `fs:${dir}/uws`,
    frontend: 'uws',
    env: { HOIST_PROXY_REMOTE_URL: `http://127.0.0.1:${portOf(upstream)}` },
  });
  mirror = await startServer({
    storage: `fs:${dir}`,
    frontend: 'node',
    env: {
      HOIST_PROXY_REMOTE_URL: `http://127.0.0.1:${portOf(upstream)}`,
      HOIST_PROXY_USERNAME: USER,
      HOIST_PROXY_PASSWORD: PASSWORD,
      HOIST_UPLOADS_MAX_BLOB_BYTES: '2MiB',
      // Every pull of a tag asks the upstream again.
      HOIST_PROXY_TAG_TTL: '0s',
    },
  });
});

afterAll(async () => {
  await mirror?.stop();
  await uwsMirror?.stop();
  upstream?.close();
  elsewhere?.close();
  await cleanup?.();
});

describe('a pull-through cache before a hostile upstream', () => {
  // First: the failing token service below is in the cache's memory afterwards.
  it('a manifest over manifests.maxBytes is the upstream\'s fault: 503, not 400', async () => {
    expectError(await request(mirror.url, '/v2/huge/img/manifests/v1'), 503, 'UNAVAILABLE');
  });

  it('never sends the upstream\'s credentials to a host it was redirected to, nor takes that host\'s realm', async () => {
    // The first pull learns that the upstream wants Basic; the second sends it at once, and is
    // redirected to a host answering 401 with a realm of its own.
    for (let i = 0; i < 2; i++) expectError(await request(mirror.url, `/v2/private/img/blobs/${digest}`), 503, 'UNAVAILABLE');
    // The redirect target was asked for the blob (without credentials), never for a token.
    expect(elsewhereSaw.length).toBeGreaterThan(0);
    expect(elsewhereSaw.filter((line) => line.startsWith('/token'))).toEqual([]);
    expect(elsewhereSaw.filter((line) => line.includes(BASIC.slice(6)))).toEqual([]);
    // And the next pull, of another repository, goes to the upstream as before.
    const free = await request(mirror.url, `/v2/free/img/blobs/${digest}`);
    expect(free.status).toBe(200);
    expect(free.body.equals(blob)).toBe(true);
    expect(elsewhereSaw.filter((line) => line.startsWith('/token'))).toEqual([]);
  });

  it('one repository\'s failing token service leaves the others working', async () => {
    const r = await request(mirror.url, '/v2/poison/img/manifests/v1');
    expect(r.status).toBe(503);
    const free = await request(mirror.url, `/v2/free/img/blobs/${digest}`, { method: 'HEAD' });
    expect(free.status).toBe(200);
    // Not cached by the HEAD: a GET of the blob in a fresh repository name goes upstream too.
    const again = await request(mirror.url, `/v2/free/img/blobs/${digest}`);
    expect(again.status).toBe(200);
  });

  // Found by probing (2026-12-03): a 200 whose body is no manifest got the client 400
  // MANIFEST_INVALID ("set Content-Type"), a push's answer, even for a tag the cache held.
  it('a manifest that is none (not JSON) is the upstream\'s fault: a cached tag is served, else 503', async () => {
    const tag = '/v2/junk/img/manifests/v1';
    junkTag = 'good';
    expect((await request(mirror.url, tag)).status).toBe(200);
    junkTag = 'junk';
    const cached = await request(mirror.url, tag);
    expect(cached.status, 'served from the cache').toBe(200);
    expect(cached.body.equals(index)).toBe(true);
    expect((await request(mirror.url, tag, { method: 'HEAD' })).status).toBe(200);
    expectError(await request(mirror.url, '/v2/junk/other/manifests/v1'), 503, 'UNAVAILABLE');
  });

  it('a tag the upstream deleted is gone from the cache too, and not served again while the upstream is down', async () => {
    const tag = '/v2/moving/img/manifests/v1';
    expect((await request(mirror.url, tag)).status).toBe(200);
    movingTag = 'down';
    expect((await request(mirror.url, tag)).status, 'served from the cache while the upstream is down').toBe(200);
    movingTag = 'deleted';
    expectError(await request(mirror.url, tag), 404, 'MANIFEST_UNKNOWN');
    movingTag = 'down';
    expectError(await request(mirror.url, tag), 503, 'UNAVAILABLE');
    // The manifest itself stays, by digest.
    expect((await request(mirror.url, `/v2/moving/img/manifests/${indexDigest}`)).status).toBe(200);
  });

  // Found by probing (2026-12-02): on uWS the status line and some headers went out before
  // the first byte, so a fetch that failed before it left half a header section, which curl
  // takes for a complete, empty 206 (exit 0). Every byte of a response waits for the digest
  // when it is the last one: here the only one. Since 2026-12-04 a response starts only with
  // its first byte in hand (blob-flight.ts, started): the client gets the fetch's 503 whole.
  it.each(['node', 'uws'] as const)('a fetch that fails before a response\'s first byte is a whole 503 (%s front end), never part of a 206', async (frontend) => {
    const server = frontend === 'uws' ? uwsMirror : mirror;
    const reply = await socketExchange(server.port, `GET /v2/liar/img/blobs/${toldDigest} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0\r\nConnection: close\r\n\r\n`, { timeoutMs: 10_000 });
    expect(reply.timedOut).toBe(false);
    expect(reply.closed).toBe(true);
    expect(reply.text).toMatch(/^HTTP\/1\.1 503 /);
    expect(reply.text).not.toMatch(/ 206 /);
    const body = reply.text.slice(reply.text.indexOf('\r\n\r\n') + 4);
    expect(JSON.parse(body).errors[0].code).toBe('UNAVAILABLE');
  });

  it('refuses a blob the upstream sends without a length, or announces over uploads.maxBlobBytes, before storing any of it', async () => {
    expectError(await request(mirror.url, `/v2/unsized/img/blobs/${digest}`), 503, 'UNAVAILABLE');
    // Re-encoded, its length is not the blob's: refused with a reason, not cut at every pull.
    const gz = await request(mirror.url, `/v2/gzipped/img/blobs/${zippedDigest}`);
    expectError(gz, 503, 'UNAVAILABLE');
    expect(gz.body.toString()).toContain('Content-Encoding: gzip');
    const over = await request(mirror.url, `/v2/big/img/blobs/${bigDigest}`);
    expectError(over, 400, 'SIZE_INVALID');
    expect(over.body.toString()).toContain('size limit');
  });

  // Found by probing (2026-12-04): a pull wrote the touched marker of whatever digest it was
  // asked for before it looked for it: 200 HEADs of random digests left 200 markers, which
  // stayed until a collection (ttl and an hour later). Only content the cache holds is marked.
  it('a pull of a digest that exists nowhere leaves no touched marker', async () => {
    const asked = Array.from({ length: 6 }, () => createHash('sha256').update(randomBytes(16)).digest('hex'));
    const [a, b, c, d, e, f] = asked as [string, string, string, string, string, string];
    expect((await request(mirror.url, `/v2/nosuch/repo/blobs/sha256:${a}`, { method: 'HEAD' })).status).toBe(404);
    expect((await request(mirror.url, `/v2/nosuch/repo/blobs/sha256:${b}`)).status).toBe(404);
    expect((await request(mirror.url, `/v2/nosuch/repo/manifests/sha256:${c}`, { method: 'HEAD' })).status).toBe(404);
    expect((await request(mirror.url, `/v2/nosuch/repo/manifests/sha256:${d}`)).status).toBe(404);
    // Nor does a digest stored in no repository, asked for where the upstream has the repository.
    expect((await request(mirror.url, `/v2/free/img/blobs/sha256:${e}`, { method: 'HEAD' })).status).toBe(404);
    expect((await request(mirror.url, `/v2/free/img/blobs/sha256:${f}`)).status).toBe(404);
    const markers = (await readdir(dir, { recursive: true })).filter((p) => p.endsWith('.touched'));
    expect(markers.length, 'the cache holds some marked content').toBeGreaterThan(0);
    expect(markers.filter((p) => asked.some((hex) => p.includes(hex)))).toEqual([]);
  });

  // Found by probing (2026-12-04): a token service handing out 1 MiB tokens, one per
  // repository, grew the cache's token store to about 1 GiB (1000 of them). A token over
  // 16 KiB is the token service failing: 503, as for any failing token service.
  it('refuses a token over 16 KiB (503), and takes one within it', async () => {
    tokenChars = 20 * 1024;
    const huge = await request(mirror.url, `/v2/bigtoken/a/manifests/${indexDigest}`);
    const [e] = expectError(huge, 503, 'UNAVAILABLE');
    expect(e!.message).toContain('token service answered a token of 20480 characters');
    tokenChars = 8 * 1024;
    expect((await request(mirror.url, `/v2/bigtoken/b/manifests/${indexDigest}`)).status).toBe(200);
  });

  // Found by probing (2026-12-04): a HEAD of a blob over uploads.maxBlobBytes said 200, with
  // its length, and the GET that followed 400 SIZE_INVALID. A HEAD answers as the GET does.
  it('a HEAD of a blob over uploads.maxBlobBytes is 400, as its GET is', async () => {
    const path = `/v2/big/img/blobs/${bigDigest}`;
    expectError(await request(mirror.url, path, { method: 'HEAD' }), 400, undefined, 'HEAD');
    expectError(await request(mirror.url, path), 400, 'SIZE_INVALID');
  });

  // Found by probing (2026-12-04): tags/list passed the upstream's answer on as it was: a
  // docker-registry 2.8.2 upstream sent 3 unsorted tags for n=1, a hostile one 200,000.
  it('tags/list is paged here: lexical order, n at most, after last, whatever the upstream sends', async () => {
    const list = async (query: string): Promise<{ tags: string[]; link: string | undefined }> => {
      const r = await request(mirror.url, `/v2/manytags/img/tags/list${query}`);
      expect(r.status).toBe(200);
      return { tags: r.json<{ tags: string[] }>().tags, link: r.header('link') };
    };
    expect(await list('')).toEqual({ tags: ['V1', '_x', 'latest', 'v10', 'v2', 'v3'], link: undefined });
    const first = await list('?n=2');
    expect(first.tags).toEqual(['V1', '_x']);
    expect(first.link).toBe('</v2/manytags/img/tags/list?n=2&last=_x>; rel="next"');
    expect(await list('?n=2&last=_x')).toEqual({ tags: ['latest', 'v10'], link: '</v2/manytags/img/tags/list?n=2&last=v10>; rel="next"' });
    expect(await list('?n=2&last=v10')).toEqual({ tags: ['v2', 'v3'], link: undefined });
    expect(await list('?n=5&last=v3')).toEqual({ tags: [], link: undefined });
  });

  // Found by probing: an upstream that pages a listing asked for without n (as Quay does) had
  // its next page dropped: the client saw three tags of five.
  it('tags/list passes on that the upstream has more when the client asked without n', async () => {
    const first = await request(mirror.url, '/v2/pagedtags/img/tags/list');
    expect(first.json<{ tags: string[] }>().tags).toEqual(['a', 'b', 'c']);
    expect(first.header('link')).toBe('</v2/pagedtags/img/tags/list?last=c>; rel="next"');
    const second = await request(mirror.url, '/v2/pagedtags/img/tags/list?last=c');
    expect(second.json<{ tags: string[] }>().tags).toEqual(['d', 'e']);
    expect(second.header('link')).toBeUndefined();
  });
});
