import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { endpoints, uniqueName } from './harness';
import { KafkaJSNonRetriableError } from 'kafkajs';
import { createRegistry, frame } from '../common/registry';
import { ProcessorConsumer } from '../processor/consumer';
import { fromAvro, isInetAddress, registryDecoder, type Decode } from '../processor/decode';
import { handleBatch, type SourceRecord } from '../processor/handler';
import { runCli, type Running } from './processes';
import {
  createTopic,
  quiet,
  encodeEvent,
  freshDatabase,
  freshPipeline,
  kafkaClient,
  registerSchemas,
  syntheticStream,
  waitFor,
  type TestDatabase,
} from './processor-helpers';

let db: TestDatabase;
let processor: Running | undefined;
const dbs: TestDatabase[] = [];

before(async () => {
  db = await freshDatabase((await endpoints()).env);
});

after(async () => {
  await processor?.stop();
  await db?.drop();
  for (const d of dbs) await d.drop();
});

async function readTopic(brokers: string, topic: string, want: number) {
  const kafka = kafkaClient(brokers);
  const consumer = kafka.consumer({ groupId: uniqueName('reader') });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const seen: { key: string; value: Buffer; headers: Record<string, string> }[] = [];
  await consumer.run({
    eachMessage: async ({ message }) => {
      seen.push({
        key: String(message.key),
        value: message.value ?? Buffer.alloc(0),
        headers: Object.fromEntries(
          Object.entries(message.headers ?? {}).map(([k, v]) => [k, String(v)]),
        ),
      });
    },
  });
  await waitFor(`${want} messages on ${topic}`, async () => seen.length >= want, 30_000);
  await consumer.disconnect();
  return seen;
}

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
    messages: [
      ...bad.slice(0, 4).map((m) => ({ key: 'same', value: m.value, headers: { probe: m.key } })),
      ...good.map((m) => ({ key: m.key, value: m.value, partition: 0 })),
      ...bad.slice(4).map((m) => ({ key: 'same', value: m.value, headers: { probe: m.key } })),
    ].map((m) => ({ ...m, partition: 0 })),
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

test('poison: addresses the processor accepts are ones PostgreSQL inet accepts (zone ids refused)', async () => {
  const candidates = [
    '10.0.0.1',
    '0.0.0.0',
    '::',
    '::1',
    '::ffff:10.9.0.2',
    '1:2:3:4:5:6:1.2.3.4',
    'ABCD::EF',
    'fe80::1%eth0',
    '::1%1',
    '::ffff:1.2.3.4%x',
    'fe80::1%',
    '1.2.3.4 ',
    '01.2.3.4',
    '1.2.3.4/24',
    '999.1.1.1',
    '1::2::3',
    '',
    'localhost',
  ];
  for (const text of candidates) {
    const pg = await db.pool.query('SELECT $1::inet', [text]).then(
      () => true,
      (err: { code?: string }) => {
        assert.equal(err.code, '22P02', text);
        return false;
      },
    );
    if (isInetAddress(text)) assert.ok(pg, `accepted ${JSON.stringify(text)} that inet refuses`);
  }
  assert.equal(isInetAddress('fe80::1%eth0'), false);
  assert.equal(isInetAddress('::ffff:10.9.0.2'), true);
});

test('poison: zone ids, NUL, over-long comm and a key that is not the conn_id go to the dead letters', async () => {
  const env = (await endpoints()).env;
  const { db: own, topic, kafka, schemas } = await freshPipeline(env, 'tcpaudit.poison2');
  dbs.push(own);
  const stream = syntheticStream(10, 1, Date.now() * 1000, 'z');
  const base = stream.changes[0];
  const bad = [
    { c: { ...base, connId: 'z-1-1', family: 6 as const, localAddr: 'fe80::1%eth0' }, why: /zone/ },
    { c: { ...base, connId: 'z-1-2', remoteAddr: '::1%1' }, why: /zone/ },
    { c: { ...base, connId: 'z-1-3', comm: 'a\u0000b' }, why: /comm/ },
    { c: { ...base, connId: 'z-1-4', comm: 'x'.repeat(4000) }, why: /over-long comm/ },
    { c: { ...base, connId: 'z-1-5', host: 'h\u0000' }, why: /NUL/ },
  ].map((b) => ({ key: b.c.connId, value: encodeEvent(schemas, b.c), why: b.why }));
  const mismatch = stream.changes[1];
  bad.push({
    key: `not-${mismatch.connId}`,
    value: encodeEvent(schemas, { ...mismatch, seq: 999_999 }),
    why: /is not the record's conn_id/,
  });
  const good = stream.changes.map((c) => ({ key: c.connId, value: encodeEvent(schemas, c) }));
  const producer = kafka.producer();
  await producer.connect();
  await producer.send({ topic, messages: [...bad.slice(0, 3), ...good, ...bad.slice(3)] });
  await producer.disconnect();

  const p = runCli(['process', '--metrics-port', '0'], {
    ...own.env,
    TCPAUDIT_TOPIC: topic,
    TCPAUDIT_GROUP: uniqueName('poison2'),
  });
  try {
    await waitFor('rows', async () => {
      const { rows } = await own.pool.query(
        'SELECT (SELECT count(*) FROM tcp_events)::int AS e, (SELECT count(*) FROM dead_letters)::int AS d',
      );
      return rows[0].e === good.length && rows[0].d === bad.length;
    });
  } finally {
    assert.equal(await p.stop(), 0);
  }
  const { rows } = await own.pool.query('SELECT reason FROM dead_letters ORDER BY kafka_offset');
  const order = [...bad.slice(0, 3), ...bad.slice(3)];
  order.forEach((b, i) => assert.match(rows[i].reason, b.why));
  assert.ok(!p.logs.some((l) => l.msg === 'Error when calling eachBatch'), 'no batch failed');
});

test('poison: a record PostgreSQL refuses that the checks missed is isolated by splitting the batch', async () => {
  const env = (await endpoints()).env;
  const own = await freshDatabase(env);
  dbs.push(own);
  const topic = uniqueName('tcpaudit.bisect');
  const schemas = await registerSchemas(env.SCHEMA_REGISTRY_URL, topic);
  const stream = syntheticStream(12, 1, Date.now() * 1000, 'y');
  // A decoder without the checks of decode.ts: what a validation gap would let through.
  const unchecked: Decode = (value) => ({
    kind: 'event',
    change: fromAvro(schemas.eventType.fromBuffer(value!.subarray(5))),
  });
  const records: SourceRecord[] = stream.changes.map((c, i) => ({
    topic,
    partition: 0,
    offset: String(i),
    key: Buffer.from(c.connId),
    value: encodeEvent(schemas, c),
  }));
  const badAt = [3, 9];
  for (const i of badAt) {
    const c = { ...stream.changes[i], connId: `y-9-${i}`, localAddr: 'fe80::1%eth0' };
    records.splice(i, 0, {
      ...records[i],
      key: Buffer.from(c.connId),
      value: encodeEvent(schemas, c),
    });
  }
  records.forEach((r, i) => (r.offset = String(i)));
  let splits = 0;
  const result = await handleBatch(records, own.pool, unchecked, 'bisect', {
    onDataError: (err) => {
      assert.equal((err as { code?: string }).code, '22P02');
      splits++;
    },
  });
  assert.ok(splits > 0);
  assert.equal(result.deadLetters, 2);
  assert.equal(result.inserted, stream.changes.length);
  const dead = await own.pool.query('SELECT kafka_offset, reason FROM dead_letters ORDER BY 1');
  assert.deepEqual(
    dead.rows.map((r) => Number(r.kafka_offset)),
    [3, 9],
  );
  for (const r of dead.rows) assert.match(r.reason, /SQLSTATE 22P02/);
  const off = await own.pool.query('SELECT next_offset FROM consumer_offsets');
  assert.equal(Number(off.rows[0].next_offset), records.length);
  // A replay changes nothing.
  const again = await handleBatch(records, own.pool, unchecked, 'bisect');
  assert.equal(again.inserted, 0);
  const n = await own.pool.query('SELECT count(*)::int AS n FROM dead_letters');
  assert.equal(n.rows[0].n, 2);
});

test('poison: a message whose dead-letter copy the broker refuses is stored whole and published truncated', async () => {
  const env = (await endpoints()).env;
  const own = await freshDatabase(env);
  dbs.push(own);
  const topic = uniqueName('tcpaudit.huge');
  const kafka = kafkaClient(env.KAFKA_BROKERS);
  const admin = kafka.admin();
  await admin.connect();
  // The source topic takes 300 kB; its dead-letter topic only 100 kB, like an original near
  // the broker's limit that our headers push over it.
  await admin.createTopics({
    waitForLeaders: true,
    topics: [
      { topic, numPartitions: 1, configEntries: [{ name: 'max.message.bytes', value: '300000' }] },
      {
        topic: `${topic}.dlq`,
        numPartitions: 1,
        configEntries: [{ name: 'max.message.bytes', value: '100000' }],
      },
    ],
  });
  await admin.disconnect();
  const schemas = await registerSchemas(env.SCHEMA_REGISTRY_URL, topic);
  const stream = syntheticStream(5, 1, Date.now() * 1000, 'h');
  const huge = frame(schemas.eventId, Buffer.alloc(200_000, 0xff));
  const producer = kafka.producer();
  await producer.connect();
  await producer.send({
    topic,
    messages: [
      { key: 'huge', value: huge },
      ...stream.changes.map((c) => ({ key: c.connId, value: encodeEvent(schemas, c) })),
    ],
  });
  await producer.disconnect();
  const p = runCli(['process', '--metrics-port', '0'], {
    ...own.env,
    TCPAUDIT_TOPIC: topic,
    TCPAUDIT_GROUP: uniqueName('huge'),
  });
  try {
    await waitFor('rows', async () => {
      const { rows } = await own.pool.query(
        'SELECT (SELECT count(*) FROM tcp_events)::int AS e, (SELECT count(*) FROM dead_letters)::int AS d',
      );
      return rows[0].e === stream.changes.length && rows[0].d === 1;
    });
    const { rows } = await own.pool.query('SELECT message_value FROM dead_letters');
    assert.ok(Buffer.compare(rows[0].message_value, huge) === 0, 'the row holds the whole message');
    const [copy] = await readTopic(env.KAFKA_BROKERS, `${topic}.dlq`, 1);
    assert.match(copy.headers['tcpaudit-dlq-truncated'], /value 200005 bytes/);
    assert.equal(copy.headers['tcpaudit-dlq-offset'], '0');
    assert.equal(copy.value.length, 64 << 10);
    assert.ok(copy.value.equals(huge.subarray(0, 64 << 10)));
    assert.equal(p.child.exitCode, null, 'still running');
  } finally {
    assert.equal(await p.stop(), 0);
  }
});

test('poison: a consumer kafkajs will not restart is reported as fatal (the CLI then exits 1)', async () => {
  const env = (await endpoints()).env;
  const own = await freshDatabase(env);
  dbs.push(own);
  const topic = uniqueName('tcpaudit.fatal');
  const kafka = kafkaClient(env.KAFKA_BROKERS);
  await createTopic(kafka, topic, 1);
  const schemas = await registerSchemas(env.SCHEMA_REGISTRY_URL, topic);
  const [c] = syntheticStream(1, 1, Date.now() * 1000, 'f').changes;
  const producer = kafka.producer();
  await producer.connect();
  await producer.send({ topic, messages: [{ key: c.connId, value: encodeEvent(schemas, c) }] });
  await producer.disconnect();
  let fatal: Error | null = null;
  const consumer = new ProcessorConsumer({
    kafka: { clientId: 'fatal-test', brokers: env.KAFKA_BROKERS.split(',') },
    topic,
    groupId: uniqueName('fatal'),
    pool: own.pool,
    decode: registryDecoder(createRegistry(env.SCHEMA_REGISTRY_URL)),
    log: quiet,
    // What kafkajs does after an error it deems permanent: stop the consumer, no restart.
    onBatchResult: () => {
      throw new KafkaJSNonRetriableError('test: a permanent failure');
    },
    onFatal: (err) => (fatal = err),
  });
  try {
    await consumer.start();
    await waitFor('fatal', async () => fatal !== null, 30_000);
    assert.match(String(consumer.failure?.message), /permanent failure/);
    assert.equal(consumer.consuming(), false);
  } finally {
    await consumer.stop().catch(() => undefined);
  }
});
