/**
 * Piscina task file: a bcrypt password check (src/auth/htpasswd.ts). A pure function of its
 * task: a password and a hash in, whether they match out. No I/O.
 *
 * bcrypt is slow on purpose (~80 ms at cost 10, in JavaScript), so a check on the main thread
 * stalls every request for that long: twenty wrong passwords a second took an anonymous
 * GET /v2/ from 2 ms to 2-4 s. Here it stalls nobody but the checks queued behind it.
 */
import bcrypt from 'bcryptjs';

export interface BcryptTask {
  password: string;
  hash: string;
}

export default function compare(task: BcryptTask): boolean {
  return bcrypt.compareSync(task.password, task.hash);
}
