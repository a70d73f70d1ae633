import { readlinkSync } from 'node:fs';
import { hostname } from 'node:os';

/**
 * Which process holds something in storage (a server's presence, an upload's lock, the
 * collection lease), in terms another process on the same machine can check: the host name,
 * the PID namespace (Linux; containers have their own) and the PID. Written into the record,
 * so that a server restarted after a crash need not wait out what its dead predecessor held.
 */
export interface ProcessIdentity {
  readonly host: string;
  readonly pidns?: string;
  readonly pid: number;
}

let mine: ProcessIdentity | undefined;

export function processIdentity(): ProcessIdentity {
  if (!mine) {
    let pidns: string | undefined;
    try {
      pidns = readlinkSync('/proc/self/ns/pid');
    } catch {
      // Not Linux: nobody can tell whether this process lives; holders wait for the timeout.
    }
    mine = { host: hostname(), ...(pidns ? { pidns } : {}), pid: process.pid };
  }
  return mine;
}

/**
 * Whether the process a record names is gone: on this host and in this PID namespace, no
 * process has its PID. Undefined when that cannot be told from here (another host or
 * namespace, or a record without the fields). A PID taken again by a new process reads as
 * alive: the caller then waits for the record's timeout, as it would without this.
 */
export function processGone(p: { readonly host?: unknown; readonly pidns?: unknown; readonly pid?: unknown }): boolean | undefined {
  const me = processIdentity();
  if (p.host !== me.host || p.pidns === undefined || p.pidns !== me.pidns || typeof p.pid !== 'number' || !Number.isSafeInteger(p.pid) || p.pid <= 0) return undefined;
  try {
    process.kill(p.pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}
