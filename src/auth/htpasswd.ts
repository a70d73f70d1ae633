import { createHmac, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import bcrypt from 'bcryptjs';
import { ConfigError } from '../config.js';

/**
 * Users and bcrypt password hashes from an htpasswd file (`htpasswd -B -c FILE alice`):
 *
 *   # comment
 *   alice:$2y$10$Qk0y...
 *
 * Only bcrypt ($2a$, $2b$, $2y$) is accepted, as distribution's htpasswd backend does: the
 * MD5, SHA-1 and crypt formats are too cheap to brute-force. A file with anything else
 * stops start-up naming the line.
 *
 * bcrypt is slow on purpose (~90 ms at cost 10 here, in JavaScript on the main thread), and
 * clients using Basic auth send the password with every request; so a successful check is
 * remembered for a while, under an HMAC of user and password with a key made at start-up
 * (never the password itself).
 */
const BCRYPT = /^\$2[aby]\$\d{2}\$[./A-Za-z0-9]{53}$/;
const CACHE_TTL_MS = 5 * 60_000;
const CACHE_MAX_ENTRIES = 10_000;
/** Compared against for unknown users, so that a miss takes as long as a wrong password (cost 10, of a random password). */
const DUMMY_HASH = '$2b$10$AfuvvbGj5b013Q93ovnSmu.D3lUodHlXldPTB7O7LslNdtvnjpb3K';
const CACHE_KEY = randomBytes(32);

export class Htpasswd {
  readonly file: string;
  #users: Map<string, string>;
  readonly #verified = new Map<string, number>();

  private constructor(file: string, users: Map<string, string>) {
    this.file = file;
    this.#users = users;
  }

  /** Reads and checks the file; throws ConfigError naming `option` and the line at fault. */
  static async load(file: string, option = 'auth.htpasswd'): Promise<Htpasswd> {
    return new Htpasswd(file, await readUsers(file, option));
  }

  get size(): number {
    return this.#users.size;
  }

  /** Reads the file again (SIGHUP). On error the old users stay and the error is thrown. */
  async reload(option = 'auth.htpasswd'): Promise<void> {
    this.#users = await readUsers(this.file, option);
    this.#verified.clear();
  }

  async verify(user: string, password: string): Promise<boolean> {
    const key = createHmac('sha256', CACHE_KEY).update(user).update('\0').update(password).digest('base64');
    const until = this.#verified.get(key);
    const now = Date.now();
    if (until !== undefined && until > now) return true;
    const hash = this.#users.get(user);
    const ok = await bcrypt.compare(password, hash ?? DUMMY_HASH);
    if (!ok || hash === undefined) return false;
    if (this.#verified.size >= CACHE_MAX_ENTRIES) this.#verified.delete(this.#verified.keys().next().value!);
    this.#verified.set(key, now + CACHE_TTL_MS);
    return true;
  }
}

async function readUsers(file: string, option: string): Promise<Map<string, string>> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`${option}: cannot read ${file}: ${(err as Error).message}`);
  }
  const users = new Map<string, string>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const colon = line.indexOf(':');
    const where = `${option}: ${file} line ${i + 1}`;
    if (colon <= 0) throw new ConfigError(`${where}: expected user:bcrypt-hash`);
    const user = line.slice(0, colon);
    const hash = line.slice(colon + 1);
    if (!BCRYPT.test(hash)) throw new ConfigError(`${where}: the hash of ${JSON.stringify(user)} is not bcrypt (create it with htpasswd -B)`);
    if (users.has(user)) throw new ConfigError(`${where}: ${JSON.stringify(user)} appears twice`);
    users.set(user, hash);
  });
  return users;
}
