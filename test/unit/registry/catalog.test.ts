import { describe, expect, it } from 'vitest';
import { lexical } from '../../../src/registry/manifests.js';
import { paths } from '../../../src/registry/paths.js';
import { repositoryNames } from '../../../src/registry/registry.js';
import { MemoryDriver } from '../../../src/storage/memory.js';
import { CountingDriver } from '../../helpers/counting-driver.js';

/**
 * The catalog's walk (Registry.catalog, repositoryNames): repository names in byte-wise
 * lexical order, from any `last`, found without listing what comes before it. Listings come
 * in key order, where a directory `a` sorts after `a-b` and `a.b`: the walk must still name
 * `a` first.
 */

const NAMES = [
  'a', 'a-b', 'a-b/c', 'a.c', 'a/b', 'a/b-c', 'a/b/c', 'a0', 'ab', 'b', 'b.x.y', 'b.x/z', 'b/a-', 'b/a-/x', 'ns/only/deep', 'z9',
].sort(lexical);
/** Directories that are not repositories themselves (they only hold some). */
const NAMESPACES = ['ns', 'ns/only', 'b.x'];

async function store(names: readonly string[]): Promise<MemoryDriver> {
  const d = new MemoryDriver();
  for (const [i, n] of names.entries()) {
    const marker = ['_manifests/tags/latest', '_layers/sha256/aa', '_uploads/u'][i % 3]!;
    await d.putContent(`${paths.repository(n)}/${marker}`, Buffer.from('x'));
  }
  return d;
}

async function walk(driver: CountingDriver | MemoryDriver, after?: string, max = Infinity): Promise<string[]> {
  const out: string[] = [];
  for await (const name of repositoryNames(driver, after)) {
    out.push(name);
    if (out.length >= max) break;
  }
  return out;
}

describe('repositoryNames', () => {
  it('names every repository, in lexical order, and no namespace', async () => {
    const d = await store(NAMES);
    const all = await walk(d);
    expect(all).toEqual(NAMES);
    for (const ns of NAMESPACES) expect(all).not.toContain(ns);
  });

  it('starts after any `last`, a name or not', async () => {
    const d = await store(NAMES);
    const probes = [...NAMES, ...NAMESPACES, '', 'a-', 'a/', 'a/b/', 'a0/x', 'b.x.', 'c', 'zz'];
    for (const after of probes) {
      expect(await walk(d, after), `after ${JSON.stringify(after)}`).toEqual(NAMES.filter((n) => lexical(n, after) > 0));
    }
  });

  it('pages of every size add up to the whole catalog', async () => {
    const d = await store(NAMES);
    for (let n = 1; n <= NAMES.length; n++) {
      const seen: string[] = [];
      let last: string | undefined;
      for (;;) {
        const page = await walk(d, last, n);
        seen.push(...page);
        if (page.length < n) break;
        last = page[page.length - 1];
      }
      expect(seen, `pages of ${n}`).toEqual(NAMES);
    }
  });

  it('a page costs listings in proportion to the page, not to the catalog', async () => {
    const names = Array.from({ length: 500 }, (_, i) => `team/app-${String(i).padStart(3, '0')}`);
    const d = new CountingDriver(await store(names));
    const { result, calls } = await d.during(() => walk(d, 'team/app-250', 10));
    expect(result).toEqual(names.slice(251, 261));
    // The top level, the namespace, one prefix (`team/app` of `team/app-…`), and for each
    // name its own listing, which shows its markers; and the listings of at most 17 names
    // sent ahead of the walk (CHECKS_AHEAD + 1).
    expect(calls.every((c) => c.op === 'listPage')).toBe(true);
    expect(calls.length).toBeLessThanOrEqual(2 + 1 + 10 + 17);
    // A whole walk: one listing per name, not a look for markers besides.
    const whole = await d.during(() => walk(d));
    expect(whole.result).toEqual(names);
    expect(whole.calls.length).toBeLessThanOrEqual(2 + 1 + 500);
  });
});
