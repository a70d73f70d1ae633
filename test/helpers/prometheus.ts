import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ToolMissingError } from './commands.js';

/**
 * A real Prometheus server for tests (Debian's `prometheus` package; scripts/test-all.sh
 * installs it), scraping the given targets every second, with its own port and its own
 * temporary storage, so it shares nothing with a Prometheus the machine may run.
 *
 *   const prom = await startPrometheus({ hoist: ['127.0.0.1:9464'] });
 *   await prom.waitFor('up{job="hoist"}', (v) => v === 1);
 *   await prom.stop();
 */

export interface PrometheusServer {
  readonly url: string;
  /** An instant query (GET /api/v1/query): each series' labels and value. */
  query(expr: string): Promise<Array<{ metric: Record<string, string>; value: number }>>;
  /**
   * Polls `expr` until its single series' value satisfies `ok`, and returns that value; fails
   * after `timeoutMs` with the last answer (scrapes come every second; no fixed sleeps).
   */
  waitFor(expr: string, ok: (value: number) => boolean, timeoutMs?: number): Promise<number>;
  /** Everything the server printed, for failure messages. */
  logs(): string;
  stop(): Promise<void>;
}

export const PROMETHEUS_BIN = process.env.HOIST_TEST_PROMETHEUS ?? 'prometheus';

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export async function startPrometheus(jobs: Record<string, string[]>): Promise<PrometheusServer> {
  const dir = await mkdtemp(join(tmpdir(), 'hoist-prometheus-'));
  const config = join(dir, 'prometheus.yml');
  const scrapeConfigs = Object.entries(jobs).map(([job, targets]) => ({
    job_name: job,
    scrape_interval: '1s',
    scrape_timeout: '1s',
    static_configs: [{ targets }],
  }));
  // JSON is YAML.
  await writeFile(config, JSON.stringify({ global: { scrape_interval: '1s', evaluation_interval: '1s' }, scrape_configs: scrapeConfigs }, null, 2));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  let output = '';
  const child: ChildProcess = spawn(PROMETHEUS_BIN, [
    `--config.file=${config}`,
    `--storage.tsdb.path=${join(dir, 'data')}`,
    `--web.listen-address=127.0.0.1:${port}`,
    '--log.level=warn',
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.setEncoding('utf8').on('data', (s: string) => (output += s));
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (output += s));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let exitCode: number | null | undefined;
  void exited.then((code) => (exitCode = code));
  const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
  const cleanup = async (): Promise<void> => {
    if (exitCode === undefined) {
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(killer);
    }
    await rm(dir, { recursive: true, force: true });
  };

  // Ready when /-/ready answers 200 (the TSDB is open and the first config loaded).
  const deadline = Date.now() + 60_000;
  for (;;) {
    const failed = await Promise.race([spawnError, sleep(0).then(() => undefined)]);
    if (failed) {
      await rm(dir, { recursive: true, force: true });
      throw (failed as NodeJS.ErrnoException).code === 'ENOENT'
        ? new ToolMissingError(`${PROMETHEUS_BIN} is not installed: apt-get install -y --no-install-recommends prometheus (scripts/test-all.sh does this when run as root)`)
        : failed;
    }
    if (exitCode !== undefined) {
      await cleanup();
      throw new Error(`prometheus exited with code ${exitCode} before it was ready:\n${output}`);
    }
    const ready = await fetch(`${url}/-/ready`).then((r) => r.status === 200, () => false);
    if (ready) break;
    if (Date.now() > deadline) {
      await cleanup();
      throw new Error(`prometheus was not ready on ${url} within 60 s:\n${output}`);
    }
    await sleep(100);
  }

  const query = async (expr: string): Promise<Array<{ metric: Record<string, string>; value: number }>> => {
    const res = await fetch(`${url}/api/v1/query?${new URLSearchParams({ query: expr })}`);
    const body = (await res.json()) as { status: string; error?: string; data?: { resultType: string; result: Array<{ metric: Record<string, string>; value: [number, string] }> } };
    if (body.status !== 'success') throw new Error(`query ${expr}: ${body.error ?? res.status}`);
    if (body.data!.resultType !== 'vector') throw new Error(`query ${expr}: a ${body.data!.resultType}, expected a vector`);
    return body.data!.result.map((r) => ({ metric: r.metric, value: Number(r.value[1]) }));
  };

  return {
    url,
    query,
    async waitFor(expr, ok, timeoutMs = 60_000) {
      const until = Date.now() + timeoutMs;
      let last: unknown = 'no answer yet';
      for (;;) {
        const result = await query(expr);
        last = result;
        if (result.length === 1 && ok(result[0]!.value)) return result[0]!.value;
        if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${expr}; last answer ${JSON.stringify(last)}\nprometheus output:\n${output}`);
        await sleep(200);
      }
    },
    logs: () => output,
    stop: cleanup,
  };
}
