import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/**
 * Vitest global setup: compiles the project once (`tsc -p tsconfig.json`, the same build as
 * `npm run build`) before any test file runs, so tests that spawn `dist/src/cli.js` run the
 * code under test and never a stale build. A type error fails the whole run here, with
 * tsc's own output.
 *
 * HOIST_TEST_SKIP_BUILD=1 uses dist/ as it is (while iterating on tests only, or when the
 * tree is mid-edit and you test against an external registry with HOIST_E2E_REGISTRY).
 */
export default function setup(): void {
  if (process.env.HOIST_TEST_SKIP_BUILD === '1') {
    console.log('[global-setup] HOIST_TEST_SKIP_BUILD=1: using dist/ as it is');
    return;
  }
  const root = fileURLToPath(new URL('../..', import.meta.url));
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  const started = Date.now();
  const result = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.json'], {
    cwd: root,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (result.error) throw new Error(`could not run tsc: ${result.error.message}`);
  if (result.status !== 0) {
    const output = `${result.stdout}${result.stderr}`.trim();
    throw new Error(`TypeScript build failed (tsc -p tsconfig.json, exit ${result.status}):\n${output}`);
  }
  console.log(`[global-setup] built dist/ with tsc in ${Date.now() - started} ms`);
}
