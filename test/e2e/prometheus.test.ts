import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../helpers/commands.js';
import { metricsUrlOf } from '../helpers/metrics.js';
import { makeImage, MEDIA_TYPES, type Image } from '../helpers/oci.js';
import { startPrometheus, type PrometheusServer } from '../helpers/prometheus.js';
import { startServer, tail, type TestServer } from '../helpers/server.js';

/**
 * Issue 12, end to end with a real Prometheus: Hoist serves metrics on their own listener
 * (HOIST_METRICS_LISTEN), a Prometheus server (Debian's package, its own port and temporary
 * storage) scrapes it every second, skopeo pushes an image, and the pushed byte count comes
 * back from Prometheus's own query API, equal to the bytes of the blobs skopeo uploaded.
 * Fails (never skips) when prometheus or skopeo is missing.
 */

/** Writes `image` as an OCI image layout that skopeo can copy from (`oci:<dir>:<tag>`). */
async function writeLayout(dir: string, image: Image, tag: string): Promise<void> {
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  const blobs = [image.config, ...image.layers].map((b) => [b.descriptor.digest, b.bytes] as const);
  blobs.push([image.manifestDigest, image.manifestBytes]);
  for (const [digest, bytes] of blobs) await writeFile(join(dir, 'blobs', 'sha256', digest.slice('sha256:'.length)), bytes);
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await writeFile(join(dir, 'index.json'), JSON.stringify({
    schemaVersion: 2,
    manifests: [{
      mediaType: MEDIA_TYPES.imageManifest, digest: image.manifestDigest, size: image.manifestBytes.byteLength,
      annotations: { 'org.opencontainers.image.ref.name': tag },
    }],
  }));
}

describe('Prometheus scrapes Hoist while skopeo pushes', () => {
  let work: string;
  let server: TestServer;
  let prometheus: PrometheusServer;
  let policy: string;

  beforeAll(async () => {
    await run('skopeo', ['--version']);
    work = await mkdtemp(join(tmpdir(), 'hoist-e2e-prometheus-'));
    policy = join(work, 'policy.json');
    await writeFile(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
    server = await startServer({ storage: 'memory:', env: { HOIST_METRICS_LISTEN: '127.0.0.1:0' } });
    prometheus = await startPrometheus({ hoist: [new URL(metricsUrlOf(server)).host] });
  });

  afterAll(async () => {
    await prometheus?.stop();
    if (server) expect(await server.stop()).toBe(0);
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('reads the pushed byte count back from Prometheus', async () => {
    await prometheus.waitFor('up{job="hoist"}', (v) => v === 1);
    expect((await prometheus.query('hoist_upload_received_bytes_total'))[0]?.value, 'nothing pushed yet').toBe(0);

    const image = makeImage({ layerSizesBytes: [300_000, 2 * 1024 * 1024 + 7] });
    const layout = join(work, 'layout');
    await writeLayout(layout, image, 'v1');
    await run('skopeo', ['--policy', policy, 'copy', '--dest-tls-verify=false', `oci:${layout}:v1`, `docker://${server.host}/prom/app:v1`], () => tail(server.logs()));

    // What skopeo pushed, as the registry serves it back: the config and layers it uploaded.
    const res = await fetch(`${server.url}/v2/prom/app/manifests/v1`, { headers: { accept: MEDIA_TYPES.imageManifest } });
    expect(res.status).toBe(200);
    const manifest = (await res.json()) as { config: { size: number }; layers: Array<{ size: number }> };
    const pushed = [manifest.config, ...manifest.layers].reduce((n, d) => n + d.size, 0);
    expect(pushed).toBeGreaterThan(2 * 1024 * 1024);

    expect(await prometheus.waitFor('hoist_upload_received_bytes_total', (v) => v >= pushed)).toBe(pushed);
    expect(await prometheus.waitFor('hoist_blobs_committed_total', (v) => v >= 3)).toBe(3);
    expect(await prometheus.waitFor('hoist_blob_size_bytes_sum', (v) => v >= pushed)).toBe(pushed);
    expect(await prometheus.waitFor('sum(hoist_http_requests_total{route="manifest",method="PUT",status="201"})', (v) => v >= 1)).toBe(1);
  });
});
