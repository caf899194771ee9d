import type { PoolClient } from 'pg';
import { isoFromMicros } from '../common/time';
import { connectMs, durationMs, type Connection } from './lifecycle';

const US = (column: string) => `(extract(epoch FROM ${column}) * 1000000)::int8`;

const SELECT = `SELECT conn_id, host, boot_id, role, outcome, family, host(local_addr) AS local_addr,
  local_port, host(remote_addr) AS remote_addr, remote_port, pid, tid, comm, uid, netns, cgroup_id,
  ${US('opened_at')} AS opened_us, ${US('established_at')} AS established_us,
  ${US('closed_at')} AS closed_us, closed_by, close_kind, states, last_seq, event_count, has_gap,
  bytes_sent, bytes_received, segs_out, segs_in, retransmits, srtt_us
  FROM connections WHERE conn_id = ANY($1::text[]) FOR UPDATE`;

type Row = Record<string, unknown>;

const num = (v: unknown) => Number(v);
const numOrNull = (v: unknown) => (v === null ? null : Number(v));

function fromRow(r: Row): Connection {
  return {
    connId: r.conn_id as string,
    host: r.host as string,
    bootId: r.boot_id as string,
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
    openedUs: num(r.opened_us),
    establishedUs: numOrNull(r.established_us),
    closedUs: numOrNull(r.closed_us),
    closedBy: r.closed_by as Connection['closedBy'],
    closeKind: r.close_kind as Connection['closeKind'],
    states: r.states as string[],
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

const COLUMNS = [
  'conn_id', 'host', 'boot_id', 'role', 'outcome', 'family', 'local_addr', 'local_port',
  'remote_addr', 'remote_port', 'pid', 'tid', 'comm', 'uid', 'netns', 'cgroup_id', 'opened_at',
  'established_at', 'closed_at', 'connect_ms', 'duration_ms', 'closed_by', 'close_kind', 'states',
  'last_state', 'last_seq', 'event_count', 'has_gap', 'bytes_sent', 'bytes_received', 'segs_out',
  'segs_in', 'retransmits', 'srtt_us',
];

const time = (us: number | null) => (us === null ? null : isoFromMicros(us));

function values(c: Connection): unknown[] {
  return [
    c.connId, c.host, c.bootId, c.role, c.outcome, c.family, c.localAddr, c.localPort,
    c.remoteAddr, c.remotePort, c.pid, c.tid, c.comm, c.uid, c.netns, c.cgroupId,
    time(c.openedUs), time(c.establishedUs), time(c.closedUs), connectMs(c), durationMs(c),
    c.closedBy, c.closeKind, c.states, c.states[c.states.length - 1], c.lastSeq, c.eventCount,
    c.hasGap, c.bytesSent, c.bytesReceived, c.segsOut, c.segsIn, c.retransmits, c.srttUs,
  ];
}

const UPSERT = `INSERT INTO connections (${COLUMNS.join(', ')}, updated_at)
  VALUES (${COLUMNS.map((_, i) => `$${i + 1}`).join(', ')}, now())
  ON CONFLICT (conn_id) DO UPDATE SET
  ${COLUMNS.slice(1).map((c) => `${c} = EXCLUDED.${c}`).join(', ')}, updated_at = now()`;

export async function saveConnections(db: PoolClient, conns: Connection[]): Promise<void> {
  // One statement per touched connection; a batch of N events touches far fewer than N.
  for (const conn of conns) await db.query(UPSERT, values(conn));
}
