import avro from 'avsc';
import fs from 'node:fs';
import { Kafka, logLevel } from 'kafkajs';
import { Client, Pool } from 'pg';
import { createLogger } from '../common/log';
import { schemaPath } from '../common/paths';
import { createRegistry, frame, registerValueSchema, setCompatibility } from '../common/registry';
import { migrate } from '../processor/migrate';
import { ensurePartitions, grantReader } from '../processor/partitions';
import type { StateChange } from '../processor/lifecycle';
import { stateToAvro } from '../producer/record';
import type { TcpState } from '../common/event';
import { uniqueName } from './harness';

export const quiet = createLogger('test', 'error');

export interface TestDatabase {
  name: string;
  env: Record<string, string>;
  pool: Pool;
  drop(): Promise<void>;
}

/** A database of its own for one test file, migrated; dropped (with its connections) at the end. */
export async function freshDatabase(stackEnv: Record<string, string>): Promise<TestDatabase> {
  const name = uniqueName('tcpaudit_t').replace(/[^a-z0-9_]/g, '_');
  const base = {
    host: stackEnv.PGHOST,
    port: Number(stackEnv.PGPORT),
    user: stackEnv.PGUSER,
    password: stackEnv.PGPASSWORD,
  };
  const admin = new Client({ ...base, database: stackEnv.PGDATABASE });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const pool = new Pool({ ...base, database: name, max: 8 });
  pool.on('error', () => undefined);
  await migrate(pool, quiet);
  await ensurePartitions(pool, quiet);
  await grantReader(pool, quiet); // as `tcpaudit process` does on start
  return {
    name,
    env: { ...stackEnv, PGDATABASE: name },
    pool,
    async drop() {
      await pool.end();
      const c = new Client({ ...base, database: stackEnv.PGDATABASE });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c.end();
    },
  };
}

export interface Schemas {
  eventId: number;
  eventType: avro.Type;
  gapId: number;
  gapType: avro.Type;
}

/** Registers both value schemas under the topic's subjects, as the producer does. */
export async function registerSchemas(registryUrl: string, topic: string): Promise<Schemas> {
  const registry = createRegistry(registryUrl);
  const { id: eventId, type: eventType } = await registerValueSchema(registry, registryUrl, topic);
  const text = fs.readFileSync(schemaPath('capture-gap.avsc'), 'utf8');
  await setCompatibility(registryUrl, `${topic}.gaps-value`, 'BACKWARD');
  const { id: gapId } = await registry.register(
    { type: 'AVRO' as never, schema: text },
    { subject: `${topic}.gaps-value` },
  );
  return { eventId, eventType, gapId, gapType: avro.Type.forSchema(JSON.parse(text)) };
}

/** The identity and time of a test state change; every other field takes a plain default. */
type ChangeBasics = Pick<StateChange, 'connId' | 'seq' | 'host' | 'bootId' | 'timeUs'>;

/** A state change of a 10.0.0.1 -> 10.0.0.2:80 connection of process 1 ('x'), counters 0. */
export function testChange(c: ChangeBasics & Partial<StateChange>): StateChange {
  return {
    family: 4,
    localAddr: '10.0.0.1',
    localPort: 40000,
    remoteAddr: '10.0.0.2',
    remotePort: 80,
    oldState: 'CLOSED',
    newState: 'SYN-SENT',
    pid: 1,
    tid: 1,
    comm: 'x',
    uid: 0,
    netns: 1,
    cgroupId: 1,
    bytesSent: 0,
    bytesReceived: 0,
    segsOut: 0,
    segsIn: 0,
    retransmits: 0,
    srttUs: 0,
    sockInode: 0,
    sockUid: 0,
    sockGid: 0,
    ...c,
  };
}

export function encodeEvent(s: Schemas, c: StateChange): Buffer {
  return frame(
    s.eventId,
    s.eventType.toBuffer({
      conn_id: c.connId,
      seq: c.seq,
      host: c.host,
      boot_id: c.bootId,
      time: c.timeUs,
      family: c.family === 6 ? 'INET6' : 'INET',
      local_addr: c.localAddr,
      local_port: c.localPort,
      remote_addr: c.remoteAddr,
      remote_port: c.remotePort,
      old_state: stateToAvro(c.oldState as TcpState),
      new_state: stateToAvro(c.newState as TcpState),
      pid: c.pid,
      tid: c.tid,
      comm: c.comm,
      uid: c.uid,
      netns: c.netns,
      cgroup_id: c.cgroupId,
      bytes_sent: c.bytesSent,
      bytes_received: c.bytesReceived,
      segs_out: c.segsOut,
      segs_in: c.segsIn,
      retransmits: c.retransmits,
      srtt_us: c.srttUs,
      sock_inode: c.sockInode,
      sock_uid: c.sockUid,
      sock_gid: c.sockGid,
    }),
  );
}

/** Kernel paths the synthetic stream cycles through, with the outcome each must produce. */
export const PATTERNS: {
  path: string[];
  role: string;
  outcome: string;
  closedBy: string | null;
}[] = [
  {
    path: ['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'FIN-WAIT-1', 'FIN-WAIT-2', 'CLOSED'],
    role: 'outbound',
    outcome: 'completed',
    closedBy: 'local',
  },
  {
    path: ['LISTEN', 'SYN-RECEIVED', 'ESTABLISHED', 'CLOSE-WAIT', 'LAST-ACK', 'CLOSED'],
    role: 'inbound',
    outcome: 'completed',
    closedBy: 'remote',
  },
  { path: ['CLOSED', 'SYN-SENT', 'CLOSED'], role: 'outbound', outcome: 'refused', closedBy: null },
  {
    path: ['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'CLOSED'],
    role: 'outbound',
    outcome: 'reset',
    closedBy: null,
  },
  {
    path: ['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'FIN-WAIT-1', 'CLOSING', 'CLOSED'],
    role: 'outbound',
    outcome: 'completed',
    closedBy: 'both',
  },
  {
    path: ['LISTEN', 'SYN-RECEIVED', 'CLOSED'],
    role: 'inbound',
    outcome: 'aborted',
    closedBy: null,
  },
  { path: ['CLOSED', 'LISTEN', 'CLOSED'], role: 'listener', outcome: 'completed', closedBy: null },
  {
    path: ['CLOSED', 'SYN-SENT', 'ESTABLISHED'],
    role: 'outbound',
    outcome: 'open',
    closedBy: null,
  },
];

export interface Stream {
  changes: StateChange[];
  expected: Map<
    string,
    { role: string; outcome: string; closedBy: string | null; states: string[]; events: number }
  >;
}

/**
 * `conns` connections on `hosts` hosts; their state changes interleave (a few connections open
 * at once per host, as on a real host) and carry per-host sequence numbers. Times are `startUs`
 * plus 1 ms per step, or now when `live` (for latency measurements, stamped by the publisher).
 */
export function syntheticStream(
  conns: number,
  hosts = 3,
  startUs = Date.now() * 1000,
  tag = 'a',
): Stream {
  const changes: StateChange[] = [];
  const expected: Stream['expected'] = new Map();
  const seq = new Array(hosts).fill(0);
  const pending: { id: string; h: number; p: number; step: number; n: number }[] = [];
  let t = startUs;
  let made = 0;
  while (made < conns || pending.length > 0) {
    while (made < conns && pending.length < 8) {
      const h = made % hosts;
      const p = made % PATTERNS.length;
      const id = `b${String(h).padStart(7, '0')}-${tag}${h}-${made.toString(16)}`;
      pending.push({ id, h, p, step: 1, n: made });
      const pat = PATTERNS[p];
      expected.set(id, {
        role: pat.role,
        outcome: pat.outcome,
        closedBy: pat.closedBy,
        states: pat.path,
        events: pat.path.length - 1,
      });
      made++;
    }
    const i = (t / 1000) % pending.length;
    const c = pending[Math.floor(i)];
    const path = PATTERNS[c.p].path;
    t += 1000;
    const listener = path[1] === 'LISTEN';
    changes.push({
      connId: c.id,
      seq: ++seq[c.h],
      host: `host${c.h}`,
      bootId: `boot${c.h}`,
      timeUs: t,
      family: 4,
      localAddr: '10.0.0.1',
      localPort: listener ? 8000 + (c.n % 1000) : 30000 + (c.n % 30000),
      remoteAddr: listener ? '0.0.0.0' : '10.9.0.2',
      remotePort: listener ? 0 : 443,
      oldState: path[c.step - 1],
      newState: path[c.step],
      pid: 100 + c.h,
      tid: 100 + c.h,
      comm: `proc${c.n % 5}`,
      uid: 1000,
      netns: 1,
      cgroupId: 1,
      bytesSent: c.step * 100,
      bytesReceived: c.step * 50,
      segsOut: c.step,
      segsIn: c.step,
      retransmits: 0,
      srttUs: 100,
      sockInode: 1000 + c.n,
      sockUid: 1000,
      sockGid: 1000,
    });
    c.step++;
    if (c.step >= path.length) pending.splice(pending.indexOf(c), 1);
  }
  return { changes, expected };
}

export function kafkaClient(brokers: string): Kafka {
  return new Kafka({
    clientId: 'tcpaudit-test',
    brokers: brokers.split(','),
    logLevel: logLevel.NOTHING,
  });
}

export async function createTopic(kafka: Kafka, topic: string, partitions: number) {
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({
    topics: [{ topic, numPartitions: partitions }],
    waitForLeaders: true,
  });
  await admin.disconnect();
}

export interface ConnRow {
  conn_id: string;
  role: string;
  outcome: string;
  closed_by: string | null;
  states: string[];
  event_count: number;
  has_gap: boolean;
}

export async function connectionRows(pool: Pool): Promise<Map<string, ConnRow>> {
  const { rows } = await pool.query<ConnRow>(
    'SELECT conn_id, role, outcome, closed_by, states, event_count, has_gap FROM connections',
  );
  return new Map(rows.map((r) => [r.conn_id, r]));
}

/** Every expected connection present once and exactly right; no raw event twice. */
export async function checkExact(pool: Pool, stream: Stream): Promise<string[]> {
  const problems: string[] = [];
  const rows = await connectionRows(pool);
  const dupes = await pool.query(
    'SELECT conn_id, seq FROM tcp_events GROUP BY conn_id, seq HAVING count(*) > 1',
  );
  if (dupes.rowCount) problems.push(`${dupes.rowCount} raw events stored twice`);
  const count = await pool.query<{ n: string }>('SELECT count(*) AS n FROM tcp_events');
  if (Number(count.rows[0].n) !== stream.changes.length)
    problems.push(`tcp_events has ${count.rows[0].n} rows, want ${stream.changes.length}`);
  const conns = await pool.query<{ n: string }>('SELECT count(*) AS n FROM connections');
  if (Number(conns.rows[0].n) !== stream.expected.size)
    problems.push(`connections has ${conns.rows[0].n} rows, want ${stream.expected.size}`);
  for (const [id, want] of stream.expected) {
    const row = rows.get(id);
    if (!row) {
      problems.push(`${id} missing`);
      continue;
    }
    const got = {
      role: row.role,
      outcome: row.outcome,
      closedBy: row.closed_by,
      states: row.states,
      events: row.event_count,
    };
    if (JSON.stringify(got) !== JSON.stringify(want) || row.has_gap) {
      problems.push(
        `${id}: got ${JSON.stringify({ ...got, gap: row.has_gap })}, want ${JSON.stringify(want)}`,
      );
    }
    if (problems.length > 10) break;
  }
  return problems;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(250);
  }
}

/** What a stack test of the consumer starts from: its own database, topic and schemas. */
export async function freshPipeline(stackEnv: Record<string, string>, topicPrefix: string) {
  const db = await freshDatabase(stackEnv);
  const topic = uniqueName(topicPrefix);
  const kafka = kafkaClient(stackEnv.KAFKA_BROKERS);
  await createTopic(kafka, topic, 1);
  const schemas = await registerSchemas(stackEnv.SCHEMA_REGISTRY_URL, topic);
  return { db, topic, kafka, schemas };
}
