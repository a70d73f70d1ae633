#!/usr/bin/env node
import { Command } from 'commander';
import { ConfigError, loadConfig } from './config.js';
import { createLogger } from './logger.js';
import { startServer } from './server.js';

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
  .action(async (opts: { listen?: string; storage?: string; frontend?: string; config?: string; logLevel?: string }) => {
    let config;
    try {
      config = loadConfig({
        file: opts.config ?? process.env.HOIST_CONFIG,
        env: process.env,
        overrides: { listen: opts.listen, storage: opts.storage, frontend: opts.frontend, logLevel: opts.logLevel },
      });
    } catch (err) {
      if (err instanceof ConfigError) {
        process.stderr.write(`hoist: ${err.message}\n`);
        process.exit(2);
      }
      throw err;
    }
    const log = createLogger(config.logLevel);
    let server;
    try {
      server = await startServer(config, log);
    } catch (err) {
      log.fatal({ err }, 'start-up failed');
      process.stderr.write(`hoist: start-up failed: ${(err as Error).message}\n`);
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
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });

await program.parseAsync(process.argv);
