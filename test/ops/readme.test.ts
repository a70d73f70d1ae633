import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { metricsUrlOf, scrape } from '../helpers/metrics.js';
import { pushBlob, randomBlob } from '../helpers/oci.js';
import { REPO_ROOT, startServer, type TestServer } from '../helpers/server.js';

/**
 * README "Running it" says what the server does: its metrics table lists exactly the hoist_*
 * metrics a real scrape has, with their types and labels; its scrape configuration and alert
 * rules pass Prometheus's own checker (promtool, from Debian's prometheus package), and so do
 * the metrics themselves (`promtool check metrics`: naming conventions).
 */

const PROMTOOL = process.env.HOIST_TEST_PROMTOOL ?? 'promtool';

let section: string;
let server: TestServer;
let work: string;
let exposition: string;

function promtool(args: string[], input?: string): { status: number | null; output: string } {
  const r = spawnSync(PROMTOOL, args, { input, encoding: 'utf8' });
  if (r.error) {
    throw (r.error as NodeJS.ErrnoException).code === 'ENOENT'
      ? new Error(`${PROMTOOL} is not installed: apt-get install -y --no-install-recommends prometheus (scripts/test-all.sh does this when run as root)`)
      : r.error;
  }
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

beforeAll(async () => {
  const readme = await readFile(join(REPO_ROOT, 'README.md'), 'utf8');
  section = /^## Running it$([\s\S]*?)^## /m.exec(readme)?.[1] ?? '';
  expect(section, 'README.md has a "Running it" section').not.toBe('');
  work = await mkdtemp(join(tmpdir(), 'hoist-readme-ops-'));
  server = await startServer({ storage: 'memory:', env: { HOIST_METRICS_LISTEN: '127.0.0.1:0' } });
  // Requests and storage calls, so that their labeled series have samples to compare.
  await pushBlob(server.url, 'readme/app', randomBlob(10));
  exposition = (await scrape(metricsUrlOf(server))).text;
});

afterAll(async () => {
  if (server) expect(await server.stop()).toBe(0);
  if (work) await rm(work, { recursive: true, force: true });
});

describe('README "Running it"', () => {
  it('lists every hoist_* metric a scrape has, with its type and labels, and no other', () => {
    const documented = new Map<string, { type: string; labels: string[] }>();
    for (const row of section.matchAll(/^\| (`hoist_[^|]+) \| (\w+) \|([^|]*)\|/gm)) {
      const labels = [...row[3]!.matchAll(/`(\w+)`/g)].map((m) => m[1]!).sort();
      for (const name of row[1]!.matchAll(/`(hoist_\w+)`/g)) documented.set(name[1]!, { type: row[2]!, labels });
    }
    const scraped = new Map<string, { type: string; labels: string[] }>();
    for (const m of exposition.matchAll(/^# TYPE (hoist_\w+) (\w+)$/gm)) scraped.set(m[1]!, { type: m[2]!, labels: [] });
    // Labels as the samples carry them (histograms add `le`, which the table leaves out).
    for (const m of exposition.matchAll(/^(hoist_\w+?)(?:_bucket|_sum|_count)?\{([^}]*)\} /gm)) {
      const entry = scraped.get(m[1]!) ?? scraped.get(m[1]!.replace(/_(bucket|sum|count)$/, ''));
      if (!entry) continue;
      for (const l of m[2]!.matchAll(/(\w+)="/g)) if (l[1] !== 'le' && !entry.labels.includes(l[1]!)) entry.labels.push(l[1]!);
    }
    for (const e of scraped.values()) e.labels.sort();
    expect([...documented.keys()].sort()).toEqual([...scraped.keys()].sort());
    for (const [name, e] of scraped) {
      // Labeled series that nothing has touched yet have no samples: only compare those that do.
      if (e.labels.length > 0) expect(documented.get(name)?.labels, `labels of ${name}`).toEqual(e.labels);
      expect(documented.get(name)?.type, `type of ${name}`).toBe(e.type);
    }
  });

  it('names process metrics that the scrape really has', () => {
    const named = [...section.matchAll(/`((?:process|nodejs)_\w+)`/g)].map((m) => m[1]!);
    expect(named.length).toBeGreaterThan(3);
    for (const name of named) expect(exposition, name).toContain(`# TYPE ${name} `);
  });

  it('has a scrape configuration and alert rules that promtool accepts', async () => {
    const blocks = [...section.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!);
    const scrapeConfig = blocks.find((b) => b.includes('scrape_configs:'));
    const rules = blocks.find((b) => b.includes('groups:'));
    expect(scrapeConfig, 'a scrape configuration').toBeDefined();
    expect(rules, 'alert rules').toBeDefined();
    await writeFile(join(work, 'prometheus.yml'), scrapeConfig!);
    await writeFile(join(work, 'rules.yml'), rules!);
    const config = promtool(['check', 'config', join(work, 'prometheus.yml')]);
    expect(config.status, config.output).toBe(0);
    const checked = promtool(['check', 'rules', join(work, 'rules.yml')]);
    expect(checked.status, checked.output).toBe(0);
    for (const alert of ['HoistGcFailing', 'HoistUploadsStalled']) expect(rules).toContain(`alert: ${alert}`);
    // The alerts use metrics that exist.
    for (const m of rules!.matchAll(/\b(hoist_\w+)/g)) expect(exposition, m[1]).toContain(`# TYPE ${m[1]} `);
  });

  it('describes metrics that follow Prometheus naming conventions (promtool check metrics)', () => {
    const r = promtool(['check', 'metrics'], exposition);
    // prom-client's own nodejs_active_*_total gauges are its standard names; ours must be clean.
    const problems = r.output.split('\n').filter((l) => l.trim() !== '' && !/^nodejs_active_\w+_total non-counter/.test(l));
    expect(problems, r.output).toEqual([]);
  });
});
