import assert from 'node:assert/strict';
import { readFileSync, statSync } from 'node:fs';
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { TcpEvent } from '../common/event';
import { startCapture, type CaptureHandle } from '../producer/capture/capture';

// Real sockets on loopback against the real kernel: needs root (or CAP_BPF + CAP_PERFMON).
const skip = process.getuid?.() === 0 ? false : 'loading BPF needs root';

const PAYLOAD = 100_000;
const COMM = readFileSync('/proc/self/comm', 'utf8').trim();

function listen(host: string): Promise<Server> {
  // echo everything back, then close our side once the client's FIN arrives
  const server = createServer((sock) => sock.pipe(sock));
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve(server));
  });
}

/** Inode of a net.Socket's file, as /proc/self/fd shows it (socket:[inode]). */
function socketInode(sock: Socket): number {
  const fd = (sock as unknown as { _handle: { fd: number } })._handle.fd;
  return statSync(`/proc/self/fd/${fd}`).ino;
}

/**
 * Connects, sends exactly PAYLOAD bytes, closes first, reads the echo; resolves with the
 * client's port, its socket inode and how many bytes came back.
 */
function roundTrip(
  host: string,
  port: number,
): Promise<{ port: number; inode: number; echoed: number }> {
  return new Promise((resolve, reject) => {
    const client = connect({ host, port });
    let localPort = 0;
    let inode = 0;
    let echoed = 0;
    client.once('error', reject);
    client.once('connect', () => {
      localPort = client.localPort ?? 0;
      inode = socketInode(client);
      client.end(Buffer.alloc(PAYLOAD, 0x61));
    });
    client.on('data', (d: Buffer) => (echoed += d.length));
    client.once('close', () => resolve({ port: localPort, inode, echoed }));
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
    const trip = await roundTrip(connectHost, serverPort);
    const clientPort = trip.port;
    assert.equal(trip.echoed, PAYLOAD);
    await new Promise<void>((r) => server.close(() => r()));

    const mine = () =>
      seen.filter((e) => e.localPort === serverPort || e.remotePort === serverPort);
    // client 5 + server child 5 + listener 2
    await waitFor(() => mine().length >= 12, `12 events on port ${serverPort}`);

    const clientId = mine().find((e) => e.localPort === clientPort)?.connId;
    const client = mine().filter((e) => e.connId === clientId);
    const child = mine().filter((e) => e.localPort === serverPort && e.remotePort === clientPort);
    const listener = mine().filter((e) => e.localPort === serverPort && e.remotePort === 0);
    return {
      serverPort,
      clientPort,
      clientInode: trip.inode,
      client,
      child,
      listener,
      all: mine(),
    };
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
    assert.deepEqual(
      [...times].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0)),
      times,
    );

    // payload only: no SYN, no FIN, on both sides and at every step
    const payload = BigInt(PAYLOAD);
    const clientLast = c.client[c.client.length - 1];
    const childLast = c.child[c.child.length - 1];
    assert.deepEqual([clientLast.bytesSent, clientLast.bytesReceived], [payload, payload]);
    assert.deepEqual([childLast.bytesSent, childLast.bytesReceived], [payload, payload]);
    assert.deepEqual(
      [c.client[1].bytesSent, c.client[1].bytesReceived, c.child[1].bytesSent],
      [0n, 0n, 0n],
      'nothing at ESTABLISHED',
    );
    for (const e of c.listener) assert.deepEqual([e.bytesSent, e.bytesReceived], [0n, 0n]);
    assert.ok(clientLast.segsOut > 2 && childLast.segsIn > 2);

    // socket identity: the client's file inode from its first event on, root's ids
    for (const e of c.client) {
      assert.equal(e.sockInode, c.clientInode, `${e.oldState}>${e.newState} sockInode`);
      assert.deepEqual([e.sockUid, e.sockGid], [0, 0]);
    }
    assert.equal(c.child[0].sockInode, 0, 'a child before accept() has no file');
    assert.ok(childLast.sockInode > 0, 'accepted: the child has a file');
    assert.ok(c.listener.every((e) => e.sockInode > 0));
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

  it("reports a dual-stack listener's IPv4 peer as v4-mapped IPv6", async () => {
    const server = await listen('::');
    const serverPort = (server.address() as AddressInfo).port;
    const clientPort = (await roundTrip('127.0.0.1', serverPort)).port;
    await new Promise<void>((r) => server.close(() => r()));
    const child = () =>
      seen.filter((e) => e.localPort === serverPort && e.remotePort === clientPort);
    await waitFor(() => child().length >= 5, "the child socket's 5 events");
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
