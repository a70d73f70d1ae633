import { createHash, randomBytes } from 'node:crypto';

/**
 * Small OCI helpers for HTTP tests: digests, random blobs, and pushes done the plain way a
 * client does them (OCI distribution-spec v1.1, "Pushing blobs" POST-then-PUT, and
 * "Pushing Manifests"). Each push checks the status the spec requires and throws with the
 * response body otherwise, so a test fails at the step that went wrong.
 */

export const MEDIA_TYPES = {
  imageManifest: 'application/vnd.oci.image.manifest.v1+json',
  imageIndex: 'application/vnd.oci.image.index.v1+json',
  imageConfig: 'application/vnd.oci.image.config.v1+json',
  layerTar: 'application/vnd.oci.image.layer.v1.tar',
  layerTarGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
} as const;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

export interface Blob {
  bytes: Buffer;
  descriptor: Descriptor;
}

export interface Image {
  config: Blob;
  layers: Blob[];
  manifest: Record<string, unknown>;
  /** The manifest exactly as pushed; its digest is `manifestDigest`. */
  manifestBytes: Buffer;
  manifestDigest: string;
  mediaType: string;
}

/** `sha256:<hex>` of the bytes. */
export function sha256(data: Uint8Array | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** Cryptographically random bytes: incompressible, and unique per test run. */
export function randomBlob(sizeBytes: number): Buffer {
  return randomBytes(sizeBytes);
}

function toBuffer(data: Uint8Array | string): Buffer {
  return typeof data === 'string' ? Buffer.from(data, 'utf8') : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

/** A view (no copy) typed as fetch wants it: TypeScript 5.9 no longer takes Buffer<ArrayBufferLike>. */
function asBody(bytes: Buffer): Uint8Array<ArrayBuffer> {
  return new Uint8Array(bytes.buffer as ArrayBuffer, bytes.byteOffset, bytes.byteLength);
}

async function describeFailure(step: string, res: Response): Promise<Error> {
  let body = '';
  try {
    body = await res.text();
  } catch {
    // The body is only for the message.
  }
  return new Error(`${step}: HTTP ${res.status} ${res.statusText}\n${[...res.headers].map(([k, v]) => `${k}: ${v}`).join('\n')}\n\n${body.slice(0, 2000)}`);
}

/** Resolves a Location header (absolute, or relative to the registry) to a URL. */
export function resolveLocation(registryUrl: string, res: Response): URL {
  const location = res.headers.get('location');
  if (!location) throw new Error(`${res.url}: HTTP ${res.status} without a Location header`);
  return new URL(location, registryUrl);
}

export interface PushedBlob {
  digest: string;
  size: number;
  /** The Location header of the 201 response, resolved. */
  location: URL;
}

/**
 * Pushes a blob monolithically in two steps: POST /v2/<repo>/blobs/uploads/ (202 with a
 * Location), then PUT <location>?digest=<digest> with the whole body (201).
 */
export async function pushBlob(registryUrl: string, repo: string, data: Uint8Array | string): Promise<PushedBlob> {
  const bytes = toBuffer(data);
  const digest = sha256(bytes);
  const post = await fetch(`${registryUrl}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  if (post.status !== 202) throw await describeFailure(`POST /v2/${repo}/blobs/uploads/`, post);
  await post.arrayBuffer();
  const upload = resolveLocation(registryUrl, post);
  upload.searchParams.set('digest', digest);
  const put = await fetch(upload, {
    method: 'PUT',
    headers: { 'content-type': 'application/octet-stream' },
    body: asBody(bytes),
  });
  if (put.status !== 201) throw await describeFailure(`PUT ${upload.pathname}?digest=${digest} (${bytes.byteLength} bytes)`, put);
  await put.arrayBuffer();
  const returned = put.headers.get('docker-content-digest');
  if (returned !== null && returned !== digest) {
    throw new Error(`PUT ${upload.pathname}: Docker-Content-Digest ${returned}, expected ${digest}`);
  }
  return { digest, size: bytes.byteLength, location: resolveLocation(registryUrl, put) };
}

export interface PushedManifest {
  digest: string;
  bytes: Buffer;
  location: URL;
  headers: Headers;
}

/**
 * PUT /v2/<repo>/manifests/<reference> with `Content-Type: mediaType` (201). An object is
 * serialised with JSON.stringify; bytes and strings are sent as they are.
 */
export async function pushManifest(
  registryUrl: string,
  repo: string,
  reference: string,
  manifest: object | Uint8Array | string,
  mediaType: string = MEDIA_TYPES.imageManifest,
): Promise<PushedManifest> {
  const bytes = typeof manifest === 'string' || manifest instanceof Uint8Array ? toBuffer(manifest) : Buffer.from(JSON.stringify(manifest));
  const res = await fetch(`${registryUrl}/v2/${repo}/manifests/${reference}`, {
    method: 'PUT',
    headers: { 'content-type': mediaType },
    body: asBody(bytes),
  });
  if (res.status !== 201) throw await describeFailure(`PUT /v2/${repo}/manifests/${reference}`, res);
  await res.arrayBuffer();
  return { digest: sha256(bytes), bytes, location: resolveLocation(registryUrl, res), headers: res.headers };
}

export interface MakeImageOptions {
  /** Sizes of the layers to make, in bytes (random contents). */
  layerSizesBytes?: number[];
  layerMediaType?: string;
  annotations?: Record<string, string>;
}

function blob(bytes: Buffer, mediaType: string): Blob {
  return { bytes, descriptor: { mediaType, digest: sha256(bytes), size: bytes.byteLength } };
}

/**
 * An OCI image with random layers (registries do not look inside layers), a real image
 * config naming them as diff_ids, and an image manifest referencing both. Contents are
 * random, so every call gives new digests.
 */
export function makeImage(opts: MakeImageOptions = {}): Image {
  const layerMediaType = opts.layerMediaType ?? MEDIA_TYPES.layerTar;
  const layers = (opts.layerSizesBytes ?? [1024, 64 * 1024]).map((size) => blob(randomBlob(size), layerMediaType));
  const configObject = {
    created: new Date().toISOString(),
    architecture: 'amd64',
    os: 'linux',
    config: { Labels: { 'org.example.nonce': randomBlob(8).toString('hex') } },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.descriptor.digest) },
  };
  const config = blob(Buffer.from(JSON.stringify(configObject)), MEDIA_TYPES.imageConfig);
  const manifest: Record<string, unknown> = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPES.imageManifest,
    config: config.descriptor,
    layers: layers.map((l) => l.descriptor),
    ...(opts.annotations ? { annotations: opts.annotations } : {}),
  };
  const manifestBytes = Buffer.from(JSON.stringify(manifest));
  return { config, layers, manifest, manifestBytes, manifestDigest: sha256(manifestBytes), mediaType: MEDIA_TYPES.imageManifest };
}

/** Pushes an image's blobs, then its manifest under `reference`. */
export async function pushImage(registryUrl: string, repo: string, reference: string, image: Image): Promise<PushedManifest> {
  for (const b of [image.config, ...image.layers]) await pushBlob(registryUrl, repo, b.bytes);
  return pushManifest(registryUrl, repo, reference, image.manifestBytes, image.mediaType);
}
