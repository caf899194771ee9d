import type { Pool, PoolClient } from 'pg';
import { isoFromMicros } from '../common/time';
import { advance, runIdOf, startConnection, type Connection, type StateChange } from './lifecycle';
import { BadMessageError, type CaptureGap, type Decode } from './decode';
import { loadConnections, prepareSession, saveConnections } from './store-connections';
import { ConcurrentInsertError, insertEvents } from './store-events';

/** A Kafka record as any source hands it over: a consumer, a Lambda event, a test. */
export interface SourceRecord {
  topic: string;
  partition: number;
  offset: string;
  key: Buffer | null;
  value: Buffer | null;
  headers?: Record<string, Buffer | string | undefined>;
}

/** A message the processor cannot turn into rows, with the reason. */
export interface DeadLetter {
  record: SourceRecord;
  reason: string;
}

export interface BatchOptions {
  /**
   * Told when PostgreSQL refused a batch for its data (see isDataError) and the batch is being
   * split to find the record(s) at fault; for logging.
   */
  onDataError?: (err: Error, records: number) => void;
  /**
   * Publishes dead letters (to '<topic>.dlq') before the transaction commits. It may run again
   * for the same records after a crash: the DLQ topic is at least once, the table exactly once.
   */
  deadLetterSink?: (letters: DeadLetter[]) => Promise<void>;
}

export interface BatchResult {
  inserted: number;
  duplicates: number;
  deadLetters: number;
  gaps: number;
  connections: number;
  /** Kernel times (µs) of the events this batch inserted, for the end-to-end histogram. */
  eventTimesUs: number[];
  /** Wall-clock times (ms) the batch started and its transaction committed. */
  startedAtMs: number;
  committedAtMs: number;
  /** Milliseconds spent in each step of the batch, in order (see STAGES). */
  stagesMs: Record<Stage, number>;
}

/** The steps of a batch, as `tcpaudit process --profile` reports them. */
export const STAGES = [
  'decode',
  'begin',
  'raw',
  'load',
  'lifecycle',
  'upsert',
  'gaps',
  'offsets',
  'commit',
  'hostRuns',
] as const;
export type Stage = (typeof STAGES)[number];

export function emptyStages(): Record<Stage, number> {
  return Object.fromEntries(STAGES.map((s) => [s, 0])) as Record<Stage, number>;
}

/** Adds the time since the last mark to a stage. */
function stopwatch(stages: Record<Stage, number>) {
  let last = performance.now();
  return (stage: Stage) => {
    const now = performance.now();
    stages[stage] += now - last;
    last = now;
  };
}

interface DecodedEvent {
  record: SourceRecord;
  change: StateChange;
}

interface DecodedGap {
  record: SourceRecord;
  gap: CaptureGap;
}

/** jsonb and text refuse NUL: a header or a reason quoting a message must not carry one. */
const noNul = (text: string) => text.replace(/\u0000/g, '\ufffd');

function headersJson(h: SourceRecord['headers']): Record<string, string> | null {
  if (!h) return null;
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(h)) if (v !== undefined) out[noNul(k)] = noNul(v.toString());
  return out;
}

/**
 * PostgreSQL refused a row for what it holds, not because it is away: SQLSTATE class 22 (data
 * exception), 23 (integrity constraint violation), or 54000 (an index entry too large). Retrying
 * the same batch would fail the same way forever. Classified by SQLSTATE, never by message text.
 */
export function isDataError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && (/^2[23][0-9A-Z]{3}$/.test(code) || code === '54000');
}

/** Whether `bytes` are `text` in UTF-8; ASCII is compared in place, with no buffer per record. */
function sameText(bytes: Buffer, text: string): boolean {
  if (bytes.length !== text.length) return bytes.equals(Buffer.from(text, 'utf8'));
  for (let i = 0; i < text.length; i++) {
    const ch = text.charCodeAt(i);
    if (ch > 0x7f) return bytes.equals(Buffer.from(text, 'utf8'));
    if (bytes[i] !== ch) return false;
  }
  return true;
}

/** The record's key must be its conn_id: the key is what keeps a connection on one partition. */
function keyMismatch(record: SourceRecord, connId: string): string | null {
  if (record.key === null || record.key === undefined) return null; // direct callers, tests
  if (sameText(record.key, connId)) return null;
  const key = record.key.toString('utf8');
  return (
    `key ${JSON.stringify(key.length > 100 ? `${key.slice(0, 100)}...` : key)} is not the ` +
    `record's conn_id ${JSON.stringify(connId)}: messages of one connection must share its key`
  );
}

async function insertDeadLetters(db: PoolClient, dead: DeadLetter[]) {
  if (dead.length === 0) return;
  await db.query(
    `INSERT INTO dead_letters
       (reason, kafka_topic, kafka_partition, kafka_offset, message_key, message_value, message_headers)
     SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::int8[], $5::bytea[], $6::bytea[], $7::jsonb[])
     ON CONFLICT (kafka_topic, kafka_partition, kafka_offset) DO NOTHING`,
    [
      dead.map((d) => noNul(d.reason)),
      dead.map((d) => d.record.topic),
      dead.map((d) => d.record.partition),
      dead.map((d) => d.record.offset),
      dead.map((d) => d.record.key),
      dead.map((d) => d.record.value),
      dead.map((d) => JSON.stringify(headersJson(d.record.headers))),
    ],
  );
}

/**
 * Whether gap g (of the connection's host run) may have hidden some of connection c's events:
 * by sequence numbers when the gap has them, else (seq_from -1: lost before numbers were
 * assigned) by time, for every connection open when the gap was noticed.
 */
const GAP_COVERS_CONNECTION = `CASE WHEN g.seq_from < 0
  THEN c.opened_at <= g.detected_at AND (c.closed_at IS NULL OR c.closed_at >= g.detected_at)
  ELSE c.first_seq <= g.seq_to AND (c.last_seq >= g.seq_from OR c.closed_at IS NULL) END`;

/**
 * Stores capture gaps and flags the connections of that host and run whose sequence range
 * overlaps the missing numbers (an open connection's range runs on to infinity). Gaps of
 * unnumbered kernel loss (seq -1) flag the connections open at the time the loss was noticed.
 */
async function insertGaps(db: PoolClient, gaps: DecodedGap[]): Promise<number> {
  if (gaps.length === 0) return 0;
  const g = gaps.map((d) => d.gap);
  const result = await db.query(
    `INSERT INTO capture_gaps (host, boot_id, run_id, seq_from, seq_to, lost, reason, detected_at,
       kafka_topic, kafka_partition, kafka_offset)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[],
       $7::text[], $8::timestamptz[], $9::text[], $10::int4[], $11::int8[])
     ON CONFLICT DO NOTHING`,
    [
      g.map((x) => x.host),
      g.map((x) => x.bootId),
      g.map((x) => x.runId),
      g.map((x) => x.seqFrom),
      g.map((x) => x.seqTo),
      g.map((x) => x.count),
      g.map((x) => x.reason),
      g.map((x) => isoFromMicros(x.detectedUs)),
      gaps.map((d) => d.record.topic),
      gaps.map((d) => d.record.partition),
      gaps.map((d) => d.record.offset),
    ],
  );
  await db.query(
    `UPDATE connections c SET has_gap = true, updated_at = now()
       FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::timestamptz[])
         AS g(host, run_id, seq_from, seq_to, detected_at)
      WHERE c.host = g.host AND c.run_id = g.run_id AND NOT c.has_gap
        AND ${GAP_COVERS_CONNECTION}`,
    [
      g.map((x) => x.host),
      g.map((x) => x.runId),
      g.map((x) => x.seqFrom),
      g.map((x) => x.seqTo),
      g.map((x) => isoFromMicros(x.detectedUs)),
    ],
  );
  return result.rowCount ?? 0;
}

/** A gap stored before the events it concerns were: flag the connections this batch wrote. */
async function flagKnownGaps(db: PoolClient, conns: Connection[]) {
  // Gaps are rare: the UPDATE looks up every connection of the batch, so it runs only when a
  // gap of one of the batch's host runs exists (an index look-up in a small table).
  const runs = new Map<string, Connection>();
  for (const c of conns) runs.set(`${c.host}\u0000${c.runId}`, c);
  const known = await db.query(
    `SELECT 1 FROM capture_gaps g JOIN unnest($1::text[], $2::text[]) AS r(host, run_id)
        ON g.host = r.host AND g.run_id = r.run_id LIMIT 1`,
    [[...runs.values()].map((c) => c.host), [...runs.values()].map((c) => c.runId)],
  );
  if (known.rows.length === 0) return;
  await db.query(
    `UPDATE connections c SET has_gap = true
       FROM capture_gaps g
      WHERE c.conn_id = ANY($1::text[]) AND NOT c.has_gap AND g.host = c.host AND g.run_id = c.run_id
        AND ${GAP_COVERS_CONNECTION}`,
    [conns.map((c) => c.connId)],
  );
}

/** Whether Kafka offset `a` comes after `b`: both decimal text, no sign or leading zeros. */
const offsetAfter = (a: string, b: string) => (a.length === b.length ? a > b : a.length > b.length);

async function saveOffsets(db: PoolClient, groupId: string, records: SourceRecord[]) {
  const last = new Map<string, SourceRecord>();
  // A consumer's batch is one partition: its key is made once, not once per record.
  let key = '';
  let previous: SourceRecord | undefined;
  for (const r of records) {
    if (r.topic !== previous?.topic || r.partition !== previous.partition)
      key = `${r.topic}/${r.partition}`;
    previous = r;
    const seen = last.get(key);
    if (!seen || offsetAfter(r.offset, seen.offset)) last.set(key, r);
  }
  const rows = [...last.values()].map((r) => ({
    topic: r.topic,
    partition: r.partition,
    offset: BigInt(r.offset) + 1n,
  }));
  await db.query(
    `INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)
     SELECT $1, * FROM unnest($2::text[], $3::int4[], $4::int8[])
     ON CONFLICT (group_id, topic, partition)
     DO UPDATE SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset),
                   updated_at = now()`,
    [
      groupId,
      rows.map((r) => r.topic),
      rows.map((r) => r.partition),
      rows.map((r) => r.offset.toString()),
    ],
  );
}

/** Host runs seen in this batch; monotonic, so written after the commit (see migration 002). */
async function touchHostRuns(pool: Pool, changes: StateChange[]) {
  type Run = { host: string; boot: string; run: string; min: number; max: number };
  const runs = new Map<string, Run>();
  // Changes come grouped by connection: look a connection's run up once, not per change.
  let seen: Run | undefined;
  let connId = '';
  for (const c of changes) {
    if (c.connId !== connId || !seen || c.host !== seen.host || c.bootId !== seen.boot) {
      connId = c.connId;
      const run = runIdOf(c.connId);
      const key = `${c.host}\u0000${c.bootId}\u0000${run}`;
      const known: Run = runs.get(key) ?? {
        host: c.host,
        boot: c.bootId,
        run,
        min: Infinity,
        max: 0,
      };
      runs.set(key, known);
      seen = known;
    }
    if (c.timeUs < seen.min) seen.min = c.timeUs;
    if (c.timeUs > seen.max) seen.max = c.timeUs;
  }
  if (runs.size === 0) return;
  const r = [...runs.values()].sort((a, b) =>
    a.host + a.boot + a.run < b.host + b.boot + b.run ? -1 : 1,
  );
  await pool.query(
    `INSERT INTO host_runs (host, boot_id, run_id, first_event_at, last_event_at)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[])
     ON CONFLICT (host, boot_id, run_id) DO UPDATE SET
       first_event_at = LEAST(host_runs.first_event_at, EXCLUDED.first_event_at),
       last_event_at = GREATEST(host_runs.last_event_at, EXCLUDED.last_event_at),
       last_seen_at = now()`,
    [
      r.map((x) => x.host),
      r.map((x) => x.boot),
      r.map((x) => x.run),
      r.map((x) => isoFromMicros(x.min)),
      r.map((x) => isoFromMicros(x.max)),
    ],
  );
}

/**
 * Turns one batch of Kafka records into audit rows in a single transaction: raw state changes,
 * the connections they advance, capture gaps, dead letters, and the next offset of each
 * partition. A record seen before (same connection, sequence and time) inserts nothing and
 * advances nothing, so replays after a crash or a rebalance leave the tables as they were.
 * No consumer inside: a Kafka consumer, a Lambda event or a test can feed it.
 */
export async function handleBatch(
  records: SourceRecord[],
  pool: Pool,
  decode: Decode,
  groupId: string,
  options: BatchOptions = {},
): Promise<BatchResult> {
  try {
    return await handleRetried(records, pool, decode, groupId, options, null);
  } catch (err) {
    // A record the checks of decode.ts let through but PostgreSQL refuses: split the batch (in
    // offset order, so each half is just a smaller batch) until the refused records stand
    // alone, and dead-letter those. Each half commits on its own; a replay of a committed half
    // after a crash inserts nothing.
    if (!isDataError(err)) throw err;
    options.onDataError?.(err as Error, records.length);
    if (records.length === 1) {
      const { code, message } = err as { code: string; message: string };
      const reason = `database refused the record: SQLSTATE ${code} ${message}`;
      return handleRetried(records, pool, decode, groupId, options, reason);
    }
    const mid = Math.ceil(records.length / 2);
    const a = await handleBatch(records.slice(0, mid), pool, decode, groupId, options);
    const b = await handleBatch(records.slice(mid), pool, decode, groupId, options);
    return mergeResults(a, b);
  }
}

/** Tries of one transaction while another writer keeps storing the same events first. */
const CONCURRENT_TRIES = 3;

/**
 * handleOnce, run again when another transaction stored some of its rows first (see
 * ConcurrentInsertError): the rollback undid everything, and the rerun finds those rows.
 * After CONCURRENT_TRIES it throws, and the caller's own retry takes over.
 */
async function handleRetried(...args: Parameters<typeof handleOnce>): Promise<BatchResult> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await handleOnce(...args);
    } catch (err) {
      if (!(err instanceof ConcurrentInsertError) || attempt === CONCURRENT_TRIES) throw err;
    }
  }
}

function mergeResults(a: BatchResult, b: BatchResult): BatchResult {
  const stagesMs = emptyStages();
  for (const stage of STAGES) stagesMs[stage] = a.stagesMs[stage] + b.stagesMs[stage];
  return {
    inserted: a.inserted + b.inserted,
    duplicates: a.duplicates + b.duplicates,
    deadLetters: a.deadLetters + b.deadLetters,
    gaps: a.gaps + b.gaps,
    connections: a.connections + b.connections,
    eventTimesUs: [...a.eventTimesUs, ...b.eventTimesUs],
    startedAtMs: a.startedAtMs,
    committedAtMs: b.committedAtMs,
    stagesMs,
  };
}

/**
 * The changes a batch stored, by connection, each in sequence order; connections in conn_id
 * order, so two writers of overlapping batches insert new connections in the same order (and
 * cannot deadlock on them) whatever records each batch starts at.
 */
function changesByConnection(stored: { change: StateChange }[]): Map<string, StateChange[]> {
  const lists = new Map<string, StateChange[]>();
  for (const { change } of stored) {
    const list = lists.get(change.connId);
    if (list) list.push(change);
    else lists.set(change.connId, [change]);
  }
  const ordered = new Map<string, StateChange[]>();
  for (const connId of [...lists.keys()].sort()) {
    const list = lists.get(connId)!;
    // Records come in offset order, nearly always sequence order too: sort only when not.
    for (let i = 1; i < list.length; i++) {
      if (list[i].seq < list[i - 1].seq) {
        list.sort((a, b) => a.seq - b.seq);
        break;
      }
    }
    ordered.set(connId, list);
  }
  return ordered;
}

/** One transaction for `records`; `refused` set: the (single) record goes to the dead letters. */
async function handleOnce(
  records: SourceRecord[],
  pool: Pool,
  decode: Decode,
  groupId: string,
  options: BatchOptions,
  refused: string | null,
): Promise<BatchResult> {
  const startedAtMs = Date.now();
  const stagesMs = emptyStages();
  const mark = stopwatch(stagesMs);
  const events: DecodedEvent[] = [];
  const gaps: DecodedGap[] = [];
  const dead: DeadLetter[] = [];
  for (const record of records) {
    if (refused !== null) {
      dead.push({ record, reason: refused });
      continue;
    }
    try {
      const out = decode(record.value);
      const decoded = out instanceof Promise ? await out : out;
      if (decoded.kind === 'event') {
        const mismatch = keyMismatch(record, decoded.change.connId);
        if (mismatch !== null) dead.push({ record, reason: mismatch });
        else events.push({ record, change: decoded.change });
      } else gaps.push({ record, gap: decoded.gap });
    } catch (err) {
      if (!(err instanceof BadMessageError)) throw err;
      dead.push({ record, reason: err.message });
    }
  }
  if (dead.length > 0 && options.deadLetterSink) await options.deadLetterSink(dead);
  mark('decode');

  const db = await pool.connect();
  let conns = new Map<string, Connection>();
  let gapRows = 0;
  let committedAtMs = 0;
  let freshChanges: StateChange[] = [];
  try {
    await prepareSession(db);
    await db.query('BEGIN');
    mark('begin');
    const stored = await insertEvents(db, events);
    mark('raw');
    const byConn = changesByConnection(stored);
    conns = await loadConnections(db, [...byConn.keys()]);
    mark('load');
    const loaded = new Map([...conns.values()].map((c) => [c.connId, c.openedUs]));
    for (const [connId, changes] of byConn) {
      let conn = conns.get(connId);
      if (!conn) conns.set(connId, (conn = startConnection(changes[0])));
      for (const change of changes) {
        advance(conn, change);
        freshChanges.push(change);
      }
    }
    mark('lifecycle');
    await saveConnections(db, [...conns.values()], loaded);
    mark('upsert');
    gapRows = await insertGaps(db, gaps);
    if (conns.size > 0) await flagKnownGaps(db, [...conns.values()]);
    mark('gaps');
    await insertDeadLetters(db, dead);
    await saveOffsets(db, groupId, records);
    mark('offsets');
    await db.query('COMMIT');
    committedAtMs = Date.now();
    mark('commit');
  } catch (err) {
    await db.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    db.release();
  }
  await touchHostRuns(pool, freshChanges).catch(() => undefined);
  mark('hostRuns');
  return {
    inserted: freshChanges.length,
    duplicates: events.length - freshChanges.length,
    deadLetters: dead.length,
    gaps: gapRows,
    connections: conns.size,
    eventTimesUs: freshChanges.map((c) => c.timeUs),
    startedAtMs,
    committedAtMs,
    stagesMs,
  };
}

export type { Connection };
