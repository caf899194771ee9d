/**
 * Processor throughput and end-to-end latency, side by side with the older design's way (one
 * INSERT statement per event). Needs the local stack; makes its own databases, topics and groups.
 *   node dist/bench/processor.js [runs=3] [events=60000]
 */
import { Client, Pool } from 'pg';
import { Kafka, logLevel } from 'kafkajs';
import { pgDefaults, DEFAULTS } from '../common/config';
import { createLogger } from '../common/log';
import { createRegistry } from '../common/registry';
import { ProcessorConsumer } from '../processor/consumer';
import { registryDecoder, type Decode } from '../processor/decode';
import { migrate } from '../processor/migrate';
import { ensurePartitions } from '../processor/partitions';
import { isoFromMicros } from '../common/time';
import { runIdOf } from '../processor/lifecycle';
import { encodeEvent, registerSchemas, syntheticStream, type Schemas } from '../test/processor-helpers';

const log = createLogger('bench', 'error');
const brokers = (process.env.KAFKA_BROKERS ?? DEFAULTS.brokers).split(',');
const registryUrl = process.env.SCHEMA_REGISTRY_URL ?? DEFAULTS.registryUrl;
const kafka = new Kafka({ clientId: 'tcpaudit-bench', brokers, logLevel: logLevel.NOTHING });
const name = (p: string) => `${p}_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 6)}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const pct = (xs: number[], p: number) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(s.length * p))]; };

async function withDatabase<T>(fn: (pool: Pool) => Promise<T>): Promise<T> {
  const db = name('tcpaudit_bench');
  const admin = new Client(pgDefaults());
  await admin.connect();
  await admin.query(`CREATE DATABASE ${db}`);
  const pool = new Pool({ ...pgDefaults(), database: db, max: 8 });
  pool.on('error', () => undefined);
  try {
    await migrate(pool, log);
    await ensurePartitions(pool, log);
    return await fn(pool);
  } finally {
    await pool.end();
    await admin.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    await admin.end();
  }
}

async function topicWith(schemas: (t: string) => Promise<Schemas>) {
  const topic = name('tcpaudit.bench').replace(/_/g, '.');
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 3 }], waitForLeaders: true });
  await admin.disconnect();
  return { topic, schemas: await schemas(topic) };
}

async function publish(topic: string, messages: { key: string; value: Buffer }[]) {
  const producer = kafka.producer();
  await producer.connect();
  for (let i = 0; i < messages.length; i += 5000) await producer.send({ topic, messages: messages.slice(i, i + 5000) });
  await producer.disconnect();
}

/** The older design: each event its own INSERT statement (autocommit), offsets in Kafka. */
async function baseline(pool: Pool, topic: string, decode: Decode, total: number, latencies?: number[]): Promise<number> {
  const consumer = kafka.consumer({ groupId: name('base') });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  let done = 0;
  let started = 0;
  const finished = new Promise<void>((resolve) => {
    void consumer.run({
      partitionsConsumedConcurrently: 3,
      eachMessage: async ({ message }) => {
        if (!started) started = Date.now();
        const d = await decode(message.value);
        if (d.kind !== 'event') return;
        const c = d.change;
        await pool.query(
          `INSERT INTO tcp_events (conn_id, seq, host, boot_id, run_id, event_time, family, local_addr, local_port,
             remote_addr, remote_port, old_state, new_state, pid, tid, comm, uid, netns, cgroup_id, bytes_sent,
             bytes_received, segs_out, segs_in, retransmits, srtt_us, kafka_topic, kafka_partition, kafka_offset)
           VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23,$24,$25,$26,0,$27)
           ON CONFLICT DO NOTHING`,
          [c.connId, c.seq, c.host, c.bootId, runIdOf(c.connId), isoFromMicros(c.timeUs), c.family, c.localAddr,
            c.localPort, c.remoteAddr, c.remotePort, c.oldState, c.newState, c.pid, c.tid, c.comm, c.uid, c.netns,
            c.cgroupId, c.bytesSent, c.bytesReceived, c.segsOut, c.segsIn, c.retransmits, c.srttUs, topic, message.offset],
        );
        latencies?.push(Date.now() / 1000 - c.timeUs / 1e6);
        if (++done === total) resolve();
      },
    });
  });
  await finished;
  const rate = total / ((Date.now() - started) / 1000);
  await consumer.disconnect();
  return rate;
}

async function processor(pool: Pool, topic: string, decode: Decode, total: number, latencies?: number[]): Promise<number> {
  let done = 0;
  let started = 0;
  let resolve!: () => void;
  const finished = new Promise<void>((r) => (resolve = r));
  const consumer = new ProcessorConsumer({
    kafka: { clientId: 'tcpaudit-bench', brokers }, topic, groupId: name('proc'), pool, decode, log, concurrency: 3,
    onBatchResult: (r) => {
      if (!started) started = r.startedAtMs;
      if (latencies) for (const us of r.eventTimesUs) latencies.push(r.committedAtMs / 1000 - us / 1e6);
      done += r.inserted;
      if (done >= total) resolve();
    },
  });
  await consumer.start();
  await finished;
  const rate = total / ((Date.now() - started) / 1000);
  await consumer.stop();
  return rate;
}

/** Offers `perSecond` events for `seconds`, each stamped with the time it is sent. */
async function offer(topic: string, schemas: Schemas, perSecond: number, seconds: number) {
  const producer = kafka.producer();
  await producer.connect();
  const stream = syntheticStream(perSecond * seconds / 4, 16, 0, 'o').changes.slice(0, perSecond * seconds);
  const tick = 50;
  const per = perSecond * tick / 1000;
  const t0 = Date.now();
  for (let i = 0; i < stream.length; i += per) {
    const wait = t0 + (i / per) * tick - Date.now();
    if (wait > 0) await sleep(wait);
    const now = Date.now() * 1000;
    void producer.send({ topic, acks: 1, messages: stream.slice(i, i + per).map((c) => ({ key: c.connId, value: encodeEvent(schemas, { ...c, timeUs: now }) })) });
  }
  await sleep(500);
  await producer.disconnect();
  return stream.length;
}

async function main() {
  const runs = Number(process.argv[2] ?? 3);
  const events = Number(process.argv[3] ?? 60000);
  const decode = registryDecoder(createRegistry(registryUrl));
  const schemas = (t: string) => registerSchemas(registryUrl, t);
  const out = { procRate: [] as number[], baseRate: [] as number[], procP50: [] as number[], procP99: [] as number[], baseP50: [] as number[], baseP99: [] as number[] };
  for (let run = 0; run < runs; run++) {
    const { topic, schemas: s } = await topicWith(schemas);
    const stream = syntheticStream(events / 4, 16, Date.now() * 1000, `r${run}`).changes.slice(0, events);
    await publish(topic, stream.map((c) => ({ key: c.connId, value: encodeEvent(s, c) })));
    out.procRate.push(await withDatabase((pool) => processor(pool, topic, decode, stream.length)));
    const baseN = Math.min(stream.length, 15000);
    const { topic: bt, schemas: bs } = await topicWith(schemas);
    await publish(bt, stream.slice(0, baseN).map((c) => ({ key: c.connId, value: encodeEvent(bs, c) })));
    out.baseRate.push(await withDatabase((pool) => baseline(pool, bt, decode, baseN)));
    for (const [kind, p50, p99] of [['proc', out.procP50, out.procP99], ['base', out.baseP50, out.baseP99]] as const) {
      const { topic: lt, schemas: ls } = await topicWith(schemas);
      const lat: number[] = [];
      await withDatabase(async (pool) => {
        const total = 10_000 * 10;
        const consuming = kind === 'proc' ? processor(pool, lt, decode, total, lat) : baseline(pool, lt, decode, total, lat);
        await sleep(kind === 'proc' ? 4000 : 4000); // group join before the clock starts
        await offer(lt, ls, 10_000, 10);
        await Promise.race([consuming, sleep(120_000)]);
      });
      p50.push(pct(lat, 0.5));
      p99.push(pct(lat, 0.99));
    }
    console.error(`run ${run + 1}: ${JSON.stringify(Object.fromEntries(Object.entries(out).map(([k, v]) => [k, v[v.length - 1]])))}`);
  }
  const f = (x: number) => x.toFixed(x < 10 ? 3 : 0);
  console.log(`processor bench, ${runs} runs, medians (throughput from a ${events}-event backlog; latency at 10,000 events/s offered for 10 s)`);
  console.log('                       batched (this)   one INSERT per event (baseline)');
  console.log(`events/s into PG      ${f(median(out.procRate)).padStart(15)}   ${f(median(out.baseRate)).padStart(15)}   (x${(median(out.procRate) / median(out.baseRate)).toFixed(1)})`);
  console.log(`e2e latency p50 (s)   ${f(median(out.procP50)).padStart(15)}   ${f(median(out.baseP50)).padStart(15)}`);
  console.log(`e2e latency p99 (s)   ${f(median(out.procP99)).padStart(15)}   ${f(median(out.baseP99)).padStart(15)}`);
}

main().then(() => process.exit(0), (err) => {
  console.error(err);
  process.exit(1);
});
