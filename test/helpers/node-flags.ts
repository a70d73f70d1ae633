import { readFileSync } from 'node:fs';

/**
 * The Node.js options a script's shebang line gives (`#!/usr/bin/env -S node --opt ...`):
 * what running it as a program, or `npm start`, passes to node. Tests and the bench start the
 * CLI with `process.execPath` and pass these on, so they run the server users run (and a
 * before/after bench run gives each build its own).
 */
export function nodeFlagsOf(script: string): string[] {
  const first = readFileSync(script, 'utf8').split('\n', 1)[0] ?? '';
  const m = /^#!\S*\benv\s+-S\s+node\s+(.*)$/.exec(first);
  return m ? m[1]!.trim().split(/\s+/) : [];
}
