import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { SERVE_NODE_OPTIONS } from '../../src/node-options.js';

/**
 * Starts the built server (`dist/src/cli.js serve`, compiled by test/helpers/global-setup.ts)
 * as a child process on an ephemeral port, the way a user runs it, and waits for its
 * `listening` log line. Every test that talks HTTP to Hoist goes through here.
 *
 *   const server = await startServer({ storage: 'memory:', frontend: 'node' });
 *   await fetch(`${server.url}/v2/`);
 *   expect(await server.stop()).toBe(0);
 */

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const CLI_PATH = fileURLToPath(new URL('../../dist/src/cli.js', import.meta.url));

export type Frontend = 'uws' | 'node' | 'auto';

export interface StartServerOptions {
  /** Storage URL: `memory:` (default), `fs:/abs/dir`, `s3://...`. */
  storage?: string;
  /** Front end to force; by default the server picks (`auto`). */
  frontend?: Frontend;
  /**
   * Extra environment. Inherited HOIST_* variables are dropped so a developer's shell cannot
   * change what a test runs; set them here instead. HOIST_STORAGE or HOIST_LISTEN given here
   * win over the helper's defaults (the helper then omits the matching flag).
   */
  env?: Record<string, string>;
  /** Extra command-line arguments after `serve` and the helper's own flags. */
  args?: string[];
  /** Node.js options before the CLI (default: SERVE_NODE_OPTIONS, as `npm start` passes them). */
  nodeOptions?: readonly string[];
  /** How long to wait for the `listening` line. */
  startTimeoutMs?: number;
}

/** One parsed pino line; non-JSON output is kept as `{ msg: line, raw: true }`. */
export type LogRecord = Record<string, unknown> & { msg?: unknown };

export interface TestServer {
  /** `http://127.0.0.1:PORT` */
  readonly url: string;
  /** `127.0.0.1:PORT`, as clients such as skopeo name a registry. */
  readonly host: string;
  readonly port: number;
  readonly pid: number;
  /** The front end the server reported in its `listening` line. */
  readonly frontend: string;
  /** Everything the process printed so far (stdout and stderr), one entry per line. */
  logs(): string[];
  /** The same lines, parsed as JSON log records. */
  records(): LogRecord[];
  /**
   * Sends `signal` (SIGTERM by default) and resolves with the exit code once the process
   * exited (null if a signal killed it). Rejects, after SIGKILLing it, if it has not exited
   * within `timeoutMs`: a server that ignores SIGTERM is a bug.
   */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | null>;
  /** SIGKILLs the process and resolves once it is gone. */
  kill(): Promise<void>;
  /** Resolves with the exit code when the process exits, for whatever reason. */
  readonly exited: Promise<number | null>;
}

const running = new Set<ChildProcess>();
process.once('exit', () => {
  // Never leave a server behind when a test file crashes or forgets to stop one.
  for (const child of running) child.kill('SIGKILL');
});

/** The last lines of a server's output, for error messages. */
export function tail(lines: string[], count = 60): string {
  const shown = lines.slice(-count);
  const skipped = lines.length - shown.length;
  return `${skipped > 0 ? `[... ${skipped} earlier lines]\n` : ''}${shown.join('\n') || '(no output)'}`;
}

function parse(line: string): LogRecord {
  try {
    const value: unknown = JSON.parse(line);
    if (value && typeof value === 'object' && !Array.isArray(value)) return value as LogRecord;
  } catch {
    // Not JSON: fall through.
  }
  return { msg: line, raw: true };
}

/**
 * The environment for a Hoist child process: this one without its HOIST_* variables (a
 * developer's shell must not change what a test runs), plus `extra`.
 */
export function hoistEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('HOIST_')) env[k] = v;
  return Object.assign(env, extra);
}

export interface CliResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs the built `hoist <args>` (dist/src/cli.js) to its end, as a user or operator does, with
 * hoistEnv(env); SIGKILLs it after `timeoutMs` (a hang guard: the result then has that signal).
 */
export function runCli(args: string[], env: Record<string, string> = {}, timeoutMs = 120_000): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...SERVE_NODE_OPTIONS, CLI_PATH, ...args], { cwd: REPO_ROOT, env: hoistEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => { stdout += s; });
    child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s; });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

export async function startServer(opts: StartServerOptions = {}): Promise<TestServer> {
  if (!existsSync(CLI_PATH)) {
    throw new Error(`${CLI_PATH} does not exist: build first (npm run build; vitest's global setup does this)`);
  }
  const env = hoistEnv(opts.env);

  const args = [...(opts.nodeOptions ?? SERVE_NODE_OPTIONS), CLI_PATH, 'serve'];
  if (!opts.env?.HOIST_LISTEN) args.push('--listen', '127.0.0.1:0');
  if (opts.storage !== undefined || !opts.env?.HOIST_STORAGE) args.push('--storage', opts.storage ?? 'memory:');
  if (opts.frontend) args.push('--frontend', opts.frontend);
  args.push(...(opts.args ?? []));

  const child = spawn(process.execPath, args, { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  const lines: string[] = [];
  const records: LogRecord[] = [];
  let onLine: ((record: LogRecord) => void) | undefined;

  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => {
      running.delete(child);
      resolve(code);
    });
  });
  // Keep a handle on spawn errors (e.g. ENOENT) so they reject start rather than crash.
  const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));

  for (const stream of [child.stdout, child.stderr]) {
    let pending = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      pending += chunk;
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl).replace(/\r$/, '');
        pending = pending.slice(nl + 1);
        if (!line) continue;
        const record = parse(line);
        lines.push(line);
        records.push(record);
        onLine?.(record);
      }
    });
    stream.on('end', () => {
      if (pending) {
        lines.push(pending);
        records.push(parse(pending));
        pending = '';
      }
    });
  }

  const timeoutMs = opts.startTimeoutMs ?? 20_000;
  const describeRun = (): string => `node ${args.slice(1).join(' ')} (pid ${child.pid ?? '?'})`;
  const isListening = (r: LogRecord): boolean => r.msg === 'listening' && typeof r.port === 'number';
  let listening: LogRecord;
  try {
    listening = await new Promise<LogRecord>((resolve, reject) => {
      const timer = setTimeout(() => reject(
        new Error(`server did not log "listening" within ${timeoutMs} ms: ${describeRun()}\n${tail(lines)}`),
      ), timeoutMs);
      const settle = (fn: () => void): void => {
        clearTimeout(timer);
        onLine = undefined;
        fn();
      };
      onLine = (r) => { if (isListening(r)) settle(() => resolve(r)); };
      void exited.then((code) => {
        // Let the streams flush their last lines (often the reason it exited) first.
        setImmediate(() => settle(() => reject(
          new Error(`server exited with code ${code} before listening: ${describeRun()}\n${tail(lines)}`),
        )));
      });
      void spawnError.then((err) => settle(() => reject(new Error(`could not spawn the server: ${err.message}`))));
    });
  } catch (err) {
    child.kill('SIGKILL');
    // A process that failed to spawn may never emit 'exit'.
    await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 5_000).unref())]);
    running.delete(child);
    throw err;
  }

  const port = listening.port as number;
  const host = `127.0.0.1:${port}`;
  let exitCode: number | null | undefined;
  void exited.then((code) => { exitCode = code; });

  return {
    url: `http://${host}`,
    host,
    port,
    pid: child.pid!,
    frontend: String(listening.frontend ?? ''),
    exited,
    logs: () => [...lines],
    records: () => [...records],
    async stop(signal: NodeJS.Signals = 'SIGTERM', stopTimeoutMs = 15_000) {
      if (exitCode !== undefined) return exitCode;
      child.kill(signal);
      let stopTimer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<'timeout'>((resolve) => { stopTimer = setTimeout(() => resolve('timeout'), stopTimeoutMs); });
      const result = await Promise.race([exited, timedOut]);
      clearTimeout(stopTimer);
      if (result === 'timeout') {
        child.kill('SIGKILL');
        await exited;
        throw new Error(`server did not exit within ${stopTimeoutMs} ms of ${signal}: ${describeRun()}\n${tail(lines)}`);
      }
      return result;
    },
    async kill() {
      if (exitCode !== undefined) return;
      child.kill('SIGKILL');
      await exited;
    },
  };
}
