import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { portInUse, sleep } from '../stack/process';
import { javaBin } from '../stack/java';
import { newClusterId } from '../stack/kafka';
import { kafkaLibDir } from '../stack/paths';

/**
 * A single-node KRaft Kafka of the test's own, from the stack's jars, on other ports and in a
 * temp dir: a test may stop and start it at will without touching the shared broker. Same
 * shape as stack/kafka.ts (broker and controller in one JVM, storage formatted once).
 */
export interface PrivateKafka {
  brokers: string;
  dataDir: string;
  start(): Promise<void>;
  /** SIGTERM (a clean broker shutdown) and wait for the JVM to exit. */
  stop(): Promise<void>;
  /** Stops it if running and removes its data. */
  destroy(): Promise<void>;
}

const HOST = '127.0.0.1';

export async function privateKafka(port = 29092, controllerPort = port + 1): Promise<PrivateKafka> {
  for (const p of [port, controllerPort]) {
    if (await portInUse(HOST, p))
      throw new Error(`port ${p} is in use: another private Kafka still running?`);
  }
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcpaudit-kafka-'));
  const config = path.join(dataDir, 'server.properties');
  const log4j = path.join(dataDir, 'log4j.properties');
  fs.writeFileSync(
    config,
    `process.roles=broker,controller
node.id=1
controller.quorum.voters=1@${HOST}:${controllerPort}
listeners=PLAINTEXT://${HOST}:${port},CONTROLLER://${HOST}:${controllerPort}
advertised.listeners=PLAINTEXT://${HOST}:${port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=${path.join(dataDir, 'log')}
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
offsets.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
`,
  );
  fs.writeFileSync(
    log4j,
    'log4j.rootLogger=WARN, stdout\nlog4j.appender.stdout=org.apache.log4j.ConsoleAppender\n' +
      'log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\nlog4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n',
  );
  const jvm = [
    '-Xms128m',
    '-Xmx384m',
    '-Djava.awt.headless=true',
    `-Dlog4j.configuration=file:${log4j}`,
    '-cp',
    `${kafkaLibDir()}/*`,
  ];
  const format = spawnSync(
    javaBin(),
    [
      ...jvm,
      'kafka.tools.StorageTool',
      'format',
      '-t',
      newClusterId(),
      '-c',
      config,
    ],
    { encoding: 'utf8', timeout: 120_000 },
  );
  if (format.status !== 0)
    throw new Error(`kafka storage format failed: ${format.stdout}${format.stderr}`);

  let child: ChildProcess | null = null;
  let exited: Promise<void> = Promise.resolve();
  const logFile = path.join(dataDir, 'kafka.log');

  const kafka: PrivateKafka = {
    brokers: `${HOST}:${port}`,
    dataDir,
    async start() {
      if (child) return;
      const out = fs.openSync(logFile, 'a');
      child = spawn(javaBin(), [...jvm, 'kafka.Kafka', config], { stdio: ['ignore', out, out] });
      fs.closeSync(out);
      const proc = child;
      exited = new Promise((resolve) => proc.once('exit', () => resolve()));
      const deadline = Date.now() + 60_000;
      while (!(await portInUse(HOST, port))) {
        if (proc.exitCode !== null)
          throw new Error(`private kafka exited: ${fs.readFileSync(logFile, 'utf8').slice(-2000)}`);
        if (Date.now() > deadline) throw new Error('private kafka did not listen within 60 s');
        await sleep(200);
      }
    },
    async stop() {
      if (!child) return;
      const proc = child;
      child = null;
      proc.kill('SIGTERM');
      const killer = setTimeout(() => proc.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(killer);
    },
    async destroy() {
      await kafka.stop();
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
  return kafka;
}
