import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { endpoints, uniqueName } from './harness';
import { createRegistry } from '../common/registry';
import { registryDecoder } from '../processor/decode';
import { lambdaHandler, type LambdaKafkaEvent, type LambdaKafkaRecord } from '../processor/lambda';
import type { DeadLetter } from '../processor/handler';
import {
  checkExact,
  encodeEvent,
  freshDatabase,
  registerSchemas,
  syntheticStream,
  type TestDatabase,
} from './processor-helpers';

let db: TestDatabase;
let registryUrl: string;

before(async () => {
  const stack = await endpoints();
  registryUrl = stack.env.SCHEMA_REGISTRY_URL;
  db = await freshDatabase(stack.env);
});

after(async () => {
  await db?.drop();
});

test('lambda adapter: an MSK-shaped event becomes exact rows; a retried invocation changes nothing', async () => {
  const topic = uniqueName('tcpaudit.lambda');
  const schemas = await registerSchemas(registryUrl, topic);
  const stream = syntheticStream(60, 2, Date.now() * 1000, 'l');
  const byPartition: Record<string, LambdaKafkaRecord[]> = {};
  stream.changes.forEach((c, i) => {
    const partition = c.connId.charCodeAt(c.connId.length - 1) % 3;
    const list = (byPartition[`${topic}-${partition}`] ??= []);
    list.push({
      topic,
      partition,
      offset: list.length,
      timestamp: Math.floor(c.timeUs / 1000),
      timestampType: 'CREATE_TIME',
      key: Buffer.from(c.connId).toString('base64'),
      value: encodeEvent(schemas, c).toString('base64'),
      headers: [{ source: [...Buffer.from('test')] }],
    });
    void i;
  });
  // One poison record: a wrong magic byte.
  byPartition[`${topic}-0`].push({
    topic,
    partition: 0,
    offset: byPartition[`${topic}-0`].length,
    key: null,
    value: Buffer.from([1, 0, 0, 0, 1, 2]).toString('base64'),
    headers: [],
  });
  const event: LambdaKafkaEvent = {
    eventSource: 'aws:kafka',
    eventSourceArn: 'arn:aws:kafka:us-east-1:123456789012:cluster/test/abc',
    bootstrapServers: '127.0.0.1:19092',
    records: byPartition,
  };
  const letters: DeadLetter[] = [];
  const handler = lambdaHandler({
    pool: db.pool,
    decode: registryDecoder(createRegistry(registryUrl)),
    groupId: 'lambda',
    deadLetterSink: async (l) => void letters.push(...l),
  });
  const first = await handler(JSON.parse(JSON.stringify(event)));
  assert.equal(first.inserted, stream.changes.length);
  assert.equal(first.deadLetters, 1);
  const again = await handler(JSON.parse(JSON.stringify(event)));
  assert.equal(again.inserted, 0);
  assert.equal(again.duplicates, stream.changes.length);
  assert.deepEqual(await checkExact(db.pool, stream), []);
  assert.match(letters[0].reason, /magic byte/);
  const dl = await db.pool.query('SELECT reason, kafka_partition FROM dead_letters');
  assert.equal(dl.rowCount, 1);
  const offsets = await db.pool.query(
    "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = 'lambda' ORDER BY partition",
  );
  assert.deepEqual(
    offsets.rows.map((r) => [r.partition, Number(r.next_offset)]),
    Object.entries(byPartition)
      .map(([k, l]) => [Number(k.split('-').pop()), l.length])
      .sort((a, b) => a[0] - b[0]),
  );
});
