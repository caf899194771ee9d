import type { PoolClient } from 'pg';
import { isoFromMicros } from '../common/time';
import { connectMs, durationMs, type Connection } from './lifecycle';

/**
 * A microsecond count sent as int8 and made a timestamptz by the server: exact, and cheaper on
 * both sides than ISO text (no Date and string per value here, no text parsing there).
 */
export const timeFromMicros = (expr: string) =>
  `(timestamptz 'epoch' + ${expr} * interval '1 microsecond')`;

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

const COLUMNS: [string, string][] = [
  ['conn_id', 'text'],
  ['host', 'text'],
  ['boot_id', 'text'],
  ['run_id', 'text'],
  ['role', 'text'],
  ['outcome', 'text'],
  ['family', 'int2'],
  ['local_addr', 'inet'],
  ['local_port', 'int4'],
  ['remote_addr', 'inet'],
  ['remote_port', 'int4'],
  ['pid', 'int4'],
  ['tid', 'int4'],
  ['comm', 'text'],
  ['uid', 'int8'],
  ['netns', 'int8'],
  ['cgroup_id', 'int8'],
  ['sock_inode', 'int8'],
  ['sock_uid', 'int8'],
  ['sock_gid', 'int8'],
  ['opened_at', 'micros'],
  ['established_at', 'micros'],
  ['closed_at', 'micros'],
  ['last_event_at', 'micros'],
  ['connect_ms', 'float8'],
  ['duration_ms', 'float8'],
  ['closed_by', 'text'],
  ['close_kind', 'text'],
  // text[][] cannot be ragged: each path travels as one text holding a Postgres array literal.
  ['states', 'text'],
  ['last_state', 'text'],
  ['first_seq', 'int8'],
  ['last_seq', 'int8'],
  ['event_count', 'int4'],
  ['has_gap', 'bool'],
  ['bytes_sent', 'int8'],
  ['bytes_received', 'int8'],
  ['segs_out', 'int8'],
  ['segs_in', 'int8'],
  ['retransmits', 'int8'],
  ['srtt_us', 'int8'],
];

const time = (us: number | null) => (us === null ? null : isoFromMicros(us));
const arrayLiteral = (items: string[]) =>
  `{${items.map((s) => `"${s.replace(/["\\]/g, '\\$&')}"`).join(',')}}`;

function values(c: Connection): unknown[] {
  return [
    c.connId,
    c.host,
    c.bootId,
    c.runId,
    c.role,
    c.outcome,
    c.family,
    c.localAddr,
    c.localPort,
    c.remoteAddr,
    c.remotePort,
    c.pid,
    c.tid,
    c.comm,
    c.uid,
    c.netns,
    c.cgroupId,
    c.sockInode,
    c.sockUid,
    c.sockGid,
    c.openedUs,
    c.establishedUs,
    c.closedUs,
    c.lastEventUs,
    connectMs(c),
    durationMs(c),
    c.closedBy,
    c.closeKind,
    arrayLiteral(c.states),
    c.states[c.states.length - 1],
    c.firstSeq,
    c.lastSeq,
    c.eventCount,
    c.hasGap,
    c.bytesSent,
    c.bytesReceived,
    c.segsOut,
    c.segsIn,
    c.retransmits,
    c.srttUs,
  ];
}

const NAMES = COLUMNS.map(([name]) => name);
const selected = ([name, type]: [string, string]) =>
  name === 'states'
    ? 'u.states::text[]'
    : type === 'micros'
      ? timeFromMicros(`u.${name}`)
      : `u.${name}`;
/** Every column travels as one array parameter: one statement whatever the batch size. */
const UPSERT = `INSERT INTO connections (${NAMES.join(', ')}, expired_at, expire_reason, updated_at)
  SELECT ${COLUMNS.map(selected).join(', ')}, NULL, NULL, now()
    FROM unnest(${COLUMNS.map(([, type], i) => `$${i + 1}::${type === 'micros' ? 'int8' : type}[]`).join(', ')})
      AS u(${NAMES.join(', ')})
  ON CONFLICT (conn_id, opened_at) DO UPDATE SET
  ${NAMES.slice(1)
    .map((c) => `${c} = EXCLUDED.${c}`)
    .join(', ')},
  expired_at = NULL, expire_reason = NULL, updated_at = now()`;

/**
 * Writes the connections of one batch. `loaded` holds their rows as they were: a connection
 * whose opened_at moved (an earlier event arrived late) has its old row deleted first, since
 * opened_at is part of the key.
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
      [moved.map((c) => c.connId), moved.map((c) => time(c.openedUs))],
    );
  }
  const columns = COLUMNS.map(() => [] as unknown[]);
  for (const conn of conns) values(conn).forEach((value, i) => columns[i].push(value));
  await db.query(UPSERT, columns);
}
