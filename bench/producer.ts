/**
 * Producer throughput against the local broker (`tcpaudit stack up`), side by side:
 *  - tcpaudit: synthetic TcpEvents through the real Publisher (Avro, batching, compression,
 *    idempotence, acks=all, Kafka client in its worker thread), fed in batches of 1,000 as the
 *    capture hands them over: as fast as it takes them (`gzip`, `none`), and paced at a fixed
 *    rate (`gzip@100000`: CPU and memory at 100,000 events/s, and the most events queued);
 *  - plain kafkajs: the same framed Avro payloads, one message per awaited send() call.
 * Each run is a child process of its own, so CPU and RSS (sampled every 20 ms, peak) are that
 * variant's only, started with the node flags and environment of producer/runtime-settings.ts
 * (BENCH_UNTUNED=1: without). Prints the median of the runs, also per 1,000 events/s.
 *
 *   node dist/bench/producer.js [--runs 3] [--events 2000000] [--seconds 10]
 *     [--variants gzip,none,gzip@100000,none@100000,plain] [--builds DIR,...]
 *
 * --builds: other checkouts (built with `make setup`), e.g. the previous commit's, measured in
 * the same runs, taking turns with this one, so their figures compare side by side.
 * Bounded: each run stops at --events or --seconds, whichever comes first. BENCH_MAX_BATCH
 * changes the Publisher's batch (default 5000), BENCH_MEM=1 prints where the main thread's
 * memory is at the end of each run (a child's stderr: run one with --child to see it).
 * Figures from this machine are in bench/README.md.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import v8 from 'node:v8';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Kafka, logLevel } from 'kafkajs';
import type { TcpEvent } from '../common/event';
import { gapsTopic } from '../common/config';
import { kafkaClientSettings } from '../common/kafka-config';
import { createLogger } from '../common/log';
import { createRegistry, registerValueSchema } from '../common/registry';
import { registerGapSchema } from '../producer/gaps';
import { ProducerMetrics } from '../producer/metrics';
import { Publisher, type Compression } from '../producer/publisher';
import { toAvro } from '../producer/record';
import { PRODUCER_MALLOC_ENV, PRODUCER_NODE_FLAGS } from '../producer/runtime-settings';

const BROKERS = process.env.KAFKA_BROKERS ?? '127.0.0.1:19092';
const REGISTRY = process.env.SCHEMA_REGISTRY_URL ?? 'http://127.0.0.1:18081/apis/ccompat/v7';

interface Result {
  variant: string;
  events: number;
  seconds: number;
  rate: number;
  cpuPercent: number;
  cpuMsPer1k: number;
  rssMb: number;
  /** Paced runs: the most events waiting in memory; near zero when the producer keeps up. */
  maxQueued?: number;
  /** Paced runs: the longest time with events queued and none acknowledged. */
  stallMs?: number;
}

function syntheticEvents(from: number, n: number): TcpEvent[] {
  const out: TcpEvent[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const seq = from + i;
    const conn = Math.floor(seq / 6); // six state changes per connection, like a short TCP life
    out[i] = {
      seq,
      connId: `3f2a9c1b-18c4d2e1f-${conn.toString(16)}`,
      host: 'bench-host-01.example.internal',
      bootId: '3f2a9c1b-5d6e-4f70-8a9b-0c1d2e3f4a5b',
      timeNs: 1_764_000_000_000_000_000n + BigInt(seq) * 1000n,
      family: 4,
      localAddr: '10.1.2.3',
      localPort: 30000 + (conn % 30000),
      remoteAddr: `10.9.${(conn >> 8) & 255}.${conn & 255}`,
      remotePort: 5432,
      oldState: 'SYN-SENT',
      newState: 'ESTABLISHED',
      pid: 4000 + (conn % 50),
      tid: 4000 + (conn % 50),
      comm: 'postgres-client',
      uid: 1000,
      netns: 4026531840,
      cgroupId: 12345n,
      bytesSent: BigInt(seq % 100000),
      bytesReceived: BigInt(seq % 70000),
      segsOut: seq % 100,
      segsIn: seq % 90,
      retransmits: 0,
      srttUs: 250,
      sockInode: 100000 + conn,
      sockUid: 1000,
      sockGid: 1000,
    };
  }
  return out;
}

/** Registered under one fixed subject pair, so runs do not pile up subjects in the registry. */
async function schemas(_topic: string) {
  const registry = createRegistry(REGISTRY);
  const value = await registerValueSchema(registry, REGISTRY, 'tcpaudit.bench');
  const gap = await registerGapSchema(registry, REGISTRY, 'tcpaudit.bench');
  return { value, gap };
}

/**
 * Peak resident memory, sampled every 20 ms by a timer: reading it (from /proc) on every turn
 * of a feeding loop cost the measured thread a tenth of its time.
 */
function rssSampler(): { peak(): number; stop(): void } {
  let peak = process.memoryUsage.rss();
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 20);
  return {
    peak: () => Math.max(peak, process.memoryUsage.rss()),
    stop: () => clearInterval(timer),
  };
}

/** Resident memory by kind, and the main thread's V8 heap by space, in MB. */
function memoryReport(): string {
  const mb = (bytes: number) => Math.round(bytes / (1 << 20));
  const rollup = fs.readFileSync('/proc/self/smaps_rollup', 'utf8');
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(rollup)?.[1]);
  const spaces = Object.fromEntries(
    v8
      .getHeapSpaceStatistics()
      .filter((s) => s.physical_space_size > 0)
      .map((s) => [s.space_name, mb(s.physical_space_size)]),
  );
  const { external, arrayBuffers } = process.memoryUsage();
  return JSON.stringify({
    rssMb: mb(kb('Rss') * 1024),
    anonymousMb: mb(kb('Anonymous') * 1024),
    fileMb: mb((kb('Rss') - kb('Anonymous')) * 1024),
    mainHeapMb: spaces,
    externalMb: mb(external),
    arrayBuffersMb: mb(arrayBuffers),
  });
}

function measure(
  variant: string,
  events: number,
  startNs: bigint,
  cpu0: NodeJS.CpuUsage,
  rssPeak: number,
): Result {
  const seconds = Number(process.hrtime.bigint() - startNs) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  const cpuSeconds = (cpu.user + cpu.system) / 1e6;
  const rate = events / seconds;
  return {
    variant,
    events,
    seconds,
    rate,
    cpuPercent: (100 * cpuSeconds) / seconds,
    cpuMsPer1k: (1000 * cpuSeconds) / (events / 1000),
    rssMb: rssPeak / (1 << 20),
  };
}

async function runPublisher(
  topic: string,
  total: number,
  seconds: number,
  compression: Compression,
  rate: number,
): Promise<Result> {
  const { value, gap } = await schemas(topic);
  const log = createLogger('bench', 'warn');
  const publisher = new Publisher({
    kafka: kafkaClientSettings({ brokers: BROKERS }, 'tcpaudit-bench', {}),
    topic,
    partitions: 6,
    replicationFactor: 1,
    schemaId: value.id,
    valueType: value.type,
    gapSchemaId: gap.id,
    gapType: gap.type,
    origin: { host: 'bench-host-01', bootId: 'x', runId: '1' },
    maxQueued: 200_000,
    maxBatch: Number(process.env.BENCH_MAX_BATCH ?? 5000),
    compression,
    spool: null,
    overflow: 'drop-newest',
    metrics: new ProducerMetrics(),
    log,
  });
  publisher.start();
  // Warm up: connect, create the topic, first metadata.
  publisher.enqueue(syntheticEvents(0, 1000));
  while (publisher.getStats().published < 1000) await new Promise((r) => setTimeout(r, 20));

  let fed = 1000;
  let maxQueued = 0;
  // Paced runs: the longest time events waited while nothing was acknowledged.
  let longestStall = 0;
  const rss = rssSampler();
  const deadline = Date.now() + seconds * 1000;
  const cpu0 = process.cpuUsage();
  const start = process.hrtime.bigint();
  const base = publisher.getStats().published;
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  if (rate > 0) {
    // Paced: what the capture hands over at `rate` events/s, 1,000 at a time, for `seconds`.
    const t0 = Date.now();
    let lastPublished = -1;
    let lastProgress = t0;
    while (Date.now() < deadline && fed < total) {
      const due = Math.min(total, 1000 + Math.floor(((Date.now() - t0) / 1000) * rate));
      for (; fed + 1000 <= due; fed += 1000) publisher.enqueue(syntheticEvents(fed, 1000));
      const stats = publisher.getStats();
      maxQueued = Math.max(maxQueued, stats.queued);
      if (stats.published !== lastPublished || stats.queued === 0) {
        lastPublished = stats.published;
        lastProgress = Date.now();
      }
      longestStall = Math.max(longestStall, Date.now() - lastProgress);
      await sleep(10);
    }
    const until = Date.now() + 30_000;
    while (publisher.getStats().published - base < fed - 1000 && Date.now() < until) await sleep(2);
  } else {
    while (publisher.getStats().published - base < total - 1000 && Date.now() < deadline) {
      // As fast as it goes, in the capture's 1,000-event batches, never past the memory queue.
      if (fed - 1000 < total - 1000 && publisher.getStats().queued < 30_000) {
        publisher.enqueue(syntheticEvents(fed, 1000));
        fed += 1000;
      }
      await new Promise((r) => setImmediate(r));
      if (publisher.getStats().queued >= 30_000) await sleep(5);
    }
  }
  const published = publisher.getStats().published - base;
  if (process.env.BENCH_MEM) process.stderr.write(memoryReport() + '\n');
  rss.stop();
  const name = `tcpaudit Publisher (${compression})${rate > 0 ? ` @${rate / 1000}k/s` : ''}`;
  const result = {
    ...measure(name, published, start, cpu0, rss.peak()),
    maxQueued: rate > 0 ? maxQueued : undefined,
    stallMs: rate > 0 ? longestStall : undefined,
  };
  const dropped = publisher.getStats().dropped.user_queue;
  await publisher.stop(5000);
  if (dropped > 0) throw new Error(`bench dropped ${dropped} events: the feed outran the queue`);
  return result;
}

async function runPlain(topic: string, total: number, seconds: number): Promise<Result> {
  const { value } = await schemas(topic);
  const kafka = new Kafka({
    clientId: 'tcpaudit-bench-plain',
    brokers: [BROKERS],
    logLevel: logLevel.WARN,
  });
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ waitForLeaders: true, topics: [{ topic, numPartitions: 6 }] });
  await admin.disconnect();
  const producer = kafka.producer();
  await producer.connect();
  const frame = (e: TcpEvent) => {
    const body = value.type.toBuffer(toAvro(e));
    const out = Buffer.allocUnsafe(5 + body.length);
    out[0] = 0;
    out.writeUInt32BE(value.id, 1);
    body.copy(out, 5);
    return out;
  };
  const rss = rssSampler();
  let sent = 0;
  const deadline = Date.now() + seconds * 1000;
  const cpu0 = process.cpuUsage();
  const start = process.hrtime.bigint();
  while (sent < total && Date.now() < deadline) {
    for (const e of syntheticEvents(sent, 1000)) {
      await producer.send({ topic, acks: -1, messages: [{ key: e.connId, value: frame(e) }] });
      sent++;
      if (Date.now() >= deadline) break;
    }
  }
  rss.stop();
  const result = measure('plain kafkajs, 1 msg/send()', sent, start, cpu0, rss.peak());
  await producer.disconnect();
  return result;
}

async function child(variant: string, total: number, seconds: number): Promise<void> {
  const suffix = Math.random().toString(36).slice(2, 6);
  const topic = `tcpaudit.bench.${Date.now().toString(36)}.${suffix}`;
  const [codec, paced] = variant.split('@');
  const rate = Number(paced ?? 0);
  const result =
    variant === 'plain'
      ? await runPlain(topic, total, seconds)
      : await runPublisher(
          topic,
          rate > 0 ? rate * seconds : total,
          seconds,
          codec as Compression,
          rate,
        );
  // Our topics only: the bench leaves nothing behind on the shared broker.
  const admin = new Kafka({
    clientId: 'tcpaudit-bench-admin',
    brokers: [BROKERS],
    logLevel: logLevel.NOTHING,
  }).admin();
  await admin.connect();
  await admin
    .deleteTopics({
      topics: variant === 'plain' ? [topic] : [topic, gapsTopic(topic)],
    })
    .catch(() => undefined);
  await admin.disconnect();
  process.stdout.write(JSON.stringify(result) + '\n');
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** The median run by rate, with each other figure the median of its own. */
function medianRow(runs: Result[]): Result {
  const mid = runs.find((r) => r.rate === median(runs.map((x) => x.rate)))!;
  return {
    ...mid,
    cpuPercent: median(runs.map((r) => r.cpuPercent)),
    cpuMsPer1k: median(runs.map((r) => r.cpuMsPer1k)),
    rssMb: median(runs.map((r) => r.rssMb)),
    maxQueued: mid.maxQueued === undefined ? undefined : median(runs.map((r) => r.maxQueued!)),
    stallMs: mid.stallMs === undefined ? undefined : Math.max(...runs.map((r) => r.stallMs!)),
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string', default: '3' },
      events: { type: 'string', default: '2000000' },
      seconds: { type: 'string', default: '10' },
      plainSeconds: { type: 'string', default: '8' },
      variants: { type: 'string', default: 'gzip,none,gzip@100000,none@100000,plain' },
      builds: { type: 'string' },
      child: { type: 'string' },
    },
  });
  if (values.child) {
    const seconds = Number(values.child === 'plain' ? values.plainSeconds : values.seconds);
    await child(values.child, Number(values.events), seconds);
    return;
  }
  // Other checkouts (built) measured in the same runs, turn about with this one.
  const builds = [
    { name: '', script: __filename },
    ...(values.builds ?? '')
      .split(',')
      .filter((b) => b !== '')
      .map((dir) => ({
        name: ` [${path.basename(path.resolve(dir))}]`,
        script: path.resolve(dir, 'dist', 'bench', 'producer.js'),
      })),
  ];
  // Each run is started as the launchers start `tcpaudit produce` (BENCH_UNTUNED=1: plain node).
  const tuning = process.env.BENCH_UNTUNED
    ? { flags: [], env: {} }
    : { flags: PRODUCER_NODE_FLAGS, env: PRODUCER_MALLOC_ENV };
  const rows: Result[] = [];
  for (const variant of values.variants!.split(',')) {
    const runs: Result[][] = builds.map(() => []);
    for (let i = 0; i < Number(values.runs); i++) {
      for (const [b, build] of builds.entries()) {
        // No other build's plain kafkajs: it is the same library either way.
        if (variant === 'plain' && b > 0) continue;
        const res = spawnSync(
          process.execPath,
          [
            ...tuning.flags,
            build.script,
            '--child',
            variant,
            '--events',
            values.events!,
            '--seconds',
            values.seconds!,
            '--plainSeconds',
            values.plainSeconds!,
          ],
          { encoding: 'utf8', timeout: 120_000, env: { ...process.env, ...tuning.env } },
        );
        const line = res.stdout.trim().split('\n').pop() ?? '';
        if (res.status !== 0 || !line.startsWith('{'))
          throw new Error(`bench run failed: ${res.stderr.slice(-2000)}`);
        const result = JSON.parse(line) as Result;
        result.variant += build.name;
        runs[b].push(result);
        process.stderr.write(
          `  ${variant}${build.name} run ${i + 1}: ${Math.round(result.rate)} ev/s, ` +
            `${result.rssMb.toFixed(0)} MB\n`,
        );
      }
    }
    for (const r of runs.filter((r) => r.length > 0)) rows.push(medianRow(r));
  }
  process.stdout.write(
    `\nmedian of ${values.runs} runs, broker ${BROKERS}, ` +
      `${process.env.BENCH_UNTUNED ? 'plain node' : 'started as the producer launchers start it'}` +
      `${process.env.BENCH_NOTE ? `, ${process.env.BENCH_NOTE}` : ''}\n`,
  );
  // Column widths, then one row per variant.
  const columns: [string, number, (r: Result) => string][] = [
    ['variant', 48, (r) => r.variant],
    ['events/s', 12, (r) => String(Math.round(r.rate))],
    ['CPU %', 8, (r) => r.cpuPercent.toFixed(0)],
    ['CPU ms/1k ev', 14, (r) => r.cpuMsPer1k.toFixed(1)],
    ['RSS MB', 9, (r) => r.rssMb.toFixed(0)],
    ['RSS MB per 1k ev/s', 20, (r) => (r.rssMb / (r.rate / 1000)).toFixed(2)],
    ['most queued', 13, (r) => String(r.maxQueued ?? '')],
    ['longest stall ms (max)', 0, (r) => String(r.stallMs ?? '')],
  ];
  const line = (cell: (c: (typeof columns)[number]) => string) =>
    columns.map((c) => cell(c).padEnd(c[1])).join('') + '\n';
  process.stdout.write(line((c) => c[0]));
  for (const r of rows) process.stdout.write(line((c) => c[2](r)));
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack}\n`);
  process.exit(1);
});
