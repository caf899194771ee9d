import { parseArgs } from 'node:util';
import { Client, Pool } from 'pg';
import { kafkaSettings, registrySettings } from '../common/config';
import {
  KAFKA_SECURITY_HELP,
  kafkaClientSettings,
  kafkaFlagSpecs,
  kafkajsConfig,
} from '../common/kafka-config';
import { createLogger, parseLevel, type Logger } from '../common/log';
import { createRegistry, registryHealth, waitForRegistry } from '../common/registry';
import { ProcessorConsumer } from '../processor/consumer';
import { registryDecoder } from '../processor/decode';
import { expireConnections } from '../processor/expiry';
import { ProcessorMetrics, serveMetrics } from '../processor/metrics';
import { migrate } from '../processor/migrate';
import { dropExpiredPartitions, ensurePartitions, grantReader } from '../processor/partitions';
import { asUsage, pgSettings, UsageError, untilSignal } from './options';

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
  --startup-timeout SECONDS  how long to wait for PostgreSQL and the schema registry at
                        start-up before exiting 1 (default 60)
  --log-level LEVEL     debug, info, warn or error                [env TCPAUDIT_LOG_LEVEL]
  --profile             log a 'batch' line per committed batch: offsets, counts and the
                        milliseconds each step took (decode, raw insert, lifecycle, commit...)
${KAFKA_SECURITY_HELP}  -h, --help            this text

PostgreSQL is reached through the standard variables PGHOST, PGPORT, PGUSER, PGPASSWORD and
PGDATABASE (defaults: the local stack, 127.0.0.1:15432, database tcpaudit).

Exit status: 0 after SIGINT/SIGTERM, 2 for a bad flag or variable (one line on stderr), 1 when
start-up fails (PostgreSQL or the registry unusable) or the Kafka consumer stops for good, so
that a supervisor restarts the processor.
`;

function intFlag(
  text: string | undefined,
  name: string,
  fallback: number,
  min = 0,
  max = Number.MAX_SAFE_INTEGER,
): number {
  if (text === undefined) return fallback;
  const n = /^[0-9]+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max)
    throw new UsageError(`bad ${name} "${text}": expected a whole number from ${min} to ${max}`);
  return n;
}

/** SQLSTATE classes that waiting cannot fix: bad login or password (28), no such database (3D). */
const hopeless = (err: unknown) => /^(28|3D)/.test(String((err as { code?: unknown }).code ?? ''));

/**
 * Waits, with backoff, for PostgreSQL to accept a connection: a processor started with (or
 * before) its database must not fail at once. Each attempt is logged with host:port; a login
 * the server refuses fails at once.
 */
async function waitForDatabase(
  config: ReturnType<typeof pgSettings>,
  timeoutMs: number,
  log: Logger,
): Promise<void> {
  const where = `${config.host}:${config.port}`;
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 1; ; attempt++) {
    const client = new Client({ ...config, connectionTimeoutMillis: 10_000 });
    client.on('error', () => undefined);
    try {
      await client.connect();
      await client.query('SELECT 1');
      return;
    } catch (err) {
      const message = (err as Error).message || String((err as { code?: unknown }).code);
      if (hopeless(err)) throw new Error(`PostgreSQL at ${where} refused: ${message}`);
      if (Date.now() + 1000 > deadline) {
        throw new Error(
          `PostgreSQL at ${where} unreachable for ${Math.round(timeoutMs / 1000)} s: ${message}`,
        );
      }
      log.warn('PostgreSQL unreachable: retrying', { at: where, attempt, error: message });
    } finally {
      await client.end().catch(() => undefined);
    }
    const pause = Math.min(1000 * 2 ** (attempt - 1), 10_000, Math.max(0, deadline - Date.now()));
    await new Promise((r) => setTimeout(r, pause));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms).unref());

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
      'startup-timeout': { type: 'string' },
      profile: { type: 'boolean' },
      ...kafkaFlagSpecs,
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  // Every setting is checked here, before anything connects: a mistake exits 2, one line.
  const log = createLogger(
    'processor',
    asUsage(() => parseLevel(values['log-level'] ?? process.env.TCPAUDIT_LOG_LEVEL)),
  );
  const { topic } = asUsage(() => kafkaSettings(values, 'tcpaudit-processor'));
  const kafka = asUsage(() => kafkajsConfig(kafkaClientSettings(values, 'tcpaudit-processor')));
  const { url } = asUsage(() => registrySettings(values));
  const groupId = values.group ?? process.env.TCPAUDIT_GROUP ?? 'tcpaudit-processor';
  if (!/^[\x21-\x7e]{1,255}$/.test(groupId))
    throw new UsageError(
      `bad --group (TCPAUDIT_GROUP) "${groupId}": 1 to 255 printable characters`,
    );
  const concurrency = intFlag(values.concurrency, '--concurrency', 4, 1, 1000);
  const metricsPort = intFlag(
    values['metrics-port'] ?? process.env.TCPAUDIT_METRICS_PORT,
    '--metrics-port (TCPAUDIT_METRICS_PORT)',
    9465,
    0,
    65535,
  );
  const retentionDays = intFlag(
    values['retention-days'] ?? process.env.TCPAUDIT_RETENTION_DAYS,
    '--retention-days (TCPAUDIT_RETENTION_DAYS)',
    0,
  );
  const idleLimit = intFlag(values['idle-limit'], '--idle-limit', 3600, 1);
  const sessionTimeout = intFlag(values['session-timeout'], '--session-timeout', 30_000, 1000);
  const startupMs =
    intFlag(values['startup-timeout'], '--startup-timeout', 60, 1, 24 * 3600) * 1000;
  const pgConfig = pgSettings();

  // A start-up that never settles (a promise nobody resolves) must not end in exit 0.
  process.exitCode = 1;
  const unfinished = () => log.error('exiting before start-up finished');
  process.once('beforeExit', unfinished);
  try {
    await waitForDatabase(pgConfig, startupMs, log);
    await waitForRegistry(url, startupMs, (error, attempt) =>
      log.warn('schema registry unreachable: retrying', { url, attempt, error }),
    );
  } catch (err) {
    log.error('start-up failed', { error: (err as Error).message });
    return 1;
  } finally {
    process.off('beforeExit', unfinished);
  }

  const pool = new Pool({ ...pgConfig, max: concurrency + 3 });
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
      decode: registryDecoder(createRegistry(url), async () => (await registryHealth(url)).ok),
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
    const signal = await untilSignal(() => consumer.failure !== null);
    clearInterval(report);
    stopMaintenance();
    if (signal === 'failure') {
      // kafkajs gave up on the consumer: exit non-zero so that a supervisor starts a fresh one.
      log.error('exiting: the Kafka consumer stopped for good', {
        error: consumer.failure!.message,
      });
      await Promise.race([consumer.stop().catch(() => undefined), sleep(5000)]);
      return 1;
    }
    log.info('stopping', { signal });
    await consumer.stop();
    log.info('stopped', { ...consumer.stats });
    return 0;
  } finally {
    server?.close();
    await pool.end();
  }
}
