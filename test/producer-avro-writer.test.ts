import assert from 'node:assert/strict';
import { test } from 'node:test';
import avro from 'avsc';
import { TCP_STATES, type TcpEvent } from '../common/event';
import { loadValueSchema } from '../common/registry';
import { kafkaClientSettings } from '../common/kafka-config';
import { createLogger } from '../common/log';
import { StateChangeWriter } from '../producer/avro-writer';
import { GAP_SCHEMA_FILE } from '../producer/gaps';
import { ProducerMetrics } from '../producer/metrics';
import { Publisher } from '../producer/publisher';
import { toAvro } from '../producer/record';

// The producer writes its records itself (producer/avro-writer.ts); every byte must be what
// avsc writes for the same event under the registered schema, or readers would misread them.

const { type } = loadValueSchema();
const SCHEMA_ID = 0x01020304;

function framedByAvsc(e: TcpEvent): Buffer {
  const head = Buffer.from([0, 1, 2, 3, 4]);
  return Buffer.concat([head, type.toBuffer(toAvro(e))]);
}

/** A small deterministic generator: the same events on every run. */
function rng(seed: number): () => number {
  let x = seed >>> 0;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

function randomEvent(next: () => number, i: number): TcpEvent {
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(next() * xs.length)];
  // Magnitudes from 0 to beyond 2^32 and up to 2^53 - 1: every varint length is exercised.
  const big = () => Math.floor(next() ** 4 * Number.MAX_SAFE_INTEGER);
  const small = () => Math.floor(next() * 70_000);
  const v6 = next() < 0.5;
  return {
    seq: i === 0 ? 0 : big(),
    connId: `${(i * 2654435761).toString(16)}-${big().toString(16)}`,
    host: pick(['h', 'web-01.example.internal', 'hôte-é', '']),
    bootId: '3f2a9c1b-5d6e-4f70-8a9b-0c1d2e3f4a5b',
    timeNs: BigInt(big()) * 1000n + BigInt(small()),
    family: v6 ? 6 : 4,
    localAddr: v6 ? '2001:db8::1' : '10.1.2.3',
    localPort: small() % 65536,
    remoteAddr: v6 ? '::ffff:192.0.2.7' : '192.0.2.7',
    remotePort: small() % 65536,
    oldState: pick(TCP_STATES),
    newState: pick(TCP_STATES),
    pid: Math.floor(next() * 2 ** 31),
    tid: Math.floor(next() * 2 ** 22),
    comm: pick(['curl', 'x', '', 'çé€😀', 'a'.repeat(15)]),
    uid: pick([0, 1000, 65534, 4294967295]),
    netns: 4026531840 + small(),
    cgroupId: BigInt(big()),
    bytesSent: BigInt(big()),
    bytesReceived: BigInt(small()),
    segsOut: small(),
    segsIn: big(),
    retransmits: small() % 10,
    srttUs: small(),
    sockInode: big(),
    sockUid: small(),
    sockGid: small(),
  };
}

test('writes every field as avsc does, framing included, for 20,000 varied events', () => {
  const writer = new StateChangeWriter(SCHEMA_ID, type);
  const next = rng(42);
  const buf = Buffer.alloc(4096);
  for (let i = 0; i < 20_000; i++) {
    const e = randomEvent(next, i);
    const bound = writer.bound(e);
    const at = 100; // not at the start: offsets must be honoured
    const end = writer.write(e, buf, at);
    const want = framedByAvsc(e);
    assert.ok(end - at <= bound, `event ${i}: ${end - at} bytes over its bound ${bound}`);
    assert.deepEqual(buf.subarray(at, end), want, `event ${i} differs from avsc`);
  }
});

test('what it writes decodes with the schema to the same record', () => {
  const writer = new StateChangeWriter(SCHEMA_ID, type);
  const e = randomEvent(rng(7), 1);
  const buf = Buffer.alloc(writer.bound(e));
  const end = writer.write(e, buf, 0);
  assert.deepEqual(
    type.fromBuffer(buf.subarray(5, end)),
    type.fromBuffer(type.toBuffer(toAvro(e))),
  );
});

test('an unknown TCP state is refused, as avsc refuses it', () => {
  const writer = new StateChangeWriter(SCHEMA_ID, type);
  const e = { ...randomEvent(rng(3), 1), newState: 'SYN-LOST' } as unknown as TcpEvent;
  assert.throws(() => writer.write(e, Buffer.alloc(writer.bound(e)), 0), /SYN-LOST/);
  assert.throws(() => framedByAvsc(e));
});

test('a schema whose fields differ from what it writes is refused at construction', () => {
  const schema = JSON.parse(loadValueSchema().text);
  const added = { ...schema, fields: [...schema.fields, { name: 'x', type: 'long', default: 0 }] };
  assert.throws(() => new StateChangeWriter(1, avro.Type.forSchema(added)), /fields differ/);
  const reordered = {
    ...schema,
    fields: [schema.fields[1], schema.fields[0], ...schema.fields.slice(2)],
  };
  assert.throws(() => new StateChangeWriter(1, avro.Type.forSchema(reordered)), /fields differ/);
  const retyped = {
    ...schema,
    fields: schema.fields.map((f: { name: string }) =>
      f.name === 'pid' ? { ...f, type: 'long' } : f,
    ),
  };
  assert.throws(() => new StateChangeWriter(1, avro.Type.forSchema(retyped)), /fields differ/);
});

test('a value its Avro type cannot hold is refused, never written wrong or looped on', () => {
  const writer = new StateChangeWriter(SCHEMA_ID, type);
  const base = randomEvent(rng(11), 1);
  const bad: Partial<TcpEvent>[] = [
    { segsOut: Infinity },
    { segsIn: NaN },
    { uid: 1.5 },
    { seq: 2 ** 53 },
    { sockInode: -(2 ** 53) },
    { cgroupId: 2n ** 60n },
    { timeNs: 2n ** 63n },
    { localPort: 2 ** 31 },
    { pid: 4294967295 },
    { tid: 0.5 },
  ];
  for (const change of bad) {
    const e = { ...base, ...change };
    assert.throws(() => writer.write(e, Buffer.alloc(writer.bound(e)), 0), RangeError);
    assert.throws(() => framedByAvsc(e), Error, `avsc takes ${Object.keys(change)}`);
  }
});

test('a lone surrogate is written as U+FFFD, valid UTF-8', () => {
  const writer = new StateChangeWriter(SCHEMA_ID, type);
  const e = { ...randomEvent(rng(5), 1), comm: 'a\ud800b' };
  const buf = Buffer.alloc(writer.bound(e));
  const end = writer.write(e, buf, 0);
  assert.equal((type.fromBuffer(buf.subarray(5, end)) as { comm: string }).comm, 'a\ufffdb');
});

test('Publisher: an event it cannot encode is a counted gap; a huge one is queued', () => {
  const gap = loadValueSchema(GAP_SCHEMA_FILE).type;
  const publisher = new Publisher({
    kafka: kafkaClientSettings({ brokers: '127.0.0.1:1' }, 'tcpaudit-test-encode', {}),
    topic: 'tcpaudit.test.encode',
    partitions: 1,
    replicationFactor: 1,
    schemaId: SCHEMA_ID,
    valueType: type,
    gapSchemaId: 7,
    gapType: gap,
    origin: { host: 'h', bootId: 'b', runId: 'r1' },
    maxQueued: 1000,
    maxBatch: 100,
    compression: 'none',
    spool: null,
    overflow: 'drop-newest',
    metrics: new ProducerMetrics(),
    log: createLogger('test', 'error'),
  });
  const next = rng(9);
  const events = [0, 1, 2, 3].map((i) => ({ ...randomEvent(next, i + 1), seq: 10 + i }));
  events[1] = { ...events[1], pid: 2 ** 40 };
  events[2] = { ...events[2], comm: 'c'.repeat(300_000) }; // more than a 256 KiB slab
  publisher.enqueue(events);
  const stats = publisher.getStats();
  assert.equal(stats.captured, 4);
  assert.equal(stats.queued, 3, 'the others are queued');
  assert.equal(stats.dropped.user_queue, 1);
  assert.equal(stats.gapsPending, 1);
});
