import { createHash } from 'node:crypto';
import { z } from 'zod';
import { RegistryError } from '../errors.js';
import { tryParseDigest } from './reference.js';

/**
 * What a pushed manifest must look like, checked without touching storage: JSON, one of the
 * four schema 2 shapes, media types that agree. Whether the blobs and manifests it references
 * exist is the store's business (src/registry/manifests.ts).
 *
 * Shapes (image-spec v1.1 manifest.md, image-index.md, descriptor.md; Docker "Image Manifest
 * Version 2, Schema 2"):
 *
 *   image manifest   {schemaVersion: 2, mediaType?, artifactType?, config, layers: [..], subject?, annotations?}
 *   image index      {schemaVersion: 2, mediaType?, artifactType?, manifests: [..], subject?, annotations?}
 *   descriptor       {mediaType, digest, size, urls?, annotations?, data?, artifactType?, platform?}
 *
 * Docker's schema 2 manifest and manifest list have the same shapes, but their `mediaType`
 * field is required and they have no `subject` or `artifactType`. Unknown fields are allowed
 * everywhere: image-spec says implementations MUST ignore properties they don't know.
 * Schema 1 (signed JWS manifests) is refused: Docker deprecated it and no current client
 * pushes it.
 */

export const MEDIA_TYPES = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  ociImageConfig: 'application/vnd.oci.image.config.v1+json',
  dockerImageConfig: 'application/vnd.docker.container.image.v1+json',
  /** image-spec "Guidance for an Empty Descriptor": the config of artifacts that have none. */
  ociEmpty: 'application/vnd.oci.empty.v1+json',
} as const;

/** Media types a manifest can be pushed as. */
export const MANIFEST_MEDIA_TYPES = [
  MEDIA_TYPES.ociManifest,
  MEDIA_TYPES.ociIndex,
  MEDIA_TYPES.dockerManifest,
  MEDIA_TYPES.dockerManifestList,
] as const;
export type ManifestMediaType = (typeof MANIFEST_MEDIA_TYPES)[number];

const SCHEMA1_MEDIA_TYPES = [
  'application/vnd.docker.distribution.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v1+prettyjws',
];

/** Configs whose `config.Labels` are image labels (the others belong to artifacts). */
export const IMAGE_CONFIG_MEDIA_TYPES: readonly string[] = [MEDIA_TYPES.ociImageConfig, MEDIA_TYPES.dockerImageConfig];

/**
 * Layers a manifest may name without the registry holding them: their bytes live at `urls`
 * (Windows base layers). distribution skips them the same way when it verifies a manifest.
 */
const NON_DISTRIBUTABLE_LAYER_MEDIA_TYPES: readonly string[] = [
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
];

/** RFC 6838 §4.2 type "/" subtype, as image-spec descriptor.md restricts `mediaType`. */
const MEDIA_TYPE_RE = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$/;

const mediaType = z.string().regex(MEDIA_TYPE_RE, 'not a media type (RFC 6838)');
const digest = z.string().refine((d) => tryParseDigest(d) !== undefined, 'not a digest this registry accepts (sha256 or sha512, lowercase hex)');
// Checked by a loop, not z.record(), which rebuilt the object entry by entry: ~2 µs an entry,
// 0.3 s for a manifest of 150,000 annotations (found by probing). The object is kept as parsed.
const annotations = z.custom<Record<string, string>>(isStringMap, 'expected an object of strings');
const base64 = z.string().regex(/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/, 'not base64');

const platform = z
  .object({
    architecture: z.string(),
    os: z.string(),
    'os.version': z.string().optional(),
    'os.features': z.array(z.string()).optional(),
    variant: z.string().optional(),
    features: z.array(z.string()).optional(),
  })
  .passthrough();

const descriptor = z
  .object({
    mediaType,
    digest,
    size: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
    urls: z.array(z.string().url()).optional(),
    annotations: annotations.optional(),
    data: base64.optional(),
    artifactType: mediaType.optional(),
    platform: platform.optional(),
  })
  .passthrough();

export type Descriptor = z.infer<typeof descriptor>;

const schemaVersion = z.literal(2, { errorMap: () => ({ message: 'schemaVersion must be 2' }) });

const ociManifest = z
  .object({
    schemaVersion,
    mediaType: z.literal(MEDIA_TYPES.ociManifest).optional(),
    artifactType: mediaType.optional(),
    config: descriptor,
    layers: z.array(descriptor),
    subject: descriptor.optional(),
    annotations: annotations.optional(),
  })
  .passthrough();

const ociIndex = z
  .object({
    schemaVersion,
    mediaType: z.literal(MEDIA_TYPES.ociIndex).optional(),
    artifactType: mediaType.optional(),
    manifests: z.array(descriptor),
    subject: descriptor.optional(),
    annotations: annotations.optional(),
  })
  .passthrough();

const dockerManifest = z
  .object({
    schemaVersion,
    mediaType: z.literal(MEDIA_TYPES.dockerManifest),
    config: descriptor,
    layers: z.array(descriptor),
  })
  .passthrough();

const dockerManifestList = z
  .object({
    schemaVersion,
    mediaType: z.literal(MEDIA_TYPES.dockerManifestList),
    manifests: z.array(descriptor),
  })
  .passthrough();

const SCHEMAS = {
  [MEDIA_TYPES.ociManifest]: ociManifest,
  [MEDIA_TYPES.ociIndex]: ociIndex,
  [MEDIA_TYPES.dockerManifest]: dockerManifest,
  [MEDIA_TYPES.dockerManifestList]: dockerManifestList,
} as const;

interface ParsedCommon {
  /** The media type the manifest is stored and served with. */
  readonly mediaType: ManifestMediaType;
  readonly artifactType?: string;
  /** OCI only: the manifest this one refers to (referrers API). */
  readonly subject?: Descriptor;
  readonly annotations?: Record<string, string>;
}

export interface ParsedImageManifest extends ParsedCommon {
  readonly kind: 'manifest';
  readonly config: Descriptor;
  readonly layers: Descriptor[];
}

export interface ParsedIndex extends ParsedCommon {
  readonly kind: 'index';
  readonly manifests: Descriptor[];
}

export type ParsedManifest = ParsedImageManifest | ParsedIndex;

/** The most schema problems named in one error's detail. */
const MAX_ISSUES = 10;

const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * Parses and validates a manifest as pushed with `contentType` (the request's Content-Type,
 * parameters ignored). Throws MANIFEST_INVALID, saying what is wrong, for anything that is
 * not a schema 2 manifest of a supported type.
 *
 * The media type is the Content-Type, else the document's `mediaType`; when both are given
 * they must agree (a manifest served with another type than its own would be misread).
 * `application/octet-stream` counts as no Content-Type: some clients send it by default.
 */
export function parseManifest(bytes: Uint8Array, contentType: string | undefined): ParsedManifest {
  const header = normaliseMediaType(contentType);
  let doc: unknown;
  let text: string;
  try {
    // JSON is UTF-8 (RFC 8259 §8.1): bytes that are not would be read as U+FFFD and the
    // manifest served differently from how it parsed.
    text = UTF8.decode(bytes);
  } catch {
    throw invalid('manifest is not valid UTF-8');
  }
  checkDepth(text);
  try {
    doc = JSON.parse(text);
  } catch {
    throw invalid('manifest is not valid JSON');
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw invalid('manifest must be a JSON object');
  checkAsGoReadsIt(text, doc as Record<string, unknown>);
  const fields = doc as { mediaType?: unknown; schemaVersion?: unknown };
  const field = typeof fields.mediaType === 'string' ? fields.mediaType : undefined;
  if (fields.schemaVersion === 1 || SCHEMA1_MEDIA_TYPES.includes(header ?? '') || SCHEMA1_MEDIA_TYPES.includes(field ?? '')) {
    throw invalid('schema 1 manifests are deprecated and not supported: push schema 2 or OCI');
  }
  if (header !== undefined && field !== undefined && header !== field) {
    throw invalid('manifest mediaType does not match Content-Type', { contentType: header, mediaType: field });
  }
  const type = header ?? field;
  if (type === undefined) throw invalid('manifest media type unknown: set Content-Type');
  if (!isManifestMediaType(type)) {
    throw invalid('unsupported manifest media type', { mediaType: type.slice(0, 200), supported: MANIFEST_MEDIA_TYPES });
  }
  // A document of two kinds at once reads as the one or the other depending on the client
  // (CVE-2021-41190); distribution refuses it the same way (ocischema, manifestlist).
  const d = doc as Record<string, unknown>;
  const isIndex = type === MEDIA_TYPES.ociIndex || type === MEDIA_TYPES.dockerManifestList;
  const stray = isIndex ? ['config', 'layers'].find((k) => d[k] != null) : d.manifests != null ? 'manifests' : undefined;
  if (stray !== undefined) {
    throw invalid(isIndex ? 'expected an index but found a manifest\'s field' : 'expected a manifest but found an index\'s field', { mediaType: type, field: stray });
  }
  const result = SCHEMAS[type].safeParse(doc);
  if (!result.success) {
    const issues = result.error.issues.slice(0, MAX_ISSUES).map((i) => ({ path: i.path.join('.'), message: i.message }));
    throw invalid('manifest does not match its schema', { mediaType: type, issues });
  }
  const m = result.data as {
    artifactType?: string;
    subject?: Descriptor;
    annotations?: Record<string, string>;
    config?: Descriptor;
    layers?: Descriptor[];
    manifests?: Descriptor[];
  };
  // Docker's schemas have no artifactType or subject: a field by that name there means nothing.
  const oci = type === MEDIA_TYPES.ociManifest || type === MEDIA_TYPES.ociIndex;
  checkEmbeddedData({ ...m, subject: oci ? m.subject : undefined });
  const common: ParsedCommon = {
    mediaType: type,
    ...(oci && m.artifactType !== undefined ? { artifactType: m.artifactType } : {}),
    ...(oci && m.subject !== undefined ? { subject: m.subject } : {}),
    ...(m.annotations !== undefined ? { annotations: m.annotations } : {}),
  };
  if (type === MEDIA_TYPES.ociIndex || type === MEDIA_TYPES.dockerManifestList) return { ...common, kind: 'index', manifests: m.manifests! };
  return { ...common, kind: 'manifest', config: m.config!, layers: m.layers! };
}

/**
 * A descriptor's `data` embeds the content it names, and image-spec (descriptor.md "data")
 * says its decoded bytes MUST be that content. Clients that use it read it instead of
 * fetching the blob: go-containerregistry then fails the pull when it is not the content
 * (verify.Descriptor), containerd fetches the blob instead, and a client that trusts it
 * reads a config or layer other than the one this registry checked (found by probing: a
 * config whose `data` held other bytes was stored, 201).
 */
function checkEmbeddedData(m: { config?: Descriptor; layers?: Descriptor[]; manifests?: Descriptor[]; subject?: Descriptor }): void {
  const named: Array<[string, Descriptor | undefined]> = [
    ['config', m.config],
    ...(m.layers ?? []).map((d, i): [string, Descriptor] => [`layers.${i}`, d]),
    ...(m.manifests ?? []).map((d, i): [string, Descriptor] => [`manifests.${i}`, d]),
    ['subject', m.subject],
  ];
  for (const [path, d] of named) {
    if (d?.data === undefined) continue;
    // The schema let through padded standard base64 only (what Go's encoding/json writes for
    // a []byte), which Buffer decodes as Go does.
    const bytes = Buffer.from(d.data, 'base64');
    const digest = tryParseDigest(d.digest)!;
    const actual = createHash(digest.algorithm).update(bytes).digest('hex');
    if (bytes.length !== d.size || actual !== digest.hex) {
      throw invalid('a descriptor\'s data is not the content it names', {
        path, digest: d.digest, size: d.size, dataDigest: `${digest.algorithm}:${actual}`, dataSize: bytes.length,
      });
    }
  }
}

export function isManifestMediaType(type: string): type is ManifestMediaType {
  return (MANIFEST_MEDIA_TYPES as readonly string[]).includes(type);
}

/** True for a layer whose bytes are fetched from its `urls`, not from the registry. */
export function isNonDistributable(layer: Descriptor): boolean {
  return NON_DISTRIBUTABLE_LAYER_MEDIA_TYPES.includes(layer.mediaType) && (layer.urls?.length ?? 0) > 0;
}

/**
 * The artifact type the referrers API reports for a manifest (image-spec manifest.md
 * "artifactType"; distribution-spec "Listing Referrers"): its own `artifactType`, else the
 * config's media type for an image manifest.
 */
export function artifactTypeOf(m: ParsedManifest): string | undefined {
  return m.artifactType ?? (m.kind === 'manifest' ? m.config.mediaType : undefined);
}

/**
 * Deeper than this, a manifest is refused. Go's encoding/json (every Go client: docker,
 * containerd, skopeo) stops at 10,000 levels; a real manifest has five.
 */
const MAX_DEPTH = 1000;

/** The fields of the structs Go clients decode a manifest into, by their folded names. */
const fieldsOf = (...names: string[]): ReadonlyMap<string, string> => new Map(names.map((k) => [fold(k), k]));
const TOP_FIELDS = fieldsOf('schemaVersion', 'mediaType', 'artifactType', 'config', 'layers', 'manifests', 'subject', 'annotations');
const DESCRIPTOR_FIELDS = fieldsOf('mediaType', 'digest', 'size', 'urls', 'annotations', 'data', 'artifactType', 'platform');
const PLATFORM_FIELDS = fieldsOf('architecture', 'os', 'os.version', 'os.features', 'variant', 'features');

/**
 * Refuses what JSON.parse reads one way and Go clients another, so that the manifest stored
 * is the one every client sees (and the one GC marks from):
 * - a key that is a manifest's, descriptor's or platform's field in another case ("Layers"):
 *   Go matches struct fields without regard to case, so a client would read layers this
 *   registry never checked (map keys, such as annotations', are exact in Go too);
 * - a schemaVersion written other than as the integer 2 ("2.0", "2e0"), which Go refuses;
 * - nesting deeper than MAX_DEPTH, where Go gives up (checkDepth, before JSON.parse).
 * `text` is valid JSON (JSON.parse read it), which keeps the scan simple.
 */
function checkAsGoReadsIt(text: string, doc: Record<string, unknown>): void {
  checkCase(doc, TOP_FIELDS);
  for (const d of [doc.config, doc.subject, ...(Array.isArray(doc.layers) ? doc.layers : []), ...(Array.isArray(doc.manifests) ? doc.manifests : [])]) {
    if (!isObject(d)) continue;
    checkCase(d, DESCRIPTOR_FIELDS);
    if (isObject(d.platform)) checkCase(d.platform, PLATFORM_FIELDS);
  }
  checkText(text, doc);
}

function checkCase(o: Record<string, unknown>, known: ReadonlyMap<string, string>): void {
  for (const key of Object.keys(o)) {
    const field = known.get(fold(key));
    if (field !== undefined && field !== key) throw invalid('manifest has a field that differs from a known one only in case', { field: key.slice(0, 100), known: field });
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Refuses nesting deeper than MAX_DEPTH before JSON.parse sees the text: V8 parses any depth
 * (its parser keeps its own stack), slowly, so that 4 MiB of `[` held the event loop for 2.6 s
 * and 250 KB (too small for the parse lane) for 0.15 s, each time, before the depth was known
 * (found by probing). This scan is linear and stops at the first level too deep; it needs no
 * valid JSON, only to skip strings, where brackets are text.
 */
function checkDepth(text: string): void {
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (++depth > MAX_DEPTH) throw invalid(`manifest nests deeper than ${MAX_DEPTH} levels`);
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      depth--;
    } else if (c === 0x22 /* " */) {
      i = stringEnd(text, i);
    }
  }
}

/**
 * What only the text shows: how its integers are written. Go reads
 * schemaVersion (int) and every descriptor's size (int64) with strconv.ParseInt, which refuses
 * `2.0`, `24E0` or a size past int64, all of which JSON.parse reads as integers: such a
 * manifest would be stored and then fail every Go client's pull.
 */
function checkText(text: string, doc: Record<string, unknown>): void {
  // Per open container, whether it is an object: there a comma is followed by a key.
  const inObject: boolean[] = [];
  // Per open container, the key it is the value of (undefined: the root, an array's element).
  const owners: Array<string | undefined> = [];
  // The innermost object's key whose value is being read (read only where a checked one can be).
  let key: string | undefined;
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      inObject.push(c === 0x7b);
      owners.push(key);
      key = undefined;
      expectKey = c === 0x7b;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      inObject.pop();
      owners.pop();
      key = undefined;
      expectKey = false;
    } else if (c === 0x2c /* , */) {
      expectKey = inObject[inObject.length - 1] === true;
      key = undefined;
    } else if (c === 0x22 /* " */) {
      const end = stringEnd(text, i);
      if (expectKey) {
        key = inObject.length <= 3 ? JSON.parse(text.slice(i, end + 1)) as string : undefined;
        expectKey = false;
      }
      i = end;
    } else if (c === 0x3a /* : */ && key !== undefined) {
      const literal = /^\s*(-?[0-9][0-9.eE+-]*)/.exec(text.slice(i + 1, i + 40))?.[1];
      if (literal !== undefined) {
        if (inObject.length === 1 && key === 'schemaVersion') {
          if (literal !== '2' && doc.schemaVersion === 2) throw invalid('schemaVersion must be written as the integer 2', { schemaVersion: literal });
        } else if (key === 'size' && isDescriptor(owners, inObject) && Number.isInteger(Number(literal)) && !isInt64(literal)) {
          // (One that is no integer to JSON.parse either, 1.5, is the schema's to name.)
          throw invalid('a descriptor\'s size must be written as an integer', { size: literal });
        }
      }
      // The key stays until its value ends (`,` or the close): an object or array opened as the
      // value is owned by it.
    }
  }
}

/** Whether the innermost open object is a descriptor: config, subject, or an entry of layers or manifests. */
function isDescriptor(owners: ReadonlyArray<string | undefined>, inObject: readonly boolean[]): boolean {
  if (inObject.length === 2) return owners[1] === 'config' || owners[1] === 'subject';
  return inObject.length === 3 && !inObject[1] && (owners[1] === 'layers' || owners[1] === 'manifests');
}

const INT64_MAX = 2n ** 63n - 1n;

/** What Go's strconv.ParseInt(s, 10, 64) takes from a JSON number. */
function isInt64(literal: string): boolean {
  if (!/^-?(0|[1-9][0-9]*)$/.test(literal)) return false;
  const n = BigInt(literal);
  return n <= INT64_MAX && n >= -INT64_MAX - 1n;
}

/** The index of the quote that closes the string opening at `start`. */
function stringEnd(text: string, start: number): number {
  for (let i = start + 1; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x5c /* backslash */) i++;
    else if (c === 0x22) return i;
  }
  return text.length - 1;
}

/** Go's key match folds case the Unicode way: 'ſ' is 's' and 'K' (Kelvin) is 'k'. */
function fold(key: string): string {
  return key.toLowerCase().replace(/ſ/g, 's');
}

function normaliseMediaType(contentType: string | undefined): string | undefined {
  const t = contentType?.split(';')[0]?.trim().toLowerCase();
  return t && t !== 'application/octet-stream' ? t : undefined;
}

function invalid(message: string, detail?: unknown): RegistryError {
  return new RegistryError('MANIFEST_INVALID', { message, ...(detail === undefined ? {} : { detail }) });
}

function isStringMap(v: unknown): boolean {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  for (const key in v) if (typeof (v as Record<string, unknown>)[key] !== 'string') return false;
  return true;
}
