import { RegistryError } from '../errors.js';

/**
 * Names, tags and digests as the distribution spec defines them ("Definitions"):
 *
 *   <name>      [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*
 *   <reference> tag: [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}  or a digest
 *   <digest>    algorithm ":" encoded
 *
 * Parsing is strict: only the algorithms below, lowercase hex of the exact length. Because a
 * name component can never be ".." or contain anything but [a-z0-9._-], and a digest is hex,
 * no input can address a path outside the storage root.
 */
const NAME_COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const NAME_RE = new RegExp(`^${NAME_COMPONENT}(?:/${NAME_COMPONENT})*$`);
const TAG_RE = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;

/** distribution limits the whole name to 255 characters (reference.NameTotalLengthMax). */
export const NAME_MAX_LENGTH = 255;

export const DIGEST_ALGORITHMS = { sha256: 64, sha512: 128 } as const;
export type DigestAlgorithm = keyof typeof DIGEST_ALGORITHMS;

export interface Digest {
  readonly algorithm: DigestAlgorithm;
  readonly hex: string;
  /** `algorithm:hex`, the canonical string form. */
  readonly value: string;
}

export function isValidName(name: string): boolean {
  return name.length > 0 && name.length <= NAME_MAX_LENGTH && NAME_RE.test(name);
}

export function assertName(name: string): string {
  if (!isValidName(name)) throw new RegistryError('NAME_INVALID', { detail: { name: name.slice(0, NAME_MAX_LENGTH + 1) } });
  return name;
}

export function isValidTag(tag: string): boolean {
  return TAG_RE.test(tag);
}

/** Tags one manifest PUT may set with `?tag=` (each is a store write, in one request). */
export const MAX_TAGS_PER_PUT = 100;

/**
 * The `tag` parameters of a manifest PUT (distribution-spec 1.1+dev: a PUT by digest with
 * `?tag=a&tag=b` points those tags at it), each once, in the order given. TAG_INVALID for
 * an invalid tag or more than MAX_TAGS_PER_PUT of them.
 */
export function parseTags(tags: readonly string[]): string[] {
  const unique = [...new Set(tags)];
  const bad = unique.find((t) => !isValidTag(t));
  if (bad !== undefined) throw new RegistryError('TAG_INVALID', { message: 'invalid tag', detail: { tag: bad.slice(0, 200) } });
  if (unique.length > MAX_TAGS_PER_PUT) {
    throw new RegistryError('TAG_INVALID', { message: `more than ${MAX_TAGS_PER_PUT} tags in one request`, detail: { tags: unique.length, limit: MAX_TAGS_PER_PUT } });
  }
  return unique;
}

/** The tags a manifest PUT points at its manifest: a tag reference's, then `extra` (parseTags'), each once. */
export function tagsOf(reference: Reference, extra: readonly string[] = []): string[] {
  return [...new Set([...(reference.kind === 'tag' ? [reference.tag] : []), ...extra])];
}

/** Parses `algo:hex`; returns undefined when the text is not a digest this registry accepts. */
export function tryParseDigest(text: string): Digest | undefined {
  const colon = text.indexOf(':');
  if (colon <= 0) return undefined;
  const algorithm = text.slice(0, colon);
  const hex = text.slice(colon + 1);
  if (!Object.hasOwn(DIGEST_ALGORITHMS, algorithm)) return undefined;
  const length = DIGEST_ALGORITHMS[algorithm as DigestAlgorithm];
  if (hex.length !== length || !/^[a-f0-9]+$/.test(hex)) return undefined;
  return { algorithm: algorithm as DigestAlgorithm, hex, value: `${algorithm}:${hex}` };
}

export function parseDigest(text: string): Digest {
  const d = tryParseDigest(text);
  if (!d) throw new RegistryError('DIGEST_INVALID', { message: 'invalid digest', detail: { digest: text.slice(0, 200) } });
  return d;
}

/** A manifest reference is either a tag or a digest. */
export type Reference = { kind: 'tag'; tag: string } | { kind: 'digest'; digest: Digest };

export function parseReference(text: string): Reference {
  if (text.includes(':')) {
    const digest = tryParseDigest(text);
    if (!digest) throw new RegistryError('DIGEST_INVALID', { message: 'invalid digest', detail: { reference: text.slice(0, 200) } });
    return { kind: 'digest', digest };
  }
  if (!isValidTag(text)) throw new RegistryError('TAG_INVALID', { message: 'invalid tag', detail: { tag: text.slice(0, 200) } });
  return { kind: 'tag', tag: text };
}
