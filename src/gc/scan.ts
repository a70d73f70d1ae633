import type { LimitFunction } from 'p-limit';
import { isPathNotFound, listPage, readOrUndefined, type StorageDriver } from '../storage/driver.js';
import { paths, REPOSITORY_MARKERS, uploadEntry } from '../registry/paths.js';
import { DIGEST_ALGORITHMS, tryParseDigest } from '../registry/reference.js';

/**
 * What a collection reads from storage before it decides anything: every repository's tags,
 * manifest revisions, layer links, referrer entries and uploads; every blob record and
 * touched marker; every data object. Listing only (plus the small tag records): contents are
 * read later, and only for what might be swept.
 *
 * The order of the listings matters (gc/collector.ts, "orphan data"): uploads are listed before blob
 * records, and blob records before data objects, so data that moves from an upload to a
 * blob while we list is seen referenced by one or the other.
 */

/** The fields of a tag record the collector uses (manifests.ts TagRecord). */
export interface ScannedTag {
  readonly digest: string;
  readonly updatedAt?: string;
  readonly expiresAt?: string;
  /** The record exactly as stored: the collector deletes it only if it still reads the same. */
  readonly raw: string;
}

export interface RepositoryScan {
  readonly name: string;
  readonly tags: Map<string, ScannedTag>;
  /** Digests of the manifests stored in the repository. */
  readonly revisions: Set<string>;
  /**
   * When each revision was written (epoch ms), from the listing: a revision is written once
   * (create-if-absent), so this is when its manifest was first pushed.
   */
  readonly revisionTimes: Map<string, number>;
  /** Digests of the blobs linked into the repository. */
  readonly links: Set<string>;
  /** Subject digest → digests of the manifests whose `subject` it is. */
  readonly referrers: Map<string, Set<string>>;
  /** Upload ids (of upload records). */
  readonly uploads: string[];
  /** Upload locks and their takeover markers (engine/upload-lock.ts): `[upload id, object name]`. */
  readonly uploadLocks: Array<[string, string]>;
  /** Uploads that became blobs (their finished markers, engine/uploads.ts), with when each marker was written (epoch ms). */
  readonly finishedUploads: Map<string, number>;
  /** Tags with an entry in the expiring index (manifests.ts tags()). */
  readonly expiring: Set<string>;
}

export interface BlobScan {
  /** Digests that have a blob record. */
  readonly records: Set<string>;
  /** Digests that have a touched marker. */
  readonly markers: Set<string>;
}

const ALGORITHMS = Object.keys(DIGEST_ALGORITHMS);
const TOUCHED_SUFFIX = '.touched';

export function basename(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

/**
 * Children of a directory (none when it does not exist) by listPage(): on S3 one request per
 * 1,000 children, where list() makes two (it also lists uploads in progress, which only
 * the data directory has: listData keeps list()).
 */
export async function listPaths(driver: StorageDriver, path: string): Promise<string[]> {
  return (await listPage(driver, path)).children.map((c) => c.path);
}

/** Children of a directory, or none when it does not exist. */
export async function listOrEmpty(driver: StorageDriver, path: string): Promise<string[]> {
  try {
    return await driver.list(path);
  } catch (err) {
    if (isPathNotFound(err)) return [];
    throw err;
  }
}


/** Repository names, as the catalog finds them (a directory with `_layers`, `_manifests` or `_uploads`). */
export async function listRepositories(driver: StorageDriver): Promise<string[]> {
  const names: string[] = [];
  const walk = async (dir: string, prefix: string): Promise<void> => {
    const children = (await listPaths(driver, dir)).map(basename);
    if (prefix && children.some((b) => (REPOSITORY_MARKERS as readonly string[]).includes(b))) names.push(prefix);
    await Promise.all(children.filter((b) => !b.startsWith('_')).map((b) => walk(`${dir}/${b}`, prefix ? `${prefix}/${b}` : b)));
  };
  await walk(paths.repositoriesRoot(), '');
  return names.sort();
}

export async function scanRepository(driver: StorageDriver, name: string, limit: LimitFunction): Promise<RepositoryScan> {
  const scan: RepositoryScan = {
    name, tags: new Map(), revisions: new Set(), revisionTimes: new Map(), links: new Set(), referrers: new Map(), uploads: [], uploadLocks: [],
    finishedUploads: new Map(), expiring: new Set(),
  };
  const tagNames = (await listPaths(driver, paths.tags(name))).map(basename);
  await Promise.all(tagNames.map((tag) => limit(async () => {
    const raw = await readOrUndefined(driver, paths.tag(name, tag));
    if (!raw) return;
    const text = raw.toString('utf8');
    let record: { digest?: unknown; updatedAt?: unknown; expiresAt?: unknown };
    try {
      record = JSON.parse(text) as typeof record;
    } catch {
      return;
    }
    if (typeof record.digest !== 'string' || !tryParseDigest(record.digest)) return;
    scan.tags.set(tag, {
      digest: record.digest,
      ...(typeof record.updatedAt === 'string' ? { updatedAt: record.updatedAt } : {}),
      ...(typeof record.expiresAt === 'string' ? { expiresAt: record.expiresAt } : {}),
      raw: text,
    });
  })));
  await Promise.all(ALGORITHMS.map(async (algorithm) => {
    const [revisions, links] = await Promise.all([
      // With their times: free on S3, a stat each on fs, where reading them would be a GET each.
      limit(() => listPage(driver, paths.manifestRevisions(name, algorithm), { details: true })),
      limit(() => listPaths(driver, paths.layerLinks(name, algorithm))),
    ]);
    for (const c of revisions.children) {
      const d = tryParseDigest(`${algorithm}:${basename(c.path)}`);
      if (!d || c.isDir) continue;
      scan.revisions.add(d.value);
      if (c.modTime) scan.revisionTimes.set(d.value, c.modTime.getTime());
    }
    for (const p of links) addDigest(scan.links, algorithm, basename(p));
  }));
  // referrers/<algorithm>/<subject hex>/<algorithm>-<hex>
  for (const algDir of await limit(() => listPaths(driver, paths.referrersRoot(name)))) {
    const algorithm = basename(algDir);
    const subjects = await limit(() => listPaths(driver, algDir));
    await Promise.all(subjects.map((subjectDir) => limit(async () => {
      const subject = tryParseDigest(`${algorithm}:${basename(subjectDir)}`);
      if (!subject) return;
      const set = new Set<string>();
      for (const entry of await listPaths(driver, subjectDir)) {
        const b = basename(entry);
        const dash = b.indexOf('-');
        const referrer = dash > 0 ? tryParseDigest(`${b.slice(0, dash)}:${b.slice(dash + 1)}`) : undefined;
        if (referrer) set.add(referrer.value);
      }
      if (set.size > 0) scan.referrers.set(subject.value, set);
    })));
  }
  // With their times, for the finished markers' age (free on S3, a stat each on fs).
  for (const c of (await limit(() => listPage(driver, paths.uploads(name), { details: true }))).children) {
    const entry = c.isDir ? undefined : uploadEntry(basename(c.path));
    if (entry?.kind === 'record') scan.uploads.push(entry.id);
    else if (entry?.kind === 'lock') scan.uploadLocks.push([entry.id, basename(c.path)]);
    else if (entry && c.modTime) scan.finishedUploads.set(entry.id, c.modTime.getTime());
  }
  for (const p of await limit(() => listPaths(driver, paths.tagsExpiring(name)))) scan.expiring.add(basename(p));
  return scan;
}

function addDigest(set: Set<string>, algorithm: string, hex: string): void {
  const d = tryParseDigest(`${algorithm}:${hex}`);
  if (d) set.add(d.value);
}

/** Blob records and touched markers: /blobs/<algorithm>/<xx>/<hex>[.touched]. */
export async function scanBlobs(driver: StorageDriver, limit: LimitFunction): Promise<BlobScan> {
  const scan: BlobScan = { records: new Set(), markers: new Set() };
  await Promise.all(ALGORITHMS.map(async (algorithm) => {
    const prefixes = await limit(() => listPaths(driver, `${paths.blobsRoot()}/${algorithm}`));
    await Promise.all(prefixes.map((dir) => limit(async () => {
      for (const p of await listPaths(driver, paths.blobRecordDir(algorithm, basename(dir)))) {
        const b = basename(p);
        if (b.endsWith(TOUCHED_SUFFIX)) addDigest(scan.markers, algorithm, b.slice(0, -TOUCHED_SUFFIX.length));
        else addDigest(scan.records, algorithm, b);
      }
    })));
  }));
  return scan;
}

/** Paths of every data object (/blobs/data/<id>), including, on S3, uploads in progress. */
export async function listData(driver: StorageDriver): Promise<string[]> {
  return listOrEmpty(driver, paths.blobDataDir());
}
