import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createSecureContext } from 'node:tls';
import type { Logger } from 'pino';
import { Auth } from '../auth/auth.js';
import { ConfigError, type Config } from '../config.js';
import type { FrontEnd, TlsFiles } from './adapter.js';
import { RequestGate } from './auth.js';

/**
 * Everything the `auth`, `limits` and `tls` options name, read once at start-up: the htpasswd
 * file, token keys, certificate and key. A file that cannot be read or parsed stops start-up
 * with an error naming the option. SIGHUP reads the htpasswd file and the certificate again.
 */
export interface Security {
  readonly gate: RequestGate;
  readonly tls: TlsFiles | undefined;
  /** For the `listening` line: 'basic', 'bearer' or 'none'. */
  readonly authMode: 'basic' | 'bearer' | 'none';
  /** Reads the htpasswd file and the TLS files again; on error keeps the old ones and throws. */
  reload(frontend: FrontEnd): Promise<void>;
}

export async function loadSecurity(config: Readonly<Config>, log: Logger): Promise<Security> {
  const tls = config.tls ? await readTls(config.tls) : undefined;
  const a = config.auth;
  const auth = a
    ? await Auth.load(
        {
          htpasswd: a.htpasswd,
          token: a.token && {
            realm: a.token.realm,
            service: a.token.service,
            issuer: a.token.issuer,
            privateKeyFile: a.token.privateKeyFile,
            publicKeyFiles: a.token.publicKeyFiles,
            expiryMs: a.token.expiry,
          },
          groups: a.groups,
          access: a.access,
        },
        config.namespaces.map((n) => n.name),
      )
    : undefined;
  // Files that load but that nobody can use (no users; a certificate out of its dates):
  // warned of at start and at every reload, as time passes and files change.
  const warnOfFiles = (files: TlsFiles | undefined): void => {
    if (auth?.passwordUsers === 0) log.warn({ option: 'auth.htpasswd', file: a?.htpasswd }, 'the htpasswd file holds no users: nobody can log in with a password');
    if (files && config.tls) warnOfCertificateDates(log, config.tls.certFile, files.cert);
  };
  warnOfFiles(tls);
  if (auth?.ephemeralKey) {
    log.warn('auth.token: no privateKeyFile, so tokens are signed with a key made at start-up: they end with this process and no other instance accepts them');
  }
  const l = config.limits;
  const gate = new RequestGate({
    auth,
    maxUrlBytes: l.maxUrlBytes,
    maxConcurrentUploads: l.maxConcurrentUploads,
    requestsPerSecond: l.requestsPerSecond,
    burst: l.burst,
    https: tls !== undefined,
  });
  return {
    gate,
    tls,
    authMode: auth?.mode ?? 'none',
    async reload(frontend) {
      await auth?.reload();
      let files: TlsFiles | undefined;
      if (config.tls) {
        files = await readTls(config.tls);
        frontend.reloadTls?.(files);
      }
      warnOfFiles(files);
    },
  };
}

async function readTls(t: { certFile: string; keyFile: string }): Promise<TlsFiles> {
  const read = async (option: string, file: string, what: RegExp): Promise<Buffer> => {
    let bytes: Buffer;
    try {
      bytes = await readFile(file);
    } catch (err) {
      throw new ConfigError(`${option}: cannot read ${file}: ${(err as Error).message}`);
    }
    if (!what.test(bytes.toString('latin1'))) throw new ConfigError(`${option}: ${file} holds no PEM ${what.source.includes('CERT') ? 'certificate' : 'private key'}`);
    return bytes;
  };
  const cert = await read('tls.certFile', t.certFile, /-----BEGIN CERTIFICATE-----/);
  const key = await read('tls.keyFile', t.keyFile, /-----BEGIN [A-Z ]*PRIVATE KEY-----/);
  // Let OpenSSL judge the pair now rather than at the first handshake.
  try {
    createSecureContext({ cert, key });
  } catch (err) {
    throw new ConfigError(`tls.certFile, tls.keyFile: ${(err as Error).message}`);
  }
  // OpenSSL compares a key only with a certificate of its own kind: an RSA key beside an EC
  // certificate loads into another slot, and every handshake then fails.
  if (!new X509Certificate(cert).checkPrivateKey(createPrivateKey(key))) {
    throw new ConfigError('tls.certFile, tls.keyFile: the private key does not belong to the certificate (key values mismatch)');
  }
  return { cert, key };
}

/**
 * An expired or not yet valid certificate: OpenSSL serves it all the same, and every client
 * refuses it. Its first certificate is the server's own (the rest is the chain).
 */
function warnOfCertificateDates(log: Logger, file: string, cert: Buffer): void {
  const x = new X509Certificate(cert);
  const notBefore = new Date(x.validFrom);
  const notAfter = new Date(x.validTo);
  const now = Date.now();
  if (now > notAfter.getTime()) {
    log.warn({ option: 'tls.certFile', file, notAfter: notAfter.toISOString() }, `the TLS certificate expired at ${notAfter.toISOString()}: clients will refuse it`);
  } else if (now < notBefore.getTime()) {
    log.warn({ option: 'tls.certFile', file, notBefore: notBefore.toISOString() }, `the TLS certificate is not valid before ${notBefore.toISOString()}: clients will refuse it`);
  }
}
