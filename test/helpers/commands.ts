import { spawn } from 'node:child_process';

/**
 * Runs real clients (skopeo, umoci) for end-to-end tests: no stdin, output collected, a hard
 * timeout, and a failure message that carries the command's output and, optionally, the
 * registry's log tail. A missing binary fails (never skips) with the apt-get line to fix it.
 */

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export const COMMAND_TIMEOUT_MS = 90_000;

/** The client binary is not installed: the test fails with the line that installs it. */
export class ToolMissingError extends Error {
  override readonly name = 'ToolMissingError';
}

export function run(cmd: string, args: string[], context?: () => string, timeoutMs = COMMAND_TIMEOUT_MS): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => { stdout += s; });
    child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s; });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(err.code === 'ENOENT'
        ? new ToolMissingError(`${cmd} is not installed. The end-to-end tests need skopeo and umoci: `
          + 'apt-get install -y --no-install-recommends skopeo umoci (scripts/test-all.sh does this when run as root)')
        : err);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) return resolve({ code, stdout, stderr });
      const why = signal === 'SIGKILL' ? `killed after ${timeoutMs} ms` : `exit ${code ?? signal}`;
      reject(new Error([
        `${cmd} ${args.join(' ')} failed (${why})`,
        `--- stdout ---\n${stdout.slice(-4000)}`,
        `--- stderr (last 8000 chars) ---\n${stderr.slice(-8000)}`,
        context ? `--- registry ---\n${context()}` : '',
      ].join('\n')));
    });
  });
}
