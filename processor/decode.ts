import net from 'node:net';
import type { SchemaRegistry } from '@kafkajs/confluent-schema-registry';
import { stateFromAvro, type AvroStateChange } from '../producer/record';
import { KNOWN_STATES, type StateChange } from './lifecycle';

/** A message that cannot become a row; it goes to the dead letters with this reason. */
export class BadMessageError extends Error {
  readonly retriable = false;
  constructor(message: string) {
    super(message);
    this.name = 'BadMessageError';
  }
}

/** One record of schemas/capture-gap.avsc: loss the producer of one host reported. */
export interface CaptureGap {
  host: string;
  bootId: string;
  runId: string;
  seqFrom: number;
  seqTo: number;
  count: number;
  reason: string;
  detectedUs: number;
}

export type DecodedValue =
  { kind: 'event'; change: StateChange } | { kind: 'gap'; gap: CaptureGap };

/**
 * Turns one message value into a row to write, or throws (or rejects with) BadMessageError. It
 * answers synchronously when it can (a known schema): a promise per message costs a batch dearly.
 */
export type Decode = (value: Buffer | null) => DecodedValue | Promise<DecodedValue>;

/** Fields the capture engineer added with defaults: absent from records of the first schema. */
type V2Fields = Partial<Pick<AvroStateChange, 'sock_inode' | 'sock_uid' | 'sock_gid'>>;

export function fromAvro(rec: AvroStateChange): StateChange {
  const v2 = rec as V2Fields;
  return {
    connId: rec.conn_id,
    seq: rec.seq,
    host: rec.host,
    bootId: rec.boot_id,
    timeUs: rec.time,
    family: rec.family === 'INET6' ? 6 : 4,
    localAddr: rec.local_addr,
    localPort: rec.local_port,
    remoteAddr: rec.remote_addr,
    remotePort: rec.remote_port,
    oldState: stateFromAvro(rec.old_state),
    newState: stateFromAvro(rec.new_state),
    pid: rec.pid,
    tid: rec.tid,
    comm: rec.comm,
    uid: rec.uid,
    netns: rec.netns,
    cgroupId: rec.cgroup_id,
    bytesSent: rec.bytes_sent,
    bytesReceived: rec.bytes_received,
    segsOut: rec.segs_out,
    segsIn: rec.segs_in,
    retransmits: rec.retransmits,
    srttUs: rec.srtt_us,
    sockInode: v2.sock_inode ?? 0,
    sockUid: v2.sock_uid ?? 0,
    sockGid: v2.sock_gid ?? 0,
  };
}

const isPort = (n: number) => Number.isInteger(n) && n >= 0 && n <= 65535;
const isCount = (n: number) => Number.isSafeInteger(n) && n >= 0;
const cleanText = (s: string) => typeof s === 'string' && !s.includes('\u0000');

/**
 * The invariants a state change must keep to become rows: anything here that PostgreSQL would
 * reject must be caught first, or one bad record would fail (and forever retry) its batch.
 */
export function checkChange(c: StateChange): void {
  const bad = (why: string) => new BadMessageError(`invariant: ${why}`);
  if (typeof c.connId !== 'string' || c.connId.length === 0)
    throw new BadMessageError('record has no connection id');
  if (c.connId.length > 200 || !cleanText(c.connId)) throw bad('malformed connection id');
  if (!c.host || !cleanText(c.host) || !cleanText(c.bootId) || !cleanText(c.comm))
    throw bad('empty host or text with NUL');
  if (!isCount(c.seq)) throw bad(`sequence number ${c.seq}`);
  if (!Number.isSafeInteger(c.timeUs) || c.timeUs <= 0) throw bad(`event time ${c.timeUs}`);
  if (!isPort(c.localPort) || !isPort(c.remotePort))
    throw bad(`port out of range ${c.localPort}/${c.remotePort}`);
  if (!KNOWN_STATES.has(c.oldState) || !KNOWN_STATES.has(c.newState)) {
    throw bad(`unknown state ${c.oldState} -> ${c.newState}`);
  }
  if (net.isIP(c.localAddr) === 0 || net.isIP(c.remoteAddr) === 0)
    throw bad('address is not an IP address');
  for (const n of [
    c.uid,
    c.netns,
    c.cgroupId,
    c.bytesSent,
    c.bytesReceived,
    c.segsOut,
    c.segsIn,
    c.retransmits,
    c.srttUs,
    c.sockInode,
    c.sockUid,
    c.sockGid,
  ]) {
    if (!Number.isSafeInteger(n)) throw bad('counter is not an integer');
  }
}

interface AvroGap {
  host: string;
  boot_id: string;
  run_id: string;
  seq_from: number;
  seq_to: number;
  count: number;
  reason: string;
  detected_at: number;
}

export function gapFromAvro(rec: AvroGap): CaptureGap {
  const gap = {
    host: rec.host,
    bootId: rec.boot_id,
    runId: rec.run_id,
    seqFrom: rec.seq_from,
    seqTo: rec.seq_to,
    count: rec.count,
    reason: rec.reason,
    detectedUs: rec.detected_at,
  };
  if (!gap.host || !cleanText(gap.host) || !cleanText(gap.bootId) || !cleanText(gap.runId)) {
    throw new BadMessageError('invariant: gap without host');
  }
  if (gap.seqFrom > gap.seqTo || gap.seqFrom < -1 || gap.count < 0) {
    throw new BadMessageError(`invariant: gap range ${gap.seqFrom}..${gap.seqTo}`);
  }
  return gap;
}

/** Classifies an already decoded Avro record by its fields: a state change or a capture gap. */
export function classify(rec: unknown): DecodedValue {
  const r = rec as Record<string, unknown> | null;
  if (r && typeof r === 'object' && 'conn_id' in r) {
    const change = fromAvro(r as unknown as AvroStateChange);
    checkChange(change);
    return { kind: 'event', change };
  }
  if (r && typeof r === 'object' && 'seq_from' in r && 'run_id' in r) {
    return { kind: 'gap', gap: gapFromAvro(r as unknown as AvroGap) };
  }
  throw new BadMessageError('record is neither a state change nor a capture gap');
}

/** What the registry client hands back for a schema id: for Avro, an avsc Type. */
interface WriterSchema {
  fromBuffer(payload: Buffer): unknown;
}

/**
 * Decodes Confluent-framed Avro with the writer schema of the framed id. The registry is asked
 * once per id (ids are immutable); after that a message decodes synchronously from the cache.
 */
export function registryDecoder(registry: SchemaRegistry): Decode {
  const schemas = new Map<number, WriterSchema>();
  const decodeWith = (schema: WriterSchema, value: Buffer) => {
    let rec: unknown;
    try {
      rec = schema.fromBuffer(value.subarray(5));
    } catch (err) {
      throw new BadMessageError(`undecodable: ${(err as Error).message}`);
    }
    return classify(rec);
  };
  const lookUp = async (schemaId: number, value: Buffer) => {
    let schema: WriterSchema;
    try {
      schema = (await registry.getSchema(schemaId)) as unknown as WriterSchema;
    } catch (err) {
      // 404 means the id is unknown for good; anything else (registry away) is retried upstream.
      const status = (err as { status?: number }).status;
      if (status === 404) throw new BadMessageError(`unknown schema id ${schemaId}`);
      throw err;
    }
    schemas.set(schemaId, schema);
    return decodeWith(schema, value);
  };
  return (value) => {
    if (!value || value.length < 5) throw new BadMessageError('message shorter than its framing');
    if (value[0] !== 0) throw new BadMessageError(`unknown magic byte ${value[0]}`);
    const schemaId = value.readUInt32BE(1);
    const schema = schemas.get(schemaId);
    return schema ? decodeWith(schema, value) : lookUp(schemaId, value);
  };
}
