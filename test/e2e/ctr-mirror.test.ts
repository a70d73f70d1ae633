import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startContainerd, type Containerd } from '../helpers/containerd.js';
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
 * containerd runs as its own daemon (test/helpers/containerd.ts: root, needed for its
 * snapshots, on a socket, root and state directory of this test's own, with the CRI plugin
 * off). Needs containerd and ctr (Debian package `containerd`), skopeo and umoci.
 */

let work: string;
let cleanup: () => Promise<void>;
let upstream: DockerRegistry;
let tap: UpstreamTap;
let mirror: TestServer;
let containerd: Containerd;
let layout: LayoutImage;

const ctr = (args: string[]) => containerd.ctr('hoist-test', args, () => tail(mirror.logs(), 30));

beforeAll(async () => {
  ({ path: work, cleanup } = await tempDir('hoist-ctr-mirror-'));
  const policy = await writePolicy(work);
  upstream = await startDockerRegistry({ dir: join(work, 'upstream') });
  tap = await tapUpstream(upstream.url);
  layout = await buildLayout(work, 'ctr-app', 2 * 1024 * 1024);
  await skopeo(policy, ['copy', '--dest-tls-verify=false', `oci:${layout.dir}:${layout.tag}`, `docker://${upstream.host}/library/app:v1`]);
  mirror = await startServer({ storage: `fs:${join(work, 'mirror')}`, frontend: 'node', env: { HOIST_PROXY_REMOTE_URL: tap.endpoint } });
  containerd = await startContainerd(join(work, 'containerd'));
});

afterAll(async () => {
  await containerd?.stop();
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
