import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { headerSectionIn, socketExchange, waitFor } from '../helpers/http.js';
import { metricsUrlOf, scrape } from '../helpers/metrics.js';
import { startServer, type TestServer } from '../helpers/server.js';

/**
 * Requests a front end answers itself, before any handler sees them, are counted in
 * hoist_http_requests_total (route "refused") and logged once ("request refused"), as README
 * promises for every request answered. Found by probing: a 431 (header section too large, on
 * both front ends) and node:http's parser 400s (an unknown method) were in neither the metric
 * nor the log, and the refusals that were logged (an invalid Host) were not counted. The
 * method label stays bounded: one the metrics do not know is OTHER.
 */

const bigHeader = `GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`;
const twoHosts = 'GET /v2/ HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n';
const unknownMethod = 'XYZZYPLUGH /v2/ HTTP/1.1\r\nHost: x\r\n\r\n';

for (const frontend of ['uws', 'node'] as const) describe(`requests refused by the front end (${frontend})`, () => {
  let server: TestServer;
  let metricsUrl: string;

  beforeAll(async () => {
    server = await startServer({ storage: 'memory:', frontend, env: { HOIST_METRICS_LISTEN: '127.0.0.1:0' } });
    metricsUrl = metricsUrlOf(server);
  });

  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
  });

  const statusOf = async (bytes: string): Promise<string> =>
    (await socketExchange(server.port, bytes, { until: headerSectionIn, timeoutMs: 5_000 })).text.split('\r\n', 1)[0]!;

  it('counts a 431 and a refused Host in hoist_http_requests_total, and logs each once', async () => {
    expect(await statusOf(bigHeader)).toBe('HTTP/1.1 431 Request Header Fields Too Large');
    expect(await statusOf(twoHosts)).toBe('HTTP/1.1 400 Bad Request');
    const s = await scrape(metricsUrl);
    expect(s.value('hoist_http_requests_total', { route: 'refused', method: 'GET', status: '431' })).toBe(1);
    expect(s.value('hoist_http_requests_total', { route: 'refused', method: 'GET', status: '400' })).toBe(1);
    const lines = await waitFor('two log lines', () => {
      const refused = server.records().filter((r) => r.msg === 'request refused');
      return refused.length >= 2 ? refused : undefined;
    });
    expect(lines.map((l) => [l.method, l.path, l.status, l.code])).toEqual([['GET', '/v2/', 431, undefined], ['GET', '/v2/', 400, 'NAME_INVALID']]);
  });

  // uWS closes an unknown method unanswered (README, Front ends): nothing to count there.
  if (frontend === 'node') it("counts node:http's parser 400s, an unknown method as OTHER", async () => {
    expect(await statusOf(unknownMethod)).toBe('HTTP/1.1 400 Bad Request');
    const s = await scrape(metricsUrl);
    expect(s.value('hoist_http_requests_total', { route: 'refused', method: 'OTHER', status: '400' })).toBe(1);
    expect(s.text, 'no label a client chose').not.toContain('XYZZYPLUGH');
    const line = await waitFor('its log line', () => server.records().find((r) => r.msg === 'request refused' && r.method === 'XYZZYPLUGH'));
    expect(line).toMatchObject({ path: '/v2/', status: 400 });
    expect(server.records().filter((r) => r.msg === 'request refused' && r.method === 'XYZZYPLUGH')).toHaveLength(1);
  });
});
