import { createHash, randomBytes } from 'node:crypto';
import { MEDIA_TYPES } from './oci.js';

/**
 * A registry client for the collection tests (test/gc/): pushes the way docker, skopeo and
 * crane do (HEAD each blob and skip it when the registry has it, else mount it from another
 * repository or upload it, monolithic or in chunks; then PUT the manifest), pulls with every
 * digest verified, and records every error it gets, so a test can say which push failed and
 * why. Nothing here retries: a failure is a finding.
 */

export const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

export interface BlobRef {
  readonly digest: string;
  readonly size: number;
  readonly mediaType: string;
  /** The bytes, kept by the client (pushes re-upload them when the registry lost them). */
  readonly bytes: Buffer;
}

export interface ClientImage {
  readonly repo: string;
  readonly manifest: Buffer;
  readonly digest: string;
  readonly mediaType: string;
  /** Config and layers (image), or nothing (index). */
  readonly blobs: BlobRef[];
  /** Index children. */
  readonly children: ClientImage[];
}

/** A failed request: what was asked, and the registry's error code. */
export interface Failure {
  readonly what: string;
  readonly status: number;
  readonly code: string | undefined;
  readonly body: string;
}

export class ProtocolError extends Error {
  readonly failure: Failure;
  constructor(failure: Failure) {
    super(`${failure.what}: HTTP ${failure.status} ${failure.code ?? ''} ${failure.body.slice(0, 300)}`);
    this.failure = failure;
  }
}

export function blobRef(bytes: Buffer, mediaType = 'application/vnd.oci.image.layer.v1.tar'): BlobRef {
  return { digest: sha256(bytes), size: bytes.length, mediaType, bytes };
}

/** An image: a config naming the layers, and a manifest naming both. */
export function image(repo: string, layers: BlobRef[]): ClientImage {
  const config = blobRef(Buffer.from(JSON.stringify({
    architecture: 'amd64', os: 'linux', nonce: randomBytes(6).toString('hex'),
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
  })), MEDIA_TYPES.imageConfig);
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.imageManifest,
    config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
    layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
  }));
  return { repo, manifest, digest: sha256(manifest), mediaType: MEDIA_TYPES.imageManifest, blobs: [config, ...layers], children: [] };
}

export function index(repo: string, children: ClientImage[]): ClientImage {
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.imageIndex,
    manifests: children.map((c, i) => ({ mediaType: c.mediaType, digest: c.digest, size: c.manifest.length, platform: { architecture: `a${i}`, os: 'linux' } })),
  }));
  return { repo, manifest, digest: sha256(manifest), mediaType: MEDIA_TYPES.imageIndex, blobs: [], children };
}

export interface PushStats {
  uploaded: number;
  skipped: number;
  mounted: number;
  manifests: number;
}

/** fetch()'s options, with a Buffer body. */
export type ClientInit = Omit<RequestInit, 'body'> & { body?: Buffer };

export class GcTestClient {
  readonly base: string;
  readonly stats: PushStats = { uploaded: 0, skipped: 0, mounted: 0, manifests: 0 };
  /** Chunk size for chunked uploads. */
  readonly chunkBytes: number;

  /** A namespace's path prefix (`/team-a`), or ''. */
  readonly prefix: string;

  constructor(base: string, chunkBytes = 64 * 1024, prefix = '') {
    this.base = base;
    this.chunkBytes = chunkBytes;
    this.prefix = prefix;
  }

  /**
   * Pushes an image or index as a client does: children first, then for each blob HEAD
   * (skip if present), else mount it (if `mount` says where from), else upload; then the manifest.
   */
  async push(img: ClientImage, reference: string, mount?: { from: string; digests: ReadonlySet<string> }): Promise<void> {
    for (const c of img.children) await this.push(c, c.digest, mount);
    let n = 0;
    for (const b of img.blobs) {
      if (await this.headBlob(img.repo, b.digest)) {
        this.stats.skipped++;
      } else if (mount?.digests.has(b.digest) && (await this.mount(img.repo, b.digest, mount.from))) {
        this.stats.mounted++;
      } else {
        await ((n++ % 2 === 0) ? this.uploadMonolithic(img.repo, b.bytes) : this.uploadChunked(img.repo, b.bytes));
        this.stats.uploaded++;
      }
    }
    await this.expect(`PUT /v2/${img.repo}/manifests/${reference}`, 201, {
      method: 'PUT', headers: { 'content-type': img.mediaType }, body: img.manifest,
    });
    this.stats.manifests++;
  }

  async headBlob(repo: string, digest: string): Promise<boolean> {
    const r = await this.fetch(`/v2/${repo}/blobs/${digest}`, { method: 'HEAD' });
    if (r.status === 200) return true;
    if (r.status === 404) return false;
    throw await failure(`HEAD /v2/${repo}/blobs/${digest}`, r);
  }

  async mount(repo: string, digest: string, from: string): Promise<boolean> {
    const r = await this.fetch(`/v2/${repo}/blobs/uploads/?mount=${digest}&from=${from}`, { method: 'POST' });
    await r.arrayBuffer();
    if (r.status === 201) return true;
    if (r.status === 202) {
      // Not mountable: the registry opened an upload session instead; give it back.
      const location = r.headers.get('location');
      if (location) await (await this.fetch(location, { method: 'DELETE' })).arrayBuffer();
      return false;
    }
    throw new ProtocolError({ what: `POST mount ${digest} from ${from}`, status: r.status, code: undefined, body: '' });
  }

  async uploadMonolithic(repo: string, bytes: Buffer): Promise<void> {
    await this.expect(`POST /v2/${repo}/blobs/uploads/?digest=${sha256(bytes)}`, 201, {
      method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: bytes,
    });
  }

  async uploadChunked(repo: string, bytes: Buffer): Promise<void> {
    const post = await this.expect(`POST /v2/${repo}/blobs/uploads/`, 202, { method: 'POST' });
    let location = post.headers.get('location')!;
    for (let at = 0; at < bytes.length; at += this.chunkBytes) {
      const chunk = bytes.subarray(at, Math.min(bytes.length, at + this.chunkBytes));
      const r = await this.expect(`PATCH ${location}`, 202, {
        method: 'PATCH',
        headers: { 'content-type': 'application/octet-stream', 'content-range': `${at}-${at + chunk.length - 1}` },
        body: chunk,
      }, location);
      location = r.headers.get('location')!;
    }
    const u = new URL(location, this.base);
    u.searchParams.set('digest', sha256(bytes));
    await this.expect(`PUT ${u.pathname}?digest=…`, 201, { method: 'PUT' }, `${u.pathname}${u.search}`);
  }

  async deleteTag(repo: string, tag: string): Promise<void> {
    await this.expect(`DELETE /v2/${repo}/manifests/${tag}`, 202, { method: 'DELETE' });
  }

  async tags(repo: string): Promise<string[]> {
    const r = await this.fetch(`/v2/${repo}/tags/list`);
    if (r.status === 404) return [];
    if (r.status !== 200) throw await failure(`GET /v2/${repo}/tags/list`, r);
    return ((await r.json()) as { tags: string[] }).tags;
  }

  async catalog(): Promise<string[]> {
    const r = await this.expect('GET /v2/_catalog', 200, {});
    return ((await r.json()) as { repositories: string[] }).repositories;
  }

  /**
   * Pulls `reference` completely: the manifest, every index child, every config and layer,
   * each checked against its digest. Returns the number of blob bytes read.
   */
  async pull(repo: string, reference: string): Promise<number> {
    const r = await this.expect(`GET /v2/${repo}/manifests/${reference}`, 200, {
      headers: { accept: [MEDIA_TYPES.imageManifest, MEDIA_TYPES.imageIndex].join(', ') },
    });
    const bytes = Buffer.from(await r.arrayBuffer());
    const digest = sha256(bytes);
    if (reference.includes(':') && digest !== reference) throw new Error(`manifest ${repo}@${reference} has digest ${digest}`);
    if (r.headers.get('docker-content-digest') !== digest) throw new Error(`manifest ${repo}:${reference}: Docker-Content-Digest ${r.headers.get('docker-content-digest')} but content is ${digest}`);
    const m = JSON.parse(bytes.toString('utf8')) as { config?: { digest: string }; layers?: Array<{ digest: string }>; manifests?: Array<{ digest: string }> };
    let total = 0;
    for (const child of m.manifests ?? []) total += await this.pull(repo, child.digest);
    for (const b of [...(m.config ? [m.config] : []), ...(m.layers ?? [])]) {
      const br = await this.expect(`GET /v2/${repo}/blobs/${b.digest}`, 200, {});
      const body = Buffer.from(await br.arrayBuffer());
      if (sha256(body) !== b.digest) throw new Error(`blob ${b.digest} of ${repo}:${reference} has digest ${sha256(body)}`);
      total += body.length;
    }
    return total;
  }

  async fetch(path: string, init: ClientInit = {}): Promise<Response> {
    const { body, ...rest } = init;
    return fetch(this.#url(path), { ...rest, ...(body ? { body: asBody(body) } : {}) });
  }

  /** Registry paths get the namespace prefix; Location headers have it already. */
  #url(path: string): URL {
    if (/^https?:/.test(path) || !this.prefix || path.startsWith(`${this.prefix}/`)) return new URL(path, this.base);
    return new URL(`${this.prefix}${path}`, this.base);
  }

  async expect(what: string, status: number, init: ClientInit, path?: string): Promise<Response> {
    const r = await this.fetch(path ?? what.slice(what.indexOf(' ') + 1), init);
    if (r.status !== status) throw await failure(what, r);
    return r;
  }
}

async function failure(what: string, r: Response): Promise<ProtocolError> {
  const body = await r.text().catch(() => '');
  let code: string | undefined;
  try {
    code = (JSON.parse(body) as { errors?: Array<{ code?: string }> }).errors?.[0]?.code;
  } catch {
    // Not the error envelope.
  }
  return new ProtocolError({ what, status: r.status, code, body });
}

function asBody(b: Buffer): Uint8Array<ArrayBuffer> {
  return new Uint8Array(b.buffer as ArrayBuffer, b.byteOffset, b.byteLength);
}
