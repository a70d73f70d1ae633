import { spawn } from 'node:child_process';
import { chmod, readdir, readFile, stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lease } from '../../src/gc/lease.js';
import { SERVE_NODE_OPTIONS } from '../../src/node-options.js';
import { createDriver } from '../../src/storage/index.js';
import { tempDir } from '../helpers/http.js';
import { CLI_PATH, REPO_ROOT, runCli, startServer, type CliResult } from '../helpers/server.js';

/**
 * The command line (src/cli.ts), run as a user runs it (dist/cli.js in a child process): what
 * each command accepts, and the exit codes scripts and CI rely on: 0 done, 1 failed (start-up,
 * storage, the collection itself), 2 a usage or configuration error, 3 `hoist gc` found another
 * collection running. Errors go to stderr without the secrets a URL or option may carry.
 */

/** Runs `hoist <args>`; kills it after `timeoutMs` (a hang guard). */
const hoist = (args: string[], env: Record<string, string> = {}, timeoutMs = 60_000): Promise<CliResult> => runCli(args, env, timeoutMs);

describe('how node runs hoist', () => {
  // The options matter to the engine's speed (src/node-options.ts says why); started the ways
  // a user or the tests start it, the server gets them, and without them it says so.
  it('`npm start` passes SERVE_NODE_OPTIONS, and so does the tests\' server helper', async () => {
    expect(SERVE_NODE_OPTIONS).toContain('--initial-old-space-size=64');
    const pkg = JSON.parse(await readFile(join(REPO_ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts.start).toBe(`node ${SERVE_NODE_OPTIONS.join(' ')} dist/src/cli.js serve`);
    const server = await startServer();
    try {
      const argv = (await readFile(`/proc/${server.pid}/cmdline`, 'utf8')).split('\0');
      for (const o of SERVE_NODE_OPTIONS) expect(argv).toContain(o);
      expect(server.records().some((r) => typeof r.msg === 'string' && r.msg.startsWith('started without'))).toBe(false);
    } finally {
      await server.stop();
    }
  });

  it('a server started without them logs which it lacks, and runs', async () => {
    const server = await startServer({ nodeOptions: [] });
    try {
      const line = server.records().find((r) => typeof r.msg === 'string' && r.msg.startsWith('started without'));
      expect(line).toMatchObject({ level: 30, missing: [...SERVE_NODE_OPTIONS] });
      expect((await fetch(`${server.url}/v2/`)).status).toBe(200);
    } finally {
      await server.stop();
    }
  });

  it('the built CLI runs as a program through a plain `env node` shebang (no `env -S`, which BusyBox lacks)', async () => {
    expect((await readFile(CLI_PATH, 'utf8')).split('\n', 1)[0]).toBe('#!/usr/bin/env node');
    // Installed as a package's bin, npm makes it executable; the build does not.
    await chmod(CLI_PATH, 0o755);
    const out = await new Promise<{ code: number | null; stdout: string }>((resolve) => {
      const child = spawn(CLI_PATH, ['--help'], { stdio: ['ignore', 'pipe', 'inherit'] });
      let stdout = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.once('close', (code) => resolve({ code, stdout }));
    });
    expect(out.code).toBe(0);
    expect(out.stdout).toMatch(/^Usage: hoist/m);
  });
});

describe('hoist (no or unknown command)', () => {
  it('--help lists serve and gc and exits 0', async () => {
    const r = await hoist(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^\s+serve\b/m);
    expect(r.stdout).toMatch(/^\s+gc\b/m);
  });

  it('an unknown command or option exits non-zero with the reason, and starts nothing', async () => {
    const unknown = await hoist(['srve']);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/unknown command 'srve'/);
    const option = await hoist(['gc', '--storage', 'memory:', '--grase', '0s']);
    expect(option.code).toBe(1);
    expect(option.stderr).toMatch(/unknown option '--grase'/);
    expect(option.stdout).toBe('');
  });
});

describe('hoist serve', () => {
  it.each([
    ['an unknown front end', ['--frontend', 'nginx'], 'frontend'],
    ['a storage URL of no known scheme', ['--storage', 'ftp://host/x'], 'storage'],
    ['a listen address that is no host:port', ['--listen', 'localhost'], 'listen'],
    ['an unknown log level', ['--log-level', 'loud'], 'logLevel'],
  ])('%s → exit 2, the setting named on stderr, nothing on stdout', async (_what, args, setting) => {
    const r = await hoist(['serve', '--storage', 'memory:', ...args]);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(new RegExp(`^hoist: invalid configuration:\\n  ${setting}: .+\\n$`));
    expect(r.stdout).toBe('');
  });

  it('a configuration file that does not exist → exit 2, its name on stderr', async () => {
    const r = await hoist(['serve', '--storage', 'memory:', '--config', '/nonexistent/hoist.yaml']);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/^hoist: cannot read config file \/nonexistent\/hoist\.yaml: ENOENT/);
    expect(r.stdout).toBe('');
  });

  it('configuration from the environment is checked too: HOIST_FRONTEND=nginx → exit 2', async () => {
    const r = await hoist(['serve', '--storage', 'memory:'], { HOIST_FRONTEND: 'nginx' });
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/^hoist: /);
  });

  it('a configuration error does not print the secrets the value carries', async () => {
    const r = await hoist(['serve', '--storage', 'ftp://user:hunter2@host/x?secret=hunter3']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^hoist: /);
    expect(r.stderr).not.toContain('hunter2');
    expect(r.stderr).not.toContain('hunter3');
  });

  describe('start-up that fails', () => {
    let busy: Server;
    let port: number;
    beforeAll(async () => {
      busy = createServer();
      await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
      port = (busy.address() as { port: number }).port;
    });
    afterAll(async () => {
      await new Promise((resolve) => busy.close(resolve));
    });

    it.each(['node', 'uws'])('a port in use (%s front end) → exit 1 with "start-up failed"', async (frontend) => {
      const r = await hoist(['serve', '--storage', 'memory:', '--frontend', frontend, '--listen', `127.0.0.1:${port}`]);
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toMatch(/^hoist: start-up failed: /m);
    });

    // Found by probing (2026-12-03): uWS listened with SO_REUSEPORT, so a second uWS server on
    // a port a first one held started, and the kernel shared the connections between the two
    // (each with its own storage).
    it('a port a running uWS Hoist holds → a second uWS Hoist exits 1 with "start-up failed"', async () => {
      // A port of our choosing: one the kernel picks for port 0 is not shared so anyway.
      const probe = createServer();
      await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
      const free = (probe.address() as { port: number }).port;
      await new Promise((resolve) => probe.close(resolve));
      const first = await startServer({ frontend: 'uws', env: { HOIST_LISTEN: `127.0.0.1:${free}` } });
      try {
        const r = await hoist(['serve', '--storage', 'memory:', '--frontend', 'uws', '--listen', `127.0.0.1:${first.port}`]);
        expect(r.code, r.stderr).toBe(1);
        expect(r.stderr).toMatch(/^hoist: start-up failed: /m);
      } finally {
        expect(await first.stop()).toBe(0);
      }
    });
  });
});

describe('hoist gc', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  beforeAll(async () => {
    dir = await tempDir('hoist-cli-');
  });
  afterAll(async () => {
    await dir?.cleanup();
  });

  it('collects an empty store: exit 0, the report as JSON with --json, as text without', async () => {
    const json = await hoist(['gc', '--storage', `fs:${dir.path}`, '--grace', '0s', '--json']);
    expect(json.code, json.stderr).toBe(0);
    const run = JSON.parse(json.stdout) as { registries: Array<{ registry: string; report: { manifests: number } }> };
    expect(run.registries.map((x) => x.registry)).toEqual(['']);
    expect(run.registries[0]!.report.manifests).toBe(0);

    const text = await hoist(['gc', '--storage', `fs:${dir.path}`, '--grace', '90s', '--stale-upload-after', '2h', '--dry-run']);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout.split('\n')[0]).toBe(`hoist gc fs:${dir.path} (dry run): grace 1m30s, stale uploads after 2h`);
  });

  it.each([
    ['--concurrency 0', ['--concurrency', '0'], /--concurrency must be a positive whole number/],
    ['--concurrency 1.5', ['--concurrency', '1.5'], /--concurrency must be a positive whole number/],
    ['--concurrency abc', ['--concurrency', 'abc'], /--concurrency must be a positive whole number/],
    ['a grace that is no duration', ['--grace', 'soon'], /^hoist: /],
    ['a stale-upload age that is no duration', ['--stale-upload-after', '-1h'], /^hoist: /],
    ['a storage URL of no known scheme', ['--storage', 'ftp://host/x'], /^hoist: /],
  ])('%s → exit 2, the reason on stderr', async (_what, args, message) => {
    const r = await hoist(['gc', '--storage', `fs:${dir.path}`, ...args]);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stdout).toBe('');
  });

  it('storage that cannot be opened → exit 1 with the reason', async () => {
    for (const storage of ['fs:', 'memory:somewhere']) {
      const r = await hoist(['gc', '--storage', storage]);
      expect(r.code, `${storage}: ${r.stderr}`).toBe(1);
      expect(r.stderr).toMatch(/^hoist: .*storage/);
    }
  });

  // `hoist gc --storage fs:/var/lib/hoisst` created the mistyped directory, collected the
  // empty store it had just made and exited 0, as if the real store were clean.
  it('an fs root that does not exist → exit 1 with the reason, and nothing created; hoist serve still creates one', async () => {
    const missing = join(dir.path, 'typo', 'store');
    const r = await hoist(['gc', '--storage', `fs:${missing}`]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toBe(`hoist: fs storage: root directory ${missing} does not exist\n`);
    expect(r.stdout).toBe('');
    expect(await readdir(dir.path)).not.toContain('typo');
    // A server's first start on a fresh machine makes its store.
    const server = await startServer({ storage: `fs:${missing}` });
    try {
      expect((await fetch(`${server.url}/v2/`)).status).toBe(200);
    } finally {
      expect(await server.stop()).toBe(0);
    }
    expect((await stat(missing)).isDirectory()).toBe(true);
    const again = await hoist(['gc', '--storage', `fs:${missing}`, '--json']);
    expect(again.code, again.stderr).toBe(0);
  });

  // Found by probing (2026-12-02): `hoist serve` scrubbed them, `hoist gc` printed them.
  it('keys in the storage URL are not printed, on stdout or stderr', async () => {
    const r = await hoist(['gc', '--storage', 's3://AKIAEXAMPLE:SuperSecretKey123@bucket/p?endpoint=http://127.0.0.1:9&region=us-east-1']);
    expect(r.code).not.toBe(0);
    expect(`${r.stdout}${r.stderr}`).not.toContain('SuperSecretKey123');
    expect(`${r.stdout}${r.stderr}`).not.toContain('AKIAEXAMPLE');
  });

  it('while another collection holds the lease → exit 3 with "a collection is running already"', async () => {
    const driver = await createDriver(`fs:${dir.path}`);
    const lease = await Lease.acquire(driver, { owner: 'cli-test', ttlMs: 600_000 });
    try {
      const r = await hoist(['gc', '--storage', `fs:${dir.path}`, '--grace', '0s']);
      expect(r.code, r.stderr).toBe(3);
      expect(r.stderr).toMatch(/^hoist gc: a collection is running already \(generation \d+, cli-test, since /);
    } finally {
      await lease.release();
      await driver.close();
    }
    // Released: the next one runs.
    const after = await hoist(['gc', '--storage', `fs:${dir.path}`, '--grace', '0s', '--json']);
    expect(after.code, after.stderr).toBe(0);
  });
});
