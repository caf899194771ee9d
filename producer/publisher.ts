import fs from 'node:fs';
import path from 'node:path';
import type avro from 'avsc';
import { gapsTopic } from '../common/config';
import type { TcpEvent } from '../common/event';
import type { Logger } from '../common/log';
import type { KafkaClientSettings } from '../common/kafka-config';
import { CODECS, type Codec, type WorkerLog } from './kafka-messages';
import { StateChangeWriter } from './avro-writer';
import { KafkaThread, wholeMessage, type OutMessage } from './kafka-thread';
import type { DropStage, ProducerMetrics } from './metrics';
import type { Dropped, Lease, Overflow, Spool, SpoolRecord } from './spool';

/**
 * Compression of produce requests: GZIP by default. It is the one codec kafkajs carries itself
 * (Snappy, LZ4 and ZSTD need codec packages: the pure-JS Snappy one would compress on the
 * main thread, the others are native builds), our records compress very well under it (host,
 * boot id, comm and address prefixes repeat from record to record: 7:1 on bench/producer.ts's
 * synthetic records, less on real traffic), and Node runs zlib on libuv's thread pool, off
 * the thread that takes batches from the capture. A fleet pays in network and broker disk;
 * gzip pays in CPU (on this 2-core bench machine, gzip publishes about a quarter fewer events
 * a second than none): `--compression none` is there for CPU-starved hosts next to their broker.
 */
export const COMPRESSIONS = CODECS;
export type Compression = Codec;

export type GapReason =
  'KERNEL_RING_FULL' | 'USER_QUEUE_FULL' | 'SPOOL_FULL' | 'DECODE_FAILED' | 'UNKNOWN';

/** A run of lost state changes, as schemas/capture-gap.avsc carries it. */
export interface Gap {
  runId: string;
  seqFrom: number;
  seqTo: number;
  count: number;
  reason: GapReason;
  /** Microseconds since the epoch. */
  detectedAt: number;
}

export interface PublisherOptions {
  kafka: KafkaClientSettings;
  topic: string;
  partitions: number;
  replicationFactor: number;
  schemaId: number;
  valueType: avro.Type;
  gapSchemaId: number;
  gapType: avro.Type;
  /** Who is capturing: the gap records' key (host) and their run id. */
  origin: { host: string; bootId: string; runId: string };
  /** Most events held in memory; past it they go to the spool, or are dropped without one. */
  maxQueued: number;
  /** Most messages in one produce request. */
  maxBatch: number;
  compression: Compression;
  /** null: no spool, the memory queue is all there is. */
  spool: Spool | null;
  /** Which events give way when memory (without a spool) or the spool is full. */
  overflow: Overflow;
  metrics: ProducerMetrics;
  log: Logger;
}

interface LeaseRef {
  lease: Lease;
  left: number;
}

/** A queued message: its bytes are bytes[start, end), usually a slice of a shared slab. */
interface Pending extends OutMessage {
  seq: number;
  runId: string;
  lease?: LeaseRef;
}

export interface PublisherStats {
  captured: number;
  published: number;
  queued: number;
  spooled: number;
  spoolRecords: number;
  spoolBytes: number;
  dropped: Record<DropStage, number>;
  gapsPending: number;
  sendErrors: number;
}

export interface StopResult {
  /** Events (and gap records) left for the next run in the spool. */
  spooled: number;
  gapsSpooled: number;
  /** Events neither published nor spooled: without a spool, what Kafka did not take in time. */
  lost: number;
}

const GAPS_FILE = 'gaps.jsonl';
const SLAB_BYTES = 256 << 10;

const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 5000;

/**
 * Publishes captured events to Kafka, keyed by connection id so one connection stays in one
 * partition and keeps its order. Capture never waits on Kafka: `enqueue` encodes and appends
 * to memory or, once memory is full or the spool holds anything, to the spool; it never
 * awaits. One drain loop sends in queue order: memory first, then the spool's oldest segment,
 * and so on. A failed request is retried as the very same batch, so the idempotent producer
 * (which numbers each partition's batches) lets the broker discard a batch it already wrote.
 */
export class Publisher {
  /** The Kafka client, in a worker thread of its own: see producer/kafka-worker.ts. */
  private readonly kafka: KafkaThread;
  private readonly log: Logger;
  private readonly metrics: ProducerMetrics;
  private queue: Pending[] = [];
  private head = 0;
  /** The batch being sent or to be resent unchanged: queue[head, head + inFlight). */
  private inFlight = 0;
  /** New events go to the spool while it holds events or memory is full, to keep order. */
  private spilling = false;
  private gaps: Gap[] = [];
  private gapsInFlight = 0;
  private stats = {
    captured: 0,
    published: 0,
    spooled: 0,
    sendErrors: 0,
    dropped: { kernel: 0, user_queue: 0, spool: 0 } as Record<DropStage, number>,
  };
  private draining: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private retryAt = 0;
  private backoffMs = RETRY_MIN_MS;
  private lastError = '';
  private closed = false;
  private slab = Buffer.alloc(0);
  private slabAt = 0;
  private readonly writer: StateChangeWriter;

  constructor(private readonly opts: PublisherOptions) {
    this.log = opts.log;
    this.metrics = opts.metrics;
    const topics = [opts.topic, gapsTopic(opts.topic)].map((topic) => ({
      topic,
      partitions: opts.partitions,
      replicationFactor: opts.replicationFactor,
    }));
    this.writer = new StateChangeWriter(opts.schemaId, opts.valueType);
    this.kafka = new KafkaThread(opts.kafka, topics, (line) => this.kafkaLog(line));
    if (opts.spool) this.loadGaps();
    if (opts.spool && opts.spool.records > 0) {
      this.spilling = true;
      this.log.info('spool holds events from an earlier run: replaying them first', {
        records: opts.spool.records,
        bytes: opts.spool.bytes,
      });
    }
    this.updateGauges();
  }

  /** Starts the drain loop. Kafka need not be up: the loop connects when it can. */
  start(): void {
    this.timer = setInterval(() => void this.flush(), 20);
  }

  private kafkaLog(line: WorkerLog): void {
    const { level, message, fields } = line;
    if (line.source === 'worker') return this.log[level](message, fields);
    // While Kafka is away kafkajs logs every failed attempt as an error; the drain loop says
    // it once ('kafka unavailable'), so kafkajs' own lines go to debug meanwhile.
    const away = !this.kafka.isConnected || this.lastError !== '';
    if (level === 'error' && !away) this.log.warn(message, fields);
    else this.log.debug(message, fields);
  }

  /**
   * Confluent framing and the Avro body written straight into a shared slab, the entry keeping
   * only where they are: no record object, no Buffer per event, which the garbage collector
   * notices at 100,000 events a second. A slab lives until its last message is sent.
   */
  private encode(event: TcpEvent): Pending {
    const bound = this.writer.bound(event);
    if (bound > SLAB_BYTES) {
      // A record bigger than a slab (a very long string) gets a buffer of its own.
      const own = Buffer.allocUnsafe(bound);
      return this.pending(event, own, 0, this.writer.write(event, own, 0));
    }
    if (this.slab.length - this.slabAt < bound) this.newSlab();
    const start = this.slabAt;
    const end = this.writer.write(event, this.slab, start);
    this.slabAt = end;
    return this.pending(event, this.slab, start, end);
  }

  private pending(event: TcpEvent, bytes: Buffer, start: number, end: number): Pending {
    return { key: event.connId, bytes, start, end, seq: event.seq, runId: this.opts.origin.runId };
  }

  private newSlab(): void {
    this.slab = Buffer.allocUnsafe(SLAB_BYTES);
    this.slabAt = 0;
  }

  /** Takes events from the capture; never blocks, never throws for a full queue. */
  enqueue(events: TcpEvent[]): void {
    if (events.length === 0) return;
    this.stats.captured += events.length;
    this.metrics.captured.inc(events.length);
    const items = this.encodeAll(events);
    const spool = this.opts.spool;
    const depth = this.queue.length - this.head;
    if (spool && (this.spilling || depth + items.length > this.opts.maxQueued)) {
      // Whatever still fits in memory would overtake nothing: memory is older than the spool.
      const room = this.spilling ? 0 : Math.max(0, this.opts.maxQueued - depth);
      for (let i = 0; i < room; i++) this.queue.push(items[i]);
      this.spilling = true;
      this.toSpool(items.slice(room));
    } else if (!spool && depth + items.length > this.opts.maxQueued) {
      this.overflowMemory(items);
    } else {
      for (const item of items) this.queue.push(item);
    }
    this.updateGauges();
    if (this.queue.length - this.head >= this.opts.maxBatch) void this.flush();
  }

  /**
   * Encodes each event; one the schema cannot hold (a value out of its type's range: the writer
   * refuses it, as avsc would) is counted as lost with a gap record, and the others go on.
   */
  private encodeAll(events: TcpEvent[]): Pending[] {
    const items: Pending[] = [];
    for (const e of events) {
      try {
        items.push(this.encode(e));
      } catch (err) {
        const runId = this.opts.origin.runId;
        // A sequence number that is itself unusable is reported as unknown, as the kernel's are.
        const seq = Number.isSafeInteger(e.seq) ? e.seq : -1;
        this.log.error('event not encodable, dropped', { seq, error: (err as Error).message });
        this.noteLoss('user_queue', 'DECODE_FAILED', { runId, count: 1, seqFrom: seq, seqTo: seq });
      }
    }
    return items;
  }

  private toSpool(items: Pending[]): void {
    if (items.length === 0) return;
    const dropped = this.opts.spool!.append(items.map(toSpoolRecord));
    let lost = 0;
    for (const d of dropped) {
      lost += d.count;
      this.noteLoss('spool', 'SPOOL_FULL', d);
    }
    this.stats.spooled += items.length - (this.opts.spool!.overflow === 'drop-newest' ? lost : 0);
    this.metrics.spooled.inc(
      items.length - (this.opts.spool!.overflow === 'drop-newest' ? lost : 0),
    );
  }

  /** No spool and memory is full: drop by the overflow policy, never the batch in flight. */
  private overflowMemory(items: Pending[]): void {
    const depth = this.queue.length - this.head;
    const room = Math.max(0, this.opts.maxQueued - depth);
    if (this.opts.overflow === 'drop-newest') {
      for (let i = 0; i < room; i++) this.queue.push(items[i]);
      const lost = items.slice(room);
      if (lost.length > 0) this.noteLoss('user_queue', 'USER_QUEUE_FULL', rangeOf(lost));
      return;
    }
    for (const item of items) this.queue.push(item);
    const excess = this.queue.length - this.head - this.opts.maxQueued;
    const from = this.head + this.inFlight;
    const cut = this.queue.splice(from, Math.min(excess, this.queue.length - from));
    for (const group of byRun(cut)) this.noteLoss('user_queue', 'USER_QUEUE_FULL', rangeOf(group));
  }

  /** Counts a loss and queues a gap record for it (merged with the last one when adjacent). */
  noteLoss(stage: DropStage, reason: GapReason, d: Dropped): void {
    if (d.count <= 0) return;
    this.stats.dropped[stage] += d.count;
    this.metrics.dropped.inc({ stage }, d.count);
    const last = this.gaps.length > this.gapsInFlight ? this.gaps[this.gaps.length - 1] : null;
    if (
      last &&
      last.reason === reason &&
      last.runId === d.runId &&
      d.seqFrom >= 0 &&
      last.seqTo + 1 === d.seqFrom
    ) {
      last.seqTo = d.seqTo;
      last.count += d.count;
    } else {
      this.gaps.push({
        runId: d.runId,
        seqFrom: d.seqFrom,
        seqTo: d.seqTo,
        count: d.count,
        reason,
        detectedAt: Date.now() * 1000,
      });
    }
    this.log.warn('events lost', { stage, reason, ...d });
  }

  /** Sends what is queued; concurrent callers share one loop so order is kept. */
  flush(): Promise<void> {
    this.draining ??= this.drain().finally(() => {
      this.draining = null;
    });
    return this.draining;
  }

  private async drain(): Promise<void> {
    while (Date.now() >= this.retryAt && !this.closed) {
      try {
        // The thread connects (and creates the topics) before its first send, and again after
        // a restart.
        if (!this.kafka.isConnected) await this.kafka.connect();
        if (this.gaps.length > 0) await this.sendGaps();
        const batch = this.nextBatch();
        if (batch.length === 0) return;
        await this.sendBatch(batch);
        this.onSuccess();
      } catch (err) {
        // After stop() gave up on a send, its failure (the thread ended) is no outage.
        if (!this.closed) this.onFailure(err as Error);
        return;
      }
    }
  }

  private onSuccess(): void {
    if (this.lastError)
      this.log.info('kafka is back', {
        queued: this.queue.length - this.head,
        spooled: this.opts.spool?.records ?? 0,
      });
    this.lastError = '';
    this.backoffMs = RETRY_MIN_MS;
    this.metrics.kafkaUp.set(1);
  }

  private onFailure(err: Error): void {
    this.stats.sendErrors++;
    this.metrics.sendErrors.inc();
    this.metrics.kafkaUp.set(0);
    if (err.message !== this.lastError) {
      this.log.warn('kafka unavailable, holding events', {
        error: err.message,
        queued: this.queue.length - this.head,
        spooled: this.opts.spool?.records ?? 0,
      });
    }
    this.lastError = err.message;
    this.retryAt = Date.now() + this.backoffMs;
    this.backoffMs = Math.min(RETRY_MAX_MS, this.backoffMs * 2);
  }

  /** The batch in flight if a send failed (resent unchanged), else the next one. */
  private nextBatch(): Pending[] {
    if (this.inFlight === 0) {
      if (this.queue.length === this.head) this.refill();
      this.inFlight = Math.min(this.opts.maxBatch, this.queue.length - this.head);
    }
    return this.queue.slice(this.head, this.head + this.inFlight);
  }

  /** Memory is empty: take the spool's oldest segment, or leave spill mode if there is none. */
  private refill(): void {
    this.queue = [];
    this.head = 0;
    const spool = this.opts.spool;
    if (!spool) return;
    const lease = spool.take();
    if (!lease) {
      this.spilling = false;
      return;
    }
    const ref: LeaseRef = { lease, left: lease.records.length };
    for (const r of lease.records)
      this.queue.push({
        ...wholeMessage(r.key, r.value),
        seq: r.seq,
        runId: lease.runId,
        lease: ref,
      });
    if (lease.records.length === 0) lease.release();
  }

  private async sendBatch(batch: Pending[]): Promise<void> {
    const started = process.hrtime.bigint();
    await this.kafka.send(this.opts.topic, this.opts.compression, batch);
    if (this.closed) return; // stop() gave up on this send and spooled the batch
    this.metrics.publishLatency.observe(Number(process.hrtime.bigint() - started) / 1e9);
    this.metrics.batchSize.observe(batch.length);
    this.head += batch.length;
    this.inFlight = 0;
    this.stats.published += batch.length;
    this.metrics.published.inc(batch.length);
    for (const item of batch) {
      if (item.lease && --item.lease.left === 0) item.lease.lease.release();
    }
    // Sent entries still hold their slabs: drop them once they outnumber the live ones (so the
    // copy is paid for by as many sends) and fill more than a batch.
    if (this.head >= this.opts.maxBatch && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    this.updateGauges();
  }

  private async sendGaps(): Promise<void> {
    this.gapsInFlight = this.gaps.length;
    const { host, bootId } = this.opts.origin;
    const messages = this.gaps.map((g) => {
      const body = this.opts.gapType.toBuffer({
        host,
        boot_id: bootId,
        run_id: g.runId,
        seq_from: g.seqFrom,
        seq_to: g.seqTo,
        count: g.count,
        reason: g.reason,
        detected_at: g.detectedAt,
      });
      const value = Buffer.allocUnsafe(5 + body.length);
      value[0] = 0;
      value.writeUInt32BE(this.opts.gapSchemaId, 1);
      body.copy(value, 5);
      return wholeMessage(host, value);
    });
    try {
      await this.kafka.send(gapsTopic(this.opts.topic), 'none', messages);
    } finally {
      this.gapsInFlight = 0;
    }
    if (this.closed) return; // stop() gave up on this send: the gaps file has them
    const sent = this.gaps.splice(0, messages.length);
    if (this.opts.spool) fs.rmSync(path.join(this.opts.spool.dir, GAPS_FILE), { force: true });
    this.metrics.gapsPublished.inc(sent.length);
    this.log.info('gap records published', {
      gaps: sent.length,
      events: sent.reduce((n, g) => n + g.count, 0),
    });
  }

  private updateGauges(): void {
    this.metrics.queueDepth.set(this.queue.length - this.head);
    this.metrics.spoolBytes.set(this.opts.spool?.bytes ?? 0);
  }

  getStats(): PublisherStats {
    return {
      captured: this.stats.captured,
      published: this.stats.published,
      queued: this.queue.length - this.head,
      spooled: this.stats.spooled,
      spoolRecords: this.opts.spool?.records ?? 0,
      spoolBytes: this.opts.spool?.bytes ?? 0,
      dropped: { ...this.stats.dropped },
      gapsPending: this.gaps.length,
      sendErrors: this.stats.sendErrors,
    };
  }

  /** Events held here or in the spool: what a second signal would leave behind. */
  unsent(): { memory: number; spool: number } {
    const inSpool = this.opts.spool?.records ?? 0;
    const fromSpool = this.queue.slice(this.head).filter((p) => p.lease).length;
    return { memory: this.queue.length - this.head - fromSpool, spool: inSpool };
  }

  /**
   * Sends everything queued and spooled while Kafka answers, for at most `deadlineMs`; what
   * is left then goes to the spool (memory first, so order holds) and the gap records to
   * the spool's gaps file. Then disconnects.
   */
  async stop(deadlineMs = 15_000): Promise<StopResult> {
    if (this.timer) clearInterval(this.timer);
    const until = Date.now() + deadlineMs;
    const empty = () =>
      this.queue.length === this.head &&
      this.gaps.length === 0 &&
      (this.opts.spool?.records ?? 0) === 0;
    while (!empty() && Date.now() < until) {
      this.retryAt = Math.min(this.retryAt, Date.now());
      // A send to a broker that went silent can take kafkajs' whole retry budget: the
      // deadline wins, and the batch in flight is spooled with the rest (if the broker did
      // take it, the next run sends it twice: at least once, never lost).
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        this.flush(),
        new Promise((r) => (timer = setTimeout(r, Math.max(0, until - Date.now())))),
      ]);
      clearTimeout(timer);
      if (this.lastError) break; // Kafka is away: spool instead of waiting out the deadline
    }
    const result = this.persistRest();
    await this.kafka.close(2000);
    this.opts.spool?.close();
    this.updateGauges();
    return result;
  }

  /** For a second signal: no more waiting, memory and gap records go to the spool now. */
  abort(): StopResult {
    if (this.timer) clearInterval(this.timer);
    const result = this.persistRest();
    this.kafka.terminate();
    return result;
  }

  private persistRest(): StopResult {
    this.closed = true;
    const spool = this.opts.spool;
    const rest = this.queue.slice(this.head);
    this.queue = [];
    this.head = 0;
    this.inFlight = 0;
    if (!spool) {
      if (rest.length > 0) {
        for (const group of byRun(rest))
          this.noteLoss('user_queue', 'USER_QUEUE_FULL', rangeOf(group));
      }
      return { spooled: 0, gapsSpooled: 0, lost: rest.length };
    }
    // Memory is older than anything spooled: it becomes the first segments, in order.
    const groups = byRun(rest);
    for (let i = groups.length - 1; i >= 0; i--) {
      spool.prepend(groups[i].map(toSpoolRecord), groups[i][0].runId);
    }
    const leases = new Set(rest.map((p) => p.lease).filter((l): l is LeaseRef => l !== undefined));
    for (const ref of leases) ref.lease.release();
    const gapsSpooled = this.gaps.length;
    const file = path.join(spool.dir, GAPS_FILE);
    if (gapsSpooled > 0)
      fs.writeFileSync(file, this.gaps.map((g) => JSON.stringify(g) + '\n').join(''));
    this.gaps = [];
    return { spooled: spool.records, gapsSpooled, lost: 0 };
  }

  /** Gap records an earlier run could not send: they go out before anything else. */
  private loadGaps(): void {
    const file = path.join(this.opts.spool!.dir, GAPS_FILE);
    if (!fs.existsSync(file)) return;
    const lines = fs
      .readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => l.trim() !== '');
    for (const line of lines) {
      try {
        this.gaps.push(JSON.parse(line) as Gap);
      } catch {
        this.log.warn('unreadable line in the spooled gaps file, skipped', { file });
      }
    }
    // Kept until they are sent (or rewritten at stop): a crash may send one twice, never none.
  }
}

/** The spool keeps each message's own bytes, not the slab they share. */
function toSpoolRecord(p: Pending): SpoolRecord {
  return { key: p.key, value: p.bytes.subarray(p.start, p.end), seq: p.seq };
}

function rangeOf(items: Pending[]): Dropped {
  return {
    runId: items[0].runId,
    count: items.length,
    seqFrom: items[0].seq,
    seqTo: items[items.length - 1].seq,
  };
}

/** Splits a run of queue items where the capture run changes. */
function byRun(items: Pending[]): Pending[][] {
  const out: Pending[][] = [];
  for (const item of items) {
    const last = out[out.length - 1];
    if (last && last[0].runId === item.runId) last.push(item);
    else out.push([item]);
  }
  return out;
}
