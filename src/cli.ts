#!/usr/bin/env node
import { Command } from 'commander';
import { ConfigError, loadConfig, testSettings, unknownEnvNames, type Config } from './config.js';
import { formatDuration, formatRun, ProgressLine } from './gc/format.js';
import { createLogger, scrubSecrets } from './logger.js';
import { ClockSkewError, GcBusyError, LeaseLostError } from './gc/lease.js';
import { runGarbageCollection } from './gc/runner.js';
import { mirrorsOf } from './gc/mirror.js';
import { missingNodeOptions } from './node-options.js';
import { startServer } from './server.js';
import { createDriver } from './storage/index.js';

const program = new Command()
  .name('hoist')
  .description('Hoist: an OCI distribution registry with a worker-threaded upload engine');

program
  .command('serve')
  .description('run the registry')
  .option('--listen <host:port>', 'address to listen on (default 127.0.0.1:5000; env HOIST_LISTEN)')
  .option('--storage <url>', 'fs:PATH, memory: or s3://BUCKET/PREFIX?endpoint=URL&region=R (default fs:./data; env HOIST_STORAGE)')
  .option('--frontend <kind>', 'auto, uws or node (default auto; env HOIST_FRONTEND)')
  .option('--config <file>', 'YAML configuration file (env HOIST_CONFIG)')
  .option('--log-level <level>', 'fatal, error, warn, info, debug, trace, silent (env HOIST_LOG_LEVEL)')
  .option('--log-format <format>', 'json, pretty, or auto: pretty when stdout is a terminal, else json (default auto; env HOIST_LOG_FORMAT)')
  .option('--metrics-listen <host:port>', 'serve Prometheus metrics, /healthz and /readyz there (default off; env HOIST_METRICS_LISTEN)')
  .action(async (opts: {
    listen?: string; storage?: string; frontend?: string; config?: string; logLevel?: string; logFormat?: string; metricsListen?: string;
  }) => {
    let config;
    try {
      config = loadConfig({
        file: opts.config ?? process.env.HOIST_CONFIG,
        env: process.env,
        overrides: {
          listen: opts.listen, storage: opts.storage, frontend: opts.frontend, logLevel: opts.logLevel, logFormat: opts.logFormat,
          metrics: { listen: opts.metricsListen },
        },
      });
    } catch (err) {
      if (err instanceof ConfigError) {
        process.stderr.write(`hoist: ${scrubSecrets(err.message)}\n`);
        process.exit(2);
      }
      throw err;
    }
    const tty = process.stdout.isTTY === true;
    const format = config.logFormat === 'auto' ? (tty ? 'pretty' : 'json') : config.logFormat;
    const log = createLogger(config.logLevel, undefined, format, tty);
    // Names only: a misspelt HOIST_PROXY_PASSWORD's value is a secret.
    const unknownEnv = unknownEnvNames(process.env);
    if (unknownEnv.length > 0) log.warn({ variables: unknownEnv }, `ignoring environment variables that name no option: ${unknownEnv.join(', ')}`);
    const missing = missingNodeOptions();
    if (missing.length > 0) log.info({ missing }, 'started without the Node.js options hoist serve runs best with (src/node-options.ts; npm start passes them)');
    let server;
    try {
      server = await startServer(config, log, testSettings(process.env));
    } catch (err) {
      // A file an option names that holds the wrong thing (htpasswd, certificate, key) is a
      // configuration error like a bad value: one line naming the option, exit 2, and no
      // stack trace, which says nothing about the file to whoever must fix it.
      if (err instanceof ConfigError) {
        log.fatal(`invalid configuration: ${err.message}`);
        process.stderr.write(`hoist: ${scrubSecrets(err.message)}\n`);
        log.flush();
        process.exit(2);
      }
      log.fatal({ err }, 'start-up failed');
      process.stderr.write(`hoist: start-up failed: ${scrubSecrets((err as Error).message)}\n`);
      log.flush();
      process.exit(1);
    }
    const stop = (signal: string): void => {
      log.info({ signal }, 'shutting down');
      server.close().then(
        () => {
          log.info('stopped');
          log.flush();
          process.exit(0);
        },
        (err: unknown) => {
          log.error({ err }, 'shutdown failed');
          log.flush();
          process.exit(1);
        },
      );
    };
    process.on('SIGHUP', () => {
      server.reload().then(
        () => log.info({ signal: 'SIGHUP' }, 'reloaded the htpasswd file and TLS certificate'),
        (err: unknown) => log.error({ err }, 'reload failed; still using what was loaded before'),
      );
    });
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });

program
  .command('gc')
  .description('collect garbage once, online: expired tags, unreferenced manifests and blobs, stale uploads (servers may keep running)')
  .option('--storage <url>', 'the store to collect, as for serve (env HOIST_STORAGE)')
  .option('--config <file>', 'YAML configuration file: storage, gc.* and namespaces as the servers use them (env HOIST_CONFIG)')
  .option('--dry-run', 'report what would be removed; remove nothing')
  .option('--grace <duration>', 'keep what was touched this recently, e.g. 1h (default gc.grace, 1h); 0s collects everything unreferenced now')
  .option('--stale-upload-after <duration>', 'remove uploads idle this long (default gc.staleUploadAfter, 1h)')
  .option('--concurrency <n>', 'storage requests in flight (default 16)')
  .option('--json', 'print the report as JSON')
  .action(async (opts: { storage?: string; config?: string; dryRun?: boolean; grace?: string; staleUploadAfter?: string; concurrency?: string; json?: boolean }) => {
    let config: Readonly<Config>;
    try {
      config = loadConfig({
        file: opts.config ?? process.env.HOIST_CONFIG,
        env: process.env,
        overrides: { storage: opts.storage, gc: { grace: opts.grace, staleUploadAfter: opts.staleUploadAfter } },
      });
    } catch (err) {
      if (err instanceof ConfigError) {
        process.stderr.write(`hoist: ${scrubSecrets(err.message)}\n`);
        process.exit(2);
      }
      throw err;
    }
    const unknownEnv = unknownEnvNames(process.env);
    if (unknownEnv.length > 0) process.stderr.write(`hoist gc: ignoring environment variables that name no option: ${unknownEnv.join(', ')}\n`);
    const concurrency = opts.concurrency === undefined ? undefined : Number(opts.concurrency);
    if (concurrency !== undefined && !(Number.isInteger(concurrency) && concurrency > 0)) {
      process.stderr.write(`hoist: --concurrency must be a positive whole number\n`);
      process.exit(2);
    }
    let driver;
    try {
      driver = await createDriver(config.storage, { existing: true });
    } catch (err) {
      process.stderr.write(scrubSecrets(`hoist: ${(err as Error).message}\n`));
      process.exit(1);
    }
    const g = config.gc;
    if (!opts.json) {
      // The storage URL may carry S3 keys: printed as the log prints it, scrubbed.
      process.stdout.write(scrubSecrets(`hoist gc ${config.storage}${opts.dryRun ? ' (dry run)' : ''}: grace ${formatDuration(g.grace)}, stale uploads after ${formatDuration(g.staleUploadAfter)}\n`));
    }
    const progress = new ProgressLine(process.stderr);
    try {
      const run = await runGarbageCollection({
        driver,
        graceMs: g.grace,
        staleUploadAfterMs: g.staleUploadAfter,
        expiration: g.expiration,
        namespaces: config.namespaces.map((n) => n.name),
        mirrors: mirrorsOf(config),
        dryRun: opts.dryRun,
        concurrency,
        onProgress: (registry, p) => progress.update(`${registry || '(default)'}: ${p.phase} ${p.total > 0 ? `${p.done}/${p.total}` : ''}`),
      });
      progress.clear();
      process.stdout.write(opts.json ? `${JSON.stringify(run, null, 2)}\n` : formatRun(run));
    } catch (err) {
      progress.clear();
      if (err instanceof GcBusyError || err instanceof LeaseLostError) {
        process.stderr.write(`hoist gc: ${err.message}\n`);
        process.exitCode = 3;
      } else if (err instanceof ClockSkewError) {
        process.stderr.write(`hoist gc: ${err.message}\n`);
        process.exitCode = 1;
      } else {
        process.stderr.write(scrubSecrets(`hoist gc failed: ${(err as Error).stack ?? String(err)}\n`));
        process.exitCode = 1;
      }
    } finally {
      await driver.close();
    }
  });

await program.parseAsync(process.argv);
