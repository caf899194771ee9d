import { Kafka, Producer, Message, CompressionTypes, logLevel } from 'kafkajs';
import type avro from 'avsc';
import type { TcpEvent } from '../common/event';
import type { Logger } from '../common/log';
import { frame } from '../common/registry';
import { toAvro } from './record';

export interface PublisherOptions {
  brokers: string[];
  clientId: string;
  topic: string;
  partitions: number;
  replicationFactor: number;
  schemaId: number;
  valueType: avro.Type;
  /** Most messages held in memory while Kafka is slow or away; past it, the newest are dropped. */
  maxQueued: number;
  /** Most messages in one produce request. */
  maxBatch: number;
  log: Logger;
}

export interface PublisherStats {
  queued: number;
  published: number;
  dropped: number;
  sendErrors: number;
}

/**
 * Publishes decoded events to Kafka. Capture never waits on Kafka: `enqueue` only appends to a
 * bounded queue, and one flush loop sends it in order, so that events of a connection (one key,
 * one partition) keep their order across retries.
 */
export class Publisher {
  private readonly producer: Producer;
  private readonly kafka: Kafka;
  private queue: Message[] = [];
  private stats: PublisherStats = { queued: 0, published: 0, dropped: 0, sendErrors: 0 };
  private flushing: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly opts: PublisherOptions) {
    this.kafka = new Kafka({
      clientId: opts.clientId,
      brokers: opts.brokers,
      logLevel: logLevel.WARN,
      logCreator: () => ({ namespace, level, log }) => {
        const { message, ...extra } = log;
        const fields = { namespace, ...extra };
        if (level <= logLevel.ERROR) opts.log.error(String(message), fields);
        else opts.log.warn(String(message), fields);
      },
    });
    // Idempotence with one request in flight keeps per-partition order through retries.
    this.producer = this.kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  }

  async start(): Promise<void> {
    await this.ensureTopic();
    await this.producer.connect();
    this.timer = setInterval(() => void this.flush(), 50);
  }

  private async ensureTopic(): Promise<void> {
    const admin = this.kafka.admin();
    await admin.connect();
    try {
      const created = await admin.createTopics({
        waitForLeaders: true,
        topics: [{
          topic: this.opts.topic,
          numPartitions: this.opts.partitions,
          replicationFactor: this.opts.replicationFactor,
        }],
      });
      this.opts.log.info(created ? 'topic created' : 'topic exists', {
        topic: this.opts.topic,
        partitions: this.opts.partitions,
      });
    } finally {
      await admin.disconnect();
    }
  }

  enqueue(events: TcpEvent[]): void {
    for (const event of events) {
      if (this.queue.length >= this.opts.maxQueued) {
        this.stats.dropped++;
        continue;
      }
      const payload = this.opts.valueType.toBuffer(toAvro(event));
      this.queue.push({ key: event.connId, value: frame(this.opts.schemaId, payload) });
      this.stats.queued++;
    }
    if (this.queue.length >= this.opts.maxBatch) void this.flush();
  }

  /** Sends what is queued; concurrent callers share one loop so order is kept. */
  flush(): Promise<void> {
    if (!this.flushing) {
      this.flushing = this.drain().finally(() => {
        this.flushing = null;
      });
    }
    return this.flushing;
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue.slice(0, this.opts.maxBatch);
      try {
        await this.producer.send({
          topic: this.opts.topic,
          acks: -1,
          compression: CompressionTypes.None,
          messages: batch,
        });
      } catch (err) {
        // Kept at the head of the queue: the next tick retries them before anything newer.
        this.stats.sendErrors++;
        this.opts.log.warn('publish failed, will retry', { error: err, pending: this.queue.length });
        return;
      }
      this.queue.splice(0, batch.length);
      this.stats.published += batch.length;
    }
  }

  getStats(): PublisherStats {
    return { ...this.stats, queued: this.queue.length };
  }

  /** Flushes what is queued, giving up after `deadlineMs`, then disconnects. */
  async stop(deadlineMs = 10_000): Promise<number> {
    if (this.timer) clearInterval(this.timer);
    const until = Date.now() + deadlineMs;
    while (this.queue.length > 0 && Date.now() < until) {
      await this.flush();
      if (this.queue.length > 0) await new Promise((r) => setTimeout(r, 200));
    }
    await this.producer.disconnect();
    return this.queue.length;
  }
}
