/**
 * How `tcpaudit produce` is meant to be started: settings only the command line and the
 * environment can give, because V8 sizes a heap and glibc its allocator before any of our code
 * runs. Measured with bench/producer.ts at 100,000 events/s (figures: README, Sizing):
 *  - `--max-semi-space-size=4`: the main thread's young generation stays at 8 MB instead of
 *    growing to 32 MB under the capture's churn (the Kafka thread gets the same limit);
 *  - MALLOC_ARENA_MAX=2: two allocator arenas in all, where each thread (main, Kafka thread,
 *    libuv's pool) would otherwise keep its own high-water mark of request and compression
 *    buffers;
 *  - MALLOC_MMAP_THRESHOLD_=131072: buffers of 128 KiB and more (whole produce requests) are
 *    mapped and unmapped instead of reused from the arenas, where they fragmented; a fixed
 *    threshold also stops glibc from raising it after the first such buffer is freed.
 * Every launcher in this repository passes them (scripts/run.sh, deploy/systemd, deploy/docker;
 * test/deploy.test.ts checks that they agree with this file). Without them the producer works
 * the same and holds some 25 to 40 MB more.
 */
export const PRODUCER_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=4'];

export const PRODUCER_MALLOC_ENV: Readonly<Record<string, string>> = {
  MALLOC_ARENA_MAX: '2',
  MALLOC_MMAP_THRESHOLD_: '131072',
};

/** The settings above this process was started without, as they would be written. */
export function missingRuntimeSettings(
  execArgv: readonly string[] = process.execArgv,
  env: NodeJS.ProcessEnv = process.env,
): string[] {
  // NODE_OPTIONS is the other way to give node a flag.
  const flags = [...execArgv, ...(env.NODE_OPTIONS ?? '').split(/\s+/)];
  const missing = PRODUCER_NODE_FLAGS.filter((flag) => !flags.includes(flag));
  for (const [name, value] of Object.entries(PRODUCER_MALLOC_ENV)) {
    if (env[name] !== value) missing.push(`${name}=${value}`);
  }
  return missing;
}
