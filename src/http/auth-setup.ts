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
      if (config.tls) {
        const files = await readTls(config.tls);
        frontend.reloadTls?.(files);
      }
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
  return { cert, key };
}
