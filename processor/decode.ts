import type { SchemaRegistry } from '@kafkajs/confluent-schema-registry';
import { stateFromAvro, type AvroStateChange } from '../producer/record';
import type { StateChange } from './lifecycle';

/** A message that cannot become a StateChange; it goes to the dead letters with this reason. */
export class BadMessageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BadMessageError';
  }
}

export function fromAvro(rec: AvroStateChange): StateChange {
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
  };
}

export type Decode = (value: Buffer | null) => Promise<StateChange>;

/** Decodes Confluent-framed Avro through the registry (writer schema looked up by id, cached). */
export function registryDecoder(registry: SchemaRegistry): Decode {
  return async (value) => {
    if (!value || value.length < 5) throw new BadMessageError('message shorter than its framing');
    if (value[0] !== 0) throw new BadMessageError(`unknown magic byte ${value[0]}`);
    const schemaId = value.readUInt32BE(1);
    try {
      await registry.getSchema(schemaId);
    } catch (err) {
      // 404 means the id is unknown for good; anything else (registry away) is retried upstream.
      const status = (err as { status?: number }).status;
      if (status === 404) throw new BadMessageError(`unknown schema id ${schemaId}`);
      throw err;
    }
    let rec: AvroStateChange;
    try {
      rec = (await registry.decode(value)) as AvroStateChange;
    } catch (err) {
      throw new BadMessageError(`undecodable: ${(err as Error).message}`);
    }
    if (!rec || typeof rec.conn_id !== 'string' || rec.conn_id.length === 0) {
      throw new BadMessageError('record has no connection id');
    }
    return fromAvro(rec);
  };
}
