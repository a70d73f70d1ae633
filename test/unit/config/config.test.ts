import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { durationMs, envName, loadConfig, unknownEnvNames } from '../../../src/config.js';
import { configError, useYamlFiles } from '../../helpers/config.js';

const MiB = 1024 ** 2;

const yamlFile = useYamlFiles('hoist-config-');

describe('loadConfig defaults', () => {
  it('fills every option with its default', () => {
    const cfg = loadConfig();
    expect(cfg.listen).toEqual({ host: '127.0.0.1', port: 5000 });
    expect(cfg.storage).toBe('fs:./data');
    expect(cfg.frontend).toBe('auto');
    expect(cfg.logLevel).toBe('info');
    expect(cfg.shutdownTimeoutMs).toBe(10_000);
    expect(cfg.uploads).toEqual({
      chunkBytes: 4 * MiB,
      maxBufferedBytes: 32 * MiB,
      maxSessionBufferedBytes: 16 * MiB,
      minChunkBytes: 1024 * 1024,
      hashThreads: Math.max(1, availableParallelism()),
      maxBlobBytes: 0,
    });
    expect(cfg.manifests).toEqual({ maxBytes: 4 * MiB });
  });

  it('does not read process.env unless it is passed', () => {
    const saved = process.env.HOIST_LISTEN;
    process.env.HOIST_LISTEN = '127.0.0.1:1';
    try {
      expect(loadConfig().listen.port).toBe(5000);
    } finally {
      if (saved === undefined) delete process.env.HOIST_LISTEN;
      else process.env.HOIST_LISTEN = saved;
    }
  });

  it('freezes the result, nested objects included', () => {
    const cfg = loadConfig();
    expect(Object.isFrozen(cfg)).toBe(true);
    expect(Object.isFrozen(cfg.uploads)).toBe(true);
    expect(Object.isFrozen(cfg.listen)).toBe(true);
    expect(Object.isFrozen(cfg.manifests)).toBe(true);
    expect(() => {
      (cfg.uploads as { chunkBytes: number }).chunkBytes = 1;
    }).toThrow(TypeError);
  });
});

describe('loadConfig sources', () => {
  it('reads a YAML file', async () => {
    const file = await yamlFile([
      'listen: "0.0.0.0:6000"',
      'storage: "memory:"',
      'frontend: node',
      'logLevel: debug',
      'shutdownTimeoutMs: 30s',
      'uploads:',
      '  chunkBytes: 8MiB',
      '  maxSessionBufferedBytes: 32MiB',
      '  hashThreads: 3',
      '  maxBlobBytes: 1GiB',
      'manifests:',
      '  maxBytes: 1MiB',
    ].join('\n'));
    const cfg = loadConfig({ file });
    expect(cfg.listen).toEqual({ host: '0.0.0.0', port: 6000 });
    expect(cfg.storage).toBe('memory:');
    expect(cfg.frontend).toBe('node');
    expect(cfg.logLevel).toBe('debug');
    expect(cfg.shutdownTimeoutMs).toBe(30_000);
    expect(cfg.uploads.chunkBytes).toBe(8 * MiB);
    expect(cfg.uploads.maxSessionBufferedBytes).toBe(32 * MiB);
    expect(cfg.uploads.hashThreads).toBe(3);
    expect(cfg.uploads.maxBlobBytes).toBe(1024 ** 3);
    // Options the file leaves out keep their defaults, also inside a section it names.
    expect(cfg.uploads.maxBufferedBytes).toBe(32 * MiB);
    expect(cfg.manifests.maxBytes).toBe(MiB);
  });

  it('takes an empty file as all defaults', async () => {
    expect(loadConfig({ file: await yamlFile('') }).listen.port).toBe(5000);
  });

  it('reads HOIST_* environment variables named after the option path', () => {
    const cfg = loadConfig({
      env: {
        HOIST_LISTEN: ':7000',
        HOIST_STORAGE: 'memory:',
        HOIST_LOG_LEVEL: 'warn',
        HOIST_SHUTDOWN_TIMEOUT_MS: '2m',
        HOIST_UPLOADS_CHUNK_BYTES: '8MiB',
        HOIST_UPLOADS_HASH_THREADS: '2',
        HOIST_UPLOADS_MAX_SESSION_BUFFERED_BYTES: '32MiB',
        HOIST_MANIFESTS_MAX_BYTES: '512k',
        // Not options: ignored.
        HOIST_NOT_AN_OPTION: 'x',
        HOIST_UPLOADS: 'x',
        PATH: '/usr/bin',
      },
    });
    expect(cfg.listen).toEqual({ host: '0.0.0.0', port: 7000 });
    expect(cfg.storage).toBe('memory:');
    expect(cfg.logLevel).toBe('warn');
    expect(cfg.shutdownTimeoutMs).toBe(120_000);
    expect(cfg.uploads.chunkBytes).toBe(8 * MiB);
    expect(cfg.uploads.hashThreads).toBe(2);
    expect(cfg.uploads.maxSessionBufferedBytes).toBe(32 * MiB);
    expect(cfg.manifests.maxBytes).toBe(512_000);
  });

  // Found by probing: HOIST_GC_EXPIRATION='{"default":"1d"}' stopped start-up with "not a
  // duration", so expiration per namespace or repository could not be set from the environment.
  it('reads HOIST_GC_EXPIRATION as a duration, or as JSON for the per-namespace and per-repository form', () => {
    expect(loadConfig({ env: { HOIST_GC_EXPIRATION: '30d' } }).gc.expiration).toEqual({ default: 30 * 86_400_000 });
    const cfg = loadConfig({
      env: {
        HOIST_NAMESPACES: '[{"name":"ci","host":"ci.example"}]',
        HOIST_GC_EXPIRATION: ' {"default":"90d","namespaces":{"ci":"7d"},"repositories":{"team/scratch":"1d","team/release":0}}',
      },
    });
    expect(cfg.gc.expiration).toEqual({
      default: 90 * 86_400_000,
      namespaces: { ci: 7 * 86_400_000 },
      repositories: { 'team/scratch': 86_400_000, 'team/release': 0 },
    });
    expect(configError({ env: { HOIST_GC_EXPIRATION: '{"default":' } }).message).toMatch(/gc\.expiration \(from HOIST_GC_EXPIRATION\): expected a scalar or JSON/);
    expect(configError({ env: { HOIST_GC_EXPIRATION: '{"default":"30"}' } }).message).toMatch(/gc\.expiration\.default.*at least 1s/);
  });

  // debugErrors (HOIST_DEBUG_ERRORS) was accepted and documented nowhere, and nothing read
  // it: an option that does nothing lets an operator think error bodies carry detail.
  it('has no debugErrors option: the file refuses it, and the variable is warned of as naming none', () => {
    expect(configError({ overrides: { debugErrors: true } }).message).toMatch(/debugErrors/);
    expect(unknownEnvNames({ HOIST_DEBUG_ERRORS: '1' })).toEqual(['HOIST_DEBUG_ERRORS']);
  });

  it('ignores empty environment variables', () => {
    expect(loadConfig({ env: { HOIST_LISTEN: '', HOIST_UPLOADS_CHUNK_BYTES: '' } }).listen.port).toBe(5000);
  });

  it('derives env names in SCREAMING_SNAKE_CASE under one prefix', () => {
    expect(envName(['listen'])).toBe('HOIST_LISTEN');
    expect(envName(['uploads', 'chunkBytes'])).toBe('HOIST_UPLOADS_CHUNK_BYTES');
    expect(envName(['uploads', 'maxSessionBufferedBytes'])).toBe('HOIST_UPLOADS_MAX_SESSION_BUFFERED_BYTES');
    expect(envName(['shutdownTimeoutMs'])).toBe('HOIST_SHUTDOWN_TIMEOUT_MS');
  });

  it('lets flags override env, and env override the file', async () => {
    const file = await yamlFile([
      'listen: "127.0.0.1:1000"',
      'logLevel: error',
      'storage: "fs:/from-file"',
      'uploads:',
      '  chunkBytes: 1MiB',
      '  maxBlobBytes: 10MiB',
    ].join('\n'));
    const env = { HOIST_LISTEN: '127.0.0.1:2000', HOIST_LOG_LEVEL: 'warn', HOIST_UPLOADS_CHUNK_BYTES: '2MiB' };
    const fromEnv = loadConfig({ file, env });
    expect(fromEnv.listen.port).toBe(2000);
    expect(fromEnv.logLevel).toBe('warn');
    expect(fromEnv.storage).toBe('fs:/from-file');
    expect(fromEnv.uploads.chunkBytes).toBe(2 * MiB);
    expect(fromEnv.uploads.maxBlobBytes).toBe(10 * MiB);

    const fromFlags = loadConfig({
      file,
      env,
      overrides: { listen: '127.0.0.1:3000', storage: undefined, uploads: { chunkBytes: '3MiB' } },
    });
    expect(fromFlags.listen.port).toBe(3000);
    // An undefined flag (not given on the command line) overrides nothing.
    expect(fromFlags.storage).toBe('fs:/from-file');
    expect(fromFlags.logLevel).toBe('warn');
    expect(fromFlags.uploads.chunkBytes).toBe(3 * MiB);
    expect(fromFlags.uploads.maxBlobBytes).toBe(10 * MiB);
  });
});

describe('loadConfig values', () => {
  it.each([
    ['65536', 65536],
    [65536, 65536],
    ['64KiB', 64 * 1024],
    ['64kib', 64 * 1024],
    ['64Ki', 64 * 1024],
    ['512k', 512_000],
    ['512KB', 512_000],
    ['16MiB', 16 * MiB],
    ['16 MiB', 16 * MiB],
    ['1.5MiB', 1.5 * MiB],
    ['2m', 2_000_000],
    ['1GiB', 1024 ** 3],
    ['1g', 1e9],
    ['100b', 100],
  ])('parses the byte size %j as %d', (input, expected) => {
    expect(loadConfig({ overrides: { uploads: { maxBlobBytes: input } } }).uploads.maxBlobBytes).toBe(expected);
  });

  it.each([
    ['250', 250],
    [250, 250],
    ['250ms', 250],
    ['10s', 10_000],
    ['1.5s', 1500],
    ['5m', 300_000],
    ['1h', 3_600_000],
    ['7d', 7 * 86_400_000],
    ['1w', 604_800_000],
  ])('parses the duration %j as %d ms', (input, expected) => {
    // shutdownTimeoutMs has no floor (its name says a bare number is milliseconds).
    expect(loadConfig({ overrides: { shutdownTimeoutMs: input } }).shutdownTimeoutMs).toBe(expected);
    expect(durationMs.parse(input)).toBe(expected);
  });

  it.each([
    ['[::1]:5000', { host: '::1', port: 5000 }],
    ['localhost:80', { host: 'localhost', port: 80 }],
    [':0', { host: '0.0.0.0', port: 0 }],
  ])('parses listen %j', (input, expected) => {
    expect(loadConfig({ overrides: { listen: input } }).listen).toEqual(expected);
  });

  it('sets hashThreads 0 to one thread per core', () => {
    expect(loadConfig({ overrides: { uploads: { hashThreads: 0 } } }).uploads.hashThreads).toBe(Math.max(1, availableParallelism()));
  });

  it.each([
    [{ uploads: { chunkBytes: 'lots' } }, 'uploads.chunkBytes', /not a byte size/],
    [{ uploads: { chunkBytes: '12XB' } }, 'uploads.chunkBytes', /not a byte size/],
    [{ uploads: { chunkBytes: '1KiB' } }, 'uploads.chunkBytes', /65536/],
    [{ uploads: { chunkBytes: '128MiB' } }, 'uploads.chunkBytes', /67108864/],
    [{ uploads: { maxBlobBytes: -1 } }, 'uploads.maxBlobBytes', /0/],
    [{ uploads: { hashThreads: 'four' } }, 'uploads.hashThreads', /./],
    [{ uploads: { hashThreads: 65 } }, 'uploads.hashThreads', /64/],
    [{ shutdownTimeoutMs: '10 minutes' }, 'shutdownTimeoutMs', /not a duration/],
    [{ shutdownTimeoutMs: '-5s' }, 'shutdownTimeoutMs', /not a duration/],
    // Found by probing (2026-12-02): past 2^31 - 1 ms Node fires a timer after 1 ms.
    [{ shutdownTimeoutMs: '30d' }, 'shutdownTimeoutMs', /at most 24d/],
    [{ gc: { schedule: '30d' } }, 'gc.schedule', /at most 24d/],
    [{ limits: { idleTimeout: '25d' } }, 'limits.idleTimeout', /at most 24d/],
    // A number without a unit is milliseconds: `idleTimeout: 5` dropped every client after 5 ms.
    [{ limits: { idleTimeout: 5 } }, 'limits.idleTimeout', /0 \(never\) or at least 1s, got 5 ms/],
    [{ gc: { schedule: '10ms' } }, 'gc.schedule', /0 \(off\) or at least 1s/],
    [{ gc: { grace: 60 } }, 'gc.grace', /at least 1s/],
    [{ gc: { staleUploadAfter: 60 } }, 'gc.staleUploadAfter', /at least 1s/],
    [{ gc: { expiration: 30 } }, 'gc.expiration', /0 \(off\) or at least 1s, got 30 ms/],
    [{ gc: { expiration: { repositories: { 'ci/tmp': 30 } } } }, 'gc.expiration.repositories.ci/tmp', /at least 1s/],
    // Found by probing (2026-12-03): a misspelt namespace's expiration expired nothing, silently.
    [{ namespaces: [{ name: 'team-a', host: 'a.example' }], gc: { expiration: { namespaces: { 'team-b': '1d' } } } }, 'gc.expiration.namespaces.team-b', /no namespace is named "team-b" \(namespaces: team-a\)/],
    [{ proxy: { remoteUrl: 'https://x', tagTtl: 5 } }, 'proxy.tagTtl', /0 \(check at every pull\) or at least 1s/],
    [{ auth: { htpasswd: '/h', token: { expiry: '30s' } } }, 'auth.token.expiry', /at least 1m/],
    [{ auth: { htpasswd: '/h', token: { expiry: '2d' } } }, 'auth.token.expiry', /at most 24h/],
    [{ listen: '5000' }, 'listen', /HOST:PORT/],
    [{ listen: 'host:70000' }, 'listen', /HOST:PORT/],
    [{ listen: 5000 }, 'listen', /string/],
    [{ storage: 'ftp://x' }, 'storage', /fs:PATH/],
    [{ frontend: 'apache' }, 'frontend', /auto/],
    [{ logLevel: 'loud' }, 'logLevel', /info/],
    [{ logFormat: 'xml' }, 'logFormat', /pretty/],
    [{ metrics: { listen: '9464' } }, 'metrics.listen', /HOST:PORT/],
    [{ metrics: { port: 9464 } }, 'metrics', /port/],
  ])('rejects %j, naming the option', (overrides, option, reason) => {
    const err = configError({ overrides });
    expect(err.message).toContain(`${option}:`);
    expect(err.message).toMatch(reason);
  });

  it('takes 0 where a duration option gives it a meaning, and the bounds themselves', () => {
    const zero = loadConfig({
      overrides: {
        shutdownTimeoutMs: 0, limits: { idleTimeout: 0 }, gc: { schedule: 0, grace: 0, staleUploadAfter: 0, expiration: 0 },
        proxy: { remoteUrl: 'https://x', tagTtl: 0 },
      },
    });
    expect([zero.shutdownTimeoutMs, zero.limits.idleTimeout, zero.gc.schedule, zero.gc.grace, zero.gc.staleUploadAfter, zero.proxy!.tagTtl]).toEqual([0, 0, 0, 0, 0, 0]);
    expect(zero.gc.expiration).toEqual({ default: 0 });
    const bounds = loadConfig({ overrides: { limits: { idleTimeout: '1s' }, gc: { schedule: '1s' }, auth: { htpasswd: '/h', token: { expiry: '24h' } } } });
    expect(bounds.limits.idleTimeout).toBe(1000);
    expect(bounds.auth!.token!.expiry).toBe(86_400_000);
    expect(loadConfig({ overrides: { auth: { htpasswd: '/h', token: { expiry: '1m' } } } }).auth!.token!.expiry).toBe(60_000);
  });

  it('leaves metrics off and picks the log format by terminal unless told (issue 12)', async () => {
    const cfg = loadConfig();
    expect(cfg.metrics.listen).toBeUndefined();
    expect(cfg.logFormat).toBe('auto');
    const fromEnv = loadConfig({ env: { HOIST_METRICS_LISTEN: '0.0.0.0:9464', HOIST_LOG_FORMAT: 'json' } });
    expect(fromEnv.metrics.listen).toEqual({ host: '0.0.0.0', port: 9464 });
    expect(fromEnv.logFormat).toBe('json');
    const file = await yamlFile('metrics:\n  listen: 127.0.0.1:9100\nlogFormat: pretty\n');
    const fromFlags = loadConfig({ file, env: { HOIST_METRICS_LISTEN: '0.0.0.0:9464' }, overrides: { metrics: { listen: '[::1]:9200' } } });
    expect(fromFlags.metrics.listen).toEqual({ host: '::1', port: 9200 });
    expect(fromFlags.logFormat).toBe('pretty');
    expect(configError({ env: { HOIST_METRICS_LISTEN: 'nowhere' } }).message).toContain('metrics.listen (from HOIST_METRICS_LISTEN)');
  });

  it('names the environment variable a bad value came from', () => {
    const err = configError({ env: { HOIST_UPLOADS_CHUNK_BYTES: 'lots', HOIST_LISTEN: 'nowhere' } });
    expect(err.message).toContain('uploads.chunkBytes (from HOIST_UPLOADS_CHUNK_BYTES)');
    expect(err.message).toContain('listen (from HOIST_LISTEN)');
    expect(err.message).toContain('"lots"');
  });

  it('does not blame the environment for a bad value that came from the file', async () => {
    const file = await yamlFile('uploads:\n  chunkBytes: lots\n');
    const err = configError({ file, env: { HOIST_LISTEN: ':6000' } });
    expect(err.message).toContain('uploads.chunkBytes:');
    expect(err.message).not.toContain('HOIST_');
  });

  it('checks the session buffer against the chunk size', () => {
    const err = configError({ overrides: { uploads: { chunkBytes: '16MiB', maxSessionBufferedBytes: '16MiB' } } });
    expect(err.message).toContain('uploads.maxSessionBufferedBytes');
    expect(err.message).toContain('uploads.chunkBytes');
    expect(() => loadConfig({ overrides: { uploads: { chunkBytes: '8MiB', maxSessionBufferedBytes: '16MiB' } } })).not.toThrow();
  });

  it('checks the global buffer against the session buffer', () => {
    const err = configError({ overrides: { uploads: { maxBufferedBytes: '8MiB' } } });
    expect(err.message).toContain('uploads.maxBufferedBytes');
  });

  it('names the environment variable when a value from env breaks a cross-option rule', () => {
    // HOIST_UPLOADS_CHUNK_BYTES=16MiB is a valid size on its own, but twice it exceeds the
    // default 16MiB session buffer: the operator must learn which variable to change.
    const err = configError({ env: { HOIST_UPLOADS_CHUNK_BYTES: '16MiB' } });
    expect(err.message).toContain('uploads.maxSessionBufferedBytes');
    expect(err.message).toContain('HOIST_UPLOADS_CHUNK_BYTES');
  });
});

describe('loadConfig file errors', () => {
  it('rejects unknown top-level keys', async () => {
    const err = configError({ file: await yamlFile('listen: ":5000"\nlisten_port: 5000\n') });
    expect(err.message).toMatch(/listen_port/);
  });

  it('rejects unknown keys inside a section', async () => {
    // A typo in a nested option must not be silently dropped (the default would apply).
    const uploads = configError({ file: await yamlFile('uploads:\n  chunkByte: 8MiB\n') });
    expect(uploads.message).toMatch(/uploads.*chunkByte/);
    const manifests = configError({ file: await yamlFile('manifests:\n  maxByte: 1MiB\n') });
    expect(manifests.message).toMatch(/manifests.*maxByte/);
  });

  it('rejects a file that is not a mapping', async () => {
    expect(configError({ file: await yamlFile('- a\n- b\n') }).message).toMatch(/must hold a mapping/);
    expect(configError({ file: await yamlFile('just a string\n') }).message).toMatch(/must hold a mapping/);
  });

  it('rejects invalid YAML and unreadable files, naming the file', async () => {
    const bad = await yamlFile('listen: [unclosed\n');
    expect(configError({ file: bad }).message).toContain(`config file ${bad} is not valid YAML`);
    const missing = join(tmpdir(), `hoist-config-missing-${process.pid}.yaml`);
    expect(configError({ file: missing }).message).toContain(`cannot read config file ${missing}`);
  });

  it('is a ConfigError named ConfigError', () => {
    const err = configError({ overrides: { listen: 'x' } });
    expect(err.name).toBe('ConfigError');
    expect(err).toBeInstanceOf(Error);
  });
});
