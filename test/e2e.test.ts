import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { Client } from 'pg';
import { endpoints, uniqueName, type Endpoints } from './harness';
import { ROOT, runCli, type Running } from './processes';
import { freshDatabase, type TestDatabase } from './processor-helpers';

const run = promisify(execFile);
const CLIENT = path.join(ROOT, 'test', 'fixtures', 'tcp-client.py');
const ownComm = fs.readFileSync('/proc/self/comm', 'utf8').trim();

interface ClientResult {
  pid: number;
  local_port: number | null;
  error: string | null;
}

/** A server that answers the way one test connection needs: close after the peer, or first. */
function listen(host: string, closeFirst: boolean): Promise<net.Server> {
  const server = net.createServer((socket) => {
    socket.on('error', () => undefined);
    if (closeFirst) socket.end();
    else socket.on('end', () => socket.end()).resume();
  });
  return new Promise((resolve) => server.listen(0, host, () => resolve(server)));
}

const portOf = (server: net.Server) => (server.address() as net.AddressInfo).port;

async function freePort(host: string): Promise<number> {
  const server = await listen(host, true);
  const port = portOf(server);
  await new Promise((r) => server.close(r));
  return port;
}

async function client(host: string, port: number, mode: string): Promise<ClientResult> {
  const { stdout } = await run('python3', [CLIENT, host, String(port), mode]);
  return JSON.parse(stdout);
}

let stack: Endpoints;
let producer: Running;
let processor: Running;
let db: Client;
let database: TestDatabase;

before(async () => {
  stack = await endpoints();
  // A database of its own: the test's rows must not mix with those of `make run`.
  database = await freshDatabase(stack.env);
  const topic = uniqueName('tcpaudit.e2e');
  const env = { ...database.env, TCPAUDIT_TOPIC: topic, TCPAUDIT_GROUP: uniqueName('e2e') };
  processor = runCli(['process'], env);
  producer = runCli(['produce', '--partitions', '3'], env);
  await Promise.all([producer.waitForLog('producing'), processor.waitForLog('consuming')]);
  db = new Client({
    host: stack.env.PGHOST,
    port: Number(stack.env.PGPORT),
    user: stack.env.PGUSER,
    password: stack.env.PGPASSWORD,
    database: database.name,
  });
  await db.connect();
});

after(async () => {
  await db?.end();
  const codes = await Promise.all([producer?.stop(), processor?.stop()]);
  await database?.drop();
  assert.deepEqual(codes, [0, 0], 'producer and processor stop cleanly on SIGTERM');
});

interface Row {
  role: string;
  outcome: string;
  family: number;
  local_addr: string;
  local_port: number;
  remote_addr: string;
  remote_port: number;
  pid: number;
  comm: string;
  states: string[];
  closed_by: string | null;
  close_kind: string | null;
  bytes_sent: string;
  bytes_received: string;
}

async function rowsFor(ports: number[], expected: number): Promise<Row[]> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const { rows } = await db.query<Row>(
      `SELECT role, outcome, family, host(local_addr) AS local_addr, local_port,
              host(remote_addr) AS remote_addr, remote_port, pid, comm, states, closed_by,
              close_kind, bytes_sent, bytes_received
         FROM connections
        WHERE local_port = ANY($1) OR remote_port = ANY($1)
        ORDER BY role, local_port, remote_port`,
      [ports],
    );
    const settled = rows.length >= expected && rows.every((r) => r.outcome !== 'open');
    if (settled || Date.now() > deadline) return rows;
    await new Promise((r) => setTimeout(r, 500));
  }
}

for (const host of ['127.0.0.1', '::1']) {
  test(`connections on ${host} become exact audit rows`, async () => {
    const family = host.includes(':') ? 6 : 4;
    const peerCloses = await listen(host, false);
    const serverCloses = await listen(host, true);
    const [a, b, closed] = [portOf(peerCloses), portOf(serverCloses), await freePort(host)];

    const byClient = await client(host, a, 'client-close');
    const byServer = await client(host, b, 'server-close');
    const refused = await client(host, closed, 'refused');
    assert.equal(refused.error, 'refused');
    await new Promise((r) => peerCloses.close(r));
    await new Promise((r) => serverCloses.close(r));

    // Eight rows: three listeners (one only to find a free port), two connections with both
    // ends on this host, and the refused attempt.
    const rows = await rowsFor([a, b, closed], 8);
    const me = { pid: process.pid, comm: ownComm };
    const py = (c: ClientResult) => ({ pid: c.pid, comm: 'python3' });
    const listener = (port: number) => ({
      role: 'listener',
      outcome: 'completed',
      local_port: port,
      remote_port: 0,
      ...me,
      states: ['CLOSED', 'LISTEN', 'CLOSED'],
      closed_by: null,
      close_kind: null,
    });
    const expected = [
      {
        role: 'inbound',
        outcome: 'completed',
        local_port: a,
        remote_port: byClient.local_port,
        ...me,
        states: ['LISTEN', 'SYN-RECEIVED', 'ESTABLISHED', 'CLOSE-WAIT', 'LAST-ACK', 'CLOSED'],
        closed_by: 'remote',
        close_kind: 'fin',
      },
      {
        role: 'inbound',
        outcome: 'completed',
        local_port: b,
        remote_port: byServer.local_port,
        ...me,
        states: ['LISTEN', 'SYN-RECEIVED', 'ESTABLISHED', 'FIN-WAIT-1', 'FIN-WAIT-2', 'CLOSED'],
        closed_by: 'local',
        close_kind: 'fin',
      },
      listener(a),
      listener(b),
      listener(closed),
      {
        role: 'outbound',
        outcome: 'refused',
        local_port: refused.local_port,
        remote_port: closed,
        ...py(refused),
        states: ['CLOSED', 'SYN-SENT', 'CLOSED'],
        closed_by: null,
        close_kind: null,
      },
      {
        role: 'outbound',
        outcome: 'completed',
        local_port: byClient.local_port,
        remote_port: a,
        ...py(byClient),
        states: ['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'FIN-WAIT-1', 'FIN-WAIT-2', 'CLOSED'],
        closed_by: 'local',
        close_kind: 'fin',
      },
      {
        role: 'outbound',
        outcome: 'completed',
        local_port: byServer.local_port,
        remote_port: b,
        ...py(byServer),
        states: ['CLOSED', 'SYN-SENT', 'ESTABLISHED', 'CLOSE-WAIT', 'LAST-ACK', 'CLOSED'],
        closed_by: 'remote',
        close_kind: 'fin',
      },
    ];
    const picked = rows.map((r) => ({
      role: r.role,
      outcome: r.outcome,
      local_port: r.local_port,
      remote_port: r.remote_port,
      pid: r.pid,
      comm: r.comm,
      states: r.states,
      closed_by: r.closed_by,
      close_kind: r.close_kind,
    }));
    const sortKey = (r: { role: string; local_port: number | null; remote_port: number | null }) =>
      `${r.role}/${String(r.local_port).padStart(5, '0')}/${String(r.remote_port).padStart(5, '0')}`;
    expected.sort((x, y) => (sortKey(x) < sortKey(y) ? -1 : 1));
    picked.sort((x, y) => (sortKey(x) < sortKey(y) ? -1 : 1));
    assert.deepEqual(picked, expected);

    const unspecified = family === 6 ? '::' : '0.0.0.0';
    for (const row of rows) {
      assert.equal(row.family, family);
      assert.equal(row.local_addr, host);
      assert.equal(row.remote_addr, row.role === 'listener' ? unspecified : host);
    }
  });
}
