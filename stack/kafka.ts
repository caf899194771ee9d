import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import type { Logger } from '../common/log';
import { HOST, PORTS } from './endpoints';
import { kafkaHealthy } from './health';
import { javaBin } from './java';
import { kafkaLibDir, servicePaths } from './paths';
import { needSetup, type Service } from './service';

/**
 * A single-node KRaft Kafka (broker and controller in one JVM), run from the jars that
 * scripts/setup-stack.sh copied out of Maven Central (version pinned in stack/kafka/pom.xml).
 */

const paths = servicePaths('kafka');
const configFile = path.join(paths.dataDir, 'server.properties');
const log4jFile = path.join(paths.dataDir, 'log4j.properties');
const logDir = path.join(paths.dataDir, 'log');

function serverProperties(): string {
  return `# Written by stack/kafka.ts on every start; edit the code, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@${HOST}:${PORTS.kafkaController}
listeners=PLAINTEXT://${HOST}:${PORTS.kafka},CONTROLLER://${HOST}:${PORTS.kafkaController}
advertised.listeners=PLAINTEXT://${HOST}:${PORTS.kafka}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=${logDir}
num.partitions=1
# One broker: internal topics cannot have more than one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
# Fewer internal partitions than the default 50: faster first consumer-group join.
offsets.topic.num.partitions=8
# Consumer groups form at once instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
`;
}

// The broker logs to stdout, which spawnDetached appends to .tcpaudit/logs/kafka.log.
const LOG4J = `log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.org.apache.kafka.clients=WARN
`;

function classpath(): string {
  const dir = kafkaLibDir();
  const jars = fs.existsSync(dir) ? fs.readdirSync(dir) : [];
  if (!jars.some((j) => /^kafka_2\.13-.*\.jar$/.test(j))) throw needSetup(`Kafka jars in ${dir}`);
  return `${dir}/*`; // the JVM expands a trailing /* to every jar in the folder
}

function jvmArgs(): string[] {
  return [
    '-Xms256m',
    '-Xmx512m',
    '-Djava.awt.headless=true',
    `-Dlog4j.configuration=file:${log4jFile}`,
    '-cp',
    classpath(),
  ];
}

/**
 * A KRaft cluster id shaped as `kafka-storage.sh random-uuid` makes them: 16 random bytes,
 * base64url, unpadded, and never starting with '-' (as Kafka's own Uuid.randomUuid), which
 * StorageTool would read as an option after -t and then refuse the format (1 run in 64).
 */
export function newClusterId(): string {
  for (;;) {
    const id = crypto.randomBytes(16).toString('base64url');
    if (!id.startsWith('-')) return id;
  }
}

/** KRaft needs its storage stamped with a cluster id once, before the first start. */
function formatStorage(log: Logger): void {
  const clusterId = newClusterId();
  log.info('kafka format storage', { logDir, clusterId });
  const res = spawnSync(
    javaBin(),
    [...jvmArgs(), 'kafka.tools.StorageTool', 'format', '-t', clusterId, '-c', configFile],
    { encoding: 'utf8', timeout: 120_000 },
  );
  if (res.status !== 0) {
    const out = `${res.error?.message ?? ''}${res.stdout ?? ''}${res.stderr ?? ''}`.trim();
    throw new Error(`kafka storage format failed:\n${out.split('\n').slice(-10).join('\n')}`);
  }
}

export const kafka: Service = {
  name: 'kafka',
  port: PORTS.kafka,
  ports: [PORTS.kafka, PORTS.kafkaController],
  paths,
  marker: configFile,
  stopSignal: 'SIGTERM',
  startTimeoutMs: 60_000,
  async prepare(log) {
    classpath(); // fail fast with the setup hint before touching data
    fs.mkdirSync(paths.dataDir, { recursive: true });
    fs.writeFileSync(configFile, serverProperties());
    fs.writeFileSync(log4jFile, LOG4J);
    if (!fs.existsSync(path.join(logDir, 'meta.properties'))) formatStorage(log);
  },
  launch() {
    return {
      command: javaBin(),
      args: [...jvmArgs(), 'kafka.Kafka', configFile],
      cwd: paths.dataDir,
      logFile: paths.logFile,
    };
  },
  probe: kafkaHealthy,
};
