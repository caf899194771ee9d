import {
  Kafka,
  logLevel,
  Partitioners,
  type Consumer,
  type EachBatchPayload,
  type KafkaConfig,
  type Producer,
  type Admin,
} from 'kafkajs';
import type { Pool } from 'pg';
import { deadLetterTopic, gapsTopic } from '../common/config';
import type { Logger } from '../common/log';
import type { Decode } from './decode';
import { handleBatch, type BatchResult, type DeadLetter, type SourceRecord } from './handler';
import type { ProcessorMetrics } from './metrics';
import { WriteBehind } from './write-behind';

export interface ConsumerOptions {
  /** kafkajs client settings (brokers, TLS, SASL): common/kafka-config.ts builds them. */
  kafka: KafkaConfig;
  topic: string;
  groupId: string;
  pool: Pool;
  decode: Decode;
  log: Logger;
  metrics?: ProcessorMetrics;
  /** Partitions processed at once, each in its own transaction (the pool needs as many clients). */
  concurrency?: number;
  sessionTimeout?: number;
  /** Called after each committed batch (benchmarks, tests). */
  onBatchResult?: (result: BatchResult) => void;
  /** Logs one 'batch' line per committed batch: offsets, counts and the milliseconds per step. */
  profile?: boolean;
  /** Called once if kafkajs stops the consumer for good (a CRASH it will not restart). */
  onFatal?: (error: Error) => void;
}

export interface ProcessorStats {
  batches: number;
  inserted: number;
  duplicates: number;
  deadLetters: number;
  gaps: number;
}

/** Bytes fetched per partition: some 28,000 events, one batch and one transaction. */
const PARTITION_FETCH_BYTES = 4 << 20;

/** What a truncated dead-letter copy keeps: the dead_letters row holds the whole message. */
export const TRUNCATED_VALUE_BYTES = 64 << 10;
const TRUNCATED_KEY_BYTES = 1 << 10;

/**
 * A send the broker refused for good (a message over its size limit, a topic it will not
 * write): kafkajs marks these non-retriable. Its "retries exceeded" and timeout errors are
 * non-retriable classes too, but mean the broker is away: those are worth retrying the batch.
 */
export function permanentSendFailure(err: unknown): boolean {
  const e = err as { name?: string; retriable?: boolean; cause?: unknown } | null;
  if (!e || e.name === 'KafkaJSNumberOfRetriesExceeded' || e.name === 'KafkaJSTimeout')
    return false;
  let cause: typeof e = e;
  while (cause.cause) cause = cause.cause as typeof e;
  return e.retriable === false || cause.retriable === false;
}

/**
 * The copy of a dead letter the broker can take when the whole one was refused: the value's
 * first 64 KiB, the key's first 1 KiB, the original headers dropped, and a header saying so.
 */
export function truncatedDeadLetter({ record, reason }: DeadLetter) {
  const value = record.value ?? Buffer.alloc(0);
  const key = record.key;
  return {
    key: key && key.length > TRUNCATED_KEY_BYTES ? key.subarray(0, TRUNCATED_KEY_BYTES) : key,
    value: value.subarray(0, TRUNCATED_VALUE_BYTES),
    headers: {
      'tcpaudit-dlq-reason': reason.slice(0, 1000),
      'tcpaudit-dlq-topic': record.topic,
      'tcpaudit-dlq-partition': String(record.partition),
      'tcpaudit-dlq-offset': record.offset,
      'tcpaudit-dlq-truncated':
        `the broker refused the whole copy: value ${value.length} bytes, first ` +
        `${Math.min(value.length, TRUNCATED_VALUE_BYTES)} kept; original headers dropped; ` +
        'the dead_letters table holds the whole message',
    },
  };
}

/** Dead-letter message headers: the reason and where the original message was. */
export function deadLetterMessages(letters: DeadLetter[]) {
  return letters.map(({ record, reason }) => ({
    key: record.key,
    value: record.value,
    headers: {
      ...(Object.fromEntries(
        Object.entries(record.headers ?? {}).filter(([, v]) => v !== undefined),
      ) as Record<string, Buffer | string>),
      'tcpaudit-dlq-reason': reason,
      'tcpaudit-dlq-topic': record.topic,
      'tcpaudit-dlq-partition': String(record.partition),
      'tcpaudit-dlq-offset': record.offset,
    },
  }));
}

/**
 * The consumer-group side of the processor: all the audit logic is in handleBatch; this only
 * feeds it batches. PostgreSQL's consumer_offsets is the only authority on where a partition
 * resumes: after every assignment the first batch of each partition is checked against it
 * (records already committed are dropped; a fetch that starts past it seeks back), so neither
 * a lagging nor a leading Kafka commit can lose or repeat a row. Kafka's own commit only trails,
 * for tools that watch consumer lag.
 */
export class ProcessorConsumer {
  readonly stats: ProcessorStats = {
    batches: 0,
    inserted: 0,
    duplicates: 0,
    deadLetters: 0,
    gaps: 0,
  };
  private readonly consumer: Consumer;
  private readonly kafka: Kafka;
  private producer: Producer | null = null;
  private admin: Admin | null = null;
  /** Next offset to process per topic/partition, as PostgreSQL says; cleared on every join. */
  private readonly positions = new Map<string, bigint>();
  private inGroup = false;
  /** Each partition's batch being written while its next is fetched. */
  private readonly writes = new WriteBehind();
  /** Counts group joins and rebalances: a write begun before one leaves positions alone. */
  private generation = 0;
  private stopping = false;
  /** Set when kafkajs stopped the consumer and will not restart it. */
  failure: Error | null = null;

  constructor(private readonly opts: ConsumerOptions) {
    this.kafka = new Kafka({
      ...opts.kafka,
      logLevel: logLevel.WARN,
      logCreator:
        () =>
        ({ namespace, log }) => {
          const { message, ...extra } = log;
          opts.log.warn(String(message), { namespace, ...extra });
        },
    });
    this.consumer = this.kafka.consumer({
      groupId: opts.groupId,
      maxBytesPerPartition: PARTITION_FETCH_BYTES,
      // kafkajs caps a whole fetch at 10 MB by default: with three partitions of backlog one got
      // under half its share, and its batch sat idle while the others' ran. A fetch round now
      // gives every partition in flight its full share.
      maxBytes: PARTITION_FETCH_BYTES * (opts.concurrency ?? 4),
      maxWaitTimeInMs: 250,
      sessionTimeout: opts.sessionTimeout ?? 30_000,
      heartbeatInterval: Math.min(3000, Math.floor((opts.sessionTimeout ?? 30_000) / 3)),
    });
  }

  consuming(): boolean {
    return this.inGroup;
  }

  async start(): Promise<void> {
    const { topic, groupId, log } = this.opts;
    const { GROUP_JOIN, CRASH, STOP, DISCONNECT, REBALANCING } = this.consumer.events;
    const forget = () => {
      this.positions.clear();
      this.generation++;
    };
    this.consumer.on(GROUP_JOIN, () => {
      forget();
      this.inGroup = true;
    });
    this.consumer.on(REBALANCING, forget);
    for (const event of [CRASH, STOP, DISCONNECT])
      this.consumer.on(event, () => (this.inGroup = false));
    // kafkajs restarts a crashed consumer only for errors it deems retriable; after any other
    // it stops for good, and a process that stayed up would consume nothing, forever.
    this.consumer.on(CRASH, ({ payload }) => {
      if (payload.restart || this.failure) return;
      this.failure = payload.error;
      log.error('consumer crashed and kafkajs will not restart it', {
        error: payload.error,
        groupId,
      });
      this.opts.onFatal?.(payload.error);
    });
    this.admin = this.kafka.admin();
    await this.admin.connect();
    await this.waitForTopic();
    // The dead-letter producer: the partitioner named, so kafkajs does not warn at every start
    // that its default changed in 2.0 (keys hash as Java clients hash them: murmur2).
    this.producer = this.kafka.producer({
      idempotent: true,
      maxInFlightRequests: 1,
      createPartitioner: Partitioners.DefaultPartitioner,
    });
    await this.producer.connect();
    await this.consumer.connect();
    await this.consumer.subscribe({ topics: [topic, gapsTopic(topic)], fromBeginning: true });
    await this.consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: this.opts.concurrency ?? 4,
      eachBatch: (payload) => this.onBatch(payload),
    });
    log.info('consuming', { topic, groupId });
  }

  /**
   * The producer creates the events topic with the partition count it is told; subscribing first
   * would have a broker that auto-creates topics make one with its own default instead. The gaps
   * and dead-letter topics are made here if nobody made them yet.
   */
  private async waitForTopic(): Promise<void> {
    const admin = this.admin!;
    const { topic, log } = this.opts;
    for (let attempt = 0; ; attempt++) {
      const topics = await admin.listTopics();
      if (topics.includes(topic)) {
        const missing = [gapsTopic(topic), deadLetterTopic(topic)].filter(
          (t) => !topics.includes(t),
        );
        if (missing.length > 0) {
          await admin
            .createTopics({ topics: missing.map((t) => ({ topic: t, numPartitions: 1 })) })
            .catch((err) => log.warn('could not create topics', { topics: missing, error: err }));
        }
        return;
      }
      if (attempt % 30 === 0) log.info('waiting for topic', { topic });
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  private async storedPosition(topic: string, partition: number): Promise<bigint> {
    const { rows } = await this.opts.pool.query<{ next_offset: string }>(
      'SELECT next_offset FROM consumer_offsets WHERE group_id = $1 AND topic = $2 AND partition = $3',
      [this.opts.groupId, topic, partition],
    );
    if (rows.length > 0) return BigInt(rows[0].next_offset);
    return this.lowWatermark(topic, partition);
  }

  private async lowWatermark(topic: string, partition: number): Promise<bigint> {
    const offsets = await this.admin!.fetchTopicOffsets(topic);
    const low = offsets.find((o) => o.partition === partition)?.low ?? '0';
    return BigInt(low);
  }

  /**
   * Publishes dead letters to '<topic>.dlq'. A copy the broker refuses for good (the original
   * was near its size limit and our headers pushed it over) goes again truncated, with a header
   * saying so; if even that is refused it is logged, and only the dead_letters row (which holds
   * the whole message: bytea takes up to 1 GB, far above any Kafka message) keeps it. A broker
   * that is away throws: the batch is retried.
   */
  private async sendDeadLetters(letters: DeadLetter[]): Promise<void> {
    const topic = deadLetterTopic(this.opts.topic);
    const send = (messages: ReturnType<typeof deadLetterMessages>) =>
      this.producer!.send({ topic, messages });
    try {
      await send(deadLetterMessages(letters));
      return;
    } catch (err) {
      if (!permanentSendFailure(err)) throw err;
    }
    for (const letter of letters) {
      const where = {
        topic: letter.record.topic,
        partition: letter.record.partition,
        offset: letter.record.offset,
        bytes: letter.record.value?.length ?? 0,
      };
      try {
        await send(deadLetterMessages([letter]));
        continue;
      } catch (err) {
        if (!permanentSendFailure(err)) throw err;
        this.opts.log.warn('dead letter refused by the broker: publishing it truncated', {
          ...where,
          error: err,
        });
      }
      try {
        await send([truncatedDeadLetter(letter)]);
      } catch (err) {
        if (!permanentSendFailure(err)) throw err;
        this.opts.log.error('dead letter not published; only the dead_letters row holds it', {
          ...where,
          error: err,
        });
      }
    }
  }

  private async onBatch({
    batch,
    resolveOffset,
    heartbeat,
    isRunning,
    isStale,
  }: EachBatchPayload): Promise<void> {
    if (batch.messages.length === 0 || !isRunning() || this.stopping) return;
    const { topic, partition } = batch;
    const key = `${topic}/${partition}`;
    // The partition's previous batch commits first; its failure comes back here, thrown, so
    // kafkajs backs off and fetches again from that batch (the seek made when it failed).
    await this.writes.settle(key);
    if (isStale() || this.stopping) return;
    let position = this.positions.get(key);
    if (position === undefined) {
      position = await this.storedPosition(topic, partition);
      this.positions.set(key, position);
    }
    const first = BigInt(batch.firstOffset()!);
    if (first > position) {
      const low = await this.lowWatermark(topic, partition);
      if (position >= low) {
        this.opts.log.info('seeking to the offset stored in PostgreSQL', {
          topic,
          partition,
          offset: String(position),
          fetched: String(first),
        });
        this.consumer.seek({ topic, partition, offset: position.toString() });
        return;
      }
      this.opts.log.warn('records deleted by Kafka retention before they were processed', {
        topic,
        partition,
        from: String(position),
        to: String(low - 1n),
      });
    }
    // Offsets ascend within a batch: only leading records can be ones already stored.
    let skip = 0;
    while (skip < batch.messages.length && BigInt(batch.messages[skip].offset) < position) skip++;
    const records: SourceRecord[] = batch.messages.slice(skip).map((m) => ({
      topic,
      partition,
      offset: m.offset,
      key: m.key,
      value: m.value,
      headers: m.headers as SourceRecord['headers'],
    }));
    const next = BigInt(batch.lastOffset()) + 1n;
    const generation = this.generation;
    const lag = BigInt(batch.highWatermark) - next;
    const written = () => this.writeBatch(topic, partition, records, next, generation, lag);
    // stop() may have begun during the look-ups above and found no write in flight: a write
    // started now would commit after the pool is closed. The next run starts from this batch.
    if (this.stopping || isStale()) return;
    // A failed write is fetched again from its first record: positions still says where.
    this.writes.start(key, written, () => this.seekBack(topic, partition, first));
    // kafkajs fetches from the resolved offset: the next batch is fetched while this one is
    // written. PostgreSQL's offsets stay the authority; Kafka's commit follows PostgreSQL's.
    resolveOffset(batch.lastOffset());
    await heartbeat();
  }

  /** Fetches a partition again from `offset`: a failed write's first record. */
  private seekBack(topic: string, partition: number, offset: bigint): void {
    try {
      this.consumer.seek({ topic, partition, offset: offset.toString() });
    } catch (err) {
      // Not consuming any more: the next assignment starts from PostgreSQL's offset anyway.
      this.opts.log.debug('no seek after a failed batch', { topic, partition, error: err });
    }
  }

  /**
   * One batch into PostgreSQL, in one transaction, then the bookkeeping: positions (unless the
   * group was joined again meanwhile), stats, metrics and the trailing Kafka commit.
   */
  private async writeBatch(
    topic: string,
    partition: number,
    records: SourceRecord[],
    next: bigint,
    generation: number,
    lag: bigint,
  ): Promise<void> {
    if (records.length > 0) {
      const started = process.hrtime.bigint();
      // A throw here (database or registry away) seeks back to the batch's start, and the
      // partition's next eachBatch hands kafkajs the error to back off on before the retry; the
      // rows of a failed attempt were rolled back, and a replay of committed ones is a no-op.
      const result = await handleBatch(
        records,
        this.opts.pool,
        this.opts.decode,
        this.opts.groupId,
        {
          deadLetterSink: (letters) => this.sendDeadLetters(letters),
          onDataError: (err, count) =>
            this.opts.log.warn('PostgreSQL refused a batch for its data: splitting it', {
              topic,
              partition,
              records: count,
              sqlstate: (err as { code?: string }).code,
              error: err.message,
            }),
        },
      );
      this.opts.onBatchResult?.(result);
      if (this.opts.profile) this.logProfile(records, result);
      this.stats.batches++;
      this.stats.inserted += result.inserted;
      this.stats.duplicates += result.duplicates;
      this.stats.deadLetters += result.deadLetters;
      this.stats.gaps += result.gaps;
      const m = this.opts.metrics;
      if (m) {
        m.batchSeconds.observe(Number(process.hrtime.bigint() - started) / 1e9);
        m.events.inc(result.inserted);
        m.duplicates.inc(result.duplicates);
        m.deadLetters.inc(result.deadLetters);
        m.gaps.inc(result.gaps);
        for (const us of result.eventTimesUs)
          m.endToEnd.observe(Math.max(0, result.committedAtMs / 1000 - us / 1e6));
      }
      if (result.deadLetters > 0) {
        this.opts.log.warn('messages sent to dead letters', {
          topic,
          partition,
          count: result.deadLetters,
        });
      }
    }
    if (generation === this.generation) this.positions.set(`${topic}/${partition}`, next);
    this.opts.metrics?.lag.set({ topic, partition: String(partition) }, Math.max(0, Number(lag)));
    await this.consumer
      .commitOffsets([{ topic, partition, offset: next.toString() }])
      .catch((err) =>
        this.opts.log.debug('kafka offset commit failed (PostgreSQL holds the offset)', {
          error: err,
        }),
      );
  }

  private logProfile(records: SourceRecord[], result: BatchResult): void {
    const ms = (x: number) => Math.round(x * 100) / 100;
    this.opts.log.info('batch', {
      topic: records[0].topic,
      partition: records[0].partition,
      from: records[0].offset,
      to: records[records.length - 1].offset,
      records: records.length,
      inserted: result.inserted,
      connections: result.connections,
      startedAtMs: result.startedAtMs,
      committedAtMs: result.committedAtMs,
      stagesMs: Object.fromEntries(Object.entries(result.stagesMs).map(([k, v]) => [k, ms(v)])),
    });
  }

  /** Stops fetching, lets the writes in flight commit, then leaves the group. */
  async stop(): Promise<void> {
    this.stopping = true;
    const { topic } = this.opts;
    try {
      this.consumer.pause([{ topic }, { topic: gapsTopic(topic) }]);
    } catch {
      // Never ran, or kafkajs stopped it already: nothing is being fetched.
    }
    await this.writes.idle();
    await this.consumer.disconnect();
    await this.producer?.disconnect();
    await this.admin?.disconnect();
    this.inGroup = false;
  }
}
