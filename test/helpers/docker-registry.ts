import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ToolMissingError } from './commands.js';
import { tail } from './server.js';

/**
 * Debian's docker-registry (CNCF distribution 2.8) as a test upstream or reference: fs storage
 * under `dir` (or an S3 bucket), a config written as YAML next to it, a free loopback port (it cannot take port 0),
 * optionally HTTP Basic from an htpasswd file (bcrypt). Restartable on the same port and
 * storage, so a test can take the upstream away and bring it back.
 *
 *   const up = await startDockerRegistry({ dir });
 *   await pushImage(up.url, 'library/app', 'v1');
 *   await up.stop();            // down
 *   await up.start();           // up again, same port and content
 */
export const DOCKER_REGISTRY = '/usr/bin/docker-registry';

export interface DockerRegistryOptions {
  /** Storage (unless `s3`) and config go here. */
  dir: string;
  /** Store in an S3 bucket instead (its s3 driver, path-style addressing), e.g. through a recording proxy. */
  s3?: { endpoint: string; bucket: string; rootDirectory: string; region?: string };
  /** An htpasswd file (bcrypt): the registry then asks for HTTP Basic. */
  htpasswd?: string;
  /** A port to use (default: a free one). */
  port?: number;
}

export interface DockerRegistry {
  readonly url: string;
  /** `127.0.0.1:PORT` */
  readonly host: string;
  readonly port: number;
  readonly running: boolean;
  logs(): string[];
  /** Starts it (again), on the same port and storage. */
  start(): Promise<void>;
  /** SIGTERM, waits for the exit. */
  stop(): Promise<void>;
  /** SIGKILL: the upstream dies on the spot, mid-response. */
  kill(): Promise<void>;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    }).on('error', reject);
  });
}

function ping(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    http.get(`${url}/v2/`, { agent: false, timeout: 1000 }, (res) => { res.resume(); resolve(true); })
      .on('error', () => resolve(false))
      .on('timeout', function (this: http.ClientRequest) { this.destroy(); });
  });
}

export async function startDockerRegistry(opts: DockerRegistryOptions): Promise<DockerRegistry> {
  if (!existsSync(DOCKER_REGISTRY)) {
    throw new ToolMissingError(`${DOCKER_REGISTRY} is not installed: apt-get install -y --no-install-recommends docker-registry`);
  }
  const port = opts.port ?? await freePort();
  const url = `http://127.0.0.1:${port}`;
  await mkdir(join(opts.dir, 'data'), { recursive: true });
  const config = join(opts.dir, 'config.yml');
  await writeFile(config, [
    'version: 0.1',
    'log: {level: info, accesslog: {disabled: false}}',
    ...(opts.s3
      ? [
        'storage:',
        '  s3:',
        `    accesskey: ${process.env.AWS_ACCESS_KEY_ID ?? 'testkey'}`,
        `    secretkey: ${process.env.AWS_SECRET_ACCESS_KEY ?? 'testsecret'}`,
        `    region: ${opts.s3.region ?? 'us-east-1'}`,
        `    regionendpoint: ${opts.s3.endpoint}`,
        `    bucket: ${opts.s3.bucket}`,
        `    rootdirectory: ${opts.s3.rootDirectory}`,
        `    secure: ${opts.s3.endpoint.startsWith('https:')}`,
        '    v4auth: true',
        '  delete: {enabled: true}',
        '  redirect: {disable: true}',
      ]
      : [`storage: {filesystem: {rootdirectory: ${join(opts.dir, 'data')}}, delete: {enabled: true}}`]),
    `http: {addr: "127.0.0.1:${port}"}`,
    ...(opts.htpasswd ? [`auth: {htpasswd: {realm: upstream, path: ${opts.htpasswd}}}`] : []),
    '',
  ].join('\n'));
  const lines: string[] = [];
  let child: ReturnType<typeof spawn> | undefined;
  let exited: Promise<void> = Promise.resolve();

  const start = async (): Promise<void> => {
    // Its s3 driver refuses to start while AWS_CA_BUNDLE is set.
    const { AWS_CA_BUNDLE: _, ...env } = process.env;
    const c = spawn(DOCKER_REGISTRY, ['serve', config], { stdio: ['ignore', 'pipe', 'pipe'], env });
    child = c;
    let gone = false;
    exited = new Promise((resolve) => c.once('exit', () => { gone = true; if (child === c) child = undefined; resolve(); }));
    for (const s of [c.stdout!, c.stderr!]) s.setEncoding('utf8').on('data', (t: string) => lines.push(...t.split('\n').filter(Boolean)));
    for (const deadline = Date.now() + 20_000; ;) {
      if (gone) throw new Error(`docker-registry exited before serving:\n${tail(lines)}`);
      if (await ping(url)) return;
      if (Date.now() > deadline) {
        c.kill('SIGKILL');
        throw new Error(`docker-registry did not answer on ${url} within 20 s:\n${tail(lines)}`);
      }
      await sleep(50);
    }
  };
  const signal = async (sig: NodeJS.Signals): Promise<void> => {
    if (!child) return;
    child.kill(sig);
    await exited;
  };
  await start();
  running.add(signal);
  return {
    url,
    host: `127.0.0.1:${port}`,
    port,
    get running() {
      return child !== undefined;
    },
    logs: () => [...lines],
    start,
    stop: () => signal('SIGTERM'),
    kill: () => signal('SIGKILL'),
  };
}

const running = new Set<(sig: NodeJS.Signals) => Promise<void>>();
process.once('exit', () => {
  for (const kill of running) void kill('SIGKILL');
});
