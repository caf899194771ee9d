/**
 * Processor throughput and end-to-end latency, side by side with the older design's way (one
 * INSERT statement per event), in one run. Needs the local stack; makes its own databases,
 * topics and groups, and deletes them after.
 *
 *   node dist/bench/processor.js [--runs 3] [--events 600000] [--baseline-events 20000]
 *     [--rate 10000] [--seconds 10] [--concurrency N] [--cli PATH,...]
 *
 * The processor is the real `tcpaudit process`, a process of its own with its defaults, run with
 * --profile: it logs one line per committed batch (offsets, counts, milliseconds per step).
 * Throughput: the stream is published to a fresh topic first; all events committed / time from
 * the start of the first batch to the last commit (also shown: the older measure, events after
 * the first commit / first to last commit, which overstates with few large batches). The
 * baseline reads the same topic (its own group and database) and is timed the same ways, from
 * the start of its first INSERT to the end of its last. Latency:
 * `rate` events/s offered for `seconds` s, each stamped with its send time; an event's commit
 * time is that of the batch holding its offset. --baseline-events 0 skips the baseline. --cli
 * names launchers (bin/tcpaudit.js of other builds, e.g. a copy of an older commit) to measure
 * one after the other on the same topic in each run; the default is this repository's.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { parseArgs } from 'node:util';
import { Client, Pool } from 'pg';
import { Kafka, logLevel } from 'kafkajs';
import { deadLetterTopic, gapsTopic, pgDefaults, DEFAULTS } from '../common/config';
import { createLogger } from '../common/log';
import { createRegistry } from '../common/registry';
import { isoFromMicros } from '../common/time';
import { registryDecoder, type Decode } from '../processor/decode';
import { STAGES } from '../processor/handler';
import { runIdOf } from '../processor/lifecycle';
import { migrate } from '../processor/migrate';
import { ensurePartitions } from '../processor/partitions';
import {
  encodeEvent,
  registerSchemas,
  syntheticStream,
  type Schemas,
} from '../test/processor-helpers';

const log = createLogger('bench', 'error');
const brokers = process.env.KAFKA_BROKERS ?? DEFAULTS.brokers;
const registryUrl = process.env.SCHEMA_REGISTRY_URL ?? DEFAULTS.registryUrl;
const kafka = new Kafka({
  clientId: 'tcpaudit-bench',
  brokers: brokers.split(','),
  logLevel: logLevel.NOTHING,
});
const name = (p: string) =>
  `${p}_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 6)}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);
const median = (xs: number[]) => sorted(xs)[Math.floor(xs.length / 2)];
const pct = (xs: number[], p: number) => {
  const s = sorted(xs);
  return s[Math.min(s.length - 1, Math.floor(s.length * p))];
};
const topics: string[] = [];
let launcher = path.resolve(__dirname, '..', '..', 'bin', 'tcpaudit.js');

interface BatchLine {
  partition: number;
  from: string;
  to: string;
  records: number;
  inserted: number;
  startedAtMs: number;
  committedAtMs: number;
  stagesMs: Record<string, number>;
}

async function freshDatabase(
  migrated: boolean,
): Promise<{ db: string; pool: Pool; drop: () => Promise<void> }> {
  const db = name('tcpaudit_bench');
  const admin = new Client(pgDefaults());
  await admin.connect();
  await admin.query(`CREATE DATABASE ${db}`);
  await admin.end();
  const pool = new Pool({ ...pgDefaults(), database: db, max: 8 });
  pool.on('error', () => undefined);
  if (migrated) {
    await migrate(pool, log);
    await ensurePartitions(pool, log);
  }
  return {
    db,
    pool,
    async drop() {
      await pool.end();
      const c = new Client(pgDefaults());
      await c.connect();
      // Another role's session (a monitor passing by) cannot be ended by ours: wait, then leave it.
      for (let attempt = 1; ; attempt++) {
        const dropped = await c.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`).then(
          () => true,
          (err: Error) => {
            if (attempt === 10) console.error(`could not drop database ${db}: ${err.message}`);
            return attempt === 10;
          },
        );
        if (dropped) break;
        await sleep(1000);
      }
      await c.end();
    },
  };
}

async function freshTopic(): Promise<{ topic: string; schemas: Schemas }> {
  const topic = name('tcpaudit.bench').replace(/_/g, '.');
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 3 }], waitForLeaders: true });
  await admin.disconnect();
  topics.push(topic, gapsTopic(topic), deadLetterTopic(topic));
  return { topic, schemas: await registerSchemas(registryUrl, topic) };
}

async function publish(topic: string, messages: { key: string; value: Buffer }[]) {
  const producer = kafka.producer();
  await producer.connect();
  for (let i = 0; i < messages.length; i += 5000)
    await producer.send({ topic, messages: messages.slice(i, i + 5000) });
  await producer.disconnect();
}

interface Running {
  logs: Record<string, unknown>[];
  waitForLog(msg: string, timeoutMs: number): Promise<Record<string, unknown>>;
  stop(): Promise<void>;
}

/** A launcher run as its own process; its JSON log lines (stderr) are collected. */
function runCli(launcher: string, args: string[], env: Record<string, string>): Running {
  const child = spawn(process.execPath, [launcher, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const logs: Record<string, unknown>[] = [];
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  readline.createInterface({ input: child.stderr! }).on('line', (line) => {
    try {
      logs.push(JSON.parse(line));
    } catch {
      logs.push({ msg: line });
    }
  });
  return {
    logs,
    async waitForLog(msg, timeoutMs) {
      for (const deadline = Date.now() + timeoutMs; ; await sleep(50)) {
        const seen = logs.find((l) => l.msg === msg);
        if (seen) return seen;
        if (child.exitCode !== null || Date.now() > deadline)
          throw new Error(`no "${msg}" log: ${JSON.stringify(logs.slice(-5))}`);
      }
    },
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

/** Exactly `n` state changes (the synthetic connections average 3.25 events each). */
function events(n: number, tag: string, startUs: number) {
  const changes = syntheticStream(Math.ceil(n / 3), 16, startUs, tag).changes.slice(0, n);
  if (changes.length < n) throw new Error(`synthetic stream too short: ${changes.length} < ${n}`);
  return changes;
}

/** `tcpaudit process` on a database of its own, as run in production plus --profile. */
async function startProcessor(
  topic: string,
  db: string,
  concurrency?: string,
): Promise<{ cli: Running; batches: BatchLine[] }> {
  const pg = pgDefaults();
  const env = {
    PGHOST: pg.host,
    PGPORT: String(pg.port),
    PGUSER: pg.user,
    PGPASSWORD: pg.password,
    PGDATABASE: db,
    KAFKA_BROKERS: brokers,
    SCHEMA_REGISTRY_URL: registryUrl,
  };
  const args = [
    'process',
    '--topic',
    topic,
    '--group',
    name('proc'),
    '--metrics-port',
    '0',
    '--profile',
  ];
  if (concurrency) args.push('--concurrency', concurrency);
  const cli = runCli(launcher, args, env);
  const listening = await cli.waitForLog('metrics listening', 120_000);
  const port = listening.port as number;
  // In its group and fetching: /healthz says so.
  for (const deadline = Date.now() + 60_000; ;) {
    const ok = await fetch(`http://127.0.0.1:${port}/healthz`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) break;
    if (Date.now() > deadline) throw new Error('processor never joined its group');
    await sleep(100);
  }
  return { cli, batches: cli.logs as unknown as BatchLine[] };
}

const batchLines = (logs: BatchLine[]) =>
  logs.filter((l) => (l as unknown as { msg: string }).msg === 'batch');

async function waitInserted(logs: BatchLine[], total: number, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  while (batchLines(logs).reduce((n, b) => n + b.inserted, 0) < total) {
    if (Date.now() > deadline)
      throw new Error(`processor stored too few events within ${timeoutMs} ms`);
    await sleep(50);
  }
}

interface Commit {
  /** When the work that this commit ends began, and when it committed. */
  startMs: number;
  atMs: number;
  n: number;
}

/** Events committed after the first commit / time from the first to the last commit. */
function commitRate(commits: Commit[]): number {
  const s = [...commits].sort((a, b) => a.atMs - b.atMs);
  const after = s.slice(1).reduce((n, c) => n + c.n, 0);
  return after / ((s[s.length - 1].atMs - s[0].atMs) / 1000);
}

/**
 * All events committed / time from the start of the first unit of work to the last commit.
 * commitRate leaves out the first commit's events but not the rest of its round: with large
 * batches (three partitions commit within moments of each other) it overstates, and more so
 * the fewer the batches. This one does not.
 */
function spanRate(commits: Commit[]): number {
  const start = Math.min(...commits.map((c) => c.startMs));
  const end = Math.max(...commits.map((c) => c.atMs));
  return commits.reduce((n, c) => n + c.n, 0) / ((end - start) / 1000);
}

const rates = (commits: Commit[]) => ({ rate: spanRate(commits), commitRate: commitRate(commits) });

async function processorThroughput(topic: string, total: number, concurrency?: string) {
  const { db, drop } = await freshDatabase(false);
  try {
    const { cli, batches } = await startProcessor(topic, db, concurrency);
    try {
      await waitInserted(batches, total, 300_000);
    } finally {
      await cli.stop();
    }
    const lines = batchLines(batches);
    const commits = lines.map((b) => ({
      startMs: b.startedAtMs,
      atMs: b.committedAtMs,
      n: b.inserted,
    }));
    return { ...rates(commits), lines };
  } finally {
    await drop();
  }
}

/** The older design: each event its own INSERT statement (autocommit), offsets in Kafka. */
async function baseline(
  pool: Pool,
  topic: string,
  decode: Decode,
  total: number,
  latencies?: number[],
) {
  const consumer = kafka.consumer({ groupId: name('base') });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const commits: Commit[] = [];
  const finished = new Promise<void>((resolve) => {
    void consumer.run({
      partitionsConsumedConcurrently: 3,
      eachMessage: async ({ message }) => {
        if (commits.length >= total) return;
        const startMs = Date.now();
        const d = await decode(message.value);
        if (d.kind !== 'event') return;
        const c = d.change;
        await pool.query(
          `INSERT INTO tcp_events (conn_id, seq, host, boot_id, run_id, event_time, family, local_addr, local_port,
             remote_addr, remote_port, old_state, new_state, pid, tid, comm, uid, netns, cgroup_id, bytes_sent,
             bytes_received, segs_out, segs_in, retransmits, srtt_us, kafka_topic, kafka_partition, kafka_offset)
           VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23,$24,$25,$26,0,$27)
           ON CONFLICT DO NOTHING`,
          [
            c.connId,
            c.seq,
            c.host,
            c.bootId,
            runIdOf(c.connId),
            isoFromMicros(c.timeUs),
            c.family,
            c.localAddr,
            c.localPort,
            c.remoteAddr,
            c.remotePort,
            c.oldState,
            c.newState,
            c.pid,
            c.tid,
            c.comm,
            c.uid,
            c.netns,
            c.cgroupId,
            c.bytesSent,
            c.bytesReceived,
            c.segsOut,
            c.segsIn,
            c.retransmits,
            c.srttUs,
            topic,
            message.offset,
          ],
        );
        const now = Date.now();
        latencies?.push(now / 1000 - c.timeUs / 1e6);
        commits.push({ startMs, atMs: now, n: 1 });
        if (commits.length === total) resolve();
      },
    });
  });
  await finished;
  await consumer.disconnect();
  return rates(commits);
}

/** Offers `perSecond` events for `seconds`, each stamped with the time it is sent. */
async function offer(
  topic: string,
  schemas: Schemas,
  perSecond: number,
  seconds: number,
  tag: string,
) {
  const producer = kafka.producer();
  await producer.connect();
  const stream = events(perSecond * seconds, tag, 0);
  const tick = 50;
  const per = (perSecond * tick) / 1000;
  const t0 = Date.now();
  const sends: Promise<unknown>[] = [];
  for (let i = 0; i < stream.length; i += per) {
    const wait = t0 + (i / per) * tick - Date.now();
    if (wait > 0) await sleep(wait);
    const now = Date.now() * 1000;
    sends.push(
      producer.send({
        topic,
        acks: 1,
        messages: stream
          .slice(i, i + per)
          .map((c) => ({ key: c.connId, value: encodeEvent(schemas, { ...c, timeUs: now }) })),
      }),
    );
  }
  await Promise.all(sends);
  await producer.disconnect();
  return stream.length;
}

/** Latency of each event: the commit time of the batch that held its offset minus its send time. */
async function processorLatency(
  rate: number,
  seconds: number,
  tag: string,
  concurrency?: string,
): Promise<number[]> {
  const { topic, schemas } = await freshTopic();
  const { db, pool, drop } = await freshDatabase(false);
  try {
    const { cli, batches } = await startProcessor(topic, db, concurrency);
    try {
      const total = await offer(topic, schemas, rate, seconds, tag);
      await waitInserted(batches, total, 120_000);
    } finally {
      await cli.stop();
    }
    const committed = new Map<number, { to: bigint; atMs: number }[]>();
    for (const b of batchLines(batches)) {
      if (!committed.has(b.partition)) committed.set(b.partition, []);
      committed.get(b.partition)!.push({ to: BigInt(b.to), atMs: b.committedAtMs });
    }
    for (const list of committed.values()) list.sort((a, b) => (a.to < b.to ? -1 : 1));
    const { rows } = await pool.query<{ p: number; o: string; us: string }>(
      `SELECT kafka_partition AS p, kafka_offset AS o, (extract(epoch FROM event_time) * 1000000)::int8 AS us
         FROM tcp_events`,
    );
    return rows.map((r) => {
      const offset = BigInt(r.o);
      const batch = committed.get(r.p)!.find((b) => b.to >= offset)!;
      return batch.atMs / 1000 - Number(r.us) / 1e6;
    });
  } finally {
    await drop();
  }
}

async function baselineLatency(
  rate: number,
  seconds: number,
  tag: string,
  decode: Decode,
): Promise<number[]> {
  const { topic, schemas } = await freshTopic();
  const { pool, drop } = await freshDatabase(true);
  try {
    const lat: number[] = [];
    const consuming = baseline(pool, topic, decode, rate * seconds, lat);
    await sleep(4000); // group join before the clock starts
    await offer(topic, schemas, rate, seconds, tag);
    await Promise.race([consuming, sleep(120_000)]);
    return lat;
  } finally {
    await drop();
  }
}

/** Per step: median ms per batch, and the share of all batch time (sums over batches). */
function profileTable(lines: BatchLine[]): string[] {
  const total = STAGES.reduce((n, s) => n + lines.reduce((m, b) => m + (b.stagesMs[s] ?? 0), 0), 0);
  const out = STAGES.map((s) => {
    const per = lines.map((b) => b.stagesMs[s] ?? 0);
    const sum = per.reduce((a, b) => a + b, 0);
    return `  ${s.padEnd(10)} ${median(per).toFixed(2).padStart(9)} ms  ${(sum / lines.length).toFixed(2).padStart(9)} ms  ${((100 * sum) / total).toFixed(1).padStart(5)}%`;
  });
  const records = lines.map((b) => b.records);
  return [
    `  batches ${lines.length}, records per batch median ${median(records)} (max ${Math.max(...records)})`,
    `  ${'step'.padEnd(10)} ${'median'.padStart(12)} ${'mean'.padStart(12)}  share`,
    ...out,
  ];
}

async function main() {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string', default: '3' },
      // About 12 s of work per run: 200,000 (4 s) let one slow batch move a run by a fifth.
      events: { type: 'string', default: '600000' },
      'baseline-events': { type: 'string', default: '20000' },
      rate: { type: 'string', default: '10000' },
      seconds: { type: 'string', default: '10' },
      concurrency: { type: 'string' },
      cli: { type: 'string' },
    },
  });
  const runs = Number(values.runs);
  const total = Number(values.events);
  const baseN = Math.min(total, Number(values['baseline-events']));
  const [rate, seconds] = [Number(values.rate), Number(values.seconds)];
  const launchers = values.cli ? values.cli.split(',').map((p) => path.resolve(p)) : [launcher];
  const decode = registryDecoder(createRegistry(registryUrl));
  type Figures = {
    rate: number[];
    commitRate: number[];
    p50: number[];
    p99: number[];
    profile: BatchLine[];
  };
  const columns = new Map<string, Figures>(
    [...launchers, 'baseline'].map((l) => [
      l,
      { rate: [], commitRate: [], p50: [], p99: [], profile: [] },
    ]),
  );
  try {
    for (let run = 0; run < runs; run++) {
      const { topic, schemas } = await freshTopic();
      const stream = events(total, `r${run}`, Date.now() * 1000);
      await publish(
        topic,
        stream.map((c) => ({ key: c.connId, value: encodeEvent(schemas, c) })),
      );
      for (const l of launchers) {
        launcher = l;
        const fig = columns.get(l)!;
        const proc = await processorThroughput(topic, stream.length, values.concurrency);
        fig.rate.push(proc.rate);
        fig.commitRate.push(proc.commitRate);
        fig.profile.push(...proc.lines);
        const lat = await processorLatency(rate, seconds, `l${run}`, values.concurrency);
        fig.p50.push(pct(lat, 0.5));
        fig.p99.push(pct(lat, 0.99));
        console.error(
          `run ${run + 1} ${l}: ${fig.rate.at(-1)!.toFixed(0)} events/s, p50 ${fig.p50.at(-1)!.toFixed(3)} s, p99 ${fig.p99.at(-1)!.toFixed(3)} s`,
        );
      }
      if (baseN > 0) {
        const fig = columns.get('baseline')!;
        const { pool, drop } = await freshDatabase(true);
        try {
          const r = await baseline(pool, topic, decode, baseN);
          fig.rate.push(r.rate);
          fig.commitRate.push(r.commitRate);
        } finally {
          await drop();
        }
        const blat = await baselineLatency(rate, seconds, `m${run}`, decode);
        fig.p50.push(pct(blat, 0.5));
        fig.p99.push(pct(blat, 0.99));
        console.error(
          `run ${run + 1} baseline: ${fig.rate.at(-1)!.toFixed(0)} events/s, p50 ${fig.p50.at(-1)!.toFixed(3)} s, p99 ${fig.p99.at(-1)!.toFixed(3)} s`,
        );
      }
    }
  } finally {
    const admin = kafka.admin();
    await admin.connect();
    const existing = new Set(await admin.listTopics());
    await admin
      .deleteTopics({ topics: topics.filter((t) => existing.has(t)) })
      .catch(() => undefined);
    await admin.disconnect();
  }
  const f = (x: number | undefined) => (x === undefined ? '-' : x.toFixed(x < 10 ? 3 : 0));
  const shown = [...columns].filter(([, fig]) => fig.rate.length > 0);
  const base = columns.get('baseline')!.rate;
  console.log(
    `processor bench, ${runs} runs, medians (throughput from a ${total}-event backlog, baseline the first ` +
      `${baseN} of it; latency at ${rate} events/s offered for ${seconds} s)`,
  );
  shown.forEach(([l], i) =>
    console.log(
      `  [${i + 1}] ${l === 'baseline' ? 'one INSERT per event (baseline)' : `${l} process`}`,
    ),
  );
  console.log(`${''.padEnd(22)}${shown.map((_, i) => `[${i + 1}]`.padStart(12)).join('')}`);
  const row = (label: string, pick: (fig: Figures) => number[]) =>
    console.log(
      `${label.padEnd(22)}${shown.map(([, fig]) => f(median(pick(fig))).padStart(12)).join('')}`,
    );
  row('events/s into PG', (fig) => fig.rate);
  row('  1st-last commit', (fig) => fig.commitRate);
  if (base.length > 0) {
    console.log(
      `${'x baseline'.padEnd(22)}${shown.map(([, fig]) => (median(fig.rate) / median(base)).toFixed(1).padStart(12)).join('')}`,
    );
  }
  row('e2e latency p50 (s)', (fig) => fig.p50);
  row('e2e latency p99 (s)', (fig) => fig.p99);
  shown
    .filter(([l]) => l !== 'baseline')
    .forEach(([, fig], i) => {
      console.log(`[${i + 1}] where a backlog batch spends its time (--profile, all runs):`);
      for (const line of profileTable(fig.profile)) console.log(line);
    });
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
