/**
 * The Node.js options `hoist serve` runs best with. `npm start` passes them; so do the tests'
 * and the bench's launchers (they import this list). They are start-up options of V8's:
 * `v8.setFlagsFromString()` is too late for them and NODE_OPTIONS refuses them, and a
 * `#!/usr/bin/env -S node ...` shebang would break the bin where `env` has no `-S` (BusyBox,
 * as in Alpine's Node images). A server started without them logs which ones it lacks.
 *
 * --initial-old-space-size=64: V8 starts a full collection whenever memory held outside its
 * heap (the request bodies' ArrayBuffers) has grown past its level at the last one by more
 * than the old generation's slack, which for Hoist's ~11 MB heap is ~16 MB. Sixteen uploads at
 * once swing their in-flight buffers by more than that all the time: 11-20 full mark-compacts
 * per GiB pushed. With the old generation's limit starting at 64 MB, 2-3 (README, "Where a
 * GiB's CPU goes").
 */
export const SERVE_NODE_OPTIONS: readonly string[] = ['--initial-old-space-size=64'];

/** The options of SERVE_NODE_OPTIONS that `execArgv` (this process's, by default) lacks. */
export function missingNodeOptions(execArgv: readonly string[] = process.execArgv): string[] {
  return SERVE_NODE_OPTIONS.filter((o) => !execArgv.includes(o));
}
