import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config.js';

/** The ConfigError loadConfig throws for these options (fails the test if it does not throw one). */
export function configError(opts: Parameters<typeof loadConfig>[0]): ConfigError {
  try {
    loadConfig(opts);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected loadConfig to throw');
}

/**
 * Gives a suite YAML config files: `yamlFile(text)` writes one into a temporary directory of
 * the suite's own (made before its tests, removed after them) and returns its path.
 */
export function useYamlFiles(prefix: string): (text: string) => Promise<string> {
  let dir: string | undefined;
  let n = 0;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), prefix));
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });
  return async (text) => {
    const file = join(dir!, `config-${n++}.yaml`);
    await writeFile(file, text);
    return file;
  };
}
