import { createHash, createHmac, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { Piscina } from 'piscina';
import type { BcryptTask } from '../../workers/bcrypt.js';
import { ConfigError } from '../config.js';
import { TooManyRequestsError } from '../errors.js';
import { taskFile } from '../task-file.js';

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
 * bcrypt is slow on purpose (~80 ms at cost 10 here, in JavaScript), and clients using Basic
 * auth send the password with every request; so a successful check is remembered for a
 * while, under an HMAC of user and password with a key made at start-up (never the password
 * itself). The checks run on one worker thread (workers/bcrypt.ts), so a client sending wrong
 * passwords costs at most that thread and not the requests of everybody else; at most
 * MAX_WAITING_CHECKS wait for it, and a check beyond those is refused with 429. So that one
 * client cannot fill that line and refuse everybody's logins, a client (the caller's key: an
 * address) has at most MAX_CHECKS_PER_CLIENT checks running or waiting; and the caller may
 * refuse a check before it runs (VerifyOptions.beforeCheck: a client over its rate limit).
 *
 * An unknown name costs what a known one does (issue 10), so that timing does not tell
 * which names exist: its password is compared against a dummy hash of a cost the file's own
 * users have. With mixed costs (a file grown over years, `htpasswd -B -C 12` for some), the
 * cost is drawn for each name from the file's costs, as often as they occur there, by a
 * hash of the name keyed with the file's contents: the same name always costs the same, on
 * every instance and after restarts, and unknown names cost what known ones do, in the same
 * proportions. (Known users' hashes never change cost unless the file changes, so neither may
 * an unknown name's.)
 */
const BCRYPT = /^\$2[aby]\$(\d{2})\$[./A-Za-z0-9]{53}$/;
const CACHE_TTL_MS = 5 * 60_000;
const CACHE_MAX_ENTRIES = 10_000;
/** The costs bcrypt takes (bcryptjs refuses the others, as OpenBSD's bcrypt does). */
const MIN_COST = 4;
const MAX_COST = 31;
/** bcrypt's cost when the file has no users to copy (htpasswd -B's default). */
const DEFAULT_COST = 10;
const BCRYPT_ALPHABET = './ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
const CACHE_KEY = randomBytes(32);
/** Checks waiting for the bcrypt thread: about 2.5 s of them at cost 10. */
const MAX_WAITING_CHECKS = 32;
/** Checks one client may have running or waiting: a login, a token fetch and a retry or two. */
const MAX_CHECKS_PER_CLIENT = 4;
/** Checks running or waiting, per client key (entries go at zero). */
const checksByClient = new Map<string, number>();

let checks: Piscina | undefined;

/** The bcrypt thread, started on the first check and stopped after 30 s without one. */
function compare(password: string, hash: string): Promise<boolean> {
  checks ??= new Piscina({ filename: taskFile('bcrypt'), minThreads: 0, maxThreads: 1, maxQueue: MAX_WAITING_CHECKS, idleTimeout: 30_000 });
  if (checks.queueSize >= MAX_WAITING_CHECKS) return Promise.reject(new TooManyRequestsError(1, { message: 'too many password checks waiting; try again' }));
  const task: BcryptTask = { password, hash };
  return checks.run(task) as Promise<boolean>;
}

export interface VerifyOptions {
  /** Who asks (an address): at most MAX_CHECKS_PER_CLIENT checks each. */
  client?: string;
  /** Called just before a bcrypt check is queued; throwing refuses it (a rate limit). */
  beforeCheck?: () => void;
}

interface Users {
  readonly hashes: Map<string, string>;
  /** The file's users' costs, one entry per user, sorted: what an unknown name draws from. */
  readonly costs: readonly number[];
  /** A hash of no password, per cost: compared against for unknown names. */
  readonly dummies: ReadonlyMap<number, string>;
  /** Keys the draw of an unknown name's cost: the file's contents, which only the server knows. */
  readonly drawKey: Buffer;
}

export class Htpasswd {
  readonly file: string;
  #users: Users;
  readonly #verified = new Map<string, number>();

  private constructor(file: string, users: Users) {
    this.file = file;
    this.#users = users;
  }

  /** Reads and checks the file; throws ConfigError naming `option` and the line at fault. */
  static async load(file: string, option = 'auth.htpasswd'): Promise<Htpasswd> {
    return new Htpasswd(file, await readUsers(file, option));
  }

  get size(): number {
    return this.#users.hashes.size;
  }

  /** Reads the file again (SIGHUP). On error the old users stay and the error is thrown. */
  async reload(option = 'auth.htpasswd'): Promise<void> {
    this.#users = await readUsers(this.file, option);
    this.#verified.clear();
  }

  /**
   * Whether `password` is `user`'s: from the remembered successes, else by a bcrypt check.
   * A check is refused with 429 (TooManyRequestsError) when `o.client` has too many, or when
   * `o.beforeCheck` throws (the caller's rate limit); neither is asked for a remembered one.
   */
  async verify(user: string, password: string, o: VerifyOptions = {}): Promise<boolean> {
    // The user's length first: no other (user, password) pair runs together into the same bytes.
    const key = createHmac('sha256', CACHE_KEY).update(`${Buffer.byteLength(user)}:${user}`).update(password).digest('base64');
    const until = this.#verified.get(key);
    const now = Date.now();
    if (until !== undefined && until > now) return true;
    const users = this.#users;
    const hash = users.hashes.get(user);
    const client = o.client;
    const mine = client === undefined ? 0 : checksByClient.get(client) ?? 0;
    if (mine >= MAX_CHECKS_PER_CLIENT) throw new TooManyRequestsError(1, { message: 'too many password checks from this address; try again' });
    o.beforeCheck?.();
    if (client !== undefined) checksByClient.set(client, mine + 1);
    let ok: boolean;
    try {
      ok = await compare(password, this.hashFor(user));
    } finally {
      if (client !== undefined) {
        const left = (checksByClient.get(client) ?? 1) - 1;
        if (left > 0) checksByClient.set(client, left);
        else checksByClient.delete(client);
      }
    }
    // A reload (SIGHUP) while the check ran: its answer is about the old file, and stands
    // only if the new one gives the user the same hash; else the check runs again, and
    // nothing is remembered that reload() has cleared.
    if (this.#users !== users && this.#users.hashes.get(user) !== hash) return this.verify(user, password, o);
    if (!ok || hash === undefined) return false;
    if (this.#verified.size >= CACHE_MAX_ENTRIES) this.#verified.delete(this.#verified.keys().next().value!);
    this.#verified.set(key, now + CACHE_TTL_MS);
    return true;
  }

  /** The hash a check of `user`'s password compares against: theirs, or an unknown name's dummy. */
  hashFor(user: string): string {
    return this.#users.hashes.get(user) ?? this.#dummyFor(user);
  }

  /** The dummy hash an unknown `user` is checked against: of a cost drawn as the class comment says. */
  #dummyFor(user: string): string {
    const { costs, dummies, drawKey } = this.#users;
    const draw = createHmac('sha256', drawKey).update(user).digest().readUInt32BE(0);
    return dummies.get(costs[draw % costs.length]!)!;
  }
}

/** A bcrypt hash that no password matches: random salt, random checksum, the given cost. */
function dummyHash(cost: number): string {
  const chars = Array.from(randomBytes(53), (b) => BCRYPT_ALPHABET[b % 64]!).join('');
  return `$2b$${String(cost).padStart(2, '0')}$${chars}`;
}

async function readUsers(file: string, option: string): Promise<Users> {
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
    const cost = BCRYPT.exec(hash)?.[1];
    if (cost === undefined) throw new ConfigError(`${where}: the hash of ${JSON.stringify(user)} is not bcrypt (create it with htpasswd -B)`);
    // Checked here, since unknown names draw the file's costs too: every check of a cost
    // bcrypt refuses would answer 500, for names that exist and some that do not.
    if (Number(cost) < MIN_COST || Number(cost) > MAX_COST) {
      throw new ConfigError(`${where}: the hash of ${JSON.stringify(user)} has cost ${Number(cost)}: bcrypt takes ${MIN_COST} to ${MAX_COST}`);
    }
    if (users.has(user)) throw new ConfigError(`${where}: ${JSON.stringify(user)} appears twice`);
    users.set(user, hash);
  });
  const costs = [...users.values()].map((h) => Number(BCRYPT.exec(h)![1])).sort((a, b) => a - b);
  if (costs.length === 0) costs.push(DEFAULT_COST);
  const dummies = new Map([...new Set(costs)].map((c) => [c, dummyHash(c)]));
  return { hashes: users, costs, dummies, drawKey: createHash('sha256').update(text).digest() };
}
