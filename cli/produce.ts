import dns from 'node:dns/promises';
import fs from 'node:fs';
import { isIP } from 'node:net';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { kafkaSettings, registrySettings, validHost } from '../common/config';
import {
  describeKafka,
  kafkaClientSettings,
  kafkajsConfig,
  kafkaFlagSpecs,
  KAFKA_SECURITY_HELP,
} from '../common/kafka-config';
import { createLogger, parseLevel } from '../common/log';
import {
  checkRegistry,
  createRegistry,
  registerValueSchema,
  REGISTRY_TIMEOUT_MS,
  valueSubject,
} from '../common/registry';
import {
  DEFAULT_RING_BYTES,
  startCapture,
  validateFilters,
  validateRingBytes,
  type CaptureOptions,
} from '../producer/capture/capture';
import { bootId } from '../producer/capture/decode';
import { registerGapSchema } from '../producer/gaps';
import { ProducerMetrics, serveMetrics } from '../producer/metrics';
import { COMPRESSIONS, Publisher, type Compression } from '../producer/publisher';
import { missingRuntimeSettings } from '../producer/runtime-settings';
import { Spool, type Overflow } from '../producer/spool';
import { hostname } from 'node:os';
import { asUsage, netnsInode, positiveInt, untilSignal, UsageError } from './options';

const HELP = `Usage: tcpaudit produce [options]

Captures every TCP state change on this host and publishes it to Kafka as Avro. While Kafka
is away, events wait in memory (--max-queued), then in an on-disk spool (--spool-dir), and are
sent in order when it returns. Every loss is counted and published as a gap record on
<topic>.gaps. SIGTERM or SIGINT sends (or spools) everything captured, then exits; a second
one exits at once.

Options:
  --brokers LIST          Kafka bootstrap brokers, host:port,...   [env KAFKA_BROKERS]
  --topic NAME            topic to publish to                        [env TCPAUDIT_TOPIC]
  --registry URL          Confluent-compatible schema registry       [env SCHEMA_REGISTRY_URL]
  --registry-timeout-ms N longest wait for one schema registry request (default 10000);
                          each is tried 3 times, and start-up fails (exit 1) if none answers
  --partitions N          partitions when the topic is created (default 6)
  --replication-factor N  replicas when the topic is created (default 1)
  --ring-bytes N          kernel ring buffer size, a power of two (default ${DEFAULT_RING_BYTES})
  --port P                only connections with local or remote port P (repeatable, up to 8)
  --cidr CIDR             only connections with an address in CIDR (repeatable, up to 4)
  --netns NS              only sockets of one network namespace: inode, or a path such as
                          /proc/PID/ns/net
  --max-queued N          events held in memory while Kafka is away (default 200000)
  --max-batch N           most events in one produce request (default 5000)
  --compression C         gzip or none (default gzip)
  --spool-dir DIR         spool events to disk here once memory is full (default: no spool)
  --spool-max-bytes N     most bytes in the spool (default 1073741824)
  --overflow POLICY       drop-oldest or drop-newest when the spool (or, without one, memory)
                          is full (default drop-oldest)
  --shutdown-timeout-ms N longest wait for Kafka at shutdown before spooling (default 15000)
  --metrics-port N        Prometheus /metrics port; 0 picks a free one (logged), off for none
                          (default 9464)
  --metrics-host HOST     address /metrics listens on (default 127.0.0.1)
  --capture-log FILE      debug: append "connId seq" for every captured event to FILE
${KAFKA_SECURITY_HELP}  --log-level LEVEL       debug, info, warn or error                 [env TCPAUDIT_LOG_LEVEL]
  -h, --help              this text

Exit status:
  0  stopped by a signal with every captured event published or left in the spool
  1  some captured event was lost (kernel ring, memory queue or full spool: "lost" and
     "lostBy" in the last log line, "stopped"), or the registry, Kafka set-up or capture failed
  2  a usage mistake: a bad flag or variable, named on one line; nothing was started
`;

function byteCount(text: string | undefined, flag: string): number {
  const m = /^(\d+)\s*([kmg]i?b?)?$/i.exec(String(text).trim());
  if (!m)
    throw new UsageError(`${flag} wants a size in bytes (e.g. 1073741824 or 512M), got "${text}"`);
  const unit = (m[2] ?? '').toLowerCase()[0];
  const scale = unit === 'k' ? 1 << 10 : unit === 'm' ? 1 << 20 : unit === 'g' ? 1 << 30 : 1;
  const value = Number(m[1]) * scale;
  if (!Number.isSafeInteger(value) || value <= 0)
    throw new UsageError(`${flag} must be positive, got "${text}"`);
  return value;
}

function oneOf<T extends string>(text: string, allowed: readonly T[], flag: string): T {
  if (!(allowed as readonly string[]).includes(text)) {
    throw new UsageError(`${flag} must be one of ${allowed.join(', ')}, got "${text}"`);
  }
  return text as T;
}

function port(text: string, flag: string): number | null {
  if (text === 'off') return null;
  const value = Number(text);
  if (!Number.isInteger(value) || value < 0 || value > 65535) {
    throw new UsageError(`${flag} wants a port number, 0 or off, got "${text}"`);
  }
  return value;
}

/**
 * mkdir -p, one level at a time: Node's recursive mkdirSync spins forever where a parent
 * exists but refuses children with ENOENT (under /proc, for one).
 */
function makeDirs(dir: string): void {
  if (fs.existsSync(dir)) return;
  const parent = path.dirname(dir);
  if (parent !== dir) makeDirs(parent);
  fs.mkdirSync(dir);
}

/** The spool directory, created if need be; refused unless it is a writable directory. */
function checkSpoolDir(dir: string): string {
  let stat: fs.Stats | null = null;
  try {
    stat = fs.statSync(dir);
  } catch {
    stat = null;
  }
  if (stat && !stat.isDirectory())
    throw new UsageError(`--spool-dir: ${dir} exists and is not a directory`);
  try {
    if (!stat) makeDirs(path.resolve(dir));
    fs.accessSync(dir, fs.constants.R_OK | fs.constants.W_OK | fs.constants.X_OK);
  } catch (err) {
    const { code, message } = err as NodeJS.ErrnoException;
    throw new UsageError(
      `--spool-dir: cannot ${stat ? 'write to' : 'create'} ${dir}: ${code ?? message}`,
    );
  }
  return dir;
}

/** --metrics-host: an IP address, or a host name that resolves (to where it will listen). */
async function checkMetricsHost(host: string): Promise<string> {
  if (!validHost(host))
    throw new UsageError(`--metrics-host: "${host}" is neither an IP address nor a host name`);
  if (isIP(host) === 0) {
    try {
      await dns.lookup(host);
    } catch (err) {
      throw new UsageError(
        `--metrics-host: cannot resolve "${host}": ${(err as NodeJS.ErrnoException).code}`,
      );
    }
  }
  return host;
}

/**
 * Every setting of `produce`, checked before anything is contacted or loaded: a mistake is a
 * UsageError naming its flag (or variable), so the operator sees one line and exit status 2
 * instead of a registry, Kafka or BPF failure later on.
 */
async function checkSettings(values: Values) {
  const { topic } = asUsage(() => kafkaSettings(values, 'tcpaudit-producer'));
  const kafka = asUsage(() => kafkaClientSettings(values, 'tcpaudit-producer'));
  // The client is built in the Kafka thread; build it here once too, so a TLS key or
  // certificate OpenSSL refuses is a usage error now, not a Kafka that never answers.
  asUsage(() => kafkajsConfig(kafka));
  const { url } = asUsage(() => registrySettings(values));
  const compression = oneOf(values.compression!, COMPRESSIONS, '--compression');
  const overflow = oneOf(
    values.overflow!,
    ['drop-oldest', 'drop-newest'] as Overflow[],
    '--overflow',
  );
  const ringBytes = positiveInt(values['ring-bytes'], '--ring-bytes');
  asUsage(() => validateRingBytes(ringBytes), '--ring-bytes: ');
  const filters = asUsage(() => {
    const requested = {
      filterPorts: [
        ...new Set(
          (values.port ?? []).map((p) => {
            const n = positiveInt(p, '--port');
            if (n > 65535) throw new UsageError(`--port wants 1..65535, got "${p}"`);
            return n;
          }),
        ),
      ],
      filterCidrs: values.cidr ?? [],
      filterNetns: values.netns === undefined ? undefined : netnsInode(values.netns),
    };
    validateFilters(requested); // startCapture checks again; this makes a mistake a usage error
    return requested;
  }, 'capture filter: ');
  return {
    topic,
    kafka,
    url,
    compression,
    overflow,
    ringBytes,
    filters,
    partitions: positiveInt(values.partitions, '--partitions'),
    replicationFactor: positiveInt(values['replication-factor'], '--replication-factor'),
    maxQueued: positiveInt(values['max-queued'], '--max-queued'),
    maxBatch: positiveInt(values['max-batch'], '--max-batch'),
    spoolMaxBytes: byteCount(values['spool-max-bytes'], '--spool-max-bytes'),
    spoolDir: values['spool-dir'] === undefined ? null : checkSpoolDir(values['spool-dir']),
    shutdownMs: positiveInt(values['shutdown-timeout-ms'], '--shutdown-timeout-ms'),
    registryTimeoutMs: positiveInt(values['registry-timeout-ms'], '--registry-timeout-ms'),
    metricsPort: port(values['metrics-port']!, '--metrics-port'),
    metricsHost: await checkMetricsHost(values['metrics-host']!),
  };
}

const OPTIONS = {
  brokers: { type: 'string' },
  topic: { type: 'string' },
  registry: { type: 'string' },
  partitions: { type: 'string', default: '6' },
  'replication-factor': { type: 'string', default: '1' },
  'ring-bytes': { type: 'string', default: String(DEFAULT_RING_BYTES) },
  port: { type: 'string', multiple: true },
  cidr: { type: 'string', multiple: true },
  netns: { type: 'string' },
  'max-queued': { type: 'string', default: '200000' },
  'max-batch': { type: 'string', default: '5000' },
  compression: { type: 'string', default: 'gzip' },
  'spool-dir': { type: 'string' },
  'spool-max-bytes': { type: 'string', default: String(1 << 30) },
  overflow: { type: 'string', default: 'drop-oldest' },
  'shutdown-timeout-ms': { type: 'string', default: '15000' },
  'metrics-port': { type: 'string', default: '9464' },
  'metrics-host': { type: 'string', default: '127.0.0.1' },
  'registry-timeout-ms': { type: 'string', default: String(REGISTRY_TIMEOUT_MS) },
  'capture-log': { type: 'string' },
  ...kafkaFlagSpecs,
  'log-level': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

type Values = ReturnType<typeof parseArgs<{ args: string[]; options: typeof OPTIONS }>>['values'];

export async function runProduce(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: OPTIONS });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  let level;
  try {
    level = parseLevel(values['log-level'] ?? process.env.TCPAUDIT_LOG_LEVEL);
  } catch (err) {
    throw new UsageError(`--log-level (TCPAUDIT_LOG_LEVEL): ${(err as Error).message}`);
  }
  const log = createLogger('producer', level);
  // Every setting is checked here, before the registry, Kafka or the kernel is touched.
  const opts = await checkSettings(values);
  const { topic, kafka, url, compression, overflow, spoolMaxBytes, metricsPort } = opts;
  const { shutdownMs, filters } = opts;

  const registryCalls = {
    timeoutMs: opts.registryTimeoutMs,
    onRetry: (message: string, fields: Record<string, unknown>) => log.warn(message, fields),
  };
  let schema: Awaited<ReturnType<typeof registerValueSchema>>;
  let gapSchema: Awaited<ReturnType<typeof registerGapSchema>>;
  try {
    await checkRegistry(url, registryCalls);
    const registry = createRegistry(url, opts.registryTimeoutMs);
    schema = await registerValueSchema(registry, url, topic, registryCalls);
    gapSchema = await registerGapSchema(registry, url, topic, registryCalls);
  } catch (err) {
    // One line naming the URL; exit 1 (the settings were fine, the registry is not).
    log.error('schema registry unusable', { url, error: (err as Error).message });
    return 1;
  }
  log.info('schema registered', {
    subject: valueSubject(topic),
    schemaId: schema.id,
    gapSchemaId: gapSchema.id,
  });

  const metrics = new ProducerMetrics({ processMetrics: true });
  // A taken port costs the metrics, not the audit trail: capture goes on without /metrics.
  const server =
    metricsPort === null
      ? null
      : await serveMetrics(metrics.registry, opts.metricsHost, metricsPort).catch((err: Error) => {
          log.error('metrics not served', {
            host: opts.metricsHost,
            port: metricsPort,
            error: err.message,
          });
          return null;
        });
  if (server)
    log.info('metrics listening', {
      url: `http://${opts.metricsHost}:${server.port}/metrics`,
    });

  // The run id is the capture's, known once it is loaded; the spool and the publisher need it
  // first, so capture starts right after them with events buffered meanwhile.
  type Events = Parameters<CaptureOptions['onEvents']>[0];
  const early: Events[] = [];
  let deliver: (events: Events) => void = (events) => void early.push(events);
  // Written synchronously, so that what it lists was handed to the publisher even when a
  // second signal ends the process at once.
  const captureLog = values['capture-log'] ? fs.openSync(values['capture-log'], 'a') : null;

  let failure: Error | null = null;
  let publisher: Publisher | null = null;
  const pendingLoss: Array<() => void> = [];
  const captureOptions = {
    ringBytes: opts.ringBytes,
    ...filters,
    onEvents: (events: Events) => {
      if (captureLog !== null)
        fs.writeSync(captureLog, events.map((e) => `${e.connId} ${e.seq}\n`).join(''));
      deliver(events);
    },
    // Confirmed kernel (or addon) loss, each sequence range once, from the capture.
    onLoss: (info: { kernelLost: number; userDropped: number; seqFrom: number; seqTo: number }) => {
      const report = () =>
        publisher!.noteLoss('kernel', 'KERNEL_RING_FULL', {
          runId,
          count: info.seqTo - info.seqFrom + 1,
          seqFrom: info.seqFrom,
          seqTo: info.seqTo,
        });
      if (publisher) report();
      else pendingLoss.push(report);
    },
    onError: (err: Error) => {
      failure = err;
      log.error('capture failed', { error: err });
    },
  };
  const capture = startCapture(captureOptions);
  const runId = capture.runId.toString(16);
  // Servers that listened before capture started: how many got their process, and why not.
  void capture.listeners.then(
    (report) => {
      if (report.why) log.warn('listeners seeded', { ...report });
      else log.info('listeners seeded', { ...report });
    },
    (err) => log.warn('listeners not seeded', { error: err }),
  );

  const spool = opts.spoolDir
    ? new Spool({ dir: opts.spoolDir, maxBytes: spoolMaxBytes, overflow, runId })
    : null;
  publisher = new Publisher({
    kafka,
    topic,
    partitions: opts.partitions,
    replicationFactor: opts.replicationFactor,
    schemaId: schema.id,
    valueType: schema.type,
    gapSchemaId: gapSchema.id,
    gapType: gapSchema.type,
    origin: { host: hostname(), bootId: bootId(), runId },
    maxQueued: opts.maxQueued,
    maxBatch: opts.maxBatch,
    compression,
    spool,
    overflow,
    metrics,
    log,
  });
  const pub = publisher;
  for (const report of pendingLoss.splice(0)) report();
  deliver = (events) => pub.enqueue(events);
  for (const events of early.splice(0)) pub.enqueue(events);
  pub.start();
  const pollLoss = kernelLossFallback(capture, pub, runId, log);
  log.info('producing', {
    topic,
    runId,
    kafka: describeKafka(kafka),
    compression,
    filters,
    spool: spool ? { dir: spool.dir, maxBytes: spool.maxBytes, overflow } : null,
  });

  const untuned = missingRuntimeSettings();
  if (untuned.length > 0) {
    log.info('started without the memory settings the launchers give', {
      missing: untuned,
      effect: 'works the same; some 25-40 MB more resident at 100,000 events/s (README: Sizing)',
    });
  }

  const report = setInterval(() => {
    log.info('stats', { capture: capture.stats(), publisher: pub.getStats() });
  }, 10_000);
  const signal = await untilSignal(
    () => failure !== null,
    () => {
      const result = pub.abort();
      return (
        `${result.spooled} events left in the spool${spool ? ` (${spool.dir})` : ''}` +
        (result.lost > 0 ? `, ${result.lost} events lost (no spool)` : '')
      );
    },
  );
  clearInterval(report);
  clearInterval(pollLoss);
  log.info('stopping', { signal });
  // Everything the kernel handed over reaches enqueue before stop() resolves.
  await capture.stop();
  const result = await pub.stop(shutdownMs);
  if (captureLog !== null) fs.closeSync(captureLog);
  server?.close();
  const lost = lossSummary(capture.stats(), pub.getStats());
  const stopped = {
    capture: capture.stats(),
    publisher: pub.getStats(),
    spooled: result.spooled,
    gapsSpooled: result.gapsSpooled,
    ...lost,
  };
  if (lost.lost > 0) log.warn('stopped', stopped);
  else log.info('stopped', stopped);
  // Exit status 1 when anything captured was lost, anywhere: see "Exit status" in --help.
  return failure || lost.lost > 0 ? 1 : 0;
}

/**
 * Every event lost during the run, by stage. The kernel's count is the larger of what the
 * publisher was told (onLoss, or the counter fallback that polls once a second and may not
 * have seen the last second) and the capture's own counters; the memory queue's includes what
 * shutdown could neither send nor spool.
 */
export function lossSummary(
  capture: { kernelLost: number; userDropped: number },
  publisher: { dropped: Record<'kernel' | 'user_queue' | 'spool', number> },
): { lost: number; lostBy: { kernel: number; userQueue: number; spool: number } } {
  const kernel = Math.max(
    publisher.dropped.kernel,
    (capture.kernelLost ?? 0) + (capture.userDropped ?? 0),
  );
  const lostBy = {
    kernel,
    userQueue: publisher.dropped.user_queue,
    spool: publisher.dropped.spool,
  };
  return { lost: kernel + lostBy.userQueue + lostBy.spool, lostBy };
}

/**
 * Kernel loss is normally reported by the capture's onLoss callback (exact sequence ranges).
 * A capture build without it only has counters: then the counters' growth is published every
 * second as a gap with unknown sequence numbers (-1), so loss is never silent either way.
 */
function kernelLossFallback(
  capture: ReturnType<typeof startCapture>,
  pub: Publisher,
  runId: string,
  log: ReturnType<typeof createLogger>,
): NodeJS.Timeout {
  const hasOnLoss = 'lossReported' in capture.stats();
  if (!hasOnLoss)
    log.warn('capture has no onLoss: kernel loss reported from counters, without sequence numbers');
  let seen = 0;
  const timer = setInterval(() => {
    if (hasOnLoss) return;
    const s = capture.stats();
    const lost = s.kernelLost + s.userDropped;
    if (lost > seen)
      pub.noteLoss('kernel', 'KERNEL_RING_FULL', {
        runId,
        count: lost - seen,
        seqFrom: -1,
        seqTo: -1,
      });
    seen = lost;
  }, 1000);
  timer.unref();
  return timer;
}
