import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { headerSectionIn, socketExchange, waitFor } from '../helpers/http.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * A request's log line stays short whatever its target. Found by probing: the one line of a
 * request carried its path, its repository and its upload id, each whole, so that one
 * unauthenticated GET within limits.maxUrlBytes (8 KiB) of backslashes (each written `\\` in
 * JSON) made a 32 KB line, and a plain 8 KiB target one of 16.3 KB. Docker's json-file and
 * journald log drivers split lines over 16 KiB into pieces, and a collector that parses the
 * pieces as JSON loses the line (and may take the rest for lines of their own).
 */

/** At most this many bytes a line: the fields are cut, with the length that was cut. */
const MAX_LINE_BYTES = 4096;

for (const frontend of ['uws', 'node'] as const) describe(`request log lines are bounded (${frontend})`, () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await startServer({ storage: 'memory:', frontend, env: { HOIST_LOG_FORMAT: 'json' } });
  });

  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
  });

  it('an 8 KiB target of backslashes logs one line under 4 KiB, naming what was cut', async () => {
    const name = `a${'\\'.repeat(3_900)}`;
    const id = 'b'.repeat(3_900);
    const path = `/v2/${name}/blobs/uploads/${id}`;
    expect(path.length).toBeLessThan(8 * 1024);
    const reply = await socketExchange(server.port, `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`, { until: headerSectionIn, timeoutMs: 5_000 });
    expect(reply.text.split('\r\n', 1)[0]).toBe('HTTP/1.1 400 Bad Request');
    const line = await waitFor('the request line', () => server.logs().find((l) => l.includes('"msg":"request"') && l.includes('"path":"/v2/a\\\\')));
    expect(Buffer.byteLength(line)).toBeLessThanOrEqual(MAX_LINE_BYTES);
    const record = JSON.parse(line) as Record<string, string>;
    expect(record.path).toMatch(/^\/v2\/a\\+…\(\d+ more characters\)$/);
    expect(record.repository).toMatch(/^a\\+…\(\d+ more characters\)$/);
    expect(record.uploadId).toMatch(/^b+…\(\d+ more characters\)$/);
    const [, kept, cut] = /^(.*)…\((\d+) more characters\)$/s.exec(record.path!)!;
    expect(path.startsWith(kept!)).toBe(true);
    expect(kept!.length + Number(cut)).toBe(path.length);
  });

  it('a valid path, repository and upload id are logged whole', async () => {
    const name = `team/${'n'.repeat(240)}`;
    const id = '0123456789abcdef0123456789abcdef0123';
    const path = `/v2/${name}/blobs/uploads/${id}`;
    await socketExchange(server.port, `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`, { until: headerSectionIn, timeoutMs: 5_000 });
    const record = await waitFor('the request line', () => server.records().find((r) => r.msg === 'request' && r.path === path));
    expect(record).toMatchObject({ repository: name, uploadId: id, status: 404 });
  });
});
