import { test } from 'node:test';
import assert from 'node:assert/strict';
import { applyChange, connectMs, durationMs, type Connection, type StateChange } from '../processor/lifecycle';

/** Builds the state changes of one connection from a kernel path, 1 ms apart. */
function replay(path: string[], first: Partial<StateChange> = {}): Connection {
  let conn: Connection | null = null;
  for (let i = 1; i < path.length; i++) {
    const change: StateChange = {
      connId: 'c1', seq: i, host: 'h', bootId: 'b', timeUs: 1_000_000 + i * 1000, family: 4,
      localAddr: '10.0.0.1', localPort: i === 1 ? 0 : 40000, remoteAddr: '10.0.0.2',
      remotePort: 80, oldState: path[i - 1], newState: path[i], pid: 42, tid: 42, comm: 'curl',
      uid: 0, netns: 1, cgroupId: 1, bytesSent: i * 10, bytesReceived: i * 20, segsOut: i,
      segsIn: i, retransmits: 0, srttUs: 50, ...first,
    };
    conn = applyChange(conn, change);
  }
  return conn!;
}

const table: {
  name: string;
  path: string[];
  role: string;
  outcome: string;
  closedBy: string | null;
  closeKind: string | null;
}[] = [
  {
    name: 'outbound, closed locally first',
    path: ['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'FIN-WAIT-1', 'FIN-WAIT-2', 'CLOSED'],
    role: 'outbound', outcome: 'completed', closedBy: 'local', closeKind: 'fin',
  },
  {
    name: 'outbound, closed by the peer first',
    path: ['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'CLOSE-WAIT', 'LAST-ACK', 'CLOSED'],
    role: 'outbound', outcome: 'completed', closedBy: 'remote', closeKind: 'fin',
  },
  {
    name: 'simultaneous close',
    path: ['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'FIN-WAIT-1', 'CLOSING', 'CLOSED'],
    role: 'outbound', outcome: 'completed', closedBy: 'both', closeKind: 'simultaneous',
  },
  {
    name: 'refused',
    path: ['CLOSED', 'SYN-SENT', 'CLOSED'],
    role: 'outbound', outcome: 'refused', closedBy: null, closeKind: null,
  },
  {
    name: 'reset while established',
    path: ['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'CLOSED'],
    role: 'outbound', outcome: 'reset', closedBy: null, closeKind: 'reset',
  },
  {
    name: 'reset after the peer closed',
    path: ['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'CLOSE-WAIT', 'CLOSED'],
    role: 'outbound', outcome: 'reset', closedBy: 'remote', closeKind: 'reset',
  },
  {
    name: 'inbound, closed by the peer',
    path: ['LISTEN', 'SYN-RECEIVED', 'ESTABLISHED', 'CLOSE-WAIT', 'LAST-ACK', 'CLOSED'],
    role: 'inbound', outcome: 'completed', closedBy: 'remote', closeKind: 'fin',
  },
  {
    name: 'inbound handshake that never completes',
    path: ['LISTEN', 'SYN-RECEIVED', 'CLOSED'],
    role: 'inbound', outcome: 'aborted', closedBy: null, closeKind: null,
  },
  {
    name: 'listener opened and closed',
    path: ['CLOSED', 'LISTEN', 'CLOSED'],
    role: 'listener', outcome: 'completed', closedBy: null, closeKind: null,
  },
  {
    name: 'still open',
    path: ['CLOSED', 'SYN-SENT', 'ESTABLISHED'],
    role: 'outbound', outcome: 'open', closedBy: null, closeKind: null,
  },
];

for (const row of table) {
  test(`lifecycle: ${row.name}`, () => {
    const conn = replay(row.path);
    assert.equal(conn.role, row.role);
    assert.equal(conn.outcome, row.outcome);
    assert.equal(conn.closedBy, row.closedBy);
    assert.equal(conn.closeKind, row.closeKind);
    assert.deepEqual(conn.states, row.path);
    assert.equal(conn.hasGap, false);
    assert.equal(conn.eventCount, row.path.length - 1);
  });
}

test('lifecycle: times, counters and the source port picked after SYN-SENT', () => {
  const conn = replay(['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'FIN-WAIT-1', 'FIN-WAIT-2', 'CLOSED']);
  assert.equal(conn.localPort, 40000);
  assert.equal(connectMs(conn), 1);
  assert.equal(durationMs(conn), 4);
  assert.equal(conn.bytesSent, 50, 'counters are those of the last transition');
});

test('lifecycle: a missing transition is flagged as a gap and kept in the path', () => {
  let conn = replay(['CLOSED', 'SYN-SENT', 'ESTABLISHED']);
  conn = applyChange(conn, {
    ...({} as StateChange), connId: 'c1', seq: 9, timeUs: 2_000_000, oldState: 'FIN-WAIT-2',
    newState: 'CLOSED', localPort: 40000, pid: 42, bytesSent: 1, bytesReceived: 1,
  });
  assert.equal(conn.hasGap, true);
  assert.deepEqual(conn.states, ['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'FIN-WAIT-2', 'CLOSED']);
  assert.equal(conn.outcome, 'completed');
});
