/**
 * The producer's Kafka client runs in a worker thread (producer/kafka-thread.ts): requests are
 * answered once, a thread that dies fails what it held and the next request gets a fresh one.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Kafka, logLevel } from 'kafkajs';
import { kafkaClientSettings } from '../common/kafka-config';
import type { WorkerLog } from '../producer/kafka-messages';
import { KafkaThread, wholeMessage, type OutMessage } from '../producer/kafka-thread';
import { endpoints, uniqueName } from './harness';

let brokers = '';
const topic = uniqueName('tcpaudit.test.thread');
const logs: WorkerLog[] = [];

async function readAll(count: number): Promise<{ key: string; value: string }[]> {
  const kafka = new Kafka({ brokers: [brokers], logLevel: logLevel.NOTHING });
  const consumer = kafka.consumer({ groupId: uniqueName('thread-reader') });
  const got: { key: string; value: string }[] = [];
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`read ${got.length} of ${count}`)), 30_000);
    void consumer.run({
      eachMessage: async ({ message }) => {
        got.push({ key: String(message.key), value: String(message.value) });
        if (got.length >= count) {
          clearTimeout(timer);
          resolve();
        }
      },
    });
  });
  await consumer.disconnect();
  return got;
}

describe('Kafka thread', () => {
  let thread: KafkaThread;
  before(async () => {
    brokers = (await endpoints()).env.KAFKA_BROKERS;
    const settings = kafkaClientSettings({ brokers }, 'tcpaudit-test-thread', {});
    thread = new KafkaThread(settings, [{ topic, partitions: 3, replicationFactor: 1 }], (l) =>
      logs.push(l),
    );
  });
  after(() => thread.terminate());

  test('connects, creates the topic and sends a batch with keys and values intact', async () => {
    await thread.connect();
    assert.ok(logs.some((l) => l.source === 'worker' && l.message === 'topic created'));
    // Slices of one shared buffer, as the Publisher's slabs hand them over.
    const texts = Array.from({ length: 500 }, (_, i) => `event-${i}-${'x'.repeat(i % 97)}`);
    const shared = Buffer.from(`head|${texts.join('|')}|tail`);
    let at = 5;
    const batch: OutMessage[] = texts.map((text, i) => {
      const start = at;
      at += Buffer.byteLength(text) + 1;
      return { key: `conn-${i % 50}`, bytes: shared, start, end: at - 1 };
    });
    await thread.send(topic, 'gzip', batch);
    // A thread that died (here: ended from outside) fails nothing later: the next send
    // starts a fresh one, which connects before it sends.
    thread.terminate();
    await thread.send(topic, 'none', [wholeMessage('conn-after', Buffer.from('event-after'))]);
    const got = await readAll(501);
    assert.equal(got.length, 501);
    const byKey = new Map<string, string[]>();
    for (const m of got) byKey.set(m.key, [...(byKey.get(m.key) ?? []), m.value]);
    for (let k = 0; k < 50; k++) {
      const expected = texts.filter((_, i) => i % 50 === k);
      assert.deepEqual(byKey.get(`conn-${k}`), expected, 'each key in order, once');
    }
    assert.deepEqual(byKey.get('conn-after'), ['event-after']);
  });

  test('a send to a refused broker fails with the client error, no hang', async () => {
    const dead = new KafkaThread(
      kafkaClientSettings({ brokers: '127.0.0.1:1' }, 'tcpaudit-test-dead', {}),
      [{ topic, partitions: 1, replicationFactor: 1 }],
      () => undefined,
    );
    try {
      await assert.rejects(dead.send(topic, 'none', [wholeMessage('k', Buffer.from('v'))]), {
        message: /ECONNREFUSED|Connection error|connect/i,
      });
    } finally {
      dead.terminate();
    }
  });
});
