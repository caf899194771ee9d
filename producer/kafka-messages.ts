import type { KafkaSettingsMessage } from '../common/kafka-config';

/** What passes between the Publisher (main thread) and the Kafka client's worker thread. */

export interface TopicSpec {
  topic: string;
  partitions: number;
  replicationFactor: number;
}

export interface WorkerInit {
  settings: KafkaSettingsMessage;
  /** Created at connect when missing. */
  topics: TopicSpec[];
}

export const CODECS = ['gzip', 'none'] as const;
export type Codec = (typeof CODECS)[number];

/**
 * A batch as it crosses threads: the values packed end to end in one transferred buffer, so
 * handing 5,000 messages over costs one copy and no per-message structured clone.
 */
export interface PackedBatch {
  topic: string;
  codec: Codec;
  keys: string[];
  values: ArrayBuffer;
  /** ends[i] is where value i ends in `values`; value i starts at ends[i - 1] (or 0). */
  ends: Uint32Array;
}

export type ToWorker =
  | { id: number; op: 'connect' }
  | ({ id: number; op: 'send' } & PackedBatch)
  | { id: number; op: 'disconnect' };

export type WorkerLog = {
  op: 'log';
  /** 'kafkajs': a line of the client's own; 'worker': ours, logged as is. */
  source: 'kafkajs' | 'worker';
  level: 'error' | 'warn' | 'info' | 'debug';
  message: string;
  fields: Record<string, unknown>;
};

export type FromWorker =
  | { op: 'reply'; id: number; ok: true }
  | { op: 'reply'; id: number; ok: false; error: string }
  | WorkerLog;
