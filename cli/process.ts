import { parseArgs } from 'node:util';
import { Pool } from 'pg';
import { kafkaSettings, pgDefaults, registrySettings } from '../common/config';
import {
  KAFKA_SECURITY_HELP,
  kafkaClientSettings,
  kafkaFlagSpecs,
  kafkajsConfig,
} from '../common/kafka-config';
import { createLogger, parseLevel, type Logger } from '../common/log';
import { createRegistry } from '../common/registry';
import { ProcessorConsumer } from '../processor/consumer';
import { registryDecoder } from '../processor/decode';
import { expireConnections } from '../processor/expiry';
import { ProcessorMetrics, serveMetrics } from '../processor/metrics';
import { migrate } from '../processor/migrate';
import { dropExpiredPartitions, ensurePartitions, grantReader } from '../processor/partitions';
import { UsageError, untilSignal } from './options';

const HELP = `Usage: tcpaudit process [options]

Consumes TCP state changes (and the producer's capture gaps, topic <topic>.gaps) from Kafka,
rebuilds each connection's lifecycle and writes the audit rows to PostgreSQL: tcp_events,
connections, capture_gaps, dead_letters (bad messages also go to the topic <topic>.dlq). Rows
and consumed offsets commit in one transaction; several instances may share one group.

Options:
  --brokers LIST        Kafka bootstrap brokers, host:port,...   [env KAFKA_BROKERS]
  --topic NAME          topic to consume                          [env TCPAUDIT_TOPIC]
  --registry URL        Confluent-compatible schema registry      [env SCHEMA_REGISTRY_URL]
  --group ID            consumer group id (default tcpaudit-processor) [env TCPAUDIT_GROUP]
  --concurrency N       partitions processed at once, each in its own transaction (default 4)
  --metrics-port PORT   /metrics and /healthz port (default 9465; 0 picks one) [env TCPAUDIT_METRICS_PORT]
  --metrics-host ADDR   address they listen on (default 127.0.0.1)
  --retention-days N    drop partitions older than N days (default 0: keep all) [env TCPAUDIT_RETENTION_DAYS]
  --idle-limit SECONDS  a host silent this long has its open connections expired (default 3600)
  --session-timeout MS  consumer group session timeout (default 30000; a killed instance's
                        partitions move after this long)
  --log-level LEVEL     debug, info, warn or error                [env TCPAUDIT_LOG_LEVEL]
  --profile             log a 'batch' line per committed batch: offsets, counts and the
                        milliseconds each step took (decode, raw insert, lifecycle, commit...)
${KAFKA_SECURITY_HELP}  -h, --help            this text

PostgreSQL is reached through the standard variables PGHOST, PGPORT, PGUSER, PGPASSWORD and
PGDATABASE (defaults: the local stack, 127.0.0.1:15432, database tcpaudit).
`;

function intFlag(text: string | undefined, name: string, fallback: number, min = 0): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n < min)
    throw new UsageError(`bad ${name} "${text}": expected an integer >= ${min}`);
  return n;
}

/** Partitions ahead, retention and expiry: every minute, errors logged and retried next time. */
function maintain(
  pool: Pool,
  log: Logger,
  metrics: ProcessorMetrics,
  retentionDays: number,
  idleLimit: number,
) {
  let running = false;
  let ticks = 0;
  const tick = async () => {
    if (running) return;
    running = true;
    try {
      if (ticks % 60 === 0) {
        await ensurePartitions(pool, log);
        await dropExpiredPartitions(pool, log, retentionDays);
      }
      const counts = await expireConnections(pool, idleLimit);
      const total = Object.values(counts).reduce((a, b) => a + b, 0);
      if (total > 0) {
        metrics.expired.inc(total);
        log.info('connections expired', counts);
      }
    } catch (err) {
      log.warn('maintenance failed', { error: err });
    } finally {
      ticks++;
      running = false;
    }
  };
  const timer = setInterval(() => void tick(), 60_000);
  return () => clearInterval(timer);
}

export async function runProcess(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      brokers: { type: 'string' },
      topic: { type: 'string' },
      registry: { type: 'string' },
      group: { type: 'string' },
      concurrency: { type: 'string' },
      'metrics-port': { type: 'string' },
      'metrics-host': { type: 'string' },
      'retention-days': { type: 'string' },
      'idle-limit': { type: 'string' },
      'session-timeout': { type: 'string' },
      'log-level': { type: 'string' },
      profile: { type: 'boolean' },
      ...kafkaFlagSpecs,
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const log = createLogger(
    'processor',
    parseLevel(values['log-level'] ?? process.env.TCPAUDIT_LOG_LEVEL),
  );
  const { topic } = kafkaSettings(values, 'tcpaudit-processor');
  const kafka = kafkajsConfig(kafkaClientSettings(values, 'tcpaudit-processor'));
  const { url } = registrySettings(values);
  const groupId = values.group ?? process.env.TCPAUDIT_GROUP ?? 'tcpaudit-processor';
  const concurrency = intFlag(values.concurrency, '--concurrency', 4, 1);
  const metricsPort = intFlag(
    values['metrics-port'] ?? process.env.TCPAUDIT_METRICS_PORT,
    '--metrics-port',
    9465,
  );
  const retentionDays = intFlag(
    values['retention-days'] ?? process.env.TCPAUDIT_RETENTION_DAYS,
    '--retention-days',
    0,
  );
  const idleLimit = intFlag(values['idle-limit'], '--idle-limit', 3600, 1);
  const sessionTimeout = intFlag(values['session-timeout'], '--session-timeout', 30_000, 1000);

  const pool = new Pool({ ...pgDefaults(), max: concurrency + 3 });
  // An idle client that dies must not crash the process; the next batch gets a fresh one.
  pool.on('error', (err) => log.warn('idle database connection lost', { error: err }));
  const metrics = new ProcessorMetrics();
  let server: import('node:http').Server | null = null;
  try {
    await migrate(pool, log);
    await ensurePartitions(pool, log);
    await dropExpiredPartitions(pool, log, retentionDays);
    await grantReader(pool, log);
    const consumer = new ProcessorConsumer({
      kafka,
      topic,
      groupId,
      pool,
      decode: registryDecoder(createRegistry(url)),
      log,
      metrics,
      concurrency,
      sessionTimeout,
      profile: values.profile,
    });
    const health = {
      consuming: () => consumer.consuming(),
      databaseAnswers: async () => (await pool.query('SELECT 1')).rowCount === 1,
    };
    const portGiven =
      values['metrics-port'] !== undefined || process.env.TCPAUDIT_METRICS_PORT !== undefined;
    server = await serveMetrics(
      metrics,
      health,
      metricsPort,
      values['metrics-host'] ?? '127.0.0.1',
      log,
    ).catch((err: NodeJS.ErrnoException) => {
      // Only the default port may be taken (a second processor on one host): asked-for fails.
      if (portGiven || err.code !== 'EADDRINUSE') throw err;
      log.warn('metrics port taken: running without /metrics and /healthz', { port: metricsPort });
      return null;
    });
    await consumer.start();
    const stopMaintenance = maintain(pool, log, metrics, retentionDays, idleLimit);
    const report = setInterval(() => log.info('stats', { ...consumer.stats }), 10_000);
    const signal = await untilSignal();
    clearInterval(report);
    stopMaintenance();
    log.info('stopping', { signal });
    await consumer.stop();
    log.info('stopped', { ...consumer.stats });
    return 0;
  } finally {
    server?.close();
    await pool.end();
  }
}
