import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * The compiled piscina task file workers/<name>.js (workers/ holds the task files). Once
 * compiled it sits beside dist/src/; under vitest this module runs from src/*.ts, where the
 * task has not been compiled next to it, and the test set-up builds dist/ first, so use that.
 */
export function taskFile(name: string): string {
  const compiled = fileURLToPath(new URL(`../workers/${name}.js`, import.meta.url));
  if (existsSync(compiled)) return compiled;
  return fileURLToPath(new URL(`../dist/workers/${name}.js`, import.meta.url));
}
