/**
 * Piscina task file: the hashing half of the upload engine. Pure functions of their task:
 * bytes in, digests out. No storage, no logger, no I/O (piscina src/worker.ts).
 *
 * A blob's SHA-256 runs across every chunk of an upload, and node:crypto (OpenSSL with
 * SHA-NI, ~1.4 GiB/s a core here) cannot export its state. So the running hash of an upload
 * lives in the worker that saw its first bytes: the pool pins an upload's tasks to that
 * worker by thread id (src/engine/hash-pool.ts). Every task names the offset it expects
 * the state to be at; when the worker has no state for the upload (it restarted, or another
 * instance took the upload), it says `missing` and the caller rebuilds the state from the
 * bytes storage already holds (distribution registry/storage/blobwriter_resumable.go).
 *
 * An upload's bytes arrive after the main thread stored them, as the ArrayBuffers they were
 * received in, moved (transferred) here rather than copied: node:http's own body Buffers, and
 * the engine's slabs holding copies of uWS chunks. A slab goes back to the main thread with
 * the answer (`giveBack`); the rest are freed here as soon as they are hashed (release()).
 * S3 parts arrive as views on SharedArrayBuffers, read in place for the SHA-256 they are signed with.
 */
import { createHash, type Hash } from 'node:crypto';
import { once } from 'node:events';
import { MessageChannel, threadId } from 'node:worker_threads';
import { move, transferableSymbol, valueSymbol } from 'piscina';

export interface BytesRef {
  /** Shared slab or a transferred ArrayBuffer. */
  buffer: SharedArrayBuffer | ArrayBuffer;
  byteOffset: number;
  length: number;
}

export interface UpdateTask {
  /** Upload session key. */
  key: string;
  /** Bytes the running state must already have consumed; 0 starts a new state. */
  expectedOffset: number;
  /** The bytes, in order. */
  parts: Uint8Array[];
  /** A buffer the parts were moved in that the caller wants back (its pool's slab). */
  giveBack?: ArrayBuffer;
}

export interface DigestTask {
  key: string;
  expectedOffset: number;
  /** Drop the state afterwards. */
  final: boolean;
}

export type StateResult = ({ ok: true; threadId: number; offset: number } | { ok: false; threadId: number; reason: 'missing' }) & {
  /** UpdateTask.giveBack, moved back. */
  returned?: ArrayBuffer;
};
export type DigestResult = { ok: true; threadId: number; hex: string } | { ok: false; threadId: number; reason: 'missing' };

interface RunningHash {
  hash: Hash;
  offset: number;
  touchedMs: number;
}

/** In the order they were last touched: the least recently touched first. */
const states = new Map<string, RunningHash>();

/**
 * States one worker holds at most (about 1.4 KB each); past it the least recently touched
 * goes, which costs its upload a rebuild from storage if it ever continues. Found by
 * probing: without it, a client opening uploads and sending a byte to each grew the workers
 * by 1.4 KB an upload for the hour until the idle sweep.
 */
const MAX_STATES = 20_000;

/**
 * States of uploads that were abandoned without commit or cancel would pile up; drop those
 * idle for longer than any sane client pause. Such an upload, if it ever resumes, is rebuilt
 * from storage like any other missing state.
 */
const IDLE_STATE_MS = 60 * 60 * 1000;
let lastSweepMs = Date.now();

function sweep(now: number): void {
  if (now - lastSweepMs < 60_000) return;
  lastSweepMs = now;
  for (const [key, s] of states) {
    if (now - s.touchedMs <= IDLE_STATE_MS) break;
    states.delete(key);
  }
}

function view(ref: BytesRef): Uint8Array {
  return new Uint8Array(ref.buffer, ref.byteOffset, ref.length);
}

/**
 * Frees moved-in ArrayBuffers now rather than at some later garbage collection: posting them
 * to a port whose other end is closed detaches them, and the dropped message frees their
 * memory at once. Left to the collector, a gigabyte of 64 KiB body buffers passing through
 * this thread (which allocates almost nothing of its own, so young-generation collections
 * are rare) builds up external memory until V8 answers with a full mark-compact every
 * 64 MiB or so.
 */
const discard = new MessageChannel();
discard.port2.close();
// Closing completes on a later turn of this thread's event loop, which piscina's idle loop
// (Atomics.wait) does not run: wait for it here, or the "dropped" messages would queue up.
await once(discard.port1, 'close');
discard.port1.unref();

function release(parts: readonly Uint8Array[], keep: ArrayBuffer | undefined): void {
  const buffers = new Set<ArrayBuffer>();
  for (const p of parts) if (p.buffer instanceof ArrayBuffer && p.buffer !== keep && p.buffer.byteLength > 0) buffers.add(p.buffer);
  if (buffers.size > 0) discard.port1.postMessage(null, [...buffers]);
}

export function update(task: UpdateTask): StateResult | ReturnType<typeof move> {
  const result = updateState(task);
  release(task.parts, task.giveBack);
  if (task.giveBack === undefined) return result;
  // Piscina moves the buffer back with the answer instead of copying it.
  return move({ [transferableSymbol]: [task.giveBack], [valueSymbol]: { ...result, returned: task.giveBack } });
}

function updateState(task: UpdateTask): StateResult {
  const now = Date.now();
  sweep(now);
  let s = states.get(task.key);
  if (task.expectedOffset === 0) {
    s = { hash: createHash('sha256'), offset: 0, touchedMs: now };
    states.set(task.key, s);
  } else if (!s || s.offset !== task.expectedOffset) {
    // A state at the wrong offset is as good as none: it no longer matches storage.
    states.delete(task.key);
    return { ok: false, threadId, reason: 'missing' };
  }
  for (const part of task.parts) {
    s.hash.update(part);
    s.offset += part.byteLength;
  }
  s.touchedMs = now;
  states.delete(task.key);
  states.set(task.key, s);
  if (states.size > MAX_STATES) states.delete(states.keys().next().value!);
  return { ok: true, threadId, offset: s.offset };
}

export function digest(task: DigestTask): DigestResult {
  const s = states.get(task.key);
  if (!s || s.offset !== task.expectedOffset) {
    states.delete(task.key);
    return { ok: false, threadId, reason: 'missing' };
  }
  // copy() keeps the running state usable when the caller is not done with the upload.
  const hex = task.final ? s.hash.digest('hex') : s.hash.copy().digest('hex');
  if (task.final) states.delete(task.key);
  return { ok: true, threadId, hex };
}

export function drop(task: { key: string }): boolean {
  return states.delete(task.key);
}

/** One-shot digest of a buffer (an S3 part's signed SHA-256, or a whole small blob). */
export function oneShot(task: BytesRef & { algorithm: 'md5' | 'sha256' | 'sha512'; encoding: 'hex' | 'base64' }): string {
  return createHash(task.algorithm).update(view(task)).digest(task.encoding);
}
