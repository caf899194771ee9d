import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import avro from 'avsc';
import { Kafka, logLevel } from 'kafkajs';
import { loadValueSchema } from '../common/registry';

/** Shared by the producer tests: traffic, reading a topic back, the capture log, /metrics. */

export interface TopicRecord {
  partition: number;
  offset: number;
  key: string;
  value: Record<string, unknown>;
}

/** Every record of a topic, read from the start to the end offsets as they are now. */
export async function readTopic(
  brokers: string,
  topic: string,
  schemaFile?: string,
): Promise<TopicRecord[]> {
  const type = schemaFile
    ? avro.Type.forSchema(JSON.parse(fs.readFileSync(schemaFile, 'utf8')))
    : loadValueSchema().type;
  const kafka = new Kafka({
    clientId: 'tcpaudit-test-reader',
    brokers: [brokers],
    logLevel: logLevel.NOTHING,
  });
  const admin = kafka.admin();
  await admin.connect();
  const ends = await admin.fetchTopicOffsets(topic);
  await admin.disconnect();
  const want = new Map(ends.map((e) => [e.partition, Number(e.high)]));
  const total = [...want.values()].reduce((a, b) => a + b, 0);
  const out: TopicRecord[] = [];
  if (total === 0) return out;
  const consumer = kafka.consumer({ groupId: `tcpaudit-test-${process.pid}-${Date.now()}` });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`read ${out.length} of ${total} records of ${topic}`)),
      60_000,
    );
    void consumer
      .run({
        eachBatch: async ({ batch }) => {
          for (const m of batch.messages) {
            out.push({
              partition: batch.partition,
              offset: Number(m.offset),
              key: m.key?.toString() ?? '',
              value: type.fromBuffer(m.value!.subarray(5)) as Record<string, unknown>,
            });
          }
          if (out.length >= total) {
            clearTimeout(timer);
            resolve();
          }
        },
      })
      .catch(reject);
  });
  await consumer.disconnect();
  return out;
}

/** The producer's --capture-log: one "connId seq" line per captured event. */
export function readCaptureLog(file: string): Array<{ connId: string; seq: number }> {
  if (!fs.existsSync(file)) return [];
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l)
    .map((l) => {
      const [connId, seq] = l.split(' ');
      return { connId, seq: Number(seq) };
    });
}

/**
 * Checks that the topic holds each captured event exactly once, and each connection's
 * events in sequence order (one connection, one partition, offsets follow seq).
 */
/** What compareWithCapture returns when every captured event is in the topic exactly once. */
export const EXACT_DELIVERY = {
  missing: [],
  duplicated: [],
  unknown: [],
  wrongKey: 0,
  outOfOrder: 0,
  splitPartitions: 0,
} as const;

export function compareWithCapture(
  captured: Array<{ connId: string; seq: number }>,
  records: TopicRecord[],
) {
  // seq restarts with each capture run; the connId carries the run id, so the pair is unique.
  const id = (connId: unknown, seq: unknown) => `${String(connId)}/${String(seq)}`;
  const seen = new Map<string, number>();
  for (const r of records) {
    const k = id(r.value.conn_id, r.value.seq);
    seen.set(k, (seen.get(k) ?? 0) + 1);
  }
  const missing = captured
    .filter((c) => !seen.has(id(c.connId, c.seq)))
    .map((c) => id(c.connId, c.seq));
  const duplicated = [...seen.entries()].filter(([, n]) => n > 1).map(([k]) => k);
  const capturedIds = new Set(captured.map((c) => id(c.connId, c.seq)));
  const unknown = [...seen.keys()].filter((k) => !capturedIds.has(k));
  const wrongKey = records.filter((r) => r.key !== r.value.conn_id).length;
  const sorted = [...records].sort((a, b) => a.partition - b.partition || a.offset - b.offset);
  const last = new Map<string, { seq: number; partition: number }>();
  let outOfOrder = 0;
  let splitPartitions = 0;
  for (const r of sorted) {
    const prev = last.get(r.key);
    if (prev && prev.partition !== r.partition) splitPartitions++;
    if (prev && prev.seq >= (r.value.seq as number)) outOfOrder++;
    last.set(r.key, { seq: r.value.seq as number, partition: r.partition });
  }
  return { missing, duplicated, unknown, wrongKey, outOfOrder, splitPartitions };
}

/** Opens and closes `rate` loopback connections a second until stopped; counts them. */
export async function steadyTraffic(
  rate: number,
): Promise<{ port: number; stop(): Promise<number> }> {
  const server = net.createServer((s) => {
    s.on('error', () => undefined);
    s.resume();
    s.on('end', () => s.end());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  let made = 0;
  const timer = setInterval(() => {
    const c = net.connect({ host: '127.0.0.1', port }, () => c.end('x'));
    c.on('error', () => undefined);
    c.resume();
    made++;
  }, 1000 / rate);
  // A failed assertion may skip stop(): neither may keep the test process alive.
  timer.unref();
  server.unref();
  return {
    port,
    async stop() {
      clearInterval(timer);
      await new Promise((r) => setTimeout(r, 300));
      await new Promise((r) => server.close(r));
      return made;
    },
  };
}

/** GET /metrics, parsed into "name{labels}" -> value. */
export async function scrape(port: number): Promise<Map<string, number>> {
  const text = await new Promise<string>((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
        let body = '';
        res
          .setEncoding('utf8')
          .on('data', (d) => (body += d))
          .on('end', () => resolve(body));
      })
      .on('error', reject);
  });
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

export const until = async (check: () => boolean | Promise<boolean>, what: string, ms: number) => {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
};
