/**
 * Piscina task file for the hash-pool micro bench: SHA-256 with hash-wasm, whose running
 * state can be saved and loaded, so any worker can take any chunk of an upload (no
 * pinning). The price: hash-wasm's own speed, and a state save/load per chunk.
 */
import { createSHA256, type IHasher } from 'hash-wasm';

let hasher: IHasher | undefined;

export interface WasmUpdateTask {
  /** The upload's state after the previous chunk, or null for the first. */
  state: Uint8Array | null;
  buffer: SharedArrayBuffer | ArrayBuffer;
  byteOffset: number;
  length: number;
}

export async function update(task: WasmUpdateTask): Promise<Uint8Array> {
  hasher ??= await createSHA256();
  if (task.state) hasher.load(task.state);
  else hasher.init();
  hasher.update(new Uint8Array(task.buffer, task.byteOffset, task.length));
  return hasher.save();
}

export async function digest(task: { state: Uint8Array }): Promise<string> {
  hasher ??= await createSHA256();
  hasher.load(task.state);
  return hasher.digest('hex');
}
