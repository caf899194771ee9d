import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Pool } from 'pg';
import { endpoints, uniqueName } from './harness';
import { createRegistry } from '../common/registry';
import { ProcessorConsumer } from '../processor/consumer';
import { registryDecoder } from '../processor/decode';
import { WriteBehind } from '../processor/write-behind';
import {
  checkExact,
  encodeEvent,
  freshPipeline,
  quiet,
  sleep,
  syntheticStream,
  waitFor,
  type TestDatabase,
} from './processor-helpers';

const dbs: TestDatabase[] = [];

after(async () => {
  for (const db of dbs) await db.drop();
});

test('write-behind: settle waits for the write; a failure is told now, thrown once', async () => {
  const writes = new WriteBehind();
  const order: string[] = [];
  let release = () => {};
  writes.start(
    'a',
    () => new Promise<void>((r) => (release = r)).then(() => void order.push('a1 written')),
    () => order.push('never'),
  );
  const settled = writes.settle('a').then(() => order.push('a settled'));
  await writes.settle('b'); // another partition waits for nothing
  order.push('b settled');
  release();
  await settled;
  assert.deepEqual(order, ['b settled', 'a1 written', 'a settled']);

  const told: string[] = [];
  writes.start(
    'a',
    async () => {
      throw new Error('database away');
    },
    (err) => told.push(err.message),
  );
  await writes.idle();
  assert.deepEqual(told, ['database away']);
  await assert.rejects(writes.settle('a'), /database away/);
  await writes.settle('a'); // thrown once: the retry goes ahead
});

/**
 * The pool, but the batch transactions named in `failing` (1 = the first) cannot connect; each
 * leaves the set as it fails.
 */
function flakyPool(pool: Pool, failing: Set<number>): Pool {
  let transactions = 0;
  return {
    query: (...args: Parameters<Pool['query']>) => pool.query(...args),
    // handleBatch takes a client for its transaction; other queries go through query().
    connect: () =>
      failing.delete(++transactions)
        ? Promise.reject(new Error(`test: transaction ${transactions} cannot connect`))
        : pool.connect(),
  } as unknown as Pool;
}

test('write-behind: a failed batch is fetched again, with or without a later batch', async () => {
  const env = (await endpoints()).env;
  const { db, topic, kafka, schemas } = await freshPipeline(env, 'tcpaudit.behind');
  dbs.push(db);
  const stream = syntheticStream(300, 2, Date.now() * 1000, 'w');
  const messages = stream.changes.map((c) => ({ key: c.connId, value: encodeEvent(schemas, c) }));
  const producer = kafka.producer();
  await producer.connect();
  const failing = new Set([1, 3, 4]);
  const consumer = new ProcessorConsumer({
    kafka: { clientId: 'behind-test', brokers: env.KAFKA_BROKERS.split(',') },
    topic,
    groupId: uniqueName('behind'),
    pool: flakyPool(db.pool, failing),
    decode: registryDecoder(createRegistry(env.SCHEMA_REGISTRY_URL)),
    log: quiet,
  });
  const stored = async (n: number) =>
    Number((await db.pool.query('SELECT count(*) AS n FROM tcp_events')).rows[0].n) >= n;
  try {
    // The only batch fails: nothing later comes to settle it, so the failure itself seeks back.
    const third = Math.floor(messages.length / 3);
    await producer.send({ topic, messages: messages.slice(0, third) });
    await consumer.start();
    await waitFor('the first third', () => stored(third), 60_000);
    // Later batches arrive while failing ones are written.
    for (const chunk of [messages.slice(third, 2 * third), messages.slice(2 * third)]) {
      await producer.send({ topic, messages: chunk });
      await sleep(100);
    }
    await waitFor('every event', () => stored(messages.length), 60_000);
    await sleep(500);
    assert.deepEqual(await checkExact(db.pool, stream), []);
    assert.deepEqual([...failing], []);
    assert.equal(consumer.failure, null);
  } finally {
    await producer.disconnect();
    await consumer.stop();
  }
});

test('write-behind: stop() during a batch look-up starts no write after it', async () => {
  const env = (await endpoints()).env;
  const { db, topic, kafka, schemas } = await freshPipeline(env, 'tcpaudit.behind-stop');
  dbs.push(db);
  const stream = syntheticStream(50, 2, Date.now() * 1000, 's');
  const producer = kafka.producer();
  await producer.connect();
  await producer.send({
    topic,
    messages: stream.changes.map((c) => ({ key: c.connId, value: encodeEvent(schemas, c) })),
  });
  await producer.disconnect();
  // The stored-offset look-up is held up, so stop() comes while the batch waits on it.
  let lookingUp = false;
  const transactions: number[] = [];
  const pool = {
    query: async (...args: Parameters<Pool['query']>) => {
      if (String(args[0]).includes('SELECT next_offset')) {
        lookingUp = true;
        await sleep(2000);
      }
      return db.pool.query(...args);
    },
    connect: () => {
      transactions.push(Date.now());
      return db.pool.connect();
    },
  } as unknown as Pool;
  const consumer = new ProcessorConsumer({
    kafka: { clientId: 'behind-stop-test', brokers: env.KAFKA_BROKERS.split(',') },
    topic,
    groupId: uniqueName('behind-stop'),
    pool,
    decode: registryDecoder(createRegistry(env.SCHEMA_REGISTRY_URL)),
    log: quiet,
  });
  await consumer.start();
  await waitFor('the offset look-up', async () => lookingUp, 60_000);
  await consumer.stop();
  const stoppedAt = Date.now();
  await sleep(3000);
  assert.deepEqual(
    transactions.filter((t) => t >= stoppedAt),
    [],
    'no batch transaction after stop() returned',
  );
  const { rows } = await db.pool.query('SELECT count(*)::int AS n FROM tcp_events');
  assert.equal(rows[0].n, 0, 'the batch is left for the next run, whole');
});
