import type { Pool } from 'pg';
import type { Decode } from './decode';
import {
  emptyStages,
  handleBatch,
  type BatchOptions,
  type BatchResult,
  type SourceRecord,
} from './handler';

/** One record of the AWS Lambda Kafka event (MSK or self-managed Kafka event source). */
export interface LambdaKafkaRecord {
  topic: string;
  partition: number;
  offset: number | string;
  timestamp?: number;
  timestampType?: string;
  /** base64; absent for a null key. */
  key?: string | null;
  /** base64; absent for a tombstone. */
  value?: string | null;
  /** A list of single-entry objects, each value an array of byte values. */
  headers?: Record<string, number[]>[];
}

export interface LambdaKafkaEvent {
  eventSource: string;
  eventSourceArn?: string;
  bootstrapServers?: string;
  /** Keyed "topic-partition". */
  records: Record<string, LambdaKafkaRecord[]>;
}

export interface LambdaAdapterOptions extends BatchOptions {
  pool: Pool;
  decode: Decode;
  /** The consumer_offsets group id the rows commit under (e.g. the event source mapping's). */
  groupId: string;
}

export function recordsFromLambdaEvent(event: LambdaKafkaEvent): SourceRecord[] {
  const out: SourceRecord[] = [];
  for (const list of Object.values(event.records ?? {})) {
    for (const r of list) {
      const headers: Record<string, Buffer> = {};
      for (const entry of r.headers ?? []) {
        for (const [k, bytes] of Object.entries(entry)) headers[k] = Buffer.from(bytes);
      }
      out.push({
        topic: r.topic,
        partition: r.partition,
        offset: String(r.offset),
        key: r.key ? Buffer.from(r.key, 'base64') : null,
        value: r.value ? Buffer.from(r.value, 'base64') : null,
        headers,
      });
    }
  }
  // handleBatch applies each connection's changes in sequence order; offsets only need grouping.
  return out.sort((a, b) =>
    a.topic === b.topic
      ? a.partition - b.partition || Number(BigInt(a.offset) - BigInt(b.offset))
      : a.topic < b.topic
        ? -1
        : 1,
  );
}

/**
 * A Lambda handler over handleBatch: the whole invocation is one transaction, so a retried
 * invocation (Lambda redelivers the batch when the function fails) inserts nothing twice. A
 * database or registry failure throws, which makes Lambda retry; bad messages do not throw.
 * Build the Pool outside the handler so warm invocations reuse its connections.
 */
export function lambdaHandler(
  opts: LambdaAdapterOptions,
): (event: LambdaKafkaEvent) => Promise<BatchResult> {
  return async (event) => {
    const records = recordsFromLambdaEvent(event);
    if (records.length === 0) {
      return {
        inserted: 0,
        duplicates: 0,
        deadLetters: 0,
        gaps: 0,
        connections: 0,
        eventTimesUs: [],
        startedAtMs: Date.now(),
        committedAtMs: Date.now(),
        stagesMs: emptyStages(),
      };
    }
    return handleBatch(records, opts.pool, opts.decode, opts.groupId, {
      deadLetterSink: opts.deadLetterSink,
    });
  };
}
