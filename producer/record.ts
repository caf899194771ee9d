import type { TcpEvent, TcpState } from '../common/event';

/** The Avro record of schemas/tcp-state-change.avsc, as avsc reads and writes it. */
export interface AvroStateChange {
  conn_id: string;
  seq: number;
  host: string;
  boot_id: string;
  time: number;
  family: 'INET' | 'INET6';
  local_addr: string;
  local_port: number;
  remote_addr: string;
  remote_port: number;
  old_state: string;
  new_state: string;
  pid: number;
  tid: number;
  comm: string;
  uid: number;
  netns: number;
  cgroup_id: number;
  bytes_sent: number;
  bytes_received: number;
  segs_out: number;
  segs_in: number;
  retransmits: number;
  srtt_us: number;
  sock_inode: number;
  sock_uid: number;
  sock_gid: number;
}

/** Avro enum symbols cannot hold '-', so RFC 793's "SYN-SENT" travels as SYN_SENT. */
export function stateToAvro(state: TcpState): string {
  return state.replace(/-/g, '_');
}

export function stateFromAvro(symbol: string): string {
  return symbol.replace(/_/g, '-');
}

export function toAvro(event: TcpEvent): AvroStateChange {
  return {
    conn_id: event.connId,
    seq: event.seq,
    host: event.host,
    boot_id: event.bootId,
    // Microseconds fit a double exactly until the year 2255; nanoseconds would not.
    time: Number(event.timeNs / 1000n),
    family: event.family === 6 ? 'INET6' : 'INET',
    local_addr: event.localAddr,
    local_port: event.localPort,
    remote_addr: event.remoteAddr,
    remote_port: event.remotePort,
    old_state: stateToAvro(event.oldState),
    new_state: stateToAvro(event.newState),
    pid: event.pid,
    tid: event.tid,
    comm: event.comm,
    uid: event.uid,
    netns: event.netns,
    cgroup_id: Number(event.cgroupId),
    bytes_sent: Number(event.bytesSent),
    bytes_received: Number(event.bytesReceived),
    segs_out: event.segsOut,
    segs_in: event.segsIn,
    retransmits: event.retransmits,
    srtt_us: event.srttUs,
    sock_inode: event.sockInode,
    sock_uid: event.sockUid,
    sock_gid: event.sockGid,
  };
}
