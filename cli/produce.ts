import { parseArgs } from 'node:util';
import { kafkaSettings, registrySettings } from '../common/config';
import { createLogger, parseLevel } from '../common/log';
import { createRegistry, registerValueSchema, valueSubject } from '../common/registry';
import { startCapture } from '../producer/capture/capture';
import { Publisher } from '../producer/publisher';
import { positiveInt, untilSignal } from './options';

const HELP = `Usage: tcpaudit produce [options]

Captures every TCP state change on this host and publishes it to Kafka as Avro.

Options:
  --brokers LIST          Kafka bootstrap brokers, host:port,...   [env KAFKA_BROKERS]
  --topic NAME            topic to publish to                        [env TCPAUDIT_TOPIC]
  --registry URL          Confluent-compatible schema registry       [env SCHEMA_REGISTRY_URL]
  --partitions N          partitions when the topic is created (default 6)
  --replication-factor N  replicas when the topic is created (default 1)
  --ring-bytes N          kernel ring buffer size, a power of two (default 8388608)
  --max-queued N          events held in memory while Kafka is away (default 1000000)
  --log-level LEVEL       debug, info, warn or error                 [env TCPAUDIT_LOG_LEVEL]
  -h, --help              this text
`;

export async function runProduce(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      brokers: { type: 'string' },
      topic: { type: 'string' },
      registry: { type: 'string' },
      partitions: { type: 'string', default: '6' },
      'replication-factor': { type: 'string', default: '1' },
      'ring-bytes': { type: 'string', default: String(8 << 20) },
      'max-queued': { type: 'string', default: '1000000' },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const log = createLogger('producer', parseLevel(values['log-level'] ?? process.env.TCPAUDIT_LOG_LEVEL));
  const kafka = kafkaSettings(values, 'tcpaudit-producer');
  const { url } = registrySettings(values);

  const schema = await registerValueSchema(createRegistry(url), url, kafka.topic);
  log.info('schema registered', { subject: valueSubject(kafka.topic), schemaId: schema.id });
  const publisher = new Publisher({
    ...kafka,
    partitions: positiveInt(values.partitions, '--partitions'),
    replicationFactor: positiveInt(values['replication-factor'], '--replication-factor'),
    schemaId: schema.id,
    valueType: schema.type,
    maxQueued: positiveInt(values['max-queued'], '--max-queued'),
    maxBatch: 5000,
    log,
  });
  await publisher.start();

  let failure: Error | null = null;
  const capture = startCapture({
    ringBytes: positiveInt(values['ring-bytes'], '--ring-bytes'),
    onEvents: (events) => publisher.enqueue(events),
    onError: (err) => {
      failure = err;
      log.error('capture failed', { error: err });
    },
  });
  log.info('producing', { topic: kafka.topic, brokers: kafka.brokers });

  const report = setInterval(() => {
    log.info('stats', { capture: capture.stats(), publisher: publisher.getStats() });
  }, 10_000);
  const signal = await untilSignal(() => failure !== null);
  clearInterval(report);
  log.info('stopping', { signal });
  await capture.stop();
  const left = await publisher.stop();
  log.info('stopped', { capture: capture.stats(), publisher: publisher.getStats(), unsent: left });
  return failure || left > 0 ? 1 : 0;
}
