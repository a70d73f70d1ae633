import { createHash } from 'node:crypto';
import type { Digest } from './reference.js';

/**
 * Storage layout. Every path the registry touches is built here, from validated names,
 * tags, digests and upload ids, so nothing else concatenates paths.
 *
 *   /
 *   ├── blobs
 *   │   ├── data
 *   │   │   └── <id>                  the bytes of one upload (or manifest); a blob's content
 *   │   │                             after commit. Never moved: S3 cannot rename without
 *   │   │                             copying, so the digest points at the bytes instead.
 *   │   └── <algorithm>
 *   │       └── <hex[0:2]>
 *   │           ├── <hex>             blob record: {"data": "/blobs/data/<id>", "size": n}
 *   │           ├── <hex>.touched     when a blob or manifest was last vouched for (pushed, HEAD,
 *   │           │                     mounted, referenced by a manifest PUT): {"at", "gen"?, "n"};
 *   │           │                     garbage collection spares what was touched lately (gc/collector.ts)
 *   │           └── <hex>.takeover-<h>-<k>
 *   │                                 for milliseconds: a server is replacing the record, whose data
 *   │                                 is gone (registry/takeover.ts; h names the record as it read it)
 *   ├── gc                            garbage collection's coordination objects (gc/lease.ts)
 *   │   ├── lease                     while a collection runs: {"gen", "owner", "startedAt", ...}
 *   │   ├── generations/<gen>         created (if absent) to claim a collection's generation:
 *   │   │                             {"owner", "at", "done"?} (done: released; gc/lease.ts)
 *   │   ├── servers/<id>              a server that runs operations here: {"heartbeatAt", "ack"?, ...}
 *   │   │                             (gc/guard.ts: rewritten every minute, and when it acknowledges
 *   │   │                             a collection; deleted when the server stops)
 *   │   ├── inflight/<id>             a manifest PUT, upload commit or mount in progress, as servers
 *   │   │                             before 2026-12 registered each: {"startedAt"}
 *   │   ├── orphans/<id>              /blobs/data/<id> was seen named by no record: {"firstSeen"}
 *   │   ├── sweeping                  while the collector deletes a batch and looks for touches of it:
 *   │   │                             what it deletes, as it read it, for the next one (or a server,
 *   │   │                             within a minute) to put back should it die meanwhile
 *   │   │                             (gc/collector.ts, J; gc/schedule.ts startSweepWatch)
 *   │   ├── deleted/<sha256 of a path> a client deleted that path (a manifest, a referrer entry, a
 *   │   │                             link) while a sweep note existed: the note's replay must not
 *   │   │                             put it back (J); cleared by the next collection's start
 *   │   └── intents
 *   │       ├── <name>/_tags/<tag>    the collector is about to delete this expired tag
 *   │       ├── <name>/_uploads/<id>  the collector is about to remove this stale upload
 *   │       └── _put-back/<sha256 of a path>  the collector is about to put that path back,
 *   │                                 unless a client deleted it (J); no name starts with `_`
 *   └── repositories
 *       └── <name>                    (may contain '/')
 *           ├── _layers
 *           │   └── <algorithm>
 *           │       └── <hex>         link: the repository may serve this blob (pushed or mounted)
 *           ├── _manifests
 *           │   ├── referrers
 *           │   │   └── <algorithm>
 *           │   │       └── <hex>     the subject's digest (need not exist in the repository)
 *           │   │           └── <algorithm>-<hex>
 *           │   │                     a manifest whose `subject` is this digest: its descriptor
 *           │   │                     {mediaType, digest, size, artifactType, annotations}
 *           │   ├── revisions
 *           │   │   └── <algorithm>
 *           │   │       └── <hex>     the manifest: its record (media type, size, subject, labels;
 *           │   │                     one line of JSON), a newline, and its bytes as pushed.
 *           │   │                     (Written before 2026-12: the record alone, the bytes being
 *           │   │                     a blob under the same digest.)
 *           │   ├── tags
 *           │   │   └── <tag>         tag record: {"digest", "updatedAt", "expiresAt"?}, written
 *           │   │                     only when the tag changes, so its modification time is
 *           │   │                     its updatedAt (tags/list relies on it, manifests.ts)
 *           │   └── expiring
 *           │       └── <tag>         the tag's record has (or had) an expiresAt (a label's
 *           │                         expiry): tags/list reads only these records
 *           └── _uploads
 *               ├── <id>              upload record: {"startedAt": ..., "data": "/blobs/data/<id>"}
 *               ├── <id>.lock         while a request writes to or ends the upload (PATCH, PUT,
 *               │                     DELETE): {"token", "expiresAt"} (engine/upload-lock.ts)
 *               ├── <id>.finished     the upload became a blob (its data is the blob's): written by
 *               │                     the PUT that commits it, as it deletes the record, and kept
 *               │                     for a day, so that a record a late write brings back is no
 *               │                     upload (engine/uploads.ts, #unrecord; gc/collector.ts, E)
 *               └── <id>.lock.takeover-<h>-<k>
 *                                     for milliseconds: a server is taking over the lock of a
 *                                     holder that died (registry/takeover.ts)
 *
 * Names cannot start with '_' (reference grammar), so `_layers` and friends never collide
 * with a nested repository.
 */
export const paths = {
  blobDataDir: () => '/blobs/data',
  blobData: (id: string) => `/blobs/data/${id}`,
  blobRecord: (d: Digest) => `/blobs/${d.algorithm}/${d.hex.slice(0, 2)}/${d.hex}`,
  repositoriesRoot: () => '/repositories',
  repository: (name: string) => `/repositories/${name}`,
  layerLink: (name: string, d: Digest) => `/repositories/${name}/_layers/${d.algorithm}/${d.hex}`,
  manifestRevision: (name: string, d: Digest) => `/repositories/${name}/_manifests/revisions/${d.algorithm}/${d.hex}`,
  manifestRevisions: (name: string, algorithm: string) => `/repositories/${name}/_manifests/revisions/${algorithm}`,
  referrers: (name: string, subject: Digest) => `/repositories/${name}/_manifests/referrers/${subject.algorithm}/${subject.hex}`,
  referrer: (name: string, subject: Digest, referrer: Digest) =>
    `/repositories/${name}/_manifests/referrers/${subject.algorithm}/${subject.hex}/${referrer.algorithm}-${referrer.hex}`,
  tag: (name: string, tag: string) => `/repositories/${name}/_manifests/tags/${tag}`,
  tags: (name: string) => `/repositories/${name}/_manifests/tags`,
  tagExpiring: (name: string, tag: string) => `/repositories/${name}/_manifests/expiring/${tag}`,
  tagsExpiring: (name: string) => `/repositories/${name}/_manifests/expiring`,
  upload: (name: string, id: string) => `/repositories/${name}/_uploads/${id}`,
  uploads: (name: string) => `/repositories/${name}/_uploads`,
  uploadLock: (name: string, id: string) => `/repositories/${name}/_uploads/${id}${UPLOAD_LOCK_SUFFIX}`,
  uploadFinished: (name: string, id: string) => `/repositories/${name}/_uploads/${id}${UPLOAD_FINISHED_SUFFIX}`,
  /** A child of `_uploads` by its name as listed (garbage collection removes stale locks by it). */
  uploadsChild: (name: string, child: string) => `/repositories/${name}/_uploads/${child}`,
  /** `h`: hex, names the stale content; `k`: 1, 2, ... (one more for each taker that died). */
  takeoverMarker: (path: string, h: string, k: number) => `${path}.takeover-${h}-${k}`,

  // Garbage collection (src/gc/).
  blobsRoot: () => '/blobs',
  blobRecordDir: (algorithm: string, prefix: string) => `/blobs/${algorithm}/${prefix}`,
  blobTouched: (d: Digest) => `/blobs/${d.algorithm}/${d.hex.slice(0, 2)}/${d.hex}.touched`,
  layerLinks: (name: string, algorithm: string) => `/repositories/${name}/_layers/${algorithm}`,
  referrersRoot: (name: string) => `/repositories/${name}/_manifests/referrers`,
  gcLease: () => '/gc/lease',
  gcSweeping: () => '/gc/sweeping',
  /** A client deleted `path` while a sweep note existed (gc/collector.ts J): named by the path's SHA-256. */
  gcDeleted: (path: string) => `/gc/deleted/${createHash('sha256').update(path).digest('hex')}`,
  gcDeletedDir: () => '/gc/deleted',
  gcGeneration: (gen: number) => `/gc/generations/${gen}`,
  gcGenerationsDir: () => '/gc/generations',
  gcIntentsDir: () => '/gc/intents',
  gcOrphansDir: () => '/gc/orphans',
  gcOrphan: (dataId: string) => `/gc/orphans/${dataId}`,
  gcServersDir: () => '/gc/servers',
  gcServer: (id: string) => `/gc/servers/${id}`,
  gcInflightDir: () => '/gc/inflight',
  gcInflight: (id: string) => `/gc/inflight/${id}`,
  gcTagIntent: (name: string, tag: string) => `/gc/intents/${name}/_tags/${tag}`,
  gcUploadIntent: (name: string, id: string) => `/gc/intents/${name}/_uploads/${id}`,
  /** The collector is about to put `path` back unless a client deleted it (gc/collector.ts J, gc/guard.ts duty 4). */
  gcPutBackIntent: (path: string) => `/gc/intents/_put-back/${createHash('sha256').update(path).digest('hex')}`,
  gcPutBackIntentsDir: () => '/gc/intents/_put-back',
} as const;

const UPLOAD_LOCK_SUFFIX = '.lock';
const UPLOAD_FINISHED_SUFFIX = '.finished';

/**
 * The upload a child of `_uploads` belongs to, and what the child is: upload ids are UUIDs
 * (no '.'), a lock and its takeover markers start with `<id>.lock`, and `<id>.finished` marks
 * an upload that became a blob.
 */
export function uploadEntry(name: string): { id: string; kind: 'record' | 'lock' | 'finished' } | undefined {
  const dot = name.indexOf('.');
  if (dot < 0) return { id: name, kind: 'record' };
  if (name.startsWith(UPLOAD_LOCK_SUFFIX, dot)) return { id: name.slice(0, dot), kind: 'lock' };
  return name.slice(dot) === UPLOAD_FINISHED_SUFFIX ? { id: name.slice(0, dot), kind: 'finished' } : undefined;
}

/** Children of a repository directory that mark it as a repository rather than a namespace. */
export const REPOSITORY_MARKERS = ['_layers', '_manifests', '_uploads'] as const;
