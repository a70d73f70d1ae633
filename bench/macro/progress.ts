import { formatBytes, MiB } from './loadgen.js';

/**
 * The runner's progress display, on stderr. On a terminal, one live line per scenario that
 * is rewritten four times a second: elapsed time, MiB done of the total, and the MiB/s of
 * the last second. Elsewhere (CI logs, pipes) plain lines: the start, a line every
 * 10 seconds for long scenarios, and the result.
 */
export class Progress {
  readonly #out: NodeJS.WriteStream;
  readonly #tty: boolean;
  readonly #t0 = performance.now();

  constructor(out: NodeJS.WriteStream = process.stderr) {
    this.#out = out;
    this.#tty = Boolean(out.isTTY) && process.env.TERM !== 'dumb';
  }

  #stamp(): string {
    return `[${((performance.now() - this.#t0) / 1000).toFixed(1).padStart(6)}s]`;
  }

  /** A line of its own, e.g. a target starting. */
  log(msg: string): void {
    this.#out.write(`${this.#stamp()} ${msg}\n`);
  }

  /**
   * Shows a running scenario until the returned function is called with its result line.
   * `counter.bytes` is advanced by the load generator as body bytes go out or come in.
   */
  track(label: string, counter: { bytes: number }, totalBytes: number): (result: string) => void {
    const started = performance.now();
    // (time, bytes) samples of the last second or so, for the current rate.
    const window: Array<[number, number]> = [[started, 0]];
    const line = (): string => {
      const now = performance.now();
      window.push([now, counter.bytes]);
      while (window.length > 2 && now - window[0]![0] > 1000) window.shift();
      const [t, b] = window[0]!;
      const rate = now > t ? (counter.bytes - b) / MiB / ((now - t) / 1000) : 0;
      return `${label}: ${((now - started) / 1000).toFixed(1)} s, ${(counter.bytes / MiB).toFixed(0)}/${(totalBytes / MiB).toFixed(0)} MiB, ` +
        `${rate.toFixed(0)} MiB/s`;
    };
    let timer: NodeJS.Timeout;
    if (this.#tty) {
      timer = setInterval(() => this.#out.write(`\r\x1b[K${this.#stamp()} ${line()}`), 250);
      this.#out.write(`${this.#stamp()} ${label} (${formatBytes(totalBytes)}) ...`);
    } else {
      this.log(`${label} (${formatBytes(totalBytes)}) ...`);
      timer = setInterval(() => this.log(line()), 10_000);
    }
    timer.unref();
    return (result) => {
      clearInterval(timer);
      if (this.#tty) this.#out.write('\r\x1b[K');
      this.log(result);
    };
  }
}
