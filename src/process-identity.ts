import { readFileSync, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';

/**
 * Which process holds something in storage (a server's presence, an upload's lock, the
 * collection lease), in terms another process on the same machine can check: the host name,
 * this boot of the machine, the PID namespace (Linux; containers have their own) and the PID.
 * Written into the record, so that a server restarted after a crash need not wait out what
 * its dead predecessor held.
 *
 * The boot ID is what tells machines apart: host names repeat (cloned VMs, `localhost`), and
 * the first PID namespace has the same number on every Linux machine, so two machines sharing
 * a store (NFS) could otherwise each read the other's live processes as gone here. It also
 * tells a record from before a reboot.
 */
export interface ProcessIdentity {
  readonly host: string;
  readonly boot?: string;
  readonly pidns?: string;
  readonly pid: number;
}

let mine: ProcessIdentity | undefined;

export function processIdentity(): ProcessIdentity {
  if (!mine) {
    let boot: string | undefined;
    let pidns: string | undefined;
    try {
      boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() || undefined;
      pidns = readlinkSync('/proc/self/ns/pid');
    } catch {
      // Not Linux: nobody can tell whether this process lives; holders wait for the timeout.
    }
    mine = { host: hostname(), ...(boot && pidns ? { boot, pidns } : {}), pid: process.pid };
  }
  return mine;
}

/**
 * Whether the process a record names is gone: on this machine, in this boot and in this PID
 * namespace, no process has its PID. Undefined when that cannot be told from here (another
 * machine, boot or namespace, or a record without the fields). A PID taken again by a new
 * process reads as alive: the caller then waits for the record's timeout, as it would without this.
 */
export function processGone(p: { readonly host?: unknown; readonly boot?: unknown; readonly pidns?: unknown; readonly pid?: unknown }): boolean | undefined {
  const me = processIdentity();
  if (me.boot === undefined || p.host !== me.host || p.boot !== me.boot || p.pidns !== me.pidns) return undefined;
  if (typeof p.pid !== 'number' || !Number.isSafeInteger(p.pid) || p.pid <= 0) return undefined;
  try {
    process.kill(p.pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}
