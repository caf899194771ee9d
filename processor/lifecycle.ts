/**
 * Rebuilds one connection's story from its state changes. Pure functions over plain rows, so the
 * rules can be tested with tables of kernel transition paths and no database.
 */

/** One state change as the processor sees it: RFC 793 state names, time in microseconds. */
export interface StateChange {
  connId: string;
  seq: number;
  host: string;
  bootId: string;
  timeUs: number;
  family: 4 | 6;
  localAddr: string;
  localPort: number;
  remoteAddr: string;
  remotePort: number;
  oldState: string;
  newState: string;
  pid: number;
  tid: number;
  comm: string;
  uid: number;
  netns: number;
  cgroupId: number;
  bytesSent: number;
  bytesReceived: number;
  segsOut: number;
  segsIn: number;
  retransmits: number;
  srttUs: number;
}

export type Role = 'outbound' | 'inbound' | 'listener' | 'unknown';
export type Outcome = 'open' | 'completed' | 'refused' | 'reset' | 'aborted';

export interface Connection {
  connId: string;
  host: string;
  bootId: string;
  role: Role;
  outcome: Outcome;
  family: 4 | 6;
  localAddr: string;
  localPort: number;
  remoteAddr: string;
  remotePort: number;
  pid: number;
  tid: number;
  comm: string;
  uid: number;
  netns: number;
  cgroupId: number;
  openedUs: number;
  establishedUs: number | null;
  closedUs: number | null;
  closedBy: 'local' | 'remote' | 'both' | null;
  closeKind: 'fin' | 'simultaneous' | 'reset' | null;
  states: string[];
  lastSeq: number;
  eventCount: number;
  hasGap: boolean;
  bytesSent: number;
  bytesReceived: number;
  segsOut: number;
  segsIn: number;
  retransmits: number;
  srttUs: number;
}

function roleOf(first: StateChange): Role {
  if (first.newState === 'LISTEN') return 'listener';
  if (first.oldState === 'CLOSED' && first.newState === 'SYN-SENT') return 'outbound';
  if (first.newState === 'SYN-RECEIVED' || first.newState === 'NEW-SYN-RECEIVED') return 'inbound';
  if (first.oldState === 'LISTEN' || first.oldState === 'NEW-SYN-RECEIVED') return 'inbound';
  if (first.oldState === 'SYN-RECEIVED') return 'inbound';
  return 'unknown';
}

function open(first: StateChange): Connection {
  return {
    connId: first.connId,
    host: first.host,
    bootId: first.bootId,
    role: roleOf(first),
    outcome: 'open',
    family: first.family,
    localAddr: first.localAddr,
    localPort: first.localPort,
    remoteAddr: first.remoteAddr,
    remotePort: first.remotePort,
    pid: first.pid,
    tid: first.tid,
    comm: first.comm,
    uid: first.uid,
    netns: first.netns,
    cgroupId: first.cgroupId,
    openedUs: first.timeUs,
    establishedUs: null,
    closedUs: null,
    closedBy: null,
    closeKind: null,
    states: [first.oldState],
    lastSeq: first.seq,
    eventCount: 0,
    hasGap: false,
    bytesSent: 0,
    bytesReceived: 0,
    segsOut: 0,
    segsIn: 0,
    retransmits: 0,
    srttUs: 0,
  };
}

/** States from which a direct move to CLOSED means the connection was torn down by a reset. */
const RESET_FROM = new Set(['ESTABLISHED', 'CLOSE-WAIT', 'FIN-WAIT-1', 'SYN-RECEIVED']);

function noteClose(conn: Connection, from: string, to: string): void {
  if (conn.closedBy === null && (from === 'ESTABLISHED' || from === 'SYN-RECEIVED')) {
    if (to === 'FIN-WAIT-1') [conn.closedBy, conn.closeKind] = ['local', 'fin'];
    if (to === 'CLOSE-WAIT') [conn.closedBy, conn.closeKind] = ['remote', 'fin'];
  }
  if (from === 'FIN-WAIT-1' && to === 'CLOSING') {
    [conn.closedBy, conn.closeKind] = ['both', 'simultaneous'];
  }
  if (to !== 'CLOSED') return;
  if (RESET_FROM.has(from) && conn.establishedUs !== null) conn.closeKind = 'reset';
}

function outcomeOf(conn: Connection): Outcome {
  if (conn.closedUs === null) return 'open';
  if (conn.role === 'listener') return 'completed';
  if (conn.establishedUs === null) return conn.role === 'outbound' ? 'refused' : 'aborted';
  return conn.closeKind === 'reset' ? 'reset' : 'completed';
}

/**
 * Applies one state change, in sequence order, to the connection it belongs to (null for the
 * first). A change whose old state is not the last one seen marks a gap in the path.
 */
export function applyChange(current: Connection | null, change: StateChange): Connection {
  const conn = current ? { ...current, states: [...current.states] } : open(change);
  const last = conn.states[conn.states.length - 1];
  if (last !== change.oldState) {
    conn.hasGap = true;
    conn.states.push(change.oldState);
  }
  conn.states.push(change.newState);
  conn.eventCount++;
  conn.lastSeq = change.seq;
  if (change.newState === 'ESTABLISHED' && conn.establishedUs === null) {
    conn.establishedUs = change.timeUs;
  }
  noteClose(conn, change.oldState, change.newState);
  if (change.newState === 'CLOSED') conn.closedUs = change.timeUs;
  // connect() moves to SYN-SENT before it picks the source port: take the first real one.
  if (conn.localPort === 0 && change.localPort !== 0) {
    [conn.localAddr, conn.localPort] = [change.localAddr, change.localPort];
  }
  // The kernel fills in the process on later events when the first was seen in softirq.
  if (conn.pid === 0 && change.pid !== 0) {
    [conn.pid, conn.tid, conn.comm, conn.uid] = [change.pid, change.tid, change.comm, change.uid];
  }
  conn.bytesSent = change.bytesSent;
  conn.bytesReceived = change.bytesReceived;
  conn.segsOut = change.segsOut;
  conn.segsIn = change.segsIn;
  conn.retransmits = change.retransmits;
  conn.srttUs = change.srttUs;
  conn.outcome = outcomeOf(conn);
  return conn;
}

export function connectMs(conn: Connection): number | null {
  return conn.establishedUs === null ? null : (conn.establishedUs - conn.openedUs) / 1000;
}

export function durationMs(conn: Connection): number | null {
  return conn.closedUs === null ? null : (conn.closedUs - conn.openedUs) / 1000;
}
