import { Writable, type Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../../src/config.js';
import { startSweepWatch, type SweepWatch } from '../../../src/gc/schedule.js';
import { createLogger } from '../../../src/logger.js';
import { paths } from '../../../src/registry/paths.js';
import { parseDigest } from '../../../src/registry/reference.js';
import { objectExists } from '../../../src/storage/driver.js';
import { MemoryDriver } from '../../../src/storage/memory.js';
import { PrefixedDriver } from '../../../src/storage/prefixed.js';

/**
 * The servers' watch for a dead collector's sweep note (gc/schedule.ts startSweepWatch): which
 * registries it looks at, that a failing store costs a warning and not the server, and that it
 * stops with the server. (test/gc/issue-sweep-note-replayed-by-servers.test.ts runs it in a
 * real server on fs and S3.)
 */

const WATCH_MS = 20;

function capture(): { records: () => Array<Record<string, unknown>>; log: ReturnType<typeof createLogger> } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  return { records: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>), log: createLogger('debug', stream) };
}

/** A memory driver that counts looks for sweep notes, and can fail them. */
class WatchedDriver extends MemoryDriver {
  looks = 0;
  fail = false;

  override async reader(path: string, offset?: number, length?: number): Promise<Readable> {
    if (path.endsWith(paths.gcSweeping())) {
      this.looks++;
      if (this.fail) throw new Error('store down');
    }
    return super.reader(path, offset, length);
  }
}

const expiredLease = (): Buffer => {
  const at = new Date(Date.now() - 10 * 60_000).toISOString();
  return Buffer.from(JSON.stringify({ gen: 1, state: 'running', owner: 'gone:1', startedAt: at, heartbeatAt: at }));
};

let watch: SweepWatch | undefined;
afterEach(async () => {
  await watch?.stop();
  watch = undefined;
});

describe('startSweepWatch', () => {
  it('does not start on memory: storage without gc.schedule, where no collector can write a note', () => {
    const { log } = capture();
    expect(startSweepWatch(loadConfig({ overrides: { storage: 'memory:' } }), new MemoryDriver(), log, WATCH_MS)).toBeUndefined();
    watch = startSweepWatch(loadConfig({ overrides: { storage: 'memory:', gc: { schedule: '1h' } } }), new MemoryDriver(), log, WATCH_MS);
    expect(watch).toBeDefined();
  });

  it('replays a namespace\'s note as well as the default registry\'s', async () => {
    const { log, records } = capture();
    const driver = new WatchedDriver();
    const ns = new PrefixedDriver(driver, '/namespaces/team-a');
    const link = paths.layerLink('a', parseDigest(`sha256:${'ab'.repeat(32)}`));
    await ns.putContent(paths.gcLease(), expiredLease());
    // An entry of a note written before notes named the marker: put back whatever.
    await ns.putContent(paths.gcSweeping(), Buffer.from(JSON.stringify({ gen: 1, entries: [{ path: link, raw: Buffer.from('x').toString('base64') }] })));
    const config = loadConfig({ overrides: { storage: 'fs:/unused', namespaces: [{ name: 'team-a', pathPrefix: 'team-a' }] } });
    watch = startSweepWatch(config, driver, log, WATCH_MS);
    for (let i = 0; i < 500 && (await objectExists(ns, paths.gcSweeping())); i++) await sleep(10);
    expect(await objectExists(ns, paths.gcSweeping())).toBe(false);
    expect(await objectExists(ns, link)).toBe(true);
    expect(await objectExists(ns, paths.gcLease())).toBe(false);
    expect(records().find((r) => r.msg === 'replayed the sweep note of a garbage collector that died mid-batch')).toMatchObject({ registry: 'team-a', restored: 1 });
  });

  it('logs a warning when a look fails, goes on looking, and stops looking once stopped', async () => {
    const { log, records } = capture();
    const driver = new WatchedDriver();
    driver.fail = true;
    watch = startSweepWatch(loadConfig({ overrides: { storage: 'fs:/unused' } }), driver, log, WATCH_MS);
    for (let i = 0; i < 500 && driver.looks < 3; i++) await sleep(10);
    expect(driver.looks).toBeGreaterThanOrEqual(3);
    const warnings = records().filter((r) => r.msg === 'could not replay the sweep note of a garbage collector that died');
    expect(warnings.length).toBeGreaterThanOrEqual(2);
    expect(warnings[0]).toMatchObject({ level: 40, registry: '(default)', err: { message: 'store down' } });
    await watch!.stop();
    const looks = driver.looks;
    await sleep(WATCH_MS * 5);
    expect(driver.looks).toBe(looks);
  });
});
