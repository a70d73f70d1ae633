import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * A wall clock the test sets for a process it starts (a server, the gc CLI), so that what the
 * process judges by the time (a token's renewal, a tag's or a marker's age) is judged at the
 * moment the test names, however long a loaded machine took to get there.
 *
 * The process runs with `env()`: its Date (Date.now() and `new Date()`; not timers, not
 * performance.now()) reads the real time plus the offset in a file, read at every call, so a
 * set is seen by everything the process does after it returns. (Worker threads only hash:
 * their clock does not matter.)
 */
export interface ProcessClock {
  /** Environment for the process: NODE_OPTIONS and the offset file's path. */
  env(): Record<string, string>;
  /** Makes the process's Date read `at` (ms since the epoch) now, and run on at the real rate. */
  setNow(at: number): Promise<void>;
  /** Moves the process's Date on by `ms`. */
  advance(ms: number): Promise<void>;
}

const HOOK = [
  "import { readFileSync } from 'node:fs';",
  'const file = process.env.HOIST_TEST_CLOCK_FILE;',
  'const R = Date;',
  "const off = () => { try { return Number(readFileSync(file, 'utf8')) || 0; } catch { return 0; } };",
  'globalThis.Date = class extends R {',
  '  constructor(...a) { if (a.length === 0) super(R.now() + off()); else super(...a); }',
  '  static now() { return R.now() + off(); }',
  '};',
].join('\n');

export function processClock(dir: string, name = 'clock'): ProcessClock {
  const file = join(dir, `${name}.offset`);
  let offsetMs = 0;
  const write = async (ms: number): Promise<void> => {
    offsetMs = ms;
    // Whole or not at all: the process may read it at any moment.
    await writeFile(`${file}.tmp`, String(ms));
    await rename(`${file}.tmp`, file);
  };
  return {
    env: () => ({ NODE_OPTIONS: `--import=data:text/javascript;base64,${Buffer.from(HOOK).toString('base64')}`, HOIST_TEST_CLOCK_FILE: file }),
    setNow: (at) => write(at - Date.now()),
    advance: (ms) => write(offsetMs + ms),
  };
}
