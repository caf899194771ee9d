import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { endpoints, uniqueName } from './harness';
import { privateKafka, type PrivateKafka } from './private-kafka';
import { runCli, type Running } from './processes';
import {
  compareWithCapture,
  EXACT_DELIVERY,
  readCaptureLog,
  readTopic,
  steadyTraffic,
  until,
} from './producer-helpers';

// A real `tcpaudit produce` (real BPF capture, real Kafka) loses nothing while its broker is
// away for 25 s: memory, then the spool, then replay in order. The broker is the test's own.
const skip = process.getuid?.() === 0 ? false : 'loading BPF needs root';

let kafka: PrivateKafka;
let registryUrl: string;
let tmp: string;
let producer: Running | undefined;

before(
  async () => {
    registryUrl = (await endpoints()).env.SCHEMA_REGISTRY_URL;
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tcpaudit-fault-'));
    kafka = await privateKafka(29092);
    await kafka.start();
  },
  { timeout: 120_000 },
);

after(async () => {
  if (producer?.child.exitCode === null) producer.child.kill('SIGKILL');
  await kafka?.destroy();
  fs.rmSync(tmp, { recursive: true, force: true });
});

test(
  'broker down for 25 s: every captured event reaches the topic once, in order per connection',
  { skip, timeout: 150_000 },
  async (t) => {
    const topic = uniqueName('tcpaudit.fault');
    const spoolDir = path.join(tmp, 'spool');
    const captureLog = path.join(tmp, 'captured.log');
    // Only the test's own connections: the host may be busy with others' (a capture storm
    // would swamp a broker-outage test that compares everything captured).
    const traffic = await steadyTraffic(50);
    producer = runCli(
      [
        'produce',
        '--port',
        String(traffic.port),
        '--partitions',
        '3',
        '--max-queued',
        '2000',
        '--max-batch',
        '500',
        '--spool-dir',
        spoolDir,
        '--metrics-port',
        '0',
        '--capture-log',
        captureLog,
      ],
      { KAFKA_BROKERS: kafka.brokers, SCHEMA_REGISTRY_URL: registryUrl, TCPAUDIT_TOPIC: topic },
    );
    await producer.waitForLog('producing');
    await producer.waitForLog('topic created');

    await new Promise((r) => setTimeout(r, 5000));
    const down = Date.now();
    await kafka.stop();
    await producer.waitForLog('kafka unavailable, holding events', 30_000);
    await new Promise((r) => setTimeout(r, Math.max(0, 25_000 - (Date.now() - down))));
    await kafka.start();
    const downMs = Date.now() - down;
    await producer.waitForLog('kafka is back', 60_000);
    await new Promise((r) => setTimeout(r, 5000));
    const connections = await traffic.stop();

    assert.equal(await producer.stop(), 0, 'producer exits 0 after SIGTERM');
    const stopped = producer.logs.find((l) => l.msg === 'stopped') as Record<string, any>;
    const captured = readCaptureLog(captureLog);
    assert.ok(downMs >= 20_000, `broker was down ${downMs} ms`);
    assert.ok(connections > 1000, `only ${connections} connections made`);
    assert.equal(stopped.publisher.captured, captured.length);
    assert.equal(stopped.publisher.published, captured.length, 'published everything captured');
    assert.ok(
      stopped.publisher.spooled > 0,
      'the outage outlasted memory: events went through the spool',
    );
    assert.deepEqual(stopped.publisher.dropped, { kernel: 0, user_queue: 0, spool: 0 });
    assert.equal(stopped.spooled, 0);
    assert.deepEqual(fs.readdirSync(spoolDir), [], 'spool is empty');

    let records: Awaited<ReturnType<typeof readTopic>> = [];
    await until(
      async () => (records = await readTopic(kafka.brokers, topic)).length >= captured.length,
      'every captured event in the topic',
      30_000,
    );
    const check = compareWithCapture(captured, records);
    assert.deepEqual(check, EXACT_DELIVERY);
    assert.equal(records.length, captured.length);
    t.diagnostic(
      `broker down ${downMs} ms; ${captured.length} events captured, ` +
        `${stopped.publisher.spooled} through the spool, all in the topic once`,
    );
  },
);
