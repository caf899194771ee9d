import { Kafka, logLevel, type Consumer, type EachBatchPayload } from 'kafkajs';
import type { Pool } from 'pg';
import type { Logger } from '../common/log';
import type { Decode } from './decode';
import { handleBatch, type SourceRecord } from './handler';

export interface ConsumerOptions {
  brokers: string[];
  clientId: string;
  topic: string;
  groupId: string;
  pool: Pool;
  decode: Decode;
  log: Logger;
}

export interface ProcessorStats {
  batches: number;
  inserted: number;
  duplicates: number;
  deadLetters: number;
}

/** Offsets committed with the rows; Kafka's own commit only trails them. */
async function storedOffsets(pool: Pool, groupId: string, topic: string) {
  const result = await pool.query<{ partition: number; next_offset: string }>(
    'SELECT partition, next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2',
    [groupId, topic],
  );
  return new Map(result.rows.map((r) => [r.partition, r.next_offset]));
}

/**
 * The consumer-group side of the processor: all the audit logic is in handleBatch; this only
 * feeds it batches, resumes each assigned partition from the offset stored in PostgreSQL, and
 * lets Kafka's committed offset follow for tools that watch consumer lag.
 */
export class ProcessorConsumer {
  readonly stats: ProcessorStats = { batches: 0, inserted: 0, duplicates: 0, deadLetters: 0 };
  private readonly consumer: Consumer;
  private readonly kafka: Kafka;

  constructor(private readonly opts: ConsumerOptions) {
    const kafka = (this.kafka = new Kafka({
      clientId: opts.clientId,
      brokers: opts.brokers,
      logLevel: logLevel.WARN,
      logCreator: () => ({ namespace, log }) => {
        const { message, ...extra } = log;
        opts.log.warn(String(message), { namespace, ...extra });
      },
    }));
    this.consumer = kafka.consumer({ groupId: opts.groupId });
  }

  async start(): Promise<void> {
    const { topic, groupId, log } = this.opts;
    this.consumer.on(this.consumer.events.GROUP_JOIN, ({ payload }) => {
      void this.resume(payload.memberAssignment[topic] ?? []).catch((err) =>
        log.error('could not seek to stored offsets', { error: err }),
      );
    });
    await this.waitForTopic();
    await this.consumer.connect();
    await this.consumer.subscribe({ topic, fromBeginning: true });
    await this.consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      eachBatch: (payload) => this.onBatch(payload),
    });
    log.info('consuming', { topic, groupId });
  }

  /**
   * The producer creates the topic with the partition count it is told; subscribing first would
   * have a broker that auto-creates topics make one with its own default instead.
   */
  private async waitForTopic(): Promise<void> {
    const admin = this.kafka.admin();
    await admin.connect();
    try {
      for (let attempt = 0; ; attempt++) {
        const topics = await admin.listTopics();
        if (topics.includes(this.opts.topic)) return;
        if (attempt % 30 === 0) this.opts.log.info('waiting for topic', { topic: this.opts.topic });
        await new Promise((r) => setTimeout(r, 1000));
      }
    } finally {
      await admin.disconnect();
    }
  }

  private async resume(partitions: number[]): Promise<void> {
    const stored = await storedOffsets(this.opts.pool, this.opts.groupId, this.opts.topic);
    for (const partition of partitions) {
      const offset = stored.get(partition);
      if (offset !== undefined) this.consumer.seek({ topic: this.opts.topic, partition, offset });
    }
  }

  private async onBatch({ batch, resolveOffset, heartbeat }: EachBatchPayload): Promise<void> {
    if (batch.messages.length === 0) return;
    const records: SourceRecord[] = batch.messages.map((m) => ({
      topic: batch.topic,
      partition: batch.partition,
      offset: m.offset,
      key: m.key,
      value: m.value,
    }));
    // A throw here (database or registry away) makes kafkajs retry the batch from its start;
    // the rows of a failed attempt were rolled back, and a replay of committed ones is a no-op.
    const result = await handleBatch(records, this.opts.pool, this.opts.decode, this.opts.groupId);
    this.stats.batches++;
    this.stats.inserted += result.inserted;
    this.stats.duplicates += result.duplicates;
    this.stats.deadLetters += result.deadLetters;
    if (result.deadLetters > 0) {
      this.opts.log.warn('messages sent to dead letters', {
        partition: batch.partition,
        count: result.deadLetters,
      });
    }
    const next = (BigInt(batch.lastOffset()) + 1n).toString();
    resolveOffset(batch.lastOffset());
    await this.consumer.commitOffsets([{ topic: batch.topic, partition: batch.partition, offset: next }]);
    await heartbeat();
  }

  async stop(): Promise<void> {
    await this.consumer.disconnect();
  }
}
