import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ipv6Text, parseCidr } from '../producer/capture/address';
import { validateFilters } from '../producer/capture/capture';
import { SeqTracker } from '../producer/capture/loss';
import {
  connectionId,
  decodeBatch,
  RecordLayoutError,
  type DecodeContext,
} from '../producer/capture/decode';
import { AF_INET, AF_INET6, LAYOUT_VERSION, OFF, RECORD_SIZE } from '../producer/capture/layout';

const ctx: DecodeContext = {
  host: 'test-host',
  bootId: 'f55b3d14-5451-4a01-a043-9ff884f227c5',
  clockOffsetNs: 1_700_000_000_000_000_000n,
};

interface Fields {
  family: number;
  saddr: number[];
  daddr: number[];
  sport: number;
  dport: number;
  oldState: number;
  newState: number;
}

/** Writes one record the way bpf/tcpaudit.bpf.c lays it out. */
function record(buf: Buffer, index: number, f: Fields): void {
  const at = index * RECORD_SIZE;
  buf.writeBigUInt64LE(BigInt(index + 7), at + OFF.seq);
  buf.writeBigUInt64LE(5_000_000_000n, at + OFF.tsNs);
  buf.writeBigUInt64LE(0xabcdefn, at + OFF.runId);
  buf.writeBigUInt64LE(BigInt(0x10 + index), at + OFF.connId);
  buf.writeBigUInt64LE(4242n, at + OFF.cgroupId);
  buf.writeBigUInt64LE(100_000n, at + OFF.bytesSent);
  buf.writeBigUInt64LE(1n, at + OFF.bytesReceived);
  Buffer.from(f.saddr).copy(buf, at + OFF.saddr);
  Buffer.from(f.daddr).copy(buf, at + OFF.daddr);
  buf.writeUInt32LE(1234, at + OFF.pid);
  buf.writeUInt32LE(1235, at + OFF.tid);
  buf.writeUInt32LE(1000, at + OFF.uid);
  buf.writeUInt32LE(4026531833, at + OFF.netns);
  buf.writeUInt32LE(9, at + OFF.segsOut);
  buf.writeUInt32LE(8, at + OFF.segsIn);
  buf.writeUInt32LE(2, at + OFF.totalRetrans);
  buf.writeUInt32LE(37, at + OFF.srttUs);
  buf.writeUInt16LE(LAYOUT_VERSION, at + OFF.version);
  buf.writeUInt16LE(f.family, at + OFF.family);
  buf.writeUInt16LE(f.sport, at + OFF.sport);
  buf.writeUInt16LE(f.dport, at + OFF.dport);
  buf[at + OFF.oldState] = f.oldState;
  buf[at + OFF.newState] = f.newState;
  buf.write('curl', at + OFF.comm, 'latin1');
  buf.writeBigUInt64LE(987654321n, at + OFF.sockInode);
  buf.writeUInt32LE(1001, at + OFF.sockUid);
  buf.writeUInt32LE(1002, at + OFF.sockGid);
}

const pad = (bytes: number[]) => [...bytes, ...new Array(16 - bytes.length).fill(0)];
const v6 = (...groups: number[]) => groups.flatMap((g) => [g >> 8, g & 0xff]);
const mapped = (a: number, b: number, c: number, d: number) => [
  0,
  0,
  0,
  0,
  0,
  0,
  0,
  0,
  0,
  0,
  0xff,
  0xff,
  a,
  b,
  c,
  d,
];

describe('capture decode', () => {
  it('decodes IPv4, IPv6 and v4-mapped records from one batch', () => {
    const buf = Buffer.alloc(3 * RECORD_SIZE);
    record(buf, 0, {
      family: AF_INET,
      saddr: pad([10, 0, 0, 1]),
      daddr: pad([192, 168, 1, 20]),
      sport: 40000,
      dport: 443,
      oldState: 7,
      newState: 2,
    });
    record(buf, 1, {
      family: AF_INET6,
      saddr: v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
      daddr: v6(0, 0, 0, 0, 0, 0, 0, 1),
      sport: 8080,
      dport: 51000,
      oldState: 1,
      newState: 8,
    });
    record(buf, 2, {
      family: AF_INET6,
      saddr: mapped(127, 0, 0, 1),
      daddr: mapped(1, 2, 3, 4),
      sport: 22,
      dport: 60000,
      oldState: 9,
      newState: 7,
    });

    const [a, b, c] = decodeBatch(buf, 3, ctx);

    assert.equal(a.seq, 7);
    assert.equal(a.connId, 'f55b3d14-abcdef-10');
    assert.equal(a.host, 'test-host');
    assert.equal(a.bootId, ctx.bootId);
    assert.equal(a.timeNs, 1_700_000_005_000_000_000n);
    assert.equal(a.family, 4);
    assert.equal(a.localAddr, '10.0.0.1');
    assert.equal(a.remoteAddr, '192.168.1.20');
    assert.equal(a.localPort, 40000);
    assert.equal(a.remotePort, 443);
    assert.equal(a.oldState, 'CLOSED');
    assert.equal(a.newState, 'SYN-SENT');
    assert.deepEqual(
      [a.pid, a.tid, a.uid, a.netns, a.comm, a.cgroupId],
      [1234, 1235, 1000, 4026531833, 'curl', 4242n],
    );
    assert.deepEqual(
      [a.bytesSent, a.bytesReceived, a.segsOut, a.segsIn, a.retransmits, a.srttUs],
      [100_000n, 1n, 9, 8, 2, 37],
    );
    assert.deepEqual([a.sockInode, a.sockUid, a.sockGid], [987654321, 1001, 1002]);

    assert.equal(b.family, 6);
    assert.equal(b.localAddr, '2001:db8::1');
    assert.equal(b.remoteAddr, '::1');
    assert.equal(b.connId, 'f55b3d14-abcdef-11');
    assert.deepEqual([b.oldState, b.newState], ['ESTABLISHED', 'CLOSE-WAIT']);

    assert.equal(c.family, 6);
    assert.equal(c.localAddr, '::ffff:127.0.0.1');
    assert.equal(c.remoteAddr, '::ffff:1.2.3.4');
    assert.deepEqual([c.oldState, c.newState], ['LAST-ACK', 'CLOSED']);
  });

  it('writes IPv6 in RFC 5952 form', () => {
    const text = (...groups: number[]) => ipv6Text(Buffer.from(v6(...groups)), 0);
    assert.equal(text(0, 0, 0, 0, 0, 0, 0, 0), '::');
    assert.equal(text(0x2001, 0xdb8, 0, 0, 1, 0, 0, 1), '2001:db8::1:0:0:1');
    assert.equal(text(0x2001, 0xdb8, 0, 1, 1, 1, 1, 1), '2001:db8:0:1:1:1:1:1');
    assert.equal(text(0xfe80, 0, 0, 0, 0xabc, 0, 0, 0), 'fe80::abc:0:0:0');
    assert.equal(text(1, 0, 0, 0, 0, 0, 0, 0), '1::');
  });

  it('refuses records of another layout version', () => {
    const buf = Buffer.alloc(RECORD_SIZE);
    record(buf, 0, {
      family: AF_INET,
      saddr: pad([1, 1, 1, 1]),
      daddr: pad([2, 2, 2, 2]),
      sport: 1,
      dport: 2,
      oldState: 7,
      newState: 2,
    });
    buf.writeUInt16LE(LAYOUT_VERSION + 1, OFF.version);
    assert.throws(() => decodeBatch(buf, 1, ctx), RecordLayoutError);
  });

  it('refuses a count the buffer cannot hold', () => {
    assert.throws(() => decodeBatch(Buffer.alloc(RECORD_SIZE), 2, ctx), RecordLayoutError);
  });

  it('builds connection ids from boot id, run id and counter', () => {
    assert.equal(connectionId(ctx.bootId, 0x1n, 0xffn), 'f55b3d14-1-ff');
  });

  it('lays out version 2 records of 168 bytes with the socket identity last', () => {
    assert.equal(LAYOUT_VERSION, 2);
    assert.equal(RECORD_SIZE, 168);
    assert.equal(OFF.sockGid + 4, RECORD_SIZE);
  });
});

describe('capture filters', () => {
  it('parses IPv4 and IPv6 CIDRs and clears host bits', () => {
    const a = parseCidr('10.1.2.3/8');
    assert.equal(a.family, 2);
    assert.equal(a.prefix, 8);
    assert.deepEqual([...a.addr], pad([10, 0, 0, 0]));
    const b = parseCidr('2001:db8::ff/32');
    assert.equal(b.family, 10);
    assert.deepEqual([...b.addr], v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0));
    assert.deepEqual([...parseCidr('::ffff:127.0.0.1').addr], mapped(127, 0, 0, 1));
    assert.equal(parseCidr('::1').prefix, 128);
    assert.equal(parseCidr('127.0.0.1').prefix, 32);
  });

  it('refuses what is not a CIDR', () => {
    for (const bad of ['10.0.0.256/8', '10.0.0.0/33', '::1/129', '1:2:3', '1::2::3', 'x/8', '']) {
      assert.throws(() => parseCidr(bad), RangeError, bad);
    }
  });

  it('validates ports, CIDR count and namespace', () => {
    assert.deepEqual(validateFilters({ filterPorts: [80, 80, 443] }).filterPorts, [80, 443]);
    assert.throws(() => validateFilters({ filterPorts: [0] }), RangeError);
    assert.throws(() => validateFilters({ filterPorts: [65536] }), RangeError);
    assert.throws(() => validateFilters({ filterPorts: [1, 2, 3, 4, 5, 6, 7, 8, 9] }), RangeError);
    assert.throws(() => validateFilters({ filterCidrs: ['::/0', '::/0', '::/0', '::/0', '::/0'] }));
    assert.throws(() => validateFilters({ filterNetns: -1 }), RangeError);
    assert.equal(validateFilters({}).filterNetns, 0);
  });
});

describe('sequence gaps', () => {
  it('confirms a gap only after a whole later batch', () => {
    const t = new SeqTracker();
    for (const s of [0, 1, 4]) t.observe(s);
    assert.deepEqual(t.endBatch(), []);
    t.observe(3); // late: 3 arrived after 4
    t.observe(5);
    assert.deepEqual(t.endBatch(), [{ from: 2, to: 2 }]);
    t.observe(7);
    assert.deepEqual(t.endBatch(), []);
    assert.deepEqual(t.takeAll(), [{ from: 6, to: 6 }]);
    assert.equal(t.reported, 2);
  });

  it('claims losses after the last record from the counters', () => {
    const t = new SeqTracker();
    t.observe(0);
    t.endBatch();
    assert.deepEqual(t.takeTail(3), { from: 1, to: 3 });
    t.observe(4);
    assert.deepEqual(t.endBatch(), []);
    assert.deepEqual(t.takeAll(), []);
    assert.equal(t.reported, 3);
  });
});
