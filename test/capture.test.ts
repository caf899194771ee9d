import assert from 'node:assert/strict';
import { readFileSync, statSync } from 'node:fs';
import { createServer, connect, type AddressInfo, type Server } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { TcpEvent } from '../common/event';
import { startCapture, type CaptureHandle } from '../producer/capture/capture';

// Real sockets on loopback against the real kernel: needs root (or CAP_BPF + CAP_PERFMON).
const skip = process.getuid?.() === 0 ? false : 'loading BPF needs root';

const PAYLOAD = 100_000;
const COMM = readFileSync('/proc/self/comm', 'utf8').trim();

function listen(host: string): Promise<Server> {
  const server = createServer((sock) => {
    sock.resume(); // read everything, then close our side once the client's FIN arrives
    sock.on('end', () => sock.end());
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve(server));
  });
}

/** Connects, sends exactly PAYLOAD bytes, closes first; resolves with the client's port. */
function roundTrip(host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const client = connect({ host, port });
    let localPort = 0;
    client.once('error', reject);
    client.once('connect', () => {
      localPort = client.localPort ?? 0;
      client.end(Buffer.alloc(PAYLOAD, 0x61));
    });
    client.resume();
    client.once('close', () => resolve(localPort));
  });
}

async function waitFor(check: () => boolean, what: string, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const transitions = (events: TcpEvent[]) => events.map((e) => `${e.oldState}>${e.newState}`);

describe('capture on loopback', { skip }, () => {
  const seen: TcpEvent[] = [];
  const errors: Error[] = [];
  let capture: CaptureHandle;
  const startNs = BigInt(Date.now()) * 1_000_000n;

  before(() => {
    capture = startCapture({
      ringBytes: 1 << 20,
      onEvents: (events) => seen.push(...events),
      onError: (err) => errors.push(err),
    });
  });

  after(async () => {
    await capture?.stop();
  });

  /** Runs one connection through a fresh listener and returns its events by role. */
  async function connection(listenHost: string, connectHost: string) {
    const server = await listen(listenHost);
    const serverPort = (server.address() as AddressInfo).port;
    const clientPort = await roundTrip(connectHost, serverPort);
    await new Promise<void>((r) => server.close(() => r()));

    const mine = () =>
      seen.filter((e) => e.localPort === serverPort || e.remotePort === serverPort);
    // client 5 + server child 5 + listener 2
    await waitFor(() => mine().length >= 12, `12 events on port ${serverPort}`);

    const clientId = mine().find((e) => e.localPort === clientPort)?.connId;
    const client = mine().filter((e) => e.connId === clientId);
    const child = mine().filter((e) => e.localPort === serverPort && e.remotePort === clientPort);
    const listener = mine().filter((e) => e.localPort === serverPort && e.remotePort === 0);
    return { serverPort, clientPort, client, child, listener, all: mine() };
  }

  function checkCommon(c: Awaited<ReturnType<typeof connection>>, family: 4 | 6) {
    assert.deepEqual(transitions(c.client), [
      'CLOSED>SYN-SENT',
      'SYN-SENT>ESTABLISHED',
      'ESTABLISHED>FIN-WAIT-1',
      'FIN-WAIT-1>FIN-WAIT-2',
      // tcp_time_wait() hands the connection to a timewait sock and closes this one
      'FIN-WAIT-2>CLOSED',
    ]);
    assert.deepEqual(transitions(c.child), [
      'LISTEN>SYN-RECEIVED',
      'SYN-RECEIVED>ESTABLISHED',
      'ESTABLISHED>CLOSE-WAIT',
      'CLOSE-WAIT>LAST-ACK',
      'LAST-ACK>CLOSED',
    ]);
    assert.deepEqual(transitions(c.listener), ['CLOSED>LISTEN', 'LISTEN>CLOSED']);

    for (const role of [c.client, c.child, c.listener]) {
      assert.equal(new Set(role.map((e) => e.connId)).size, 1, 'one connId per socket');
    }
    const ids = new Set([c.client[0].connId, c.child[0].connId, c.listener[0].connId]);
    assert.equal(ids.size, 3, 'client, child and listener have distinct connIds');

    // Process of the opener on every event, including those run in softirq
    // (SYN-SENT>ESTABLISHED, FIN-WAIT-2>CLOSED and all of the child's).
    const netns = statSync('/proc/self/ns/net').ino;
    for (const e of c.all) {
      assert.equal(e.pid, process.pid, `${e.oldState}>${e.newState} pid`);
      assert.equal(e.tid, process.pid, 'connect() and listen() ran on the main thread');
      assert.equal(e.comm, COMM);
      assert.equal(e.uid, process.getuid?.());
      assert.equal(e.netns, netns);
      assert.equal(e.family, family);
      const nowNs = BigInt(Date.now()) * 1_000_000n;
      assert.ok(e.timeNs >= startNs - 1_000_000_000n && e.timeNs <= nowNs, 'wall-clock time');
    }

    // SYN-SENT runs before connect() picks the local port
    for (const e of c.client.slice(1)) {
      assert.equal(e.localPort, c.clientPort);
      assert.equal(e.remotePort, c.serverPort);
    }
    const times = c.client.map((e) => e.timeNs);
    assert.deepEqual([...times].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0)), times);

    // bytes_acked/bytes_received count sequence space: SYN and FIN each add one
    const clientLast = c.client[c.client.length - 1];
    const childLast = c.child[c.child.length - 1];
    assert.equal(clientLast.bytesSent, BigInt(PAYLOAD) + 2n);
    assert.equal(childLast.bytesReceived, BigInt(PAYLOAD) + 1n);
    assert.ok(clientLast.segsOut > 2 && childLast.segsIn > 2);
  }

  it('follows an IPv4 connection from connect to close', async () => {
    const c = await connection('127.0.0.1', '127.0.0.1');
    checkCommon(c, 4);
    for (const e of [...c.client.slice(1), ...c.child]) {
      assert.equal(e.localAddr, '127.0.0.1');
      assert.equal(e.remoteAddr, '127.0.0.1');
    }
  });

  it('follows an IPv6 connection from connect to close', async () => {
    const c = await connection('::1', '::1');
    checkCommon(c, 6);
    for (const e of [...c.client.slice(1), ...c.child]) {
      assert.equal(e.localAddr, '::1');
      assert.equal(e.remoteAddr, '::1');
    }
  });

  it('reports a dual-stack listener\'s IPv4 peer as v4-mapped IPv6', async () => {
    const server = await listen('::');
    const serverPort = (server.address() as AddressInfo).port;
    const clientPort = await roundTrip('127.0.0.1', serverPort);
    await new Promise<void>((r) => server.close(() => r()));
    const child = () =>
      seen.filter((e) => e.localPort === serverPort && e.remotePort === clientPort);
    await waitFor(() => child().length >= 5, 'the child socket\'s 5 events');
    for (const e of child()) {
      assert.equal(e.family, 6);
      assert.equal(e.localAddr, '::ffff:127.0.0.1');
      assert.equal(e.remoteAddr, '::ffff:127.0.0.1');
      assert.equal(e.pid, process.pid);
    }
  });

  it('loses nothing and numbers every event once', async () => {
    await capture.stop();
    const stats = capture.stats();
    assert.deepEqual(errors, []);
    assert.equal(stats.kernelLost, 0);
    assert.equal(stats.userDropped, 0);
    assert.equal(stats.seqMissing, 0);
    assert.equal(stats.events, seen.length);
    assert.equal(new Set(seen.map((e) => e.seq)).size, seen.length);
  });
});
