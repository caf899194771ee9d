import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { endpoints, uniqueName } from './harness';
import { runCli, type Running } from './processes';
import {
  checkExact,
  createTopic,
  encodeEvent,
  freshDatabase,
  kafkaClient,
  registerSchemas,
  sleep,
  syntheticStream,
  waitFor,
  type TestDatabase,
} from './processor-helpers';

const running = new Set<Running>();
const dbs: TestDatabase[] = [];

function startProcessor(env: Record<string, string>, topic: string, group: string): Running {
  const p = runCli(['process', '--metrics-port', '0', '--session-timeout', '6000'], {
    ...env,
    TCPAUDIT_TOPIC: topic,
    TCPAUDIT_GROUP: group,
  });
  running.add(p);
  p.child.once('exit', () => running.delete(p));
  return p;
}

function kill(p: Running): Promise<void> {
  return new Promise((resolve) => {
    if (p.child.exitCode !== null || p.child.signalCode !== null) return resolve();
    p.child.once('exit', () => resolve());
    p.child.kill('SIGKILL');
  });
}

async function publishStream(
  env: Record<string, string>,
  topic: string,
  conns: number,
  tag: string,
) {
  const kafka = kafkaClient(env.KAFKA_BROKERS);
  await createTopic(kafka, topic, 3);
  const schemas = await registerSchemas(env.SCHEMA_REGISTRY_URL, topic);
  const stream = syntheticStream(conns, 4, Date.now() * 1000, tag);
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const messages = stream.changes.map((c) => ({ key: c.connId, value: encodeEvent(schemas, c) }));
  const chunks: (typeof messages)[] = [];
  for (let i = 0; i < messages.length; i += Math.ceil(messages.length / 6))
    chunks.push(messages.slice(i, i + Math.ceil(messages.length / 6)));
  return {
    stream,
    chunks: chunks.length,
    send: async (i: number) => void (await producer.send({ topic, messages: chunks[i] })),
    close: () => producer.disconnect(),
  };
}

const count = async (db: TestDatabase) =>
  Number((await db.pool.query('SELECT count(*) AS n FROM tcp_events')).rows[0].n);

before(async () => {
  await endpoints();
});

after(async () => {
  await Promise.all([...running].map(kill));
  for (const db of dbs) await db.drop();
});

test('crash: a processor SIGKILLed again and again mid-stream leaves exact rows, no event twice', async () => {
  const env = (await endpoints()).env;
  const db = await freshDatabase(env);
  dbs.push(db);
  const topic = uniqueName('tcpaudit.crash');
  const group = uniqueName('crash');
  const pub = await publishStream(env, topic, 900, 'k');
  let kills = 0;
  let progress = -1;
  for (let i = 0; i < pub.chunks; i++) {
    await pub.send(i);
    const p = startProcessor(db.env, topic, group);
    if (i === pub.chunks - 1) break;
    // Kill while it is writing: as soon as rows move (or after a while), then a little later.
    await waitFor(
      'progress',
      async () => (await count(db)) > progress || p.child.exitCode !== null,
      40_000,
    ).catch(() => undefined);
    await sleep(50 + ((i * 97) % 200));
    await kill(p);
    kills++;
    progress = await count(db);
  }
  await waitFor('all events', async () => (await count(db)) >= pub.stream.changes.length, 90_000);
  await sleep(1000);
  await pub.close();
  assert.ok(kills >= 5);
  assert.deepEqual(await checkExact(db.pool, pub.stream), []);
});

test('scale out: two instances share a topic; one is killed and restarted mid-stream; rows equal a clean run', async () => {
  const env = (await endpoints()).env;
  const db = await freshDatabase(env);
  dbs.push(db);
  const topic = uniqueName('tcpaudit.scale');
  const group = uniqueName('scale');
  const pub = await publishStream(env, topic, 900, 's');
  const a = startProcessor(db.env, topic, group);
  const b = startProcessor(db.env, topic, group);
  await Promise.all([a.waitForLog('consuming'), b.waitForLog('consuming')]);
  for (let i = 0; i < 3; i++) await pub.send(i);
  await waitFor('some rows', async () => (await count(db)) > 0, 60_000);
  await kill(a);
  for (let i = 3; i < 5; i++) await pub.send(i);
  const a2 = startProcessor(db.env, topic, group);
  await a2.waitForLog('consuming');
  for (let i = 5; i < pub.chunks; i++) await pub.send(i);
  await waitFor('all events', async () => (await count(db)) >= pub.stream.changes.length, 90_000);
  await sleep(1000);
  await pub.close();
  assert.deepEqual(await checkExact(db.pool, pub.stream), []);
  const codes = await Promise.all([b.stop(), a2.stop()]);
  assert.deepEqual(codes, [0, 0]);
});
