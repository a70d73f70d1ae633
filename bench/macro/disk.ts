import { closeSync, fdatasyncSync, mkdirSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { MiB } from './loadgen.js';

/**
 * The disk's own durable write speed, the limit of a durable push: `bytes` written to a new
 * file in `dir` in 1 MiB writes of zeros and then fdatasync'ed, timed from the open to the
 * end of the sync. That is what `dd if=/dev/zero of=F bs=1M count=N conv=fdatasync` reports,
 * without needing dd. Blocking on purpose: nothing else runs while the runner measures.
 *
 * The disk here varies from 330 MiB/s to over 1 GiB/s from minute to minute, so the runner
 * measures it right before each push it is compared with.
 */
export function durableWriteMiBps(dir: string, bytes: number): number {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `disk-probe-${process.pid}`);
  const block = Buffer.alloc(MiB);
  const t0 = performance.now();
  const fd = openSync(file, 'w');
  try {
    for (let left = bytes; left > 0; left -= block.length) writeSync(fd, block, 0, Math.min(left, block.length));
    fdatasyncSync(fd);
  } finally {
    closeSync(fd);
  }
  const seconds = (performance.now() - t0) / 1000;
  rmSync(file, { force: true });
  return bytes / MiB / seconds;
}

/**
 * Writes `bytes` to a file in `dir` (a tmpfs) and deletes it, so that the registry next
 * writing there gets memory the hypervisor already backs. On these VMs (virtio-balloon with
 * free page reporting) the first write to a guest page the host has taken back costs about
 * ten times an ordinary one: a new 1 GiB tmpfs file took 0.35 s of system time on recently
 * freed pages and up to 3.5 s on pages left free for a while. Both registries pay that alike,
 * but at random, which drowned what their own CPU per GiB is; after this, a tmpfs push
 * mostly finds recently freed pages.
 */
export function primeMemory(dir: string, bytes: number): void {
  const file = join(dir, `hoist-bench-prime-${process.pid}`);
  const block = Buffer.alloc(4 * MiB);
  const fd = openSync(file, 'w');
  try {
    for (let left = bytes; left > 0; left -= block.length) writeSync(fd, block, 0, Math.min(left, block.length));
  } finally {
    closeSync(fd);
    rmSync(file, { force: true });
  }
}

/**
 * What copying bytes into the page cache of `dir` (a tmpfs) costs this process: `bytes`
 * written to a new file in 4 MiB writes (a registry's batches), CPU seconds (user + sys) per
 * GiB; the file is then deleted. Measured right after primeMemory(), on the pages the push
 * next finds. It is the third part of a push's floor on tmpfs (report.ts engineGoalsTable),
 * beside receiving the body (the sink's CPU) and hashing it once (SHA-256 on one core).
 */
export function pageCacheCpuSecPerGiB(dir: string, bytes: number): number {
  const file = join(dir, `hoist-bench-copy-${process.pid}`);
  const block = Buffer.alloc(4 * MiB, 1);
  const before = process.cpuUsage();
  const fd = openSync(file, 'w');
  try {
    for (let left = bytes; left > 0; left -= block.length) writeSync(fd, block, 0, Math.min(left, block.length));
  } finally {
    closeSync(fd);
  }
  const used = process.cpuUsage(before);
  rmSync(file, { force: true });
  return (used.user + used.system) / 1e6 / (bytes / (1024 * MiB));
}
