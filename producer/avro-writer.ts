import type avro from 'avsc';
import { TCP_STATES, type TcpEvent } from '../common/event';
import { stateToAvro } from './record';

/**
 * The producer's hot path: a TcpEvent written as the Avro binary of schemas/tcp-state-change.avsc
 * (Confluent framing first) straight into a caller's buffer. avsc needs a record object per
 * event and allocates while it writes; at 100,000 events a second those short-lived objects
 * (some 600 bytes an event) were what kept the young generation at its largest. This writer
 * allocates nothing but the microsecond BigInt. It writes the fields in the order below, and
 * refuses at construction a schema whose fields differ from that list, so a schema change
 * cannot silently produce records the registry's schema does not describe;
 * test/producer-avro-writer.test.ts checks its bytes against avsc's.
 */
const FIELDS = [
  ['conn_id', 'string'],
  ['seq', 'long'],
  ['host', 'string'],
  ['boot_id', 'string'],
  ['time', 'long'],
  ['family', 'enum'],
  ['local_addr', 'string'],
  ['local_port', 'int'],
  ['remote_addr', 'string'],
  ['remote_port', 'int'],
  ['old_state', 'enum'],
  ['new_state', 'enum'],
  ['pid', 'int'],
  ['tid', 'int'],
  ['comm', 'string'],
  ['uid', 'long'],
  ['netns', 'long'],
  ['cgroup_id', 'long'],
  ['bytes_sent', 'long'],
  ['bytes_received', 'long'],
  ['segs_out', 'long'],
  ['segs_in', 'long'],
  ['retransmits', 'long'],
  ['srtt_us', 'long'],
  ['sock_inode', 'long'],
  ['sock_uid', 'long'],
  ['sock_gid', 'long'],
] as const;

/** A varint of a 64-bit zigzag value takes at most 10 bytes. */
const VARINT_MAX = 10;
/** Framing, then at most one varint per field (a string's is its length) besides string bytes. */
const FIXED_MAX = 5 + FIELDS.length * VARINT_MAX;

interface AvroField {
  name: string;
  type: avro.Type & { symbols?: string[] };
}

/** Zigzag varint of an integer held in a double: exact for every safe integer. */
function writeLong(n: number, buf: Buffer, pos: number): number {
  if (n >= -0x40000000 && n < 0x40000000) {
    // Small enough for 32-bit arithmetic, which is most of our fields.
    let z = (n << 1) ^ (n >> 31);
    while (z > 0x7f) {
      buf[pos++] = (z & 0x7f) | 0x80;
      z >>>= 7;
    }
    buf[pos++] = z;
    return pos;
  }
  // Doubling and dividing by 128 are exact in floating point for integers this size.
  let z = n >= 0 ? n * 2 : -n * 2 - 1;
  while (z > 0x7f) {
    buf[pos++] = (z % 128) | 0x80;
    z = Math.floor(z / 128);
  }
  buf[pos++] = z;
  return pos;
}

/**
 * Length-prefixed UTF-8; ASCII (addresses, ids, most command names) without a native call. A
 * lone UTF-16 surrogate (no string decoded from the kernel or the host name has one) becomes
 * U+FFFD here, as Buffer.write makes it; avsc writes the surrogate's own three bytes for
 * strings under 64 bytes, which is not valid UTF-8.
 */
function writeString(s: string, buf: Buffer, pos: number): number {
  const n = s.length;
  let ascii = true;
  for (let i = 0; i < n; i++) {
    if (s.charCodeAt(i) > 0x7f) {
      ascii = false;
      break;
    }
  }
  if (!ascii) {
    const bytes = Buffer.byteLength(s, 'utf8');
    pos = writeLong(bytes, buf, pos);
    return pos + buf.write(s, pos, bytes, 'utf8');
  }
  pos = writeLong(n, buf, pos);
  for (let i = 0; i < n; i++) buf[pos + i] = s.charCodeAt(i);
  return pos + n;
}

/** The Avro `int` fields: 32-bit signed. */
function checkInts(e: TcpEvent): void {
  if (
    (e.localPort | 0) !== e.localPort ||
    (e.remotePort | 0) !== e.remotePort ||
    (e.pid | 0) !== e.pid ||
    (e.tid | 0) !== e.tid
  )
    throw new RangeError(`an int field of event ${e.seq} is not a 32-bit integer`);
}

/**
 * The Avro `long` fields, as numbers: avsc (and so every reader here) holds a long in a double,
 * so only safe integers survive the trip. Also keeps NaN and Infinity out of writeLong's loop.
 */
function checkLongs(e: TcpEvent, micros: number): void {
  const safe = Number.isSafeInteger;
  if (
    !safe(e.seq) ||
    !safe(e.uid) ||
    !safe(e.netns) ||
    !safe(e.segsOut) ||
    !safe(e.segsIn) ||
    !safe(e.retransmits) ||
    !safe(e.srttUs) ||
    !safe(e.sockInode) ||
    !safe(e.sockUid) ||
    !safe(e.sockGid) ||
    !safe(Number(e.cgroupId)) ||
    !safe(Number(e.bytesSent)) ||
    !safe(Number(e.bytesReceived)) ||
    !safe(micros)
  )
    throw new RangeError(`a long field of event ${e.seq} is not a safe integer`);
}

export class StateChangeWriter {
  /** Enum index of each state, by its text form ('SYN-SENT'), from the schema's symbols. */
  private readonly stateIndex = new Map<string, number>();
  private readonly familyIndex: { 4: number; 6: number };

  constructor(
    private readonly schemaId: number,
    valueType: avro.Type,
  ) {
    const fields = (valueType as unknown as { fields: AvroField[] }).fields ?? [];
    const got = fields.map((f) => `${f.name}:${f.type.typeName}`);
    const want = FIELDS.map(([name, type]) => `${name}:${type}`);
    const timeType = fields[4]?.type as unknown as { underlyingType?: avro.Type } | undefined;
    // `time` is a logical type over long: compare what is on the wire.
    if (timeType?.underlyingType) got[4] = `time:${timeType.underlyingType.typeName}`;
    if (got.join(',') !== want.join(',')) {
      throw new Error(
        `the event schema's fields differ from what producer/avro-writer.ts writes: ` +
          `schema has [${got.join(', ')}]`,
      );
    }
    const symbols = fields[10].type.symbols!;
    for (const state of TCP_STATES) {
      const i = symbols.indexOf(stateToAvro(state));
      if (i >= 0) this.stateIndex.set(state, i);
    }
    const families = fields[5].type.symbols!;
    this.familyIndex = { 4: families.indexOf('INET'), 6: families.indexOf('INET6') };
  }

  /** The most bytes `e` can take, framing included. */
  bound(e: TcpEvent): number {
    const chars =
      e.connId.length +
      e.host.length +
      e.bootId.length +
      e.localAddr.length +
      e.remoteAddr.length +
      e.comm.length;
    // A UTF-16 code unit becomes at most 3 bytes of UTF-8.
    return FIXED_MAX + 3 * chars;
  }

  /**
   * Writes `e` at `pos`; the caller has `bound(e)` bytes there. Returns where it ended. Throws,
   * as avsc does, for a value its type cannot hold (so nothing past the bound is written).
   */
  write(e: TcpEvent, buf: Buffer, pos: number): number {
    // Microseconds fit a double exactly until the year 2255; nanoseconds would not.
    const micros = Number(e.timeNs / 1000n);
    checkInts(e);
    checkLongs(e, micros);
    buf[pos] = 0;
    buf.writeUInt32BE(this.schemaId, pos + 1);
    pos += 5;
    pos = writeString(e.connId, buf, pos);
    pos = writeLong(e.seq, buf, pos);
    pos = writeString(e.host, buf, pos);
    pos = writeString(e.bootId, buf, pos);
    pos = writeLong(micros, buf, pos);
    pos = writeLong(e.family === 6 ? this.familyIndex[6] : this.familyIndex[4], buf, pos);
    pos = writeString(e.localAddr, buf, pos);
    pos = writeLong(e.localPort, buf, pos);
    pos = writeString(e.remoteAddr, buf, pos);
    pos = writeLong(e.remotePort, buf, pos);
    pos = writeLong(this.state(e.oldState), buf, pos);
    pos = writeLong(this.state(e.newState), buf, pos);
    pos = writeLong(e.pid, buf, pos);
    pos = writeLong(e.tid, buf, pos);
    pos = writeString(e.comm, buf, pos);
    pos = writeLong(e.uid, buf, pos);
    pos = writeLong(e.netns, buf, pos);
    pos = writeLong(Number(e.cgroupId), buf, pos);
    pos = writeLong(Number(e.bytesSent), buf, pos);
    pos = writeLong(Number(e.bytesReceived), buf, pos);
    pos = writeLong(e.segsOut, buf, pos);
    pos = writeLong(e.segsIn, buf, pos);
    pos = writeLong(e.retransmits, buf, pos);
    pos = writeLong(e.srttUs, buf, pos);
    pos = writeLong(e.sockInode, buf, pos);
    pos = writeLong(e.sockUid, buf, pos);
    return writeLong(e.sockGid, buf, pos);
  }

  private state(name: string): number {
    const i = this.stateIndex.get(name);
    // avsc refuses an unknown symbol too: the event is not published as something else.
    if (i === undefined) throw new Error(`TCP state ${name} is not in the event schema`);
    return i;
  }
}
