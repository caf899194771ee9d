import type { PoolClient } from 'pg';
import { isoFromMicros } from '../common/time';
import { BinaryRows, copyIn } from './copy-binary';
import { runIdOf, type StateChange } from './lifecycle';

/** A state change and the record it was read from: the Kafka coordinates go into its row. */
export interface RawEvent {
  record: { topic: string; partition: number; offset: string };
  change: StateChange;
}

/** The columns COPY fills, in the order write() writes them. */
const COLUMNS = `
  conn_id seq host boot_id run_id event_time family local_addr local_port remote_addr
  remote_port old_state new_state pid tid comm uid netns cgroup_id bytes_sent
  bytes_received segs_out segs_in retransmits srtt_us sock_inode sock_uid sock_gid
  kafka_topic kafka_partition kafka_offset`
  .trim()
  .split(/\s+/);
const TARGET = `tcp_events (${COLUMNS.join(', ')})`;

/** The process that owns a socket, as tcp_events and connections both hold it. */
type Owner = Pick<StateChange, 'pid' | 'tid' | 'comm' | 'uid' | 'netns' | 'cgroupId'>;

/** Columns pid, tid, comm, uid, netns and cgroup_id, in that order. */
export function writeOwner(rows: BinaryRows, o: Owner): void {
  rows.int4(o.pid).int4(o.tid).text(o.comm).int8(o.uid).int8(o.netns).int8(o.cgroupId);
}

/** One COPY row, in COLUMNS order. */
function write(rows: BinaryRows, { record, change: c }: RawEvent): void {
  rows
    .row(COLUMNS.length)
    .text(c.connId)
    .int8(c.seq)
    .text(c.host)
    .text(c.bootId)
    .text(runIdOf(c.connId))
    .micros(c.timeUs)
    .int2(c.family)
    .inet(c.localAddr)
    .int4(c.localPort)
    .inet(c.remoteAddr)
    .int4(c.remotePort)
    .text(c.oldState)
    .text(c.newState);
  writeOwner(rows, c);
  rows
    .int8(c.bytesSent)
    .int8(c.bytesReceived)
    .int8(c.segsOut)
    .int8(c.segsIn)
    .int8(c.retransmits)
    .int8(c.srttUs)
    .int8(c.sockInode)
    .int8(c.sockUid)
    .int8(c.sockGid)
    .text(record.topic)
    .int4(record.partition)
    .int8(Number(record.offset));
}

/** The unique key of tcp_events: a redelivered event has all three the same. */
const keyOf = (connId: string, seq: number | string, timeUs: number | string) =>
  `${connId}\u0000${seq}\u0000${timeUs}`;

/**
 * Keys of `events` already stored. Only the batch's time range is read, so only the daily
 * partitions it falls in are searched: a redelivered event has its original event_time.
 */
async function storedKeys(db: PoolClient, events: RawEvent[]): Promise<Set<string>> {
  let [min, max] = [Infinity, -Infinity];
  const ids = new Set<string>();
  for (const { change } of events) {
    ids.add(change.connId);
    if (change.timeUs < min) min = change.timeUs;
    if (change.timeUs > max) max = change.timeUs;
  }
  const { rows } = await db.query<{ conn_id: string; seq: string; us: string }>(
    `SELECT conn_id, seq, (extract(epoch FROM event_time) * 1000000)::int8 AS us
       FROM tcp_events
      WHERE conn_id = ANY($1::text[]) AND event_time BETWEEN $2::timestamptz AND $3::timestamptz`,
    [[...ids], isoFromMicros(min), isoFromMicros(max)],
  );
  return new Set(rows.map((r) => keyOf(r.conn_id, r.seq, r.us)));
}

/**
 * Another transaction stored some of the same events or new connections between our look and
 * our COPY (two consumers on one partition for a moment, during a rebalance). Not a data
 * error: the batch is run again, and the rerun finds those rows.
 */
export class ConcurrentInsertError extends Error {
  constructor(cause: Error) {
    super(`rows were stored concurrently: ${cause.message}`, { cause });
    this.name = 'ConcurrentInsertError';
  }
}

/** A COPY's failure as the caller should see it: a unique violation is a concurrent insert. */
export function concurrentOr(err: unknown): unknown {
  return (err as { code?: string }).code === '23505'
    ? new ConcurrentInsertError(err as Error)
    : err;
}

/**
 * Stores the events not stored before, in one COPY, and returns them (the first of any the
 * batch carries twice). COPY has no ON CONFLICT, and the (conn_id, seq, event_time) key stays
 * the one authority: the batch is copied whole first (a replay is rare: offsets commit with
 * the rows, so only a producer's resend repeats an event), and only when the key refuses it
 * does the copy go back to a savepoint, look up which keys are stored, and copy the rest.
 */
export async function insertEvents<E extends RawEvent>(db: PoolClient, events: E[]): Promise<E[]> {
  if (events.length === 0) return [];
  await db.query('SAVEPOINT copy_events');
  try {
    // No look for an event the batch carries twice either: the key refuses that one too.
    const rows = new BinaryRows();
    for (const event of events) write(rows, event);
    await copyIn(db, TARGET, rows);
    await db.query('RELEASE SAVEPOINT copy_events');
    return events;
  } catch (err) {
    if ((err as { code?: string }).code !== '23505') throw err;
    await db.query('ROLLBACK TO SAVEPOINT copy_events');
  }
  try {
    return await copyFresh(db, events, await storedKeys(db, events));
  } catch (err) {
    throw concurrentOr(err);
  }
}

/** COPYs the events whose keys are not in `seen` (nor earlier in the batch); returns them. */
async function copyFresh<E extends RawEvent>(
  db: PoolClient,
  events: E[],
  seen: Set<string>,
): Promise<E[]> {
  const fresh: E[] = [];
  const rows = new BinaryRows();
  for (const event of events) {
    const key = keyOf(event.change.connId, event.change.seq, event.change.timeUs);
    if (seen.has(key)) continue;
    seen.add(key);
    fresh.push(event);
    write(rows, event);
  }
  await copyIn(db, TARGET, rows);
  return fresh;
}
