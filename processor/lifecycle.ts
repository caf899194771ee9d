/**
 * Rebuilds one connection's story from its state changes. Pure functions over plain rows, so the
 * rules can be tested with tables of kernel transition paths and no database.
 */

import { TCP_STATES } from '../common/event';

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
  /** Socket file inode, owner uid and gid; 0 when the producer's schema predates them. */
  sockInode: number;
  sockUid: number;
  sockGid: number;
}

export type Role = 'outbound' | 'inbound' | 'listener' | 'unknown';
/**
 * open: no close seen yet. completed: closed by FIN exchange (or a listener closed).
 * refused: an outbound SYN answered by a reset. reset: torn down by RST after the handshake.
 * aborted: the handshake never completed (timeout, local cancel, passive child dropped).
 * expired: the processor will see no more events for this id (see processor/expiry.ts).
 */
export type Outcome = 'open' | 'completed' | 'refused' | 'reset' | 'aborted' | 'expired';

export interface Connection {
  connId: string;
  host: string;
  bootId: string;
  /** The capture run: the middle part of the connection id `<boot8>-<runhex>-<counterhex>`. */
  runId: string;
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
  sockInode: number;
  sockUid: number;
  sockGid: number;
  openedUs: number;
  establishedUs: number | null;
  closedUs: number | null;
  lastEventUs: number;
  closedBy: 'local' | 'remote' | 'both' | null;
  closeKind: 'fin' | 'simultaneous' | 'reset' | null;
  states: string[];
  firstSeq: number;
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

/** Every kernel state; UNKNOWN is only the decoder's placeholder for a number it lacks. */
export const KNOWN_STATES: ReadonlySet<string> = new Set(
  TCP_STATES.filter((state) => state !== 'UNKNOWN'),
);

/**
 * Every move the Linux kernel reports on inet_sock_set_state for one socket. A pair not listed
 * (or an old state that is not the last new state) means an event is missing: a gap.
 * Notes: the full socket leaves FIN-WAIT-2 and CLOSING straight to CLOSED (the time-wait is a
 * separate mini socket); TIME-WAIT pairs are kept for kernels or tools that report them.
 * SYN-SENT -> SYN-RECEIVED is a simultaneous open; SYN-RECEIVED -> FIN-WAIT-1 / CLOSE-WAIT happen
 * with TCP Fast Open children and a close() before the final ACK.
 */
export const TRANSITIONS: ReadonlyMap<string, ReadonlySet<string>> = new Map(
  Object.entries({
    CLOSED: ['SYN-SENT', 'LISTEN'],
    LISTEN: ['CLOSED', 'SYN-RECEIVED'],
    'NEW-SYN-RECEIVED': ['SYN-RECEIVED', 'CLOSED'],
    'SYN-SENT': ['ESTABLISHED', 'CLOSED', 'SYN-RECEIVED'],
    'SYN-RECEIVED': ['ESTABLISHED', 'CLOSED', 'FIN-WAIT-1', 'CLOSE-WAIT'],
    ESTABLISHED: ['FIN-WAIT-1', 'CLOSE-WAIT', 'CLOSED'],
    'FIN-WAIT-1': ['FIN-WAIT-2', 'CLOSING', 'TIME-WAIT', 'CLOSED'],
    'FIN-WAIT-2': ['CLOSED', 'TIME-WAIT'],
    CLOSING: ['CLOSED', 'TIME-WAIT'],
    'TIME-WAIT': ['CLOSED'],
    'CLOSE-WAIT': ['LAST-ACK', 'CLOSED'],
    'LAST-ACK': ['CLOSED'],
  }).map(([from, to]) => [from, new Set(to)]),
);

/** States a connection's first event starts from when the capture saw its birth. */
const BIRTH_STATES = new Set(['CLOSED', 'LISTEN', 'NEW-SYN-RECEIVED']);

const POST_HANDSHAKE = new Set([
  'ESTABLISHED',
  'FIN-WAIT-1',
  'FIN-WAIT-2',
  'CLOSE-WAIT',
  'LAST-ACK',
  'CLOSING',
  'TIME-WAIT',
]);

/** A move straight to CLOSED from these, after the handshake, is a reset (or an abort). */
const RESET_FROM = new Set(['ESTABLISHED', 'CLOSE-WAIT', 'FIN-WAIT-1', 'SYN-RECEIVED']);

/**
 * `<boot8>-<runhex>-<counterhex>` -> runhex; '' for an id of another shape. Runs for every
 * stored event, so it finds the dashes instead of splitting (no array per call).
 */
export function runIdOf(connId: string): string {
  const first = connId.indexOf('-');
  const second = first < 0 ? -1 : connId.indexOf('-', first + 1);
  if (second < 0 || connId.includes('-', second + 1)) return '';
  return connId.slice(first + 1, second);
}

function roleOf(first: StateChange): Role {
  if (first.newState === 'LISTEN') return 'listener';
  // A listener first seen at its close (it predates the capture run).
  if (first.oldState === 'LISTEN' && first.newState === 'CLOSED') return 'listener';
  if (first.oldState === 'CLOSED' && first.newState === 'SYN-SENT') return 'outbound';
  if (first.oldState === 'SYN-SENT') return 'outbound';
  if (first.oldState === 'LISTEN' || first.oldState === 'NEW-SYN-RECEIVED') return 'inbound';
  if (first.oldState === 'SYN-RECEIVED') return 'inbound';
  return 'unknown';
}

/** A connection as its first seen change starts it; advance() then applies that change. */
export function startConnection(first: StateChange): Connection {
  return {
    connId: first.connId,
    host: first.host,
    bootId: first.bootId,
    runId: runIdOf(first.connId),
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
    sockInode: 0,
    sockUid: 0,
    sockGid: 0,
    openedUs: first.timeUs,
    establishedUs: null,
    closedUs: null,
    lastEventUs: first.timeUs,
    closedBy: null,
    closeKind: null,
    states: [first.oldState],
    firstSeq: first.seq,
    lastSeq: first.seq,
    eventCount: 0,
    // Born before the capture saw it (e.g. alive across a capture reload): its start is missing.
    hasGap: !BIRTH_STATES.has(first.oldState),
    bytesSent: 0,
    bytesReceived: 0,
    segsOut: 0,
    segsIn: 0,
    retransmits: 0,
    srttUs: 0,
  };
}

function noteClose(conn: Connection, from: string, to: string): void {
  if (conn.closedBy === null && (from === 'ESTABLISHED' || from === 'SYN-RECEIVED')) {
    if (to === 'FIN-WAIT-1') [conn.closedBy, conn.closeKind] = ['local', 'fin'];
    if (to === 'CLOSE-WAIT') [conn.closedBy, conn.closeKind] = ['remote', 'fin'];
  }
  // Our FIN was sent and the peer's FIN crossed it before its ACK of ours: both closed at once.
  if (from === 'FIN-WAIT-1' && to === 'CLOSING')
    [conn.closedBy, conn.closeKind] = ['both', 'simultaneous'];
  const established = conn.establishedUs !== null || POST_HANDSHAKE.has(conn.states[0]);
  if (to === 'CLOSED' && RESET_FROM.has(from) && established) conn.closeKind = 'reset';
}

/**
 * The outcome of a closed connection. An outbound attempt that ends in SYN-SENT is 'refused'
 * when a segment came back (the peer's RST counts in segs_in), else 'aborted' (timed out or
 * cancelled locally).
 */
function outcomeOf(conn: Connection, last: StateChange): Outcome {
  if (conn.closedUs === null) return 'open';
  if (conn.role === 'listener') return 'completed';
  // First seen after its handshake (its start is missing): it was established all the same.
  if (conn.establishedUs === null && !POST_HANDSHAKE.has(conn.states[0])) {
    return conn.role === 'outbound' && last.oldState === 'SYN-SENT' && last.segsIn > 0
      ? 'refused'
      : 'aborted';
  }
  return conn.closeKind === 'reset' ? 'reset' : 'completed';
}

/** True when the kernel can move a socket from `from` to `to` in one reported step. */
export function isTransition(from: string, to: string): boolean {
  return TRANSITIONS.get(from)?.has(to) ?? false;
}

/**
 * Applies one state change, in sequence order, to the connection it belongs to (null for the
 * first). A change whose old state is not the last one seen, or a move the kernel cannot make,
 * marks a gap in the path; the old state is then kept in the path so the jump shows.
 */
export function applyChange(current: Connection | null, change: StateChange): Connection {
  return advance(
    current ? { ...current, states: [...current.states] } : startConnection(change),
    change,
  );
}

/**
 * applyChange in place, for a caller that owns `conn` (made by startConnection or read from a
 * row): a batch applies tens of thousands of changes, and a copy for each was most of its work.
 */
export function advance(conn: Connection, change: StateChange): Connection {
  const last = conn.states[conn.states.length - 1];
  if (last !== change.oldState) {
    conn.hasGap = true;
    conn.states.push(change.oldState);
  }
  if (!isTransition(change.oldState, change.newState)) conn.hasGap = true;
  conn.states.push(change.newState);
  conn.eventCount++;
  conn.lastSeq = Math.max(conn.lastSeq, change.seq);
  conn.firstSeq = Math.min(conn.firstSeq, change.seq);
  conn.lastEventUs = Math.max(conn.lastEventUs, change.timeUs);
  if (change.newState === 'ESTABLISHED' && conn.establishedUs === null)
    conn.establishedUs = change.timeUs;
  noteClose(conn, change.oldState, change.newState);
  if (change.newState === 'CLOSED' && conn.closedUs === null) conn.closedUs = change.timeUs;
  // connect() moves to SYN-SENT before it picks the source port: take the first real one.
  if (conn.localPort === 0 && change.localPort !== 0) {
    [conn.localAddr, conn.localPort] = [change.localAddr, change.localPort];
  }
  if (
    isUnspecified(conn.localAddr) &&
    !isUnspecified(change.localAddr) &&
    conn.role !== 'listener'
  ) {
    conn.localAddr = change.localAddr;
  }
  // The kernel fills in the process on later events when the first was seen in softirq.
  if (conn.pid === 0 && change.pid !== 0) {
    [conn.pid, conn.tid, conn.comm, conn.uid] = [change.pid, change.tid, change.comm, change.uid];
  }
  if (change.sockInode !== 0) conn.sockInode = change.sockInode;
  if (change.sockUid !== 0) conn.sockUid = change.sockUid;
  if (change.sockGid !== 0) conn.sockGid = change.sockGid;
  conn.bytesSent = change.bytesSent;
  conn.bytesReceived = change.bytesReceived;
  conn.segsOut = change.segsOut;
  conn.segsIn = change.segsIn;
  conn.retransmits = change.retransmits;
  conn.srttUs = change.srttUs;
  conn.outcome = outcomeOf(conn, change);
  return conn;
}

function isUnspecified(addr: string): boolean {
  return addr === '0.0.0.0' || addr === '::';
}

export function connectMs(conn: Connection): number | null {
  return conn.establishedUs === null ? null : (conn.establishedUs - conn.openedUs) / 1000;
}

export function durationMs(conn: Connection): number | null {
  return conn.closedUs === null ? null : (conn.closedUs - conn.openedUs) / 1000;
}
