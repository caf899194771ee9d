import path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { KafkaClientSettings } from '../common/kafka-config';
import { settingsToMessage } from '../common/kafka-config';
import type {
  Codec,
  FromWorker,
  PackedBatch,
  TopicSpec,
  ToWorker,
  WorkerInit,
  WorkerLog,
} from './kafka-messages';

/** A message whose value is bytes[start, end): a slice of a buffer it may share. */
export interface OutMessage {
  key: string;
  bytes: Buffer;
  start: number;
  end: number;
}

export function wholeMessage(key: string, value: Buffer): OutMessage {
  return { key, bytes: value, start: 0, end: value.length };
}

/**
 * The thread's young generation. Left to V8 it grows to 32 MB under the churn of encoding
 * requests; what kafkajs allocates dies within a request, so a small one costs little CPU and
 * saves some 28 MB of resident memory (bench/producer.ts, paced at 100,000 events a second).
 */
const WORKER_YOUNG_GENERATION_MB = 6;

interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
}

type ToWorkerBody = ToWorker extends infer T ? (T extends unknown ? Omit<T, 'id'> : never) : never;

/**
 * The main thread's handle on producer/kafka-worker.ts: each call is one request to the
 * thread, answered once. A thread that dies (an uncaught error in kafkajs) fails what it had
 * in hand; the next call starts a fresh one and connects it first. Its idempotent producer is
 * then a new one, so a batch the old one had written but not acknowledged is written again:
 * at least once, which the processor's (connection, sequence) key absorbs.
 */
export class KafkaThread {
  private worker: Worker | null = null;
  private connected = false;
  private readonly waiting = new Map<number, Waiter>();
  private nextId = 1;

  constructor(
    private readonly settings: KafkaClientSettings,
    private readonly topics: TopicSpec[],
    private readonly onLog: (line: WorkerLog) => void,
  ) {}

  /** Whether the current thread's producer is connected (false again after a restart). */
  get isConnected(): boolean {
    return this.connected;
  }

  /** Connects the producer and creates the topics that are missing. */
  async connect(): Promise<void> {
    await this.request({ op: 'connect' });
    this.connected = true;
  }

  /** One produce request (acks from all in-sync replicas); resolves when Kafka acknowledged. */
  async send(topic: string, codec: Codec, messages: OutMessage[]): Promise<void> {
    if (!this.connected) await this.connect();
    await this.request(pack(topic, codec, messages), (b) => [
      b.values,
      b.ends.buffer as ArrayBuffer,
    ]);
  }

  /** Disconnects within `timeoutMs`, then ends the thread either way. */
  async close(timeoutMs: number): Promise<void> {
    if (!this.worker) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.request({ op: 'disconnect' }).catch(() => undefined),
      new Promise((r) => (timer = setTimeout(r, timeoutMs))),
    ]);
    clearTimeout(timer);
    this.terminate();
  }

  /** Ends the thread now: what it had in hand fails. */
  terminate(): void {
    const worker = this.worker;
    if (!worker) return;
    this.gone(new Error('kafka thread stopped'));
    void worker.terminate();
  }

  private spawn(): Worker {
    const init: WorkerInit = { settings: settingsToMessage(this.settings), topics: this.topics };
    const worker = new Worker(path.join(__dirname, 'kafka-worker.js'), {
      workerData: init,
      resourceLimits: { maxYoungGenerationSizeMb: WORKER_YOUNG_GENERATION_MB },
    });
    // Only a request in hand keeps the process alive (see request()).
    worker.unref();
    worker.on('message', (m: FromWorker) => {
      if (m.op === 'log') return this.onLog(m);
      const waiter = this.waiting.get(m.id);
      if (!waiter) return;
      this.settle(m.id);
      if (m.ok) waiter.resolve();
      else waiter.reject(new Error(m.error));
    });
    // Said once here, with the stack, whether or not a request was waiting: the next request
    // starts a fresh thread, and an idle thread's end would otherwise leave no trace.
    worker.on('error', (err) => {
      if (this.worker !== worker) return;
      this.onLog(threadLog('kafka thread failed', { error: err.message, stack: err.stack }));
      this.gone(new Error(`kafka thread failed: ${err.message}`));
    });
    worker.on('exit', (code) => {
      if (this.worker !== worker) return;
      this.onLog(threadLog('kafka thread exited', { code }));
      this.gone(new Error(`kafka thread exited with code ${code}`));
    });
    return worker;
  }

  private gone(err: Error): void {
    this.worker = null;
    this.connected = false;
    const waiters = [...this.waiting.values()];
    this.waiting.clear();
    for (const w of waiters) w.reject(err);
  }

  private settle(id: number): void {
    this.waiting.delete(id);
    if (this.waiting.size === 0) this.worker?.unref();
  }

  private request<B extends ToWorkerBody>(
    body: B,
    transfer?: (b: B) => ArrayBuffer[],
  ): Promise<void> {
    this.worker ??= this.spawn();
    const worker = this.worker;
    const id = this.nextId++;
    return new Promise<void>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      worker.ref();
      try {
        worker.postMessage({ ...body, id } as ToWorker, transfer?.(body) ?? []);
      } catch (err) {
        this.settle(id);
        reject(err as Error);
      }
    });
  }
}

const threadLog = (message: string, fields: Record<string, unknown>): WorkerLog => ({
  op: 'log',
  source: 'worker',
  level: 'error',
  message,
  fields,
});

/** Copies the values end to end into one buffer that is moved, not cloned, to the thread. */
function pack(topic: string, codec: Codec, messages: OutMessage[]): PackedBatch & { op: 'send' } {
  let total = 0;
  for (const m of messages) total += m.end - m.start;
  const values = new ArrayBuffer(total);
  const bytes = Buffer.from(values);
  const ends = new Uint32Array(messages.length);
  const keys: string[] = new Array(messages.length);
  let at = 0;
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i];
    at += m.bytes.copy(bytes, at, m.start, m.end);
    ends[i] = at;
    keys[i] = m.key;
  }
  return { op: 'send', topic, codec, keys, values, ends };
}
