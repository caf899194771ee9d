import type { Pool, PoolClient } from 'pg';
import { isoFromMicros } from '../common/time';
import { applyChange, type Connection, type StateChange } from './lifecycle';
import { BadMessageError, type Decode } from './decode';
import { loadConnections, saveConnections } from './store-connections';

/** A Kafka record as any source hands it over: a consumer, a Lambda event, a test. */
export interface SourceRecord {
  topic: string;
  partition: number;
  offset: string;
  key: Buffer | null;
  value: Buffer | null;
}

export interface BatchResult {
  inserted: number;
  duplicates: number;
  deadLetters: number;
  connections: number;
}

interface Decoded {
  record: SourceRecord;
  change: StateChange;
}

const RAW_COLUMNS = [
  'conn_id', 'seq', 'host', 'boot_id', 'event_time', 'family', 'local_addr', 'local_port',
  'remote_addr', 'remote_port', 'old_state', 'new_state', 'pid', 'tid', 'comm', 'uid', 'netns',
  'cgroup_id', 'bytes_sent', 'bytes_received', 'segs_out', 'segs_in', 'retransmits', 'srtt_us',
  'kafka_topic', 'kafka_partition', 'kafka_offset',
] as const;

const RAW_TYPES = [
  'text', 'int8', 'text', 'text', 'timestamptz', 'int2', 'inet', 'int4', 'inet', 'int4', 'text',
  'text', 'int4', 'int4', 'text', 'int8', 'int8', 'int8', 'int8', 'int8', 'int8', 'int8', 'int8',
  'int8', 'text', 'int4', 'int8',
];

function rawValues(d: Decoded): unknown[] {
  const c = d.change;
  return [
    c.connId, c.seq, c.host, c.bootId, isoFromMicros(c.timeUs), c.family,
    c.localAddr, c.localPort, c.remoteAddr, c.remotePort, c.oldState, c.newState, c.pid, c.tid,
    c.comm, c.uid, c.netns, c.cgroupId, c.bytesSent, c.bytesReceived, c.segsOut, c.segsIn,
    c.retransmits, c.srttUs, d.record.topic, d.record.partition, d.record.offset,
  ];
}

/** One statement for the whole batch: each column travels as one array parameter. */
async function insertRaw(db: PoolClient, rows: Decoded[]): Promise<Set<string>> {
  const columns = RAW_COLUMNS.map(() => [] as unknown[]);
  for (const row of rows) rawValues(row).forEach((value, i) => columns[i].push(value));
  const params = RAW_TYPES.map((type, i) => `$${i + 1}::${type}[]`).join(', ');
  const result = await db.query<{ conn_id: string; seq: string }>(
    `INSERT INTO tcp_events (${RAW_COLUMNS.join(', ')})
     SELECT * FROM unnest(${params})
     ON CONFLICT (conn_id, seq) DO NOTHING
     RETURNING conn_id, seq`,
    columns,
  );
  return new Set(result.rows.map((r) => `${r.conn_id}/${r.seq}`));
}

async function insertDeadLetters(db: PoolClient, dead: { record: SourceRecord; reason: string }[]) {
  for (const { record, reason } of dead) {
    await db.query(
      `INSERT INTO dead_letters
         (reason, kafka_topic, kafka_partition, kafka_offset, message_key, message_value)
       VALUES ($1, $2, $3, $4, $5, $6)
       ON CONFLICT (kafka_topic, kafka_partition, kafka_offset) DO NOTHING`,
      [reason, record.topic, record.partition, record.offset, record.key, record.value],
    );
  }
}

async function saveOffsets(db: PoolClient, groupId: string, records: SourceRecord[]) {
  const next = new Map<string, { topic: string; partition: number; offset: bigint }>();
  for (const r of records) {
    const key = `${r.topic}/${r.partition}`;
    const offset = BigInt(r.offset) + 1n;
    const seen = next.get(key);
    if (!seen || seen.offset < offset) next.set(key, { topic: r.topic, partition: r.partition, offset });
  }
  for (const { topic, partition, offset } of next.values()) {
    await db.query(
      `INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) VALUES ($1, $2, $3, $4)
       ON CONFLICT (group_id, topic, partition)
       DO UPDATE SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset),
                     updated_at = now()`,
      [groupId, topic, partition, offset.toString()],
    );
  }
}

/**
 * Turns one batch of Kafka records into audit rows in a single transaction: raw state changes,
 * the connections they advance, dead letters, and the next offset of each partition. A record
 * seen before (same connection and sequence) inserts nothing and advances nothing, so replays
 * after a crash or a rebalance leave the tables as they were.
 */
export async function handleBatch(
  records: SourceRecord[],
  pool: Pool,
  decode: Decode,
  groupId: string,
): Promise<BatchResult> {
  const decoded: Decoded[] = [];
  const dead: { record: SourceRecord; reason: string }[] = [];
  for (const record of records) {
    try {
      decoded.push({ record, change: await decode(record.value) });
    } catch (err) {
      if (!(err instanceof BadMessageError)) throw err;
      dead.push({ record, reason: err.message });
    }
  }

  const db = await pool.connect();
  try {
    await db.query('BEGIN');
    const fresh = decoded.length > 0 ? await insertRaw(db, decoded) : new Set<string>();
    const changes = decoded
      .map((d) => d.change)
      .filter((c) => fresh.has(`${c.connId}/${c.seq}`))
      .sort((a, b) => (a.connId === b.connId ? a.seq - b.seq : a.connId < b.connId ? -1 : 1));
    const ids = [...new Set(changes.map((c) => c.connId))];
    const conns = await loadConnections(db, ids);
    for (const change of changes) {
      conns.set(change.connId, applyChange(conns.get(change.connId) ?? null, change));
    }
    await saveConnections(db, [...conns.values()]);
    await insertDeadLetters(db, dead);
    await saveOffsets(db, groupId, records);
    await db.query('COMMIT');
    return {
      inserted: fresh.size,
      duplicates: decoded.length - fresh.size,
      deadLetters: dead.length,
      connections: conns.size,
    };
  } catch (err) {
    await db.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    db.release();
  }
}

export type { Connection };
