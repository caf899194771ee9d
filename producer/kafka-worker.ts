/**
 * The Kafka client of `tcpaudit produce`, in a worker thread of its own. kafkajs encodes every
 * message in JavaScript (record framing, varints, CRC-32C, grouping by partition): at 100,000
 * events a second that was more than half of one core, on the same thread that takes batches
 * from the capture. Here it has its own thread; the Publisher keeps the queue, the spool and
 * the retry policy, and asks this thread to connect, send one batch, or disconnect.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { CompressionTypes, Kafka, Partitioners, logLevel, type Message } from 'kafkajs';
import { kafkajsConfig, settingsFromMessage } from '../common/kafka-config';
import type { FromWorker, ToWorker, WorkerInit, WorkerLog } from './kafka-messages';

const COMPRESSION = { gzip: CompressionTypes.GZIP, none: CompressionTypes.None } as const;
const LEVELS: Record<number, WorkerLog['level']> = {
  [logLevel.ERROR]: 'error',
  [logLevel.WARN]: 'warn',
  [logLevel.INFO]: 'info',
  [logLevel.DEBUG]: 'debug',
};

const port = parentPort!;
const init = workerData as WorkerInit;
const post = (m: FromWorker) => port.postMessage(m);

/** kafkajs' log extras are plain data, but one that is not must not kill the thread. */
function cloneable(fields: Record<string, unknown>): Record<string, unknown> {
  try {
    return JSON.parse(JSON.stringify(fields)) as Record<string, unknown>;
  } catch {
    return { fields: String(fields) };
  }
}

/**
 * kafkajs' default partitioner (murmur2 of the key, as Java clients hash) with the answer
 * remembered per key: each connection sends several events, and the stock one hashes and
 * filters the partition list again for every message. Bounded: connections send their events
 * within seconds, so the recent ones are what pays; 200,000 keys held some 15 MB of this
 * thread's heap, 20,000 hold under 2.
 */
const PARTITION_CACHE_KEYS = 20_000;

function cachedKeyPartitioner() {
  const inner = Partitioners.DefaultPartitioner();
  let cache = new Map<string, number>();
  let partitions = -1;
  return (args: Parameters<ReturnType<typeof Partitioners.DefaultPartitioner>>[0]): number => {
    const key = args.message.key;
    if (typeof key !== 'string') return inner(args);
    if (args.partitionMetadata.length !== partitions || cache.size >= PARTITION_CACHE_KEYS) {
      cache = new Map();
      partitions = args.partitionMetadata.length;
    }
    let p = cache.get(key);
    if (p === undefined) {
      p = inner(args);
      cache.set(key, p);
    }
    return p;
  };
}

const config = kafkajsConfig(settingsFromMessage(init.settings));
// The secrets now live hidden in `config` only; workerData kept them in plain fields.
if (init.settings.tls) init.settings.tls.key = undefined;
if (init.settings.sasl) init.settings.sasl.password = '';
const kafka = new Kafka({
  ...config,
  logLevel: logLevel.WARN,
  // The Publisher's drain loop retries forever; kafkajs' own retries only need to ride out a
  // leader move, not an outage, so a failed request comes back quickly and is counted.
  retry: { retries: 3, initialRetryTime: 100, maxRetryTime: 1000 },
  connectionTimeout: 3000,
  logCreator:
    () =>
    ({ namespace, level, log }) => {
      const { message, ...extra } = log;
      post({
        op: 'log',
        source: 'kafkajs',
        level: LEVELS[level] ?? 'debug',
        message: String(message),
        fields: cloneable({ namespace, ...extra }),
      });
    },
});

// Idempotence needs one request in flight per broker (kafkajs' rule), which also keeps
// per-partition order through retries.
const producer = kafka.producer({
  idempotent: true,
  maxInFlightRequests: 1,
  createPartitioner: cachedKeyPartitioner,
  // kafkajs retries an idempotent send forever unless told otherwise, and warns when told: the
  // Publisher resends the very same batch after a failure, with the same sequence numbers
  // (kafkajs advances them only on success), which is what its own retry would do, but a send
  // that gives up lets shutdown spool the batch instead of hanging.
  retry: { retries: 5, initialRetryTime: 100, maxRetryTime: 2000 },
});

async function connect(): Promise<void> {
  await producer.connect();
  const admin = kafka.admin();
  await admin.connect();
  try {
    for (const t of init.topics) {
      const created = await admin.createTopics({
        waitForLeaders: true,
        topics: [
          { topic: t.topic, numPartitions: t.partitions, replicationFactor: t.replicationFactor },
        ],
      });
      post({
        op: 'log',
        source: 'worker',
        level: 'info',
        message: created ? 'topic created' : 'topic exists',
        fields: { topic: t.topic, partitions: t.partitions },
      });
    }
  } finally {
    await admin.disconnect();
  }
}

async function send(m: Extract<ToWorker, { op: 'send' }>): Promise<void> {
  const values = Buffer.from(m.values);
  const messages: Message[] = new Array(m.keys.length);
  let start = 0;
  for (let i = 0; i < messages.length; i++) {
    messages[i] = { key: m.keys[i], value: values.subarray(start, m.ends[i]) };
    start = m.ends[i];
  }
  await producer.send({ topic: m.topic, acks: -1, compression: COMPRESSION[m.codec], messages });
}

async function handle(m: ToWorker): Promise<void> {
  try {
    if (m.op === 'connect') await connect();
    else if (m.op === 'send') await send(m);
    else await producer.disconnect();
    post({ op: 'reply', id: m.id, ok: true });
  } catch (err) {
    post({ op: 'reply', id: m.id, ok: false, error: (err as Error).message });
  }
}

port.on('message', (m: ToWorker) => void handle(m));
