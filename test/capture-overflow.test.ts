import assert from 'node:assert/strict';
import { connect, createServer, type AddressInfo, type Server } from 'node:net';
import { describe, it } from 'node:test';
import type { TcpEvent } from '../common/event';
import { startCapture, type LossInfo } from '../producer/capture/capture';

// A ring too small for a burst, drained by nobody while the burst runs: the kernel must count
// every record it could not reserve, and the sequence gaps must say exactly the same.
const skip = process.getuid?.() === 0 ? false : 'loading BPF needs root';

const RING_BYTES = 4096; // 23 records of 168 bytes plus their 8-byte headers
const BURST = 100; // connections, 10 events each when both sides close

function listen(): Promise<Server> {
  const server = createServer((sock) => sock.resume().on('end', () => sock.end()));
  return new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(0, '127.0.0.1', () => ok(server));
  });
}

function oneConnection(port: number): Promise<void> {
  return new Promise((ok, fail) => {
    const c = connect({ host: '127.0.0.1', port }, () => c.end('x'));
    c.once('error', fail);
    c.resume().once('close', () => ok());
  });
}

async function waitFor(check: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('ring overflow', { skip }, () => {
  it('counts every lost record, and the sequence gaps agree exactly', async (t) => {
    const server = await listen();
    const port = (server.address() as AddressInfo).port;
    const seen: TcpEvent[] = [];
    const losses: LossInfo[] = [];
    const capture = startCapture({
      ringBytes: RING_BYTES,
      filterPorts: [port], // other tests' traffic on this host must not blur the count
      onEvents: (events) => seen.push(...events),
      onLoss: (info) => losses.push(info),
    });

    capture.pauseDrain(true);
    for (let i = 0; i < BURST; i += 10) {
      await Promise.all(Array.from({ length: 10 }, () => oneConnection(port)));
    }
    // TIME-WAIT aside, every socket of the burst is closed: its events have all been tried
    await new Promise((r) => setTimeout(r, 100));
    capture.pauseDrain(false);
    await waitFor(() => seen.length > 0, 'the records the ring could hold');

    // one more connection after the burst: its records close the gap from above
    const before = seen.length;
    await oneConnection(port);
    await waitFor(() => seen.length >= before + 10, 'the closing connection');
    server.close();
    await capture.stop();

    const stats = capture.stats();
    const seqs = seen.map((e) => e.seq).sort((a, b) => a - b);
    const highest = seqs[seqs.length - 1];
    const missing = highest + 1 - new Set(seqs).size;
    assert.equal(new Set(seqs).size, seen.length, 'no sequence number twice');
    assert.ok(stats.kernelLost > 0, 'the burst overflowed the ring');
    assert.equal(stats.userDropped, 0);
    assert.equal(stats.kernelLost, missing, 'kernelLost equals the missing sequence numbers');
    assert.equal(stats.seqMissing, missing);
    assert.ok(stats.kernelLost + seen.length >= BURST * 10, 'every event was either seen or lost');

    // onLoss said the same, once per lost record, with ranges that are really absent
    const reported = losses.reduce((n, l) => n + l.missing, 0);
    assert.equal(reported, stats.kernelLost);
    assert.equal(stats.lossReported, stats.kernelLost);
    t.diagnostic(
      `seen ${seen.length}, kernelLost ${stats.kernelLost}, ${losses.length} loss reports`,
    );
    const have = new Set(seqs);
    for (const l of losses) {
      assert.equal(l.missing, l.seqTo - l.seqFrom + 1);
      for (let s = l.seqFrom; s <= l.seqTo; s++) assert.ok(!have.has(s), `seq ${s} reported lost`);
    }
    assert.equal(losses[losses.length - 1].kernelLost, stats.kernelLost);
  });
});
