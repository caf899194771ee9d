import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  applyChange,
  connectMs,
  durationMs,
  isTransition,
  TRANSITIONS,
  type Connection,
  type StateChange,
} from '../processor/lifecycle';
import { testChange } from './processor-helpers';

const BASE: StateChange = testChange({
  connId: 'b00710ad-18a-1',
  seq: 0,
  host: 'h',
  bootId: 'b',
  timeUs: 0,
  oldState: '',
  newState: '',
  pid: 42,
  tid: 42,
  comm: 'curl',
  srttUs: 50,
});

/** Builds the state changes of one connection from a kernel path, 1 ms apart. */
function replay(path: string[], first: Partial<StateChange> = {}): Connection {
  let conn: Connection | null = null;
  for (let i = 1; i < path.length; i++) {
    const change: StateChange = {
      ...BASE,
      seq: i * 7,
      timeUs: 1_000_000 + i * 1000,
      localPort: i === 1 ? 0 : 40000,
      oldState: path[i - 1],
      newState: path[i],
      bytesSent: i * 10,
      bytesReceived: i * 20,
      segsOut: i,
      segsIn: i,
      sockInode: i === 1 ? 0 : 777,
      ...first,
    };
    conn = applyChange(conn, change);
  }
  return conn!;
}

interface Row {
  name: string;
  path: string[];
  role: string;
  outcome: string;
  closedBy: string | null;
  closeKind: string | null;
  gap?: boolean;
  segsIn?: number;
}

// Real kernel paths (Linux: a full socket leaves FIN-WAIT-2 and CLOSING straight to CLOSED,
// the time-wait being a separate mini socket; passive children start LISTEN -> SYN-RECEIVED).
const table: Row[] = [
  {
    name: 'outbound, closed locally first',
    role: 'outbound',
    outcome: 'completed',
    closedBy: 'local',
    closeKind: 'fin',
    path: ['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'FIN-WAIT-1', 'FIN-WAIT-2', 'CLOSED'],
  },
  {
    name: 'outbound, closed by the peer first',
    role: 'outbound',
    outcome: 'completed',
    closedBy: 'remote',
    closeKind: 'fin',
    path: ['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'CLOSE-WAIT', 'LAST-ACK', 'CLOSED'],
  },
  {
    name: 'inbound, closed locally first',
    role: 'inbound',
    outcome: 'completed',
    closedBy: 'local',
    closeKind: 'fin',
    path: ['LISTEN', 'SYN-RECEIVED', 'ESTABLISHED', 'FIN-WAIT-1', 'FIN-WAIT-2', 'CLOSED'],
  },
  {
    name: 'inbound, closed by the peer',
    role: 'inbound',
    outcome: 'completed',
    closedBy: 'remote',
    closeKind: 'fin',
    path: ['LISTEN', 'SYN-RECEIVED', 'ESTABLISHED', 'CLOSE-WAIT', 'LAST-ACK', 'CLOSED'],
  },
  {
    name: 'simultaneous close (Linux)',
    role: 'outbound',
    outcome: 'completed',
    closedBy: 'both',
    closeKind: 'simultaneous',
    path: ['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'FIN-WAIT-1', 'CLOSING', 'CLOSED'],
  },
  {
    name: 'simultaneous close through TIME-WAIT',
    role: 'inbound',
    outcome: 'completed',
    closedBy: 'both',
    closeKind: 'simultaneous',
    path: ['LISTEN', 'SYN-RECEIVED', 'ESTABLISHED', 'FIN-WAIT-1', 'CLOSING', 'TIME-WAIT', 'CLOSED'],
  },
  {
    name: 'refused (RST answers the SYN)',
    role: 'outbound',
    outcome: 'refused',
    closedBy: null,
    closeKind: null,
    path: ['CLOSED', 'SYN-SENT', 'CLOSED'],
  },
  {
    name: 'connect timed out (nothing came back)',
    role: 'outbound',
    outcome: 'aborted',
    closedBy: null,
    closeKind: null,
    path: ['CLOSED', 'SYN-SENT', 'CLOSED'],
    segsIn: 0,
  },
  {
    name: 'reset while established',
    role: 'outbound',
    outcome: 'reset',
    closedBy: null,
    closeKind: 'reset',
    path: ['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'CLOSED'],
  },
  {
    name: 'reset after the peer closed',
    role: 'outbound',
    outcome: 'reset',
    closedBy: 'remote',
    closeKind: 'reset',
    path: ['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'CLOSE-WAIT', 'CLOSED'],
  },
  {
    name: 'reset in FIN-WAIT-1',
    role: 'inbound',
    outcome: 'reset',
    closedBy: 'local',
    closeKind: 'reset',
    path: ['LISTEN', 'SYN-RECEIVED', 'ESTABLISHED', 'FIN-WAIT-1', 'CLOSED'],
  },
  {
    name: 'FIN-WAIT-2 to CLOSED is the normal end, not a reset',
    role: 'outbound',
    outcome: 'completed',
    closedBy: 'local',
    closeKind: 'fin',
    path: ['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'FIN-WAIT-1', 'FIN-WAIT-2', 'CLOSED'],
  },
  {
    name: 'reset in LAST-ACK counts as completed (our FIN was out)',
    role: 'outbound',
    outcome: 'completed',
    closedBy: 'remote',
    closeKind: 'fin',
    path: ['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'CLOSE-WAIT', 'LAST-ACK', 'CLOSED'],
  },
  {
    name: 'inbound handshake that never completes',
    role: 'inbound',
    outcome: 'aborted',
    closedBy: null,
    closeKind: null,
    path: ['LISTEN', 'SYN-RECEIVED', 'CLOSED'],
  },
  {
    name: 'inbound closed before the final ACK',
    role: 'inbound',
    outcome: 'aborted',
    closedBy: 'local',
    closeKind: 'fin',
    path: ['LISTEN', 'SYN-RECEIVED', 'FIN-WAIT-1', 'FIN-WAIT-2', 'CLOSED'],
  },
  {
    name: 'simultaneous open',
    role: 'outbound',
    outcome: 'completed',
    closedBy: 'local',
    closeKind: 'fin',
    path: [
      'CLOSED',
      'SYN-SENT',
      'SYN-RECEIVED',
      'ESTABLISHED',
      'FIN-WAIT-1',
      'FIN-WAIT-2',
      'CLOSED',
    ],
  },
  {
    name: 'listener opened and closed',
    role: 'listener',
    outcome: 'completed',
    closedBy: null,
    closeKind: null,
    path: ['CLOSED', 'LISTEN', 'CLOSED'],
  },
  {
    name: 'listener still listening',
    role: 'listener',
    outcome: 'open',
    closedBy: null,
    closeKind: null,
    path: ['CLOSED', 'LISTEN'],
  },
  {
    name: 'still open',
    role: 'outbound',
    outcome: 'open',
    closedBy: null,
    closeKind: null,
    path: ['CLOSED', 'SYN-SENT', 'ESTABLISHED'],
  },
  {
    name: 'first seen mid-life (born before the capture run)',
    role: 'unknown',
    outcome: 'completed',
    closedBy: 'local',
    closeKind: 'fin',
    path: ['ESTABLISHED', 'FIN-WAIT-1', 'FIN-WAIT-2', 'CLOSED'],
    gap: true,
  },
  {
    name: 'listener first seen at its close',
    role: 'listener',
    outcome: 'completed',
    closedBy: null,
    closeKind: null,
    path: ['LISTEN', 'CLOSED'],
  },
];

for (const row of table) {
  test(`lifecycle: ${row.name}`, () => {
    const conn = replay(row.path, row.segsIn === undefined ? {} : { segsIn: row.segsIn });
    assert.equal(conn.role, row.role);
    assert.equal(conn.outcome, row.outcome);
    assert.equal(conn.closedBy, row.closedBy);
    assert.equal(conn.closeKind, row.closeKind);
    assert.deepEqual(conn.states, row.path);
    assert.equal(conn.hasGap, row.gap ?? false);
    assert.equal(conn.eventCount, row.path.length - 1);
    assert.equal(conn.firstSeq, 7);
    assert.equal(conn.lastSeq, (row.path.length - 1) * 7);
    assert.equal(conn.closedUs === null, row.path[row.path.length - 1] !== 'CLOSED');
  });
}

test('lifecycle: every pair in the transition table is accepted without a gap', () => {
  for (const [from, tos] of TRANSITIONS) {
    for (const to of tos) {
      const conn = applyChange(null, { ...BASE, seq: 1, timeUs: 5, oldState: from, newState: to });
      assert.equal(isTransition(from, to), true);
      assert.equal(
        conn.hasGap,
        !['CLOSED', 'LISTEN', 'NEW-SYN-RECEIVED'].includes(from),
        `${from} -> ${to}`,
      );
    }
  }
  assert.equal(isTransition('CLOSED', 'ESTABLISHED'), false);
  assert.equal(isTransition('LAST-ACK', 'ESTABLISHED'), false);
});

test('lifecycle: times, counters, socket fields and the source port picked after SYN-SENT', () => {
  const conn = replay(['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'FIN-WAIT-1', 'FIN-WAIT-2', 'CLOSED']);
  assert.equal(conn.localPort, 40000);
  assert.equal(connectMs(conn), 1);
  assert.equal(durationMs(conn), 4);
  assert.equal(conn.bytesSent, 50, 'counters are those of the last transition');
  assert.equal(conn.sockInode, 777);
  assert.equal(conn.runId, '18a');
  assert.equal(conn.lastEventUs, 1_005_000);
});

test('lifecycle: a missing transition is flagged as a gap and kept in the path', () => {
  let conn = replay(['CLOSED', 'SYN-SENT', 'ESTABLISHED']);
  conn = applyChange(conn, {
    ...BASE,
    seq: 90,
    timeUs: 2_000_000,
    oldState: 'FIN-WAIT-2',
    newState: 'CLOSED',
  });
  assert.equal(conn.hasGap, true);
  assert.deepEqual(conn.states, ['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'FIN-WAIT-2', 'CLOSED']);
  assert.equal(conn.outcome, 'completed');
});

test('lifecycle: an impossible move with a matching old state is a gap too', () => {
  let conn = replay(['CLOSED', 'SYN-SENT']);
  conn = applyChange(conn, {
    ...BASE,
    seq: 90,
    timeUs: 2_000_000,
    oldState: 'SYN-SENT',
    newState: 'FIN-WAIT-2',
  });
  assert.equal(conn.hasGap, true);
});

test('lifecycle: a late event reopens an expired connection', () => {
  let conn = replay(['CLOSED', 'SYN-SENT', 'ESTABLISHED']);
  conn = { ...conn, outcome: 'expired' };
  conn = applyChange(conn, {
    ...BASE,
    seq: 90,
    timeUs: 2_000_000,
    oldState: 'ESTABLISHED',
    newState: 'CLOSE-WAIT',
  });
  assert.equal(conn.outcome, 'open');
});
