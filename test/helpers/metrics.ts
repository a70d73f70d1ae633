import type { LogRecord, TestServer } from './server.js';

/**
 * Reading Hoist's metrics listener the way Prometheus does: GET /metrics, then the text
 * exposition's sample lines, `name{label="value",...} number`.
 */

export interface Scrape {
  /** The raw text. */
  readonly text: string;
  /** A sample by name and labels (all of them, in any order); undefined when absent. */
  value(name: string, labels?: Record<string, string>): number | undefined;
  /** The sum of every sample of `name` whose labels include `labels`. */
  sum(name: string, labels?: Record<string, string>): number;
}

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export function parseExposition(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

const includes = (have: Record<string, string>, want: Record<string, string>): boolean => Object.entries(want).every(([k, v]) => have[k] === v);

export async function scrape(metricsUrl: string): Promise<Scrape> {
  const res = await fetch(`${metricsUrl}/metrics`);
  const text = await res.text();
  if (res.status !== 200) throw new Error(`GET ${metricsUrl}/metrics: HTTP ${res.status}\n${text.slice(0, 2000)}`);
  if (!/^text\/plain; version=0\.0\.4/.test(res.headers.get('content-type') ?? '')) throw new Error(`unexpected content-type ${res.headers.get('content-type')}`);
  const samples = parseExposition(text);
  return {
    text,
    value: (name, labels = {}) =>
      samples.find((s) => s.name === name && Object.keys(s.labels).length === Object.keys(labels).length && includes(s.labels, labels))?.value,
    sum: (name, labels = {}) => samples.filter((s) => s.name === name && includes(s.labels, labels)).reduce((n, s) => n + s.value, 0),
  };
}

/** `http://127.0.0.1:PORT` of a test server's metrics listener, from its `metrics listening` log line. */
export function metricsUrlOf(server: TestServer): string {
  const line = server.records().find((r: LogRecord) => r.msg === 'metrics listening');
  if (!line || typeof line.port !== 'number') throw new Error(`the server logged no "metrics listening" line:\n${server.logs().join('\n')}`);
  return `http://127.0.0.1:${line.port}`;
}
