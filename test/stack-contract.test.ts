import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import avro from 'avsc';
import { Kafka, Partitioners, logLevel } from 'kafkajs';
import { SchemaRegistry, SchemaType } from '@kafkajs/confluent-schema-registry';
import { stackEnv, stackUp } from '../stack';

/**
 * Contract of the local stack as our producer and processor use it: the schema registry's
 * Confluent-compatible API (through @kafkajs/confluent-schema-registry and raw REST) and
 * Kafka through kafkajs. Runs against SCHEMA_REGISTRY_URL / KAFKA_BROKERS when given,
 * else starts the native stack (`tcpaudit stack up`) and leaves it running for other tests.
 *
 * The registry assertions pin Apicurio Registry 3.0's answers. Where Confluent's registry
 * answers differently, the comment says so: code that talks REST to "a Confluent registry"
 * must accept both.
 */

interface Endpoints {
  registryUrl: string;
  brokers: string[];
}

let endpoints: Endpoints;
const createdSubjects: string[] = [];

const unique = (prefix: string) => `${prefix}-${Date.now()}-${randomBytes(4).toString('hex')}`;

before(
  async () => {
    const givenUrl = process.env.SCHEMA_REGISTRY_URL;
    const env = givenUrl ? null : await stackUp();
    endpoints = {
      registryUrl: (givenUrl ?? stackEnv().SCHEMA_REGISTRY_URL).replace(/\/+$/, ''),
      brokers: (process.env.KAFKA_BROKERS ?? env?.KAFKA_BROKERS ?? stackEnv().KAFKA_BROKERS)
        .split(',')
        .map((b) => b.trim()),
    };
  },
  { timeout: 180_000 },
);

after(async () => {
  // Delete our subjects so the shared registry does not fill up run after run
  // (Apicurio lists at most apicurio.ccompat.max-subjects = 1000 subjects).
  for (const subject of createdSubjects) {
    await rest('DELETE', `/subjects/${subject}`).catch(() => undefined);
    await rest('DELETE', `/subjects/${subject}?permanent=true`).catch(() => undefined);
  }
});

async function rest(method: string, path: string, body?: unknown) {
  const res = await fetch(`${endpoints.registryUrl}${path}`, {
    method,
    headers: { 'Content-Type': 'application/vnd.schemaregistry.v1+json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  return { status: res.status, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

const SCHEMA = {
  type: 'record',
  name: 'ContractProbe',
  namespace: 'tcpaudit.test',
  fields: [
    { name: 'connId', type: 'string' },
    { name: 'timeNs', type: 'long' },
    { name: 'family', type: { type: 'enum', name: 'Family', symbols: ['V4', 'V6'] } },
    { name: 'comm', type: ['null', 'string'], default: null },
    { name: 'srttUs', type: 'int' },
  ],
};

test('schema registry: register, Confluent framing, round trip', async () => {
  const registry = new SchemaRegistry({ host: endpoints.registryUrl });
  const subject = unique('tcpaudit.contract') + '-value';
  createdSubjects.push(subject);
  const schema = { type: SchemaType.AVRO as const, schema: JSON.stringify(SCHEMA) };

  const first = await registry.register(schema, { subject });
  assert.ok(Number.isInteger(first.id) && first.id > 0, `bad id ${first.id}`);
  const again = await registry.register(schema, { subject });
  assert.equal(again.id, first.id, 'same schema under the same subject must keep its id');

  const record = {
    connId: 'c-1',
    timeNs: 1_700_000_000_123,
    family: 'V6',
    comm: 'curl',
    srttUs: 250,
  };
  const framed = await registry.encode(first.id, record);
  // Confluent wire format: magic byte 0, schema id as 4-byte big-endian, then plain Avro.
  assert.equal(framed.readUInt8(0), 0);
  assert.equal(framed.readUInt32BE(1), first.id);
  const plain = avro.Type.forSchema(SCHEMA as avro.Schema).toBuffer(record);
  assert.deepEqual(framed.subarray(5), plain);
  assert.deepEqual({ ...(await registry.decode(framed)) }, record);
});

test('schema registry: per-subject compatibility over REST', async () => {
  const subject = unique('tcpaudit.contract.config') + '-value';
  createdSubjects.push(subject);
  const created = await rest('POST', `/subjects/${subject}/versions`, {
    schema: JSON.stringify(SCHEMA),
  });
  assert.equal(created.status, 200, JSON.stringify(created.body));

  // No subject-level config yet. Apicurio answers 200 with the GLOBAL level in
  // `compatibilityLevel`; Confluent answers 404 (error_code 40408) unless ?defaultToGlobal=true.
  // So with Apicurio, @kafkajs/confluent-schema-registry's register() (which compares this
  // value with its `compatibility` option, default BACKWARD) throws for a subject created
  // without config while the global level differs: set the subject's level explicitly.
  const global = await rest('GET', '/config');
  assert.equal(global.status, 200);
  const unset = await rest('GET', `/config/${subject}`);
  assert.equal(unset.status, 200);
  assert.deepEqual(unset.body, { compatibilityLevel: global.body.compatibilityLevel });

  // Confluent echoes the PUT as {"compatibility": ...}; Apicurio as {"compatibilityLevel": ...}.
  const put = await rest('PUT', `/config/${subject}`, { compatibility: 'BACKWARD' });
  assert.equal(put.status, 200, JSON.stringify(put.body));
  assert.deepEqual(put.body, { compatibilityLevel: 'BACKWARD' });

  // The GET form is the same on both registries, with or without defaultToGlobal.
  assert.deepEqual((await rest('GET', `/config/${subject}`)).body, {
    compatibilityLevel: 'BACKWARD',
  });
  assert.deepEqual((await rest('GET', `/config/${subject}?defaultToGlobal=true`)).body, {
    compatibilityLevel: 'BACKWARD',
  });

  // And the level is enforced: a new required field without default breaks BACKWARD.
  const breaking = { ...SCHEMA, fields: [...SCHEMA.fields, { name: 'extra', type: 'string' }] };
  const rejected = await rest('POST', `/subjects/${subject}/versions`, {
    schema: JSON.stringify(breaking),
  });
  assert.equal(rejected.status, 409, JSON.stringify(rejected.body));
  assert.equal(rejected.body.error_code, 409);
});

test(
  'kafka: 3 partitions, idempotent acks=-1 producer, consumer group',
  { timeout: 120_000 },
  async () => {
    const kafka = new Kafka({
      clientId: 'tcpaudit-stack-contract',
      brokers: endpoints.brokers,
      // ERROR, not NOTHING: right after a cold start kafkajs logs "coordinator is loading" once
      // or twice and retries by itself; anything else here is worth seeing.
      logLevel: logLevel.ERROR,
    });
    const topic = unique('tcpaudit.contract');
    const admin = kafka.admin();
    const producer = kafka.producer({
      idempotent: true,
      maxInFlightRequests: 1,
      createPartitioner: Partitioners.DefaultPartitioner,
    });
    const consumer = kafka.consumer({ groupId: unique('tcpaudit.contract.group') });
    await admin.connect();
    try {
      const created = await admin.createTopics({
        topics: [{ topic, numPartitions: 3, replicationFactor: 1 }],
        waitForLeaders: true,
      });
      assert.equal(created, true);
      const meta = await admin.fetchTopicMetadata({ topics: [topic] });
      assert.equal(meta.topics[0]?.partitions.length, 3);

      const sent = Array.from({ length: 30 }, (_, i) => ({
        key: `conn-${i}`,
        value: `event-${i}`,
      }));
      await producer.connect();
      const acks = await producer.send({ topic, acks: -1, messages: sent });
      assert.ok(acks.every((a) => a.errorCode === 0));
      const offsets = await admin.fetchTopicOffsets(topic);
      const total = offsets.reduce((n, p) => n + Number(p.high) - Number(p.low), 0);
      assert.equal(total, sent.length);
      assert.ok(offsets.filter((p) => Number(p.high) > 0).length > 1, 'keys should spread');

      const got = new Map<string, { value: string; partition: number }>();
      await consumer.connect();
      await consumer.subscribe({ topic, fromBeginning: true });
      const allIn = new Promise<void>((resolve) => {
        void consumer.run({
          eachMessage: async ({ partition, message }) => {
            got.set(String(message.key), { value: String(message.value), partition });
            if (got.size === sent.length) resolve();
          },
        });
      });
      const timeout = new Promise<never>((_, reject) =>
        setTimeout(
          () => reject(new Error(`consumed ${got.size}/${sent.length} in 60 s`)),
          60_000,
        ).unref(),
      );
      await Promise.race([allIn, timeout]);
      assert.deepEqual(
        [...got.entries()]
          .map(([key, v]) => ({ key, value: v.value }))
          .sort((a, b) => a.key.localeCompare(b.key)),
        [...sent].sort((a, b) => a.key.localeCompare(b.key)),
      );
      assert.ok(new Set([...got.values()].map((v) => v.partition)).size > 1);
    } finally {
      await consumer.disconnect().catch(() => undefined);
      await producer.disconnect().catch(() => undefined);
      await admin.deleteTopics({ topics: [topic] }).catch(() => undefined);
      await admin.disconnect().catch(() => undefined);
    }
  },
);
