import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { endpoints, uniqueName } from './harness';
import { frame } from '../common/registry';
import { runCli, type Running } from './processes';
import {
  createTopic,
  encodeEvent,
  freshDatabase,
  kafkaClient,
  registerSchemas,
  syntheticStream,
  waitFor,
  type TestDatabase,
} from './processor-helpers';

let db: TestDatabase;
let processor: Running | undefined;

before(async () => {
  db = await freshDatabase((await endpoints()).env);
});

after(async () => {
  await processor?.stop();
  await db?.drop();
});

test('poison messages go to <topic>.dlq and dead_letters; processing goes on', async () => {
  const env = (await endpoints()).env;
  const topic = uniqueName('tcpaudit.poison');
  const kafka = kafkaClient(env.KAFKA_BROKERS);
  await createTopic(kafka, topic, 2);
  const schemas = await registerSchemas(env.SCHEMA_REGISTRY_URL, topic);
  const stream = syntheticStream(20, 1, Date.now() * 1000, 'p');
  const good = stream.changes.map((c) => ({ key: c.connId, value: encodeEvent(schemas, c) }));
  const base = stream.changes[0];
  const bad: { key: string; value: Buffer; reason: RegExp }[] = [
    { key: 'magic', value: Buffer.from([7, 0, 0, 0, 1, 1, 2, 3]), reason: /magic byte/ },
    { key: 'schema', value: frame(987654321, Buffer.from([1, 2, 3])), reason: /unknown schema id/ },
    {
      key: 'payload',
      value: frame(schemas.eventId, Buffer.from([0xff, 0xff, 0xff])),
      reason: /undecodable/,
    },
    { key: 'short', value: Buffer.from([0, 1]), reason: /shorter/ },
    {
      key: 'port',
      value: encodeEvent(schemas, { ...base, connId: 'x-1-1', localPort: 70000 }),
      reason: /port out of range/,
    },
    {
      key: 'state',
      value: encodeEvent(schemas, { ...base, connId: 'x-1-2', newState: 'UNKNOWN' }),
      reason: /unknown state/,
    },
    {
      key: 'connid',
      value: encodeEvent(schemas, { ...base, connId: '' }),
      reason: /no connection id/,
    },
    {
      key: 'addr',
      value: encodeEvent(schemas, { ...base, connId: 'x-1-3', remoteAddr: 'not-an-ip' }),
      reason: /not an IP/,
    },
  ];
  const producer = kafka.producer();
  await producer.connect();
  // Poison first, between and after the good ones, all in one partition.
  await producer.send({
    topic,
    messages: [...bad.slice(0, 4), ...good, ...bad.slice(4)].map((m) => ({
      key: 'same',
      value: m.value,
      headers: { probe: m.key },
    })),
  });
  await producer.disconnect();

  processor = runCli(['process', '--metrics-port', '0'], {
    ...db.env,
    TCPAUDIT_TOPIC: topic,
    TCPAUDIT_GROUP: uniqueName('poison'),
  });
  await processor.waitForLog('consuming');
  await waitFor('rows', async () => {
    const { rows } = await db.pool.query(
      'SELECT (SELECT count(*) FROM tcp_events)::int AS e, (SELECT count(*) FROM dead_letters)::int AS d',
    );
    return rows[0].e === good.length && rows[0].d === bad.length;
  });
  const { rows } = await db.pool.query(
    'SELECT reason, message_headers FROM dead_letters ORDER BY kafka_offset',
  );
  bad.forEach((b, i) => {
    assert.match(rows[i].reason, b.reason, b.key);
    assert.equal(rows[i].message_headers.probe, b.key);
  });

  const consumer = kafka.consumer({ groupId: uniqueName('dlq-reader') });
  await consumer.connect();
  await consumer.subscribe({ topic: `${topic}.dlq`, fromBeginning: true });
  const seen: { key: string; headers: Record<string, string> }[] = [];
  await consumer.run({
    eachMessage: async ({ message }) => {
      seen.push({
        key: String(message.key),
        headers: Object.fromEntries(
          Object.entries(message.headers ?? {}).map(([k, v]) => [k, String(v)]),
        ),
      });
    },
  });
  await waitFor('dead-letter topic', async () => seen.length >= bad.length, 30_000);
  await consumer.disconnect();
  assert.equal(seen.length, bad.length);
  for (const m of seen) {
    assert.equal(m.key, 'same');
    assert.equal(m.headers['tcpaudit-dlq-topic'], topic);
    assert.ok(m.headers['tcpaudit-dlq-reason'].length > 0);
    assert.match(m.headers['tcpaudit-dlq-offset'], /^\d+$/);
    assert.equal(
      m.headers['tcpaudit-dlq-partition'],
      rows.length ? m.headers['tcpaudit-dlq-partition'] : '',
    );
  }
  assert.equal(await processor.stop(), 0);
  processor = undefined;
});
