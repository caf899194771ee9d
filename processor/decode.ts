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
/** Text that fits its column and its indexes: no NUL (PostgreSQL text refuses it), bounded. */
const fits = (s: string, max: number) => cleanText(s) && s.length <= max;

/** Longest text accepted per field: far above what a kernel or a host sends, far below what a
 * btree index entry holds (about 2.7 kB), so no record can fail an insert by its size. */
export const TEXT_LIMITS = { connId: 200, host: 255, bootId: 128, comm: 64, runId: 128 } as const;

/**
 * An address exactly as PostgreSQL's inet takes it from a record: net.isIP accepts an IPv6
 * zone id ("fe80::1%eth0") that inet refuses, so any '%' is refused too (a kernel address
 * carries no zone). test/processor-poison.test.ts checks this against the server itself.
 */
export function isInetAddress(text: unknown): boolean {
  return typeof text === 'string' && net.isIP(text) !== 0 && !text.includes('%');
}

/**
 * The invariants a state change must keep to become rows: anything here that PostgreSQL would
 * reject must be caught first, or one bad record would fail (and forever retry) its batch.
 */
export function checkChange(c: StateChange): void {
  const bad = (why: string) => new BadMessageError(`invariant: ${why}`);
  if (typeof c.connId !== 'string' || c.connId.length === 0)
    throw new BadMessageError('record has no connection id');
  if (!fits(c.connId, TEXT_LIMITS.connId)) throw bad('malformed connection id');
  if (!c.host || !fits(c.host, TEXT_LIMITS.host) || !fits(c.bootId, TEXT_LIMITS.bootId))
    throw bad('empty or over-long host or boot id, or text with NUL');
  if (!fits(c.comm, TEXT_LIMITS.comm)) throw bad('over-long comm or comm with NUL');
  if (!isCount(c.seq)) throw bad(`sequence number ${c.seq}`);
  if (!Number.isSafeInteger(c.timeUs) || c.timeUs <= 0) throw bad(`event time ${c.timeUs}`);
  if (!isPort(c.localPort) || !isPort(c.remotePort))
    throw bad(`port out of range ${c.localPort}/${c.remotePort}`);
  if (!KNOWN_STATES.has(c.oldState) || !KNOWN_STATES.has(c.newState)) {
    throw bad(`unknown state ${c.oldState} -> ${c.newState}`);
  }
  if (!isInetAddress(c.localAddr) || !isInetAddress(c.remoteAddr))
    throw bad('address is not an IP address (zone ids are refused)');
  for (const n of [c.pid, c.tid]) {
    if (!Number.isInteger(n) || n < -(2 ** 31) || n >= 2 ** 31) throw bad('pid or tid not int4');
  }
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
  if (
    !gap.host ||
    !fits(gap.host, TEXT_LIMITS.host) ||
    !fits(gap.bootId, TEXT_LIMITS.bootId) ||
    !fits(gap.runId, TEXT_LIMITS.runId) ||
    !fits(gap.reason, 64)
  ) {
    throw new BadMessageError('invariant: gap without host, or over-long text or text with NUL');
  }
  if (gap.seqFrom > gap.seqTo || gap.seqFrom < -1 || gap.count < 0) {
    throw new BadMessageError(`invariant: gap range ${gap.seqFrom}..${gap.seqTo}`);
  }
  if (![gap.seqFrom, gap.seqTo, gap.count].every(Number.isSafeInteger))
    throw new BadMessageError('invariant: gap numbers are not integers');
  if (!Number.isSafeInteger(gap.detectedUs) || gap.detectedUs <= 0)
    throw new BadMessageError(`invariant: gap time ${gap.detectedUs}`);
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
 * Decodes Confluent-framed Avro with the writer schema of the framed id. `registryHealthy` is
 * asked before a 404 is taken as a bad message (common/registry.ts's registryHealth gives one).
 * The registry is asked once per id (ids are immutable); after that a message decodes
 * synchronously from the cache.
 */
export function registryDecoder(
  registry: SchemaRegistry,
  registryHealthy: () => Promise<boolean> = async () => true,
): Decode {
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
      // 404 means the id is unknown for good, but only from a registry that otherwise works: a
      // wrong URL or a registry half up answers 404 too, and would dead-letter good messages.
      // Anything else (registry away) is retried upstream.
      const status = (err as { status?: number }).status;
      if (status === 404) {
        if (await registryHealthy().catch(() => false))
          throw new BadMessageError(`unknown schema id ${schemaId}`);
        throw new Error(`schema registry answered 404 for id ${schemaId} but is not healthy`);
      }
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
