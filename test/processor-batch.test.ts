import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { endpoints, uniqueName } from './harness';
import { createRegistry, frame } from '../common/registry';
import { registryDecoder, type Decode } from '../processor/decode';
import { handleBatch, type SourceRecord } from '../processor/handler';
import type { StateChange } from '../processor/lifecycle';
import { expireConnections } from '../processor/expiry';
import { dropExpiredPartitions, ensurePartitions } from '../processor/partitions';
import {
  checkExact,
  encodeEvent,
  freshDatabase,
  quiet,
  registerSchemas,
  syntheticStream,
  testChange,
  type Schemas,
  type TestDatabase,
} from './processor-helpers';

let db: TestDatabase;
let schemas: Schemas;
let decode: Decode;
let topic: string;

before(async () => {
  const stack = await endpoints();
  db = await freshDatabase(stack.env);
  topic = uniqueName('tcpaudit.batch');
  schemas = await registerSchemas(stack.env.SCHEMA_REGISTRY_URL, topic);
  decode = registryDecoder(createRegistry(stack.env.SCHEMA_REGISTRY_URL));
});

after(async () => {
  await db?.drop();
});

/** The stream's changes as the records of one partition, at offsets 0, 1, 2, ... */
const recordsOf = (changes: StateChange[], partition: number): SourceRecord[] =>
  changes.map((c, i) => ({
    topic,
    partition,
    offset: String(i),
    key: Buffer.from(c.connId),
    value: encodeEvent(schemas, c),
  }));

test('batches with replays: exact rows, no raw event twice', async () => {
  const stream = syntheticStream(400, 3, Date.now() * 1000, 'x');
  const records = recordsOf(stream.changes, 0);
  let duplicates = 0;
  for (let i = 0; i < records.length;) {
    const size = 1 + ((i * 7919) % 300);
    const batch = records.slice(i, i + size);
    await handleBatch(batch, db.pool, decode, 'g');
    // Every third batch is delivered again, partly overlapping the next one.
    if ((i / 7) % 3 < 1)
      duplicates += (
        await handleBatch(records.slice(Math.max(0, i - 50), i + size), db.pool, decode, 'g')
      ).duplicates;
    i += size;
  }
  assert.ok(duplicates > 0, 'the replays were seen as duplicates');
  assert.deepEqual(await checkExact(db.pool, stream), []);
  const { rows } = await db.pool.query(
    "SELECT next_offset FROM consumer_offsets WHERE group_id = 'g'",
  );
  assert.equal(Number(rows[0].next_offset), records.length);
});

test('changes out of sequence order within a batch are applied in order', async () => {
  const stream = syntheticStream(12, 1, Date.now() * 1000, 'o');
  // Each connection's changes reversed within the batch: the handler must put them back.
  const reversed = [...stream.changes].reverse();
  await handleBatch(recordsOf(reversed, 2), db.pool, decode, 'reversed');
  const { rows } = await db.pool.query(
    'SELECT conn_id, states, has_gap FROM connections WHERE conn_id = ANY($1::text[])',
    [[...stream.expected.keys()]],
  );
  assert.equal(rows.length, stream.expected.size);
  for (const row of rows) {
    assert.deepEqual(row.states, stream.expected.get(row.conn_id)!.states);
    assert.equal(row.has_gap, false);
  }
});

test('a batch that carries an event twice stores it once, from its first copy', async () => {
  const stream = syntheticStream(20, 1, Date.now() * 1000, 'y');
  const records = recordsOf(stream.changes, 1);
  // A producer's resend: the fifth record again, later in the same batch.
  const resent = { ...records[4], offset: String(records.length) };
  const result = await handleBatch([...records, resent], db.pool, decode, 'twice');
  assert.equal(result.inserted, records.length);
  assert.equal(result.duplicates, 1);
  const { connId, seq } = stream.changes[4];
  const stored = await db.pool.query(
    'SELECT kafka_offset FROM tcp_events WHERE conn_id = $1 AND seq = $2',
    [connId, seq],
  );
  assert.deepEqual(
    stored.rows.map((r) => Number(r.kafka_offset)),
    [4],
  );
  const conn = await db.pool.query('SELECT event_count FROM connections WHERE conn_id = $1', [
    connId,
  ]);
  assert.equal(conn.rows[0].event_count, stream.expected.get(connId)!.events);
});

test('capture gaps: stored once, and flag overlapping connections of that run whichever comes first', async () => {
  const base = Date.now() * 1000;
  const ev = (connId: string, seq: number, oldState: string, newState: string) =>
    encodeEvent(
      schemas,
      testChange({
        connId,
        seq,
        host: 'gaphost',
        bootId: 'gb',
        timeUs: base + seq,
        localPort: 1000 + seq,
        oldState,
        newState,
        segsIn: 1,
      }),
    );
  const gap = frame(
    schemas.gapId,
    schemas.gapType.toBuffer({
      host: 'gaphost',
      boot_id: 'gb',
      run_id: 'r1',
      seq_from: 20,
      seq_to: 25,
      count: 6,
      reason: 'KERNEL_RING_FULL',
      detected_at: base,
    }),
  );
  const rec = (t: string, offset: number, value: Buffer): SourceRecord => ({
    topic: t,
    partition: 0,
    offset: String(offset),
    key: null,
    value,
  });
  // spans the gap, before the gap arrives / ends before the gap / another run.
  await handleBatch(
    [
      rec(topic, 1000, ev('gb-r1-1', 10, 'CLOSED', 'SYN-SENT')),
      rec(topic, 1001, ev('gb-r1-2', 11, 'CLOSED', 'SYN-SENT')),
      rec(topic, 1002, ev('gb-r1-2', 12, 'SYN-SENT', 'CLOSED')),
      rec(topic, 1003, ev('gb-r2-3', 13, 'CLOSED', 'SYN-SENT')),
    ],
    db.pool,
    decode,
    'g2',
  );
  const r1 = await handleBatch([rec(`${topic}.gaps`, 0, gap)], db.pool, decode, 'g2');
  const r2 = await handleBatch([rec(`${topic}.gaps`, 0, gap)], db.pool, decode, 'g2');
  assert.equal(r1.gaps, 1);
  assert.equal(r2.gaps, 0, 'a redelivered gap is stored once');
  // A connection of that run whose events come after the gap record: flagged on arrival.
  await handleBatch(
    [rec(topic, 1004, ev('gb-r1-4', 30, 'CLOSED', 'SYN-SENT'))],
    db.pool,
    decode,
    'g2',
  );
  await handleBatch(
    [rec(topic, 1005, ev('gb-r1-5', 18, 'CLOSED', 'SYN-SENT'))],
    db.pool,
    decode,
    'g2',
  );
  const { rows } = await db.pool.query(
    "SELECT conn_id, has_gap FROM connections WHERE host = 'gaphost' ORDER BY conn_id",
  );
  assert.deepEqual(
    rows.map((r) => [r.conn_id, r.has_gap]),
    [
      ['gb-r1-1', true],
      ['gb-r1-2', false],
      ['gb-r1-4', false],
      ['gb-r1-5', true],
      ['gb-r2-3', false],
    ],
  );
  const stored = await db.pool.query(
    'SELECT host, run_id, seq_from, seq_to, lost, reason FROM capture_gaps',
  );
  assert.deepEqual(stored.rows, [
    {
      host: 'gaphost',
      run_id: 'r1',
      seq_from: '20',
      seq_to: '25',
      lost: '6',
      reason: 'KERNEL_RING_FULL',
    },
  ]);
});

test('expiry: a reboot or a silent host expires open connections; a quiet one on a live host stays open', async () => {
  const day = 86_400_000_000;
  const old = (Date.now() - 2 * 3600_000) * 1000;
  const mk = (connId: string, host: string, boot: string, t: number, seq: number) =>
    encodeEvent(
      schemas,
      testChange({
        connId,
        seq,
        host,
        bootId: boot,
        timeUs: t,
        localPort: 5000 + seq,
        oldState: 'CLOSED',
        newState: 'SYN-SENT',
      }),
    );
  const rec = (offset: number, value: Buffer): SourceRecord => ({
    topic,
    partition: 5,
    offset: String(offset),
    key: null,
    value,
  });
  await handleBatch(
    [
      rec(1, mk('ea-1-1', 'hreboot', 'ea', old, 1)),
      rec(2, mk('eb-1-1', 'hreboot', 'eb', old + 1000, 1)),
      rec(3, mk('q-1-1', 'hlive', 'q', old, 1)),
      rec(4, mk('q-1-2', 'hlive', 'q', Date.now() * 1000, 2)),
      rec(5, mk('s-1-1', 'hsilent', 's', old, 1)),
    ],
    db.pool,
    decode,
    'g3',
  );
  // The silent host was last processed long ago, too.
  await db.pool.query(
    "UPDATE host_runs SET last_seen_at = now() - interval '2 hours' WHERE host = 'hsilent'",
  );
  const counts = await expireConnections(db.pool, 3600);
  const { rows } = await db.pool.query(
    "SELECT conn_id, outcome, expire_reason FROM connections WHERE host IN ('hreboot','hlive','hsilent') ORDER BY conn_id",
  );
  assert.deepEqual(
    rows.map((r) => [r.conn_id, r.outcome, r.expire_reason]),
    [
      ['ea-1-1', 'expired', 'reboot'],
      ['eb-1-1', 'open', null],
      ['q-1-1', 'open', null],
      ['q-1-2', 'open', null],
      ['s-1-1', 'expired', 'host-silent'],
    ],
  );
  assert.deepEqual(counts, { reboot: 1, continued: 0, 'host-silent': 1 });
  void day;
});

test('partitions: made ahead, old ones dropped by retention, open connections kept', async () => {
  const now = Date.now();
  await ensurePartitions(db.pool, quiet, 3, 40, now);
  const names = async () =>
    (
      await db.pool.query(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'connections'",
      )
    ).rows.map((r) => r.relname as string);
  const before = await names();
  assert.ok(before.length >= 44, `daily partitions made: ${before.length}`);
  const ahead = new Date(now + 3 * 86_400_000).toISOString().slice(0, 10).replace(/-/g, '');
  assert.ok(before.includes(`connections_p${ahead}`));
  const oldUs = (now - 35 * 86_400_000) * 1000;
  const mk = (connId: string, oldState: string, newState: string, seq: number) =>
    encodeEvent(
      schemas,
      testChange({
        connId,
        seq,
        host: 'hret',
        bootId: 'r',
        timeUs: oldUs + seq,
        localPort: 7000,
        oldState,
        newState,
        segsIn: 1,
      }),
    );
  await handleBatch(
    [
      { topic, partition: 6, offset: '1', key: null, value: mk('r-1-1', 'CLOSED', 'SYN-SENT', 1) },
      { topic, partition: 6, offset: '2', key: null, value: mk('r-1-1', 'SYN-SENT', 'CLOSED', 2) },
      { topic, partition: 6, offset: '3', key: null, value: mk('r-1-2', 'CLOSED', 'LISTEN', 3) },
    ],
    db.pool,
    decode,
    'g4',
  );
  const dropped = await dropExpiredPartitions(db.pool, quiet, 30, now);
  assert.ok(dropped.length >= 2 * 9, `dropped ${dropped.length}`);
  const { rows } = await db.pool.query(
    "SELECT conn_id, outcome FROM connections WHERE host = 'hret' ORDER BY conn_id",
  );
  assert.deepEqual(
    rows,
    [{ conn_id: 'r-1-2', outcome: 'open' }],
    'the closed one went with its day; the open listener stayed',
  );
  const raw = await db.pool.query("SELECT count(*)::int AS n FROM tcp_events WHERE host = 'hret'");
  assert.equal(raw.rows[0].n, 0);
});
