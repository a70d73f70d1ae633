import type { StorageDriver } from '../../src/storage/driver.js';

/** The calls a staged view passes through its hooks. */
export type StagedOp = 'getContent' | 'putContent' | 'delete' | 'stat' | 'reader';

export interface StageHooks {
  /** Runs before the call, with the call's other arguments (a write's content); the call waits for it. */
  before?: (op: StagedOp, path: string, args: readonly unknown[]) => Promise<void> | void;
  /** Sees the call's result once it returned, and may replace it. */
  after?: (op: StagedOp, path: string, result: unknown) => unknown;
  /** Runs once the call is done at the store, whether it returned or threw; the caller waits for it. */
  settled?: (op: StagedOp, path: string) => Promise<void> | void;
}

/**
 * A view of `base` whose calls go through `hooks` (read at each call, so a test sets them when
 * it stages). Two views of one store, each with its own hooks, give a collector and a server
 * separate views whose calls the test interleaves: it holds one call until the other side has
 * made its own, or keeps a write's content to apply it again later, as a store that applies a
 * write after it answered it does.
 */
export function staged(base: StorageDriver, hooks: StageHooks): StorageDriver {
  const ops = new Set<string>(['getContent', 'putContent', 'delete', 'stat', 'reader']);
  return new Proxy(base, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== 'function') return v;
      const fn = (v as (...a: unknown[]) => Promise<unknown>).bind(target);
      if (!ops.has(String(prop))) return fn;
      const op = prop as StagedOp;
      return async (path: string, ...rest: unknown[]) => {
        await hooks.before?.(op, path, rest);
        let result: unknown;
        try {
          result = await fn(path, ...rest);
        } finally {
          await hooks.settled?.(op, path);
        }
        return hooks.after ? hooks.after(op, path, result) : result;
      };
    },
  });
}

/** A promise and the function that resolves it: one side of a staged race waits for the other. */
export function signal(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}
