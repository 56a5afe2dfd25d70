// Test runner configuration: every suite under test/, run once by `npm test`,
// which runs the cluster suites (three nodes and a Redis each) after the rest,
// so their processes do not starve the timing-sensitive single-node suites.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
  },
});
