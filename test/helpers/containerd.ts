import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { run, type RunResult } from './commands.js';

/**
 * A containerd daemon of the test's own, for the suites where containerd (`ctr`) is the
 * client: run as root (needed for its snapshots) on a socket, root, state and opt directory
 * under `dir`, with the CRI plugin off, so it never touches a system containerd or its
 * images. Needs containerd and ctr (Debian package `containerd`).
 *
 *   const containerd = await startContainerd(join(work, 'containerd'));
 *   await containerd.ctr('hoist-test', ['images', 'pull', '--plain-http', ref]);
 *   await containerd.stop();
 */

export interface Containerd {
  /** The daemon's gRPC socket (`ctr --address`). */
  readonly socket: string;
  /** The last of what the daemon printed, for error messages. */
  logs(): string;
  /**
   * `ctr --address <socket> --namespace <namespace> <args>`; a failure carries `context()`
   * (e.g. the registry's log tail), then the daemon's.
   */
  ctr(namespace: string, args: string[], context?: () => string): Promise<RunResult>;
  /** SIGTERM, then SIGKILL after 10 s; resolves once the daemon is gone. */
  stop(): Promise<void>;
}

const running = new Set<ChildProcess>();
process.once('exit', () => {
  // Never leave a root daemon behind when a test file crashes or forgets to stop it.
  for (const child of running) child.kill('SIGKILL');
});

export async function startContainerd(dir: string): Promise<Containerd> {
  if (!existsSync('/usr/bin/containerd') && !existsSync('/usr/sbin/containerd')) {
    throw new Error('containerd is not installed: apt-get install -y --no-install-recommends containerd');
  }
  await mkdir(dir, { recursive: true });
  const socket = join(dir, 'containerd.sock');
  const config = join(dir, 'config.toml');
  await writeFile(config, [
    'version = 2',
    `root = "${join(dir, 'root')}"`,
    `state = "${join(dir, 'state')}"`,
    'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
    '[grpc]',
    `  address = "${socket}"`,
    '[ttrpc]',
    `  address = "${socket}.ttrpc"`,
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = "${join(dir, 'opt')}"`,
    '',
  ].join('\n'));
  const child = spawn('containerd', ['--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let log = '';
  for (const s of [child.stdout, child.stderr]) s.setEncoding('utf8').on('data', (t: string) => { log = (log + t).slice(-20_000); });
  const exited = new Promise<void>((resolve) => child.once('exit', () => {
    running.delete(child);
    resolve();
  }));
  let gone = false;
  void exited.then(() => { gone = true; });
  const logs = (): string => log.slice(-3000);

  const stop = async (): Promise<void> => {
    if (gone) return;
    child.kill('SIGTERM');
    await Promise.race([exited, sleep(10_000).then(() => child.kill('SIGKILL'))]);
    await exited;
  };

  try {
    for (const deadline = Date.now() + 30_000; ;) {
      if (gone) throw new Error(`containerd exited at start:\n${logs()}`);
      if (existsSync(socket) && (await run('ctr', ['--address', socket, 'version'], undefined, 10_000).then(() => true, () => false))) break;
      if (Date.now() > deadline) throw new Error(`containerd did not serve ${socket} within 30 s:\n${logs()}`);
      await sleep(100);
    }
  } catch (err) {
    await stop();
    throw err;
  }

  return {
    socket,
    logs,
    ctr: (namespace, args, context) => run('ctr', ['--address', socket, '--namespace', namespace, ...args],
      () => `${context ? `${context()}\n` : ''}--- containerd ---\n${logs()}`),
    stop,
  };
}
