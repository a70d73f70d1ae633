import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { performance } from 'node:perf_hooks';

/**
 * What every micro bench shares: the machine record, a timer that also reports how busy the
 * main thread's event loop was (work moved to workers should leave it idle), and the JSON
 * shape `npm run bench:micro` (bench/micro/run.ts) collects.
 */

export const MiB = 1024 ** 2;

export interface MicroResult {
  /** What was measured, one line. */
  label: string;
  mibPerSecond: number;
  seconds: number;
  /** Share of the wall time the main thread's event loop was busy (0..1), where measured. */
  mainThreadBusy?: number;
  /** Process CPU seconds (all threads) per wall second, where measured. */
  cpuCores?: number;
  [extra: string]: unknown;
}

export interface MicroReport {
  bench: string;
  date: string;
  machine: { cpuModel: string | undefined; cores: number; memoryGiB: number; node: string; loadAverage: number[] };
  settings: Record<string, unknown>;
  results: MicroResult[];
  notes?: string[];
}

export function machine(): MicroReport['machine'] {
  return {
    cpuModel: os.cpus()[0]?.model, cores: os.availableParallelism(), memoryGiB: +(os.totalmem() / 1024 ** 3).toFixed(1),
    node: process.version, loadAverage: os.loadavg().map((l) => +l.toFixed(2)),
  };
}

/** Runs `fn` and measures wall time, main-thread event-loop utilisation and process CPU. */
export async function measure(label: string, bytes: number, fn: () => Promise<void>, extra: Record<string, unknown> = {}): Promise<MicroResult> {
  const elu0 = performance.eventLoopUtilization();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await fn();
  const seconds = (performance.now() - t0) / 1000;
  const elu = performance.eventLoopUtilization(elu0);
  const cpu = process.cpuUsage(cpu0);
  return {
    label, mibPerSecond: bytes / MiB / seconds, seconds, mainThreadBusy: elu.utilization,
    cpuCores: (cpu.user + cpu.system) / 1e6 / seconds, ...extra,
  };
}

export function print(r: MicroResult): void {
  const busy = r.mainThreadBusy === undefined ? '' : `, main thread ${(r.mainThreadBusy * 100).toFixed(0)}% busy`;
  const cpu = r.cpuCores === undefined ? '' : `, ${r.cpuCores.toFixed(2)} cores`;
  console.log(`${r.label}: ${r.mibPerSecond.toFixed(0)} MiB/s (${r.seconds.toFixed(2)} s${busy}${cpu})`);
}

/** Writes the report where --json FILE says, if it says. */
export function writeReport(path: string | undefined, report: MicroReport): void {
  if (path) writeFileSync(path, `${JSON.stringify(report, null, 2)}\n`);
}
