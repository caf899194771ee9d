import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Spool } from '../producer/spool';
import { endpoints, uniqueName, type Endpoints } from './harness';
import { runCli, type Running } from './processes';
import {
  compareWithCapture,
  EXACT_DELIVERY,
  readCaptureLog,
  readTopic,
  scrape,
  steadyTraffic,
  until,
} from './producer-helpers';

// SIGTERM and SIGINT must not lose what was captured: sent if Kafka answers, else spooled and
// sent by the next run. A real producer (real capture) against the shared stack's broker, on
// a topic of its own; "Kafka away" is a port where nothing listens.
const skip = process.getuid?.() === 0 ? false : 'loading BPF needs root';
const NOWHERE = '127.0.0.1:29392';

describe('producer shutdown', { skip }, () => {
  let stack: Endpoints;
  let tmp: string;
  const running: Running[] = [];
  const produce = (args: string[], env: Record<string, string>) => {
    const p = runCli(['produce', '--partitions', '3', '--metrics-port', '0', ...args], env);
    running.push(p);
    return p;
  };

  before(
    async () => {
      stack = await endpoints();
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tcpaudit-shutdown-'));
    },
    { timeout: 180_000 },
  );

  after(() => {
    for (const p of running) if (p.child.exitCode === null) p.child.kill('SIGKILL');
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  test(
    'SIGTERM under load: every captured event is in the topic once',
    { timeout: 90_000 },
    async () => {
      const topic = uniqueName('tcpaudit.sigterm');
      const log = path.join(tmp, 'up.log');
      const traffic = await steadyTraffic(200);
      const p = produce(['--port', String(traffic.port), '--capture-log', log], {
        ...stack.env,
        TCPAUDIT_TOPIC: topic,
      });
      await p.waitForLog('topic created');
      await new Promise((r) => setTimeout(r, 4000));
      assert.equal(await p.stop(), 0); // while connections are still being made
      await traffic.stop();
      const captured = readCaptureLog(log);
      assert.ok(captured.length > 1000, `${captured.length} events captured`);
      const records = await readTopic(stack.env.KAFKA_BROKERS, topic);
      assert.deepEqual(compareWithCapture(captured, records), EXACT_DELIVERY);
    },
  );

  test(
    'SIGINT with Kafka away: all goes to the spool, and the next run sends it',
    { timeout: 90_000 },
    async () => {
      const topic = uniqueName('tcpaudit.sigint');
      const log = path.join(tmp, 'away.log');
      const spool = path.join(tmp, 'spool-away');
      const traffic = await steadyTraffic(200);
      const first = produce(
        ['--port', String(traffic.port), '--spool-dir', spool, '--capture-log', log],
        { ...stack.env, KAFKA_BROKERS: NOWHERE, TCPAUDIT_TOPIC: topic },
      );
      await first.waitForLog('kafka unavailable, holding events');
      await new Promise((r) => setTimeout(r, 3000));
      first.child.kill('SIGINT');
      const code = first.child.exitCode ?? (await new Promise((r) => first.child.once('exit', r)));
      assert.equal(code, 0);
      await traffic.stop();
      const stopped = first.logs.find((l) => l.msg === 'stopped') as Record<string, any>;
      const captured = readCaptureLog(log);
      assert.ok(captured.length > 500);
      assert.equal(stopped.spooled, captured.length, 'every captured event is in the spool');

      const second = produce(
        ['--port', String(traffic.port), '--spool-dir', spool, '--capture-log', log],
        { ...stack.env, TCPAUDIT_TOPIC: topic },
      );
      const port = Number(new URL(String((await second.waitForLog('metrics listening')).url)).port);
      await until(
        async () => (await scrape(port)).get('tcpaudit_producer_spool_bytes') === 0,
        'spool replayed',
        60_000,
      );
      assert.equal(await second.stop(), 0);
      assert.deepEqual(fs.readdirSync(spool), []);
      const records = await readTopic(stack.env.KAFKA_BROKERS, topic);
      assert.deepEqual(compareWithCapture(readCaptureLog(log), records), EXACT_DELIVERY);
    },
  );

  test(
    'a second signal exits at once and says how many events the spool holds',
    { timeout: 60_000 },
    async () => {
      const log = path.join(tmp, 'twice.log');
      const spool = path.join(tmp, 'spool-twice');
      const traffic = await steadyTraffic(200);
      const p = produce(
        [
          '--port',
          String(traffic.port),
          '--spool-dir',
          spool,
          '--capture-log',
          log,
          '--shutdown-timeout-ms',
          '60000',
        ],
        { ...stack.env, KAFKA_BROKERS: NOWHERE, TCPAUDIT_TOPIC: uniqueName('tcpaudit.twice') },
      );
      await p.waitForLog('kafka unavailable, holding events');
      await new Promise((r) => setTimeout(r, 2000));
      p.child.kill('SIGTERM');
      await p.waitForLog('stopping');
      // Stopping now retries Kafka (about a second) before it spools: the second signal cuts in.
      p.child.kill('SIGTERM');
      const started = Date.now();
      const code = await p.stop();
      await traffic.stop();
      assert.equal(code, 130);
      assert.ok(Date.now() - started < 5000, 'exits at once');
      const line = p.logs.map((l) => String(l.msg)).find((m) => m.startsWith('SIGTERM again'));
      const told = Number(/; (\d+) events left in the spool/.exec(line ?? '')?.[1]);
      const onDisk = new Spool({
        dir: spool,
        maxBytes: 1 << 30,
        overflow: 'drop-oldest',
        runId: 'check',
      });
      assert.equal(told, onDisk.records, line);
      assert.equal(
        onDisk.records,
        readCaptureLog(log).length,
        'nothing captured was left out of the spool',
      );
      onDisk.close();
    },
  );
});
