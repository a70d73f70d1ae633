import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseRawReply, request, socketExchange, waitForLog, type SocketReply } from '../helpers/http.js';
import { sha256 } from '../helpers/oci.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host, and to any
 * request with more than one Host line or an invalid Host. Hoist picks a namespace by Host
 * (README, Namespaces), and node:http joined two Host lines into "a, b", which matched no
 * namespace: the request went to the default registry (200), as it did on uWS. Invalid
 * values (a space, a slash, userinfo, an empty port) were served too, and node:http answered
 * HTTP/1.1 without Host with a bare 400 rather than the error envelope. Both front ends now
 * answer all of these 400 NAME_INVALID, with the envelope, and close the connection.
 *
 * Sent as raw bytes: no HTTP client sends two Host lines.
 */

const NAMESPACES = [{ name: 'team-a', host: 'a.registry.test' }];

function raw(port: number, head: string): Promise<SocketReply> {
  return socketExchange(port, `${head}\r\n\r\n`, { timeoutMs: 5000 });
}

describe.each(['uws', 'node'] as const)('the Host header (%s front end)', (frontend) => {
  let server: TestServer;
  /** A blob only team-a (Host a.registry.test) holds. */
  const blob = Buffer.from(`only in team-a (${frontend})`);
  const blobPath = `/v2/host/app/blobs/${sha256(blob)}`;

  beforeAll(async () => {
    server = await startServer({ frontend, env: { HOIST_NAMESPACES: JSON.stringify(NAMESPACES) } });
    const push = await request(server.url, `/v2/host/app/blobs/uploads/?digest=${sha256(blob)}`, {
      method: 'POST', body: blob, headers: { host: 'a.registry.test' },
    });
    expect(push.status).toBe(201);
  });
  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
  });

  it.each([
    ['two different Host lines', 'Host: a.registry.test\r\nHost: other.test'],
    ['two equal Host lines', 'Host: a.registry.test\r\nHost: a.registry.test'],
    ['two Host lines spelt differently', 'host: a.registry.test\r\nHOST: other.test'],
    ['a Host with a space', 'Host: a.registry.test x'],
    ['a Host with a slash', 'Host: a.registry.test/v2'],
    ['a Host with userinfo', 'Host: user@a.registry.test'],
    ['a Host with an empty port', 'Host: a.registry.test:'],
    ['a Host with a port that is not a number', 'Host: a.registry.test:http'],
  ])('%s → 400 NAME_INVALID, connection closed', async (_label, hosts) => {
    const r = await raw(server.port, `GET ${blobPath} HTTP/1.1\r\n${hosts}`);
    expect(parseRawReply(r.text), r.text).toMatchObject({ status: 400, codes: ['NAME_INVALID'] });
    expect(r.text).toContain('Host');
    expect(r.closed).toBe(true);
  });

  // The handler never sees a refused request, so its access log line came from nowhere: an
  // operator saw no trace of the 400s.
  it('a refused request is logged like an answered one', async () => {
    const path = `/v2/refused-${frontend}/tags/list`;
    await raw(server.port, `GET ${path} HTTP/1.1\r\nHost: a.registry.test\r\nHost: other.test`);
    const line = await waitForLog(server, 'the refusal\'s log line', (l) => l.msg === 'request refused' && l.path === path);
    expect(line).toMatchObject({ method: 'GET', status: 400, code: 'NAME_INVALID' });
  });

  it.each([
    ['a.registry.test', 200],
    ['A.Registry.Test:5000', 200],
    ['other.test', 404],
    ['127.0.0.1:5000', 404],
    ['[::1]:5000', 404],
    // RFC 9112 §3.2: what a client sends when the target has no authority; the default registry.
    ['', 404],
  ])('one valid Host %j is served (the blob is in team-a only: %i)', async (host, status) => {
    const r = await raw(server.port, `GET ${blobPath} HTTP/1.1\r\nHost: ${host}\r\nConnection: close`);
    expect(parseRawReply(r.text).status, r.text).toBe(status);
  });

  if (frontend === 'node') {
    it('HTTP/1.1 without Host → 400 NAME_INVALID, connection closed', async () => {
      const r = await raw(server.port, 'GET /v2/ HTTP/1.1\r\nAccept: */*');
      expect(parseRawReply(r.text), r.text).toMatchObject({ status: 400, codes: ['NAME_INVALID'] });
      expect(r.closed).toBe(true);
    });

    it('HTTP/1.0 without Host is served, by the default registry', async () => {
      const r = await raw(server.port, `GET ${blobPath} HTTP/1.0`);
      expect(r.text, r.text).toMatch(/^HTTP\/1\.1 404 /);
      expect((await raw(server.port, 'GET /v2/ HTTP/1.0')).text).toMatch(/^HTTP\/1\.1 200 /);
    });

    // RFC 9112 §3.2.2: the absolute-form's authority replaces Host, for the namespace (and so
    // for auth: test/auth/token.test.ts) as for everything else; Host itself is still checked.
    it.each([
      ['the authority names team-a, Host another', 200, 'GET http://a.registry.test:5000%s HTTP/1.1\r\nHost: other.test', []],
      ['Host names team-a, the authority another', 404, 'GET http://other.test%s HTTP/1.1\r\nHost: a.registry.test', ['BLOB_UNKNOWN']],
      ['an authority with userinfo', 400, 'GET http://user@a.registry.test%s HTTP/1.1\r\nHost: a.registry.test', ['NAME_INVALID']],
      ['an empty authority', 400, 'GET http://%s HTTP/1.1\r\nHost: a.registry.test', ['NAME_INVALID']],
      ['an authority with an empty port', 400, 'GET http://a.registry.test:%s HTTP/1.1\r\nHost: a.registry.test', ['NAME_INVALID']],
      ['two Host lines', 400, 'GET http://a.registry.test%s HTTP/1.1\r\nHost: a.registry.test\r\nHost: other.test', ['NAME_INVALID']],
      ['no Host', 400, 'GET http://a.registry.test%s HTTP/1.1', ['NAME_INVALID']],
    ])('absolute-form, %s → %i', async (_label, status, head, codes) => {
      const r = await raw(server.port, `${head.replace('%s', blobPath)}\r\nConnection: close`);
      expect(parseRawReply(r.text), r.text).toMatchObject({ status, codes });
    });
  } else {
    // uWS's own parser closes the connection without a reply (README, Front ends): JavaScript
    // never sees the request. (One with no header line at all it leaves unanswered until its
    // idle timeout.)
    it('HTTP/1.1 without Host: the connection is closed, unanswered, by uWS itself', async () => {
      const r = await raw(server.port, 'GET /v2/ HTTP/1.1\r\nAccept: */*');
      expect(r).toMatchObject({ text: '', closed: true });
    });
  }

  // uWS strips bytes 0x80-0xFF at the ends of a header value as if they were spaces (README,
  // Front ends): Hoist sees `a.registry.test` and cannot tell. node:http passes them on.
  it('a Host with a byte 0xFF around the name: 400 on node:http, served as the bare name by uWS', async () => {
    const r = await socketExchange(server.port, Buffer.from(`GET ${blobPath} HTTP/1.1\r\nHost: \xffa.registry.test\xff\r\nConnection: close\r\n\r\n`, 'latin1'), { timeoutMs: 5000 });
    if (frontend === 'node') expect(parseRawReply(r.text), r.text).toMatchObject({ status: 400, codes: ['NAME_INVALID'] });
    else expect(parseRawReply(r.text).status, r.text).toBe(200);
  });

  it('serves the next connection as before', async () => {
    const r = await raw(server.port, `GET ${blobPath} HTTP/1.1\r\nHost: a.registry.test\r\nConnection: close`);
    expect(parseRawReply(r.text).status, r.text).toBe(200);
  });
});
