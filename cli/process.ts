import { parseArgs } from 'node:util';
import { Pool } from 'pg';
import { kafkaSettings, pgDefaults, registrySettings } from '../common/config';
import { createLogger, parseLevel } from '../common/log';
import { createRegistry } from '../common/registry';
import { ProcessorConsumer } from '../processor/consumer';
import { registryDecoder } from '../processor/decode';
import { migrate } from '../processor/migrate';
import { untilSignal } from './options';

const HELP = `Usage: tcpaudit process [options]

Consumes TCP state changes from Kafka, rebuilds each connection's lifecycle and writes the audit
rows to PostgreSQL (tables tcp_events and connections, created on start).

Options:
  --brokers LIST      Kafka bootstrap brokers, host:port,...   [env KAFKA_BROKERS]
  --topic NAME        topic to consume                          [env TCPAUDIT_TOPIC]
  --registry URL      Confluent-compatible schema registry      [env SCHEMA_REGISTRY_URL]
  --group ID          consumer group id (default tcpaudit-processor) [env TCPAUDIT_GROUP]
  --log-level LEVEL   debug, info, warn or error                [env TCPAUDIT_LOG_LEVEL]
  -h, --help          this text

PostgreSQL is reached through the standard variables PGHOST, PGPORT, PGUSER, PGPASSWORD and
PGDATABASE (defaults: the local stack, 127.0.0.1:15432, database tcpaudit).
`;

export async function runProcess(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      brokers: { type: 'string' },
      topic: { type: 'string' },
      registry: { type: 'string' },
      group: { type: 'string' },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const log = createLogger('processor', parseLevel(values['log-level'] ?? process.env.TCPAUDIT_LOG_LEVEL));
  const kafka = kafkaSettings(values, 'tcpaudit-processor');
  const { url } = registrySettings(values);
  const groupId = values.group ?? process.env.TCPAUDIT_GROUP ?? 'tcpaudit-processor';

  const pool = new Pool({ ...pgDefaults(), max: 4 });
  // An idle client that dies must not crash the process; the next batch gets a fresh one.
  pool.on('error', (err) => log.warn('idle database connection lost', { error: err }));
  try {
    await migrate(pool, log);
    const consumer = new ProcessorConsumer({
      ...kafka,
      groupId,
      pool,
      decode: registryDecoder(createRegistry(url)),
      log,
    });
    await consumer.start();
    const report = setInterval(() => log.info('stats', { ...consumer.stats }), 10_000);
    const signal = await untilSignal();
    clearInterval(report);
    log.info('stopping', { signal });
    await consumer.stop();
    log.info('stopped', { ...consumer.stats });
    return 0;
  } finally {
    await pool.end();
  }
}
