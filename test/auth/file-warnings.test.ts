import { X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { processClock } from '../helpers/clock.js';
import { waitForLog } from '../helpers/http.js';
import { startServer, type LogRecord, type TestServer } from '../helpers/server.js';
import { writeHtpasswd, writeSelfSigned } from './fixtures.js';

/**
 * Files that load but that nobody can use were taken without a word: a TLS certificate past
 * its notAfter or before its notBefore (OpenSSL serves it; every client refuses it), and an
 * htpasswd file without users (every password is wrong). Each is now a warning, at start-up
 * and at every SIGHUP reload, naming the option (and the certificate's date). The server's
 * clock (test/helpers/clock.ts) moves instead of the certificate's dates: the fixture's
 * certificate is valid for two days from now.
 */

const DAY = 86_400_000;

let work: string;
let cert: { certFile: string; keyFile: string };
let notBefore: string;
let notAfter: string;
const servers: TestServer[] = [];

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'hoist-file-warnings-'));
  cert = writeSelfSigned(work, 'two-days');
  const x = new X509Certificate(await readFile(cert.certFile));
  notBefore = new Date(x.validFrom).toISOString();
  notAfter = new Date(x.validTo).toISOString();
});

afterAll(async () => {
  for (const s of servers) await s.kill();
  if (work) await rm(work, { recursive: true, force: true });
});

async function start(env: Record<string, string>): Promise<TestServer> {
  const server = await startServer({ storage: 'memory:', frontend: 'node', env });
  servers.push(server);
  return server;
}

const tlsEnv = (): Record<string, string> => ({ HOIST_TLS_CERT_FILE: cert.certFile, HOIST_TLS_KEY_FILE: cert.keyFile });
const warnings = (records: LogRecord[], option: string): LogRecord[] => records.filter((r) => r.level === 40 && r.option === option);

describe('warnings at start-up', () => {
  it('an expired certificate, naming its notAfter', async () => {
    const clock = processClock(work, 'expired');
    await clock.setNow(Date.now() + 3 * DAY);
    const server = await start({ ...tlsEnv(), ...clock.env() });
    expect(warnings(server.records(), 'tls.certFile'), server.logs().join('\n')).toEqual([
      expect.objectContaining({ file: cert.certFile, notAfter, msg: `the TLS certificate expired at ${notAfter}: clients will refuse it` }),
    ]);
  });

  it('a certificate not valid yet, naming its notBefore', async () => {
    const clock = processClock(work, 'early');
    await clock.setNow(Date.now() - DAY);
    const server = await start({ ...tlsEnv(), ...clock.env() });
    expect(warnings(server.records(), 'tls.certFile'), server.logs().join('\n')).toEqual([
      expect.objectContaining({ file: cert.certFile, notBefore, msg: `the TLS certificate is not valid before ${notBefore}: clients will refuse it` }),
    ]);
  });

  it('an htpasswd file without users', async () => {
    const file = join(work, 'empty.htpasswd');
    await writeFile(file, '# nobody yet\n');
    const server = await start({ HOIST_AUTH_HTPASSWD: file });
    expect(warnings(server.records(), 'auth.htpasswd'), server.logs().join('\n')).toEqual([
      expect.objectContaining({ file, msg: 'the htpasswd file holds no users: nobody can log in with a password' }),
    ]);
  });
});

describe('warnings on SIGHUP reload', () => {
  let server: TestServer;
  let htpasswd: string;
  const clock = (): ReturnType<typeof processClock> => processClock(work, 'reload');

  /** Sends SIGHUP and returns what the server logged from then until its reload line. */
  async function reload(): Promise<LogRecord[]> {
    const from = server.records().length;
    process.kill(server.pid, 'SIGHUP');
    const done = (r: LogRecord): boolean => r.msg === 'reloaded the htpasswd file and TLS certificate';
    await waitForLog(server, 'the reload line', (r) => server.records().indexOf(r) >= from && done(r));
    return server.records().slice(from);
  }

  beforeAll(async () => {
    htpasswd = await writeHtpasswd(work, { alice: 'secret' }, 'reload.htpasswd');
    await clock().setNow(Date.now());
    server = await start({ ...tlsEnv(), HOIST_AUTH_HTPASSWD: htpasswd, ...clock().env() });
    expect(server.records().filter((r) => r.level === 40), 'no warning with valid files').toEqual([]);
  });

  it('an htpasswd file emptied since', async () => {
    await writeFile(htpasswd, '');
    const logged = await reload();
    expect(warnings(logged, 'auth.htpasswd'), server.logs().join('\n')).toEqual([expect.objectContaining({ file: htpasswd })]);
    expect(warnings(logged, 'tls.certFile')).toEqual([]);
  });

  it('a certificate that has expired since', async () => {
    await clock().setNow(Date.now() + 3 * DAY);
    const logged = await reload();
    expect(warnings(logged, 'tls.certFile'), server.logs().join('\n')).toEqual([expect.objectContaining({ file: cert.certFile, notAfter })]);
  });
});
