import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { endpoints } from './harness';
import { BinaryRows, copyIn, UnencodableError } from '../processor/copy-binary';
import { handleBatch, isDataError, type SourceRecord } from '../processor/handler';
import type { Decode } from '../processor/decode';
import { freshDatabase, syntheticStream, type TestDatabase } from './processor-helpers';

let db: TestDatabase;

before(async () => {
  db = await freshDatabase((await endpoints()).env);
});

after(async () => {
  await db?.drop();
});

const ADDRESSES = [
  '10.0.0.1',
  '0.0.0.0',
  '255.255.255.255',
  '::',
  '::1',
  '1::',
  '::ffff:10.9.0.2',
  '::10.9.0.2',
  '1:2:3:4:5:6:1.2.3.4',
  '1:2:3:4:5:6:7:8',
  'ABCD::EF',
  'fe80::1:0:0:2',
  '2001:db8::ff00:42:8329',
  '2001:0db8:0000:0000:0000:ff00:0042:8329',
];

test('binary COPY stores what text input stores (addresses, numbers, times, text)', async () => {
  const client = await db.pool.connect();
  try {
    await client.query(`CREATE TEMP TABLE copied (i int4, a inet, n int8, t timestamptz,
      x text, s text[], f float8, b bool, h int2)`);
    const ints = [
      0,
      1,
      -1,
      2 ** 31,
      -(2 ** 32) - 7,
      Number.MAX_SAFE_INTEGER,
      Number.MIN_SAFE_INTEGER,
    ];
    const times = [1, 999_999, 1_700_000_000_123_456, 946_684_800_000_000, 946_684_799_999_999];
    const texts = ['plain', 'tab\there', 'new\nline', 'back\\slash', 'ünïcødé ☃', ''];
    const rows = new BinaryRows();
    const count = Math.max(ADDRESSES.length, ints.length, times.length, texts.length);
    for (let i = 0; i < count; i++) {
      rows
        .row(9)
        .int4(i)
        .inet(ADDRESSES[i % ADDRESSES.length])
        .int8(ints[i % ints.length])
        .micros(i === 3 ? null : times[i % times.length])
        .text(texts[i % texts.length])
        .textArray(['CLOSED', 'SYN-SENT', `q"uo\\te ${i}`])
        .float8(i === 2 ? null : i / 3)
        .bool(i % 2 === 0)
        .int2(i - 5);
    }
    await copyIn(client, 'copied', rows);
    const { rows: got } = await client.query(
      `SELECT i, host(a) AS host, family(a) AS fam, n::text AS n,
         (extract(epoch FROM t) * 1000000)::int8::text AS us, x, s, f, b, h FROM copied ORDER BY i`,
    );
    assert.equal(got.length, count);
    for (const r of got) {
      const i = r.i as number;
      const address = ADDRESSES[i % ADDRESSES.length];
      const text = await client.query(
        `SELECT host($1::inet) AS host, family($1::inet) AS fam,
           (SELECT a = $1::inet FROM copied WHERE i = $2) AS same`,
        [address, i],
      );
      assert.equal(text.rows[0].same, true, address);
      assert.equal(r.host, text.rows[0].host, address);
      assert.equal(r.fam, text.rows[0].fam, address);
      assert.equal(r.n, String(ints[i % ints.length]));
      assert.equal(r.us, i === 3 ? null : String(times[i % times.length]));
      assert.equal(r.x, texts[i % texts.length]);
      assert.deepEqual(r.s, ['CLOSED', 'SYN-SENT', `q"uo\\te ${i}`]);
      assert.equal(r.f, i === 2 ? null : i / 3);
      assert.equal(r.b, i % 2 === 0);
      assert.equal(r.h, i - 5);
    }
  } finally {
    client.release();
  }
});

test('binary COPY refuses what it cannot write exactly, with the SQLSTATE the server gives', () => {
  const refusals: [() => void, string][] = [
    [() => new BinaryRows().row(1).inet('fe80::1%eth0'), '22P02'],
    [() => new BinaryRows().row(1).inet('1.2.3.4/24'), '22P02'],
    [() => new BinaryRows().row(1).int4(2 ** 31), '22003'],
    [() => new BinaryRows().row(1).int2(1.5), '22P02'],
    [() => new BinaryRows().row(1).int8(2 ** 63), '22003'],
  ];
  for (const [write, code] of refusals) {
    assert.throws(write, (err: unknown) => {
      assert.ok(err instanceof UnencodableError);
      assert.equal(err.code, code);
      assert.ok(isDataError(err), 'handleBatch isolates the record');
      return true;
    });
  }
});

test('two writers of one batch at once: both commit, every event stored once', async () => {
  const stream = syntheticStream(300, 2, Date.now() * 1000, 'cc');
  const records: SourceRecord[] = stream.changes.map((c, i) => ({
    topic: 'copy.race',
    partition: 0,
    offset: String(i),
    key: Buffer.from(c.connId),
    value: Buffer.from(String(i)),
  }));
  const decode: Decode = (value) => ({ kind: 'event', change: stream.changes[Number(value)] });
  // Overlapping slices, as two consumers of one partition during a rebalance would see them.
  const [a, b] = await Promise.all([
    handleBatch(records.slice(0, 700), db.pool, decode, 'race-a'),
    handleBatch(records.slice(300), db.pool, decode, 'race-b'),
  ]);
  assert.equal(a.inserted + b.inserted, records.length);
  const { rows } = await db.pool.query(
    `SELECT count(*)::int AS n, count(DISTINCT (conn_id, seq))::int AS d FROM tcp_events
      WHERE kafka_topic = 'copy.race'`,
  );
  assert.deepEqual(rows[0], { n: records.length, d: records.length });
  const again = await handleBatch(records, db.pool, decode, 'race-c');
  assert.equal(again.inserted, 0);
  assert.equal(again.duplicates, records.length);
});
