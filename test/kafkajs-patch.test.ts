/**
 * patches/kafkajs+2.2.4.patch: applied, and the batch encoding it adds writes exactly the bytes
 * of kafkajs' own per-record path, which stays in the package for messages it does not take.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

/* eslint-disable @typescript-eslint/no-require-imports */
interface Encoded {
  buffer: Buffer;
}
type Message = { key?: unknown; value?: unknown; headers?: object; timestamp?: string };
const src = 'kafkajs/src/';
const Record = require(`${src}protocol/recordBatch/record/v0`) as (m: object) => Encoded;
const { RecordBatch } = require(`${src}protocol/recordBatch/v0`) as {
  RecordBatch: (o: object) => Promise<Encoded>;
};
const { Types } = require(`${src}protocol/message/compression`) as {
  Types: Record<string, number>;
};
const group = require(`${src}producer/groupMessagesPerPartition`) as (o: object) => object;
let encodeRecords: ((m: Message[]) => { count: number; encoder: Encoded } | null) | undefined;
try {
  encodeRecords = require(`${src}protocol/recordBatch/record/v0/encodeRecords`);
} catch {
  encodeRecords = undefined;
}

/** A deterministic generator, so a failure replays. */
function random(seed: number) {
  let x = seed;
  return (n: number) => {
    x = (x * 1103515245 + 12345) % 2147483648;
    return x % n;
  };
}

function messages(seed: number, count: number): Message[] {
  const rnd = random(seed);
  const out: Message[] = [];
  for (let i = 0; i < count; i++) {
    const key = [
      null,
      undefined,
      `c0ffee-${rnd(1e9)}`,
      'ключ-€-' + 'k'.repeat(rnd(200)),
      Buffer.from(Array.from({ length: rnd(64) }, () => rnd(256))),
    ][rnd(5)];
    const value = [
      null,
      Buffer.alloc(rnd(300), rnd(256)),
      Buffer.alloc(rnd(20_000), 7),
      'välue-' + 'v'.repeat(rnd(400)),
    ][rnd(4)];
    out.push({ key, value });
  }
  return out;
}

describe('kafkajs patch', () => {
  test('is applied (npm postinstall runs patch-package)', () => {
    assert.equal(typeof encodeRecords, 'function', 'encodeRecords.js missing: patch not applied');
  });

  test('one buffer per batch writes the stock per-record bytes exactly', async () => {
    for (const [seed, count] of [
      [1, 1],
      [2, 5000],
      [3, 127],
      [4, 129],
      [5, 16_384],
    ]) {
      const batch = messages(seed, count);
      const encoded = encodeRecords!(batch);
      assert.ok(encoded, 'plain messages take the new path');
      const records = batch.map((m, i) => Record({ ...m, offsetDelta: i, timestampDelta: 0 }));
      const common = { firstTimestamp: 1, maxTimestamp: 1, lastOffsetDelta: count - 1 };
      const stock = await RecordBatch({ ...common, compression: Types.None, records });
      const fast = await RecordBatch({
        ...common,
        compression: Types.None,
        records: [],
        encodedRecords: encoded,
      });
      assert.equal(Buffer.compare(fast.buffer, stock.buffer), 0, `seed ${seed}, ${count} msgs`);
    }
  });

  test('compressed batches carry the same records', async () => {
    const batch = messages(9, 2000);
    const records = batch.map((m, i) => Record({ ...m, offsetDelta: i, timestampDelta: 0 }));
    const common = { firstTimestamp: 1, maxTimestamp: 1, lastOffsetDelta: 1999 };
    const stock = await RecordBatch({ ...common, compression: Types.GZIP, records });
    const fast = await RecordBatch({
      ...common,
      compression: Types.GZIP,
      records: [],
      encodedRecords: encodeRecords!(batch),
    });
    // gzip output is deterministic for equal input at equal settings.
    assert.equal(Buffer.compare(fast.buffer, stock.buffer), 0);
  });

  test('messages with headers, timestamps or other key types keep the stock path', () => {
    assert.equal(encodeRecords!([{ key: 'a', value: 'b', headers: { h: '1' } }]), null);
    assert.equal(encodeRecords!([{ key: 'a', value: 'b', timestamp: '1700000000000' }]), null);
    assert.equal(
      encodeRecords!([
        { key: 'a', value: 'b' },
        { key: 5, value: 'b' },
      ]),
      null,
    );
    assert.ok(encodeRecords!([{ key: 'a', value: 'b', headers: {} }]));
  });

  test('grouping by partition keeps every message once, in order within its partition', () => {
    const batch = messages(11, 10_000).map((m, i) => ({ ...m, i }));
    const partitionMetadata = [0, 1, 2, 3, 4, 5].map((partitionId) => ({ partitionId }));
    const partitioner = ({ message }: { message: { i: number } }) => (message.i * 7919) % 6;
    const grouped = group({
      topic: 't',
      partitionMetadata,
      messages: batch,
      partitioner,
    }) as Record<string, { i: number }[]>;
    const seen: number[] = [];
    for (const [partition, list] of Object.entries(grouped)) {
      for (let j = 0; j < list.length; j++) {
        assert.equal(partitioner({ message: list[j] }), Number(partition));
        if (j > 0) assert.ok(list[j].i > list[j - 1].i, 'order within a partition');
        seen.push(list[j].i);
      }
    }
    assert.deepEqual(
      seen.sort((a, b) => a - b),
      batch.map((m) => m.i),
    );
  });
});
