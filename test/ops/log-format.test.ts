import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { CLI_PATH, hoistEnv, REPO_ROOT, startServer } from '../helpers/server.js';

/**
 * `hoist serve` logs JSON lines when its stdout is a pipe or a file (log collectors), readable
 * pino-pretty lines on a terminal, and `--log-format json|pretty` (HOIST_LOG_FORMAT) chooses.
 * The terminal case runs the server under `script`, which gives it a pseudo-terminal.
 */

/** Runs `hoist serve` via `argv`, waits for a line matching `ready`, stops it, and returns its output. */
function serveUntil(argv: string[], ready: RegExp, env: NodeJS.ProcessEnv = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), { cwd: REPO_ROOT, env: hoistEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let stopping = false;
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`no line matching ${ready} within 30 s:\n${out}`));
    }, 30_000);
    const onData = (s: string): void => {
      out += s;
      if (!stopping && ready.test(out)) {
        stopping = true;
        // `script` passes the signal on to the server, which logs its shutdown and exits 0.
        child.kill('SIGTERM');
      }
    };
    child.stdout.setEncoding('utf8').on('data', onData);
    child.stderr.setEncoding('utf8').on('data', onData);
    child.once('error', reject);
    child.once('close', () => {
      clearTimeout(timer);
      resolve(out);
    });
  });
}

const SERVE = [process.execPath, CLI_PATH, 'serve', '--listen', '127.0.0.1:0', '--storage', 'memory:'];
const PRETTY_LISTENING = /\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] (?:\u001b\[\d+m)?INFO(?:\u001b\[\d+m)?: (?:\u001b\[\d+m)?listening/;

describe('log format', () => {
  it('is JSON on a pipe by default', async () => {
    const server = await startServer();
    try {
      const listening = server.records().find((r) => r.msg === 'listening');
      expect(listening, server.logs().join('\n')).toMatchObject({ level: 30, service: 'hoist' });
      expect(server.records().every((r) => r.raw !== true), 'every line is JSON').toBe(true);
    } finally {
      expect(await server.stop()).toBe(0);
    }
  });

  it('is pretty with --log-format pretty, and with HOIST_LOG_FORMAT=pretty', async () => {
    for (const [argv, env] of [[[...SERVE, '--log-format', 'pretty'], {}], [SERVE, { HOIST_LOG_FORMAT: 'pretty' }]] as const) {
      const out = await serveUntil([...argv], PRETTY_LISTENING, env);
      expect(out).toMatch(PRETTY_LISTENING);
      expect(out, 'no JSON lines').not.toMatch(/^\{"level"/m);
      expect(out, 'the shutdown is logged too').toMatch(/INFO: stopped/);
    }
  });

  it('is pretty (in colour) on a terminal by default, and JSON there with --log-format json', async () => {
    const cmd = SERVE.map((a) => `'${a}'`).join(' ');
    const pretty = await serveUntil(['script', '-qfec', cmd, '/dev/null'], PRETTY_LISTENING);
    expect(pretty).toMatch(PRETTY_LISTENING);
    expect(pretty, 'colours on a terminal').toContain('\u001b[');
    const json = await serveUntil(['script', '-qfec', `${cmd} --log-format json`, '/dev/null'], /"msg":"listening"/);
    expect(json).toMatch(/^\{"level":30,.*"msg":"listening"\}\r?$/m);
  });

  it('refuses an unknown format, naming the option', async () => {
    const out = await serveUntil([...SERVE, '--log-format', 'xml'], /logFormat/);
    expect(out).toMatch(/logFormat: .*'auto' \| 'json' \| 'pretty'/);
  });
});
