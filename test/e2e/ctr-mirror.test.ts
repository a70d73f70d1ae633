import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../helpers/commands.js';
import { freePort, startDockerRegistry, type DockerRegistry } from '../helpers/docker-registry.js';
import { tempDir } from '../helpers/http.js';
import { buildLayout, skopeo, tapUpstream, writePolicy, type LayoutImage, type UpstreamTap } from '../helpers/mirror.js';
import { startServer, tail, type TestServer } from '../helpers/server.js';

/**
 * containerd pulls through Hoist as a registry mirror (issue 13), configured the way the
 * README says: a hosts.toml for the upstream's name that lists Hoist as a host for pull
 * and resolve. The image is named after a registry nobody listens on, so the pull can only
 * succeed through the mirror; Hoist fetches from the real upstream (docker-registry).
 *
 *   ctr pull 127.0.0.1:<nobody>/library/app:v1
 *     └─ hosts.toml: [host."http://<hoist>"] capabilities = ["pull", "resolve"]
 *          └─ Hoist, proxy.remoteUrl ──► docker-registry
 *
 * containerd runs as its own daemon (root, needed for its snapshots) on a socket, root and
 * state directory of this test's own, with the CRI plugin off. Needs containerd and ctr
 * (Debian package `containerd`), skopeo and umoci.
 */

let work: string;
let cleanup: () => Promise<void>;
let upstream: DockerRegistry;
let tap: UpstreamTap;
let mirror: TestServer;
let containerd: ChildProcess | undefined;
let containerdLog = '';
let socket: string;
let layout: LayoutImage;

const ctr = (args: string[]) => run('ctr', ['--address', socket, '--namespace', 'hoist-test', ...args], () => `--- containerd ---\n${containerdLog.slice(-3000)}\n--- mirror ---\n${tail(mirror.logs(), 30)}`);

async function startContainerd(dir: string): Promise<void> {
  if (!existsSync('/usr/bin/containerd') && !existsSync('/usr/sbin/containerd')) {
    throw new Error('containerd is not installed: apt-get install -y --no-install-recommends containerd');
  }
  await mkdir(dir, { recursive: true });
  socket = join(dir, 'containerd.sock');
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
  containerd = spawn('containerd', ['--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  for (const s of [containerd.stdout!, containerd.stderr!]) s.setEncoding('utf8').on('data', (t: string) => { containerdLog = (containerdLog + t).slice(-20_000); });
  let exited = false;
  containerd.once('exit', () => { exited = true; });
  for (const deadline = Date.now() + 30_000; ;) {
    if (exited) throw new Error(`containerd exited at start:\n${containerdLog.slice(-3000)}`);
    if (existsSync(socket) && (await run('ctr', ['--address', socket, 'version'], undefined, 10_000).then(() => true, () => false))) return;
    if (Date.now() > deadline) throw new Error(`containerd did not serve ${socket} within 30 s:\n${containerdLog.slice(-3000)}`);
    await sleep(100);
  }
}

beforeAll(async () => {
  ({ path: work, cleanup } = await tempDir('hoist-ctr-mirror-'));
  const policy = await writePolicy(work);
  upstream = await startDockerRegistry({ dir: join(work, 'upstream') });
  tap = await tapUpstream(upstream.url);
  layout = await buildLayout(work, 'ctr-app', 2 * 1024 * 1024);
  await skopeo(policy, ['copy', '--dest-tls-verify=false', `oci:${layout.dir}:${layout.tag}`, `docker://${upstream.host}/library/app:v1`]);
  mirror = await startServer({ storage: `fs:${join(work, 'mirror')}`, frontend: 'node', env: { HOIST_PROXY_REMOTE_URL: tap.endpoint } });
  await startContainerd(join(work, 'containerd'));
});

afterAll(async () => {
  if (containerd && containerd.exitCode === null) {
    const gone = new Promise((r) => containerd!.once('exit', r));
    containerd.kill('SIGTERM');
    await Promise.race([gone, sleep(10_000).then(() => containerd!.kill('SIGKILL'))]);
  }
  await mirror?.stop();
  await tap?.close();
  await upstream?.stop();
  await cleanup?.();
});

describe('containerd (ctr) with Hoist as its mirror', () => {
  it('pulls and unpacks an image through the mirror configured in hosts.toml', async () => {
    const nobody = `127.0.0.1:${await freePort()}`;
    const hostsDir = join(work, 'certs.d');
    await mkdir(join(hostsDir, nobody), { recursive: true });
    await writeFile(join(hostsDir, nobody, 'hosts.toml'), [
      `server = "http://${nobody}"`,
      '',
      `[host."http://${mirror.host}"]`,
      '  capabilities = ["pull", "resolve"]',
      '',
    ].join('\n'));
    const ref = `${nobody}/library/app:v1`;
    await ctr(['images', 'pull', '--plain-http', '--hosts-dir', hostsDir, '--snapshotter', 'native', ref]);

    const list = await ctr(['images', 'ls']);
    const line = list.stdout.split('\n').find((l) => l.startsWith(`${ref} `));
    expect(line, list.stdout).toBeDefined();
    expect(line).toContain(layout.manifestDigest);
    // Every blob came through the mirror, which fetched each from the upstream once.
    const served = mirror.records().filter((r) => r.msg === 'request' && r.status === 200).map((r) => String(r.path));
    for (const d of layout.digests.slice(1)) {
      expect(served, d).toContain(`/v2/library/app/blobs/${d}`);
      expect(tap.count('GET', `/blobs/${d}`), d).toBe(1);
    }
    expect(served.some((p) => p.startsWith('/v2/library/app/manifests/'))).toBe(true);
    // Complete, and unpacked: a snapshot per layer.
    const check = await ctr(['images', 'check']);
    expect(check.stdout).toMatch(new RegExp(`${ref.replace(/[.:/]/g, '\\$&')}\\s.*complete`));
    const snapshots = await ctr(['snapshots', '--snapshotter', 'native', 'ls']);
    expect(snapshots.stdout.trim().split('\n').length - 1, snapshots.stdout).toBe(layout.digests.length - 2);
  });
});
