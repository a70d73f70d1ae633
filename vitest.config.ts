import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    environment: 'node',
    include: ['test/**/*.test.ts'],
    // Builds dist/ once, so tests spawn the real server the way `npm start` runs it.
    globalSetup: ['test/helpers/global-setup.ts'],
    // End-to-end tests run real clients (skopeo) against a spawned server.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    teardownTimeout: 30_000,
    // Files run in parallel, but CI machines have 2 cores, and most tests also spawn a
    // server with its own hashing worker pool: two forks keep the machine responsive.
    pool: 'forks',
    fileParallelism: true,
    poolOptions: {
      forks: { minForks: 1, maxForks: 2 },
    },
  },
});
