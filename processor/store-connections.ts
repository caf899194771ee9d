import type { PoolClient } from 'pg';
import { isoFromMicros } from '../common/time';
import { BinaryRows, copyIn } from './copy-binary';
import { connectMs, durationMs, type Connection } from './lifecycle';
import { concurrentOr, writeOwner } from './store-events';

const US = (column: string) => `(extract(epoch FROM ${column}) * 1000000)::int8`;

const SELECT = `SELECT conn_id, host, boot_id, run_id, role, outcome, family,
  host(local_addr) AS local_addr, local_port, host(remote_addr) AS remote_addr, remote_port, pid,
  tid, comm, uid, netns, cgroup_id, sock_inode, sock_uid, sock_gid,
  ${US('opened_at')} AS opened_us, ${US('established_at')} AS established_us,
  ${US('closed_at')} AS closed_us, ${US('last_event_at')} AS last_event_us, closed_by, close_kind,
  states, first_seq, last_seq, event_count, has_gap, bytes_sent, bytes_received, segs_out, segs_in,
  retransmits, srtt_us
  FROM connections WHERE conn_id = ANY($1::text[]) FOR UPDATE`;

type Row = Record<string, unknown>;

const num = (v: unknown) => Number(v);
const numOrNull = (v: unknown) => (v === null ? null : Number(v));

function fromRow(r: Row): Connection {
  return {
    connId: r.conn_id as string,
    host: r.host as string,
    bootId: r.boot_id as string,
    runId: r.run_id as string,
    role: r.role as Connection['role'],
    outcome: r.outcome as Connection['outcome'],
    family: num(r.family) as 4 | 6,
    localAddr: r.local_addr as string,
    localPort: num(r.local_port),
    remoteAddr: r.remote_addr as string,
    remotePort: num(r.remote_port),
    pid: num(r.pid),
    tid: num(r.tid),
    comm: r.comm as string,
    uid: num(r.uid),
    netns: num(r.netns),
    cgroupId: num(r.cgroup_id),
    sockInode: num(r.sock_inode),
    sockUid: num(r.sock_uid),
    sockGid: num(r.sock_gid),
    openedUs: num(r.opened_us),
    establishedUs: numOrNull(r.established_us),
    closedUs: numOrNull(r.closed_us),
    lastEventUs: num(r.last_event_us),
    closedBy: r.closed_by as Connection['closedBy'],
    closeKind: r.close_kind as Connection['closeKind'],
    states: r.states as string[],
    firstSeq: num(r.first_seq),
    lastSeq: num(r.last_seq),
    eventCount: num(r.event_count),
    hasGap: r.has_gap as boolean,
    bytesSent: num(r.bytes_sent),
    bytesReceived: num(r.bytes_received),
    segsOut: num(r.segs_out),
    segsIn: num(r.segs_in),
    retransmits: num(r.retransmits),
    srttUs: num(r.srtt_us),
  };
}

/** Locks and loads the connections a batch touches; rows of other batches wait for this one. */
export async function loadConnections(db: PoolClient, ids: string[]) {
  const found = new Map<string, Connection>();
  if (ids.length === 0) return found;
  const result = await db.query(SELECT, [ids]);
  for (const row of result.rows) found.set(row.conn_id, fromRow(row));
  return found;
}

/** The columns COPY fills, in the order write() writes them. */
const COLUMNS = `
  conn_id host boot_id run_id role outcome family local_addr local_port remote_addr
  remote_port pid tid comm uid netns cgroup_id sock_inode sock_uid sock_gid opened_at
  established_at closed_at last_event_at connect_ms duration_ms closed_by close_kind states
  last_state first_seq last_seq event_count has_gap bytes_sent bytes_received segs_out
  segs_in retransmits srtt_us`
  .trim()
  .split(/\s+/);
const NAMES = COLUMNS.join(', ');

/** One COPY row, in COLUMNS order. */
function write(rows: BinaryRows, c: Connection): void {
  rows
    .row(COLUMNS.length)
    .text(c.connId)
    .text(c.host)
    .text(c.bootId)
    .text(c.runId)
    .text(c.role)
    .text(c.outcome)
    .int2(c.family)
    .inet(c.localAddr)
    .int4(c.localPort)
    .inet(c.remoteAddr)
    .int4(c.remotePort);
  writeOwner(rows, c);
  rows
    .int8(c.sockInode)
    .int8(c.sockUid)
    .int8(c.sockGid)
    .micros(c.openedUs)
    .micros(c.establishedUs)
    .micros(c.closedUs)
    .micros(c.lastEventUs)
    .float8(connectMs(c))
    .float8(durationMs(c))
    .text(c.closedBy)
    .text(c.closeKind)
    .textArray(c.states)
    .text(c.states[c.states.length - 1])
    .int8(c.firstSeq)
    .int8(c.lastSeq)
    .int4(c.eventCount)
    .bool(c.hasGap)
    .int8(c.bytesSent)
    .int8(c.bytesReceived)
    .int8(c.segsOut)
    .int8(c.segsIn)
    .int8(c.retransmits)
    .int8(c.srttUs);
}

/**
 * COPY cannot resolve conflicts, so a batch's connections go through a temporary table of the
 * same columns, emptied at every commit, and from there into connections in one statement.
 */
const STAGE = 'connections_stage';
const CREATE_STAGE = `CREATE TEMP TABLE IF NOT EXISTS ${STAGE} ON COMMIT DELETE ROWS AS
  SELECT ${NAMES} FROM connections WITH NO DATA`;
const staged = new WeakSet<PoolClient>();

/**
 * Makes the staging table on this session, outside any transaction: made inside one, a
 * rollback would take it away again. Once per pooled connection.
 */
export async function prepareSession(db: PoolClient): Promise<void> {
  if (staged.has(db)) return;
  await db.query(CREATE_STAGE);
  staged.add(db);
}

const UPSERT = `INSERT INTO connections (${NAMES}, expired_at, expire_reason, updated_at)
  SELECT ${NAMES}, NULL, NULL, now() FROM ${STAGE}
  ON CONFLICT (conn_id, opened_at) DO UPDATE SET
  ${COLUMNS.slice(1)
    .map((c) => `${c} = EXCLUDED.${c}`)
    .join(', ')},
  expired_at = NULL, expire_reason = NULL, updated_at = now()`;

/**
 * Writes the connections of one batch. `loaded` holds their rows as they were: a connection
 * whose opened_at moved (an earlier event arrived late) has its old row deleted first, since
 * opened_at is part of the key. A new one that another writer stored meanwhile (a rebalance
 * overlap) throws ConcurrentInsertError: the rerun finds and loads it.
 */
export async function saveConnections(
  db: PoolClient,
  conns: Connection[],
  loaded: Map<string, number>,
) {
  if (conns.length === 0) return;
  const moved = conns.filter((c) => loaded.has(c.connId) && loaded.get(c.connId) !== c.openedUs);
  if (moved.length > 0) {
    await db.query(
      `DELETE FROM connections c USING unnest($1::text[], $2::timestamptz[]) AS m(id, opened)
        WHERE c.conn_id = m.id AND c.opened_at <> m.opened`,
      [moved.map((c) => c.connId), moved.map((c) => isoFromMicros(c.openedUs))],
    );
  }
  // New connections go straight in; those already stored are upserted through the staging
  // table. Most of a backlog's connections are new, and this spares them the second write.
  const [fresh, known] = [new BinaryRows(), new BinaryRows()];
  for (const conn of conns) write(loaded.has(conn.connId) ? known : fresh, conn);
  if (known.rows > 0) {
    await copyIn(db, `${STAGE} (${NAMES})`, known);
    await db.query(UPSERT);
  }
  try {
    await copyIn(db, `connections (${NAMES})`, fresh);
  } catch (err) {
    throw concurrentOr(err);
  }
}
