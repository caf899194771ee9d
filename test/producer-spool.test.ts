import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { schemaPath } from '../common/paths';
import { Spool, type SpoolRecord } from '../producer/spool';
import { endpoints, uniqueName } from './harness';
import { privateKafka, type PrivateKafka } from './private-kafka';
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

const tmpDirs: string[] = [];
const tempDir = () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcpaudit-spool-'));
  tmpDirs.push(dir);
  return dir;
};
after(() => {
  for (const dir of tmpDirs) fs.rmSync(dir, { recursive: true, force: true });
});

const records = (from: number, n: number): SpoolRecord[] =>
  Array.from({ length: n }, (_, i) => ({
    key: `c-${(from + i) % 7}`,
    value: Buffer.alloc(100, from + i),
    seq: from + i,
  }));

describe('spool', () => {
  test('replays segments in append order and deletes each once released', () => {
    const dir = tempDir();
    const spool = new Spool({ dir, maxBytes: 1 << 20, overflow: 'drop-oldest', runId: 'a1' });
    assert.deepEqual(spool.append(records(0, 2000)), []);
    assert.equal(spool.records, 2000);
    const seqs: number[] = [];
    for (let lease = spool.take(); lease; lease = spool.take()) {
      seqs.push(...lease.records.map((r) => r.seq));
      lease.release();
    }
    assert.deepEqual(
      seqs,
      Array.from({ length: 2000 }, (_, i) => i),
    );
    assert.equal(spool.bytes, 0);
    spool.close();
    assert.deepEqual(fs.readdirSync(dir), []);
  });

  test('drop-oldest gives back whole oldest segments and says which seqs went', () => {
    const spool = new Spool({
      dir: tempDir(),
      maxBytes: 256 << 10,
      overflow: 'drop-oldest',
      runId: 'a1',
    });
    const dropped = [];
    for (let i = 0; i < 40; i++) dropped.push(...spool.append(records(i * 100, 100)));
    const lost = dropped.reduce((n, d) => n + d.count, 0);
    assert.ok(lost > 0 && spool.bytes <= 256 << 10);
    assert.equal(spool.records + lost, 4000);
    assert.equal(dropped[0].seqFrom, 0, 'the oldest went first');
    const kept: number[] = [];
    for (let lease = spool.take(); lease; lease = spool.take())
      kept.push(...lease.records.map((r) => r.seq));
    assert.deepEqual(
      kept,
      Array.from({ length: kept.length }, (_, i) => 4000 - kept.length + i),
      'the newest are kept',
    );
  });

  test('drop-newest keeps the oldest and refuses what does not fit', () => {
    const spool = new Spool({
      dir: tempDir(),
      maxBytes: 100_000,
      overflow: 'drop-newest',
      runId: 'a1',
    });
    const dropped = spool.append(records(0, 1000));
    const kept = spool.records;
    assert.deepEqual(dropped, [{ runId: 'a1', count: 1000 - kept, seqFrom: kept, seqTo: 999 }]);
    assert.ok(spool.bytes <= 100_000);
  });

  test('a torn last record is cut off when the spool is opened again', () => {
    const dir = tempDir();
    const first = new Spool({ dir, maxBytes: 1 << 20, overflow: 'drop-oldest', runId: 'a1' });
    first.append(records(0, 10));
    first.close();
    const [file] = fs.readdirSync(dir);
    fs.truncateSync(path.join(dir, file), fs.statSync(path.join(dir, file)).size - 3);
    const again = new Spool({ dir, maxBytes: 1 << 20, overflow: 'drop-oldest', runId: 'b2' });
    assert.equal(again.records, 9);
    assert.deepEqual(
      again.take()!.records.map((r) => r.seq),
      [0, 1, 2, 3, 4, 5, 6, 7, 8],
    );
  });
});

// A real producer with its Kafka absent from the start: memory fills, the spool fills, the
// oldest segments are dropped and counted; once Kafka comes, the gap records say exactly that.
const skip = process.getuid?.() === 0 ? false : 'loading BPF needs root';

describe('spool full', { skip }, () => {
  let kafka: PrivateKafka;
  let registryUrl: string;
  let producer: Running | undefined;

  before(
    async () => {
      registryUrl = (await endpoints()).env.SCHEMA_REGISTRY_URL;
      kafka = await privateKafka(29192); // formatted, not started yet
    },
    { timeout: 120_000 },
  );

  after(async () => {
    if (producer?.child.exitCode === null) producer.child.kill('SIGKILL');
    await kafka?.destroy();
  });

  test(
    'the dropped events are counted in the metric and in one gap record per range',
    { timeout: 120_000 },
    async (t) => {
      const topic = uniqueName('tcpaudit.spoolfull');
      const dir = tempDir();
      const captureLog = path.join(dir, 'captured.log');
      const traffic = await steadyTraffic(150);
      producer = runCli(
        [
          'produce',
          '--port',
          String(traffic.port),
          '--partitions',
          '2',
          '--max-queued',
          '500',
          '--spool-dir',
          path.join(dir, 'spool'),
          '--spool-max-bytes',
          String(256 << 10),
          '--overflow',
          'drop-oldest',
          '--metrics-port',
          '0',
          '--capture-log',
          captureLog,
        ],
        { KAFKA_BROKERS: kafka.brokers, SCHEMA_REGISTRY_URL: registryUrl, TCPAUDIT_TOPIC: topic },
      );
      const listening = await producer.waitForLog('metrics listening');
      const port = Number(new URL(String(listening.url)).port);
      await producer.waitForLog('producing');

      const dropped = () =>
        scrape(port).then(
          (m) => m.get('tcpaudit_producer_events_dropped_total{stage="spool"}') ?? 0,
        );
      await until(
        async () => (await dropped()) > 1000,
        'more than 1000 events dropped by the full spool',
        60_000,
      );
      await traffic.stop();
      await new Promise((r) => setTimeout(r, 1000));
      const full = await scrape(port);
      assert.ok(
        full.get('tcpaudit_producer_spool_bytes')! <= 256 << 10,
        'the spool keeps its limit',
      );
      assert.equal(full.get('tcpaudit_producer_events_published_total'), 0);

      await kafka.start();
      await producer.waitForLog('gap records published', 60_000);
      let last = new Map<string, number>();
      await until(
        async () => {
          last = await scrape(port);
          return (
            last.get('tcpaudit_producer_queue_depth') === 0 &&
            last.get('tcpaudit_producer_spool_bytes') === 0
          );
        },
        'spool replayed',
        60_000,
      );
      // Events captured while Kafka was still starting were dropped too: the final count is it.
      const lost = last.get('tcpaudit_producer_events_dropped_total{stage="spool"}')!;
      // Anything lost makes the exit status 1, and the summary counts it (SPOOL_FULL included).
      assert.equal(await producer.stop(), 1, 'exit status 1 when events were lost');
      const stopped = producer.logs.find((l) => l.msg === 'stopped') as Record<string, any>;
      assert.equal(
        stopped.publisher.dropped.spool,
        lost,
        'nothing dropped once the spool was replayed',
      );
      assert.equal(stopped.level, 'warn');
      assert.equal(stopped.lost, lost, 'the final "lost" counts the spool\'s drops');
      assert.deepEqual(stopped.lostBy, { kernel: 0, userQueue: 0, spool: lost });

      const gaps = await readTopic(kafka.brokers, `${topic}.gaps`, schemaPath('capture-gap.avsc'));
      const spoolGaps = gaps.filter((g) => g.value.reason === 'SPOOL_FULL');
      assert.ok(spoolGaps.length > 0);
      assert.equal(
        spoolGaps.reduce((n, g) => n + Number(g.value.count), 0),
        lost,
        'gap records count the loss',
      );
      for (const g of spoolGaps) assert.equal(g.key, os.hostname());

      // Captured = published + dropped, and the gap ranges are exactly the missing seqs.
      const captured = readCaptureLog(captureLog);
      const events = await readTopic(kafka.brokers, topic);
      assert.equal(events.length + lost, captured.length);
      const inGaps = new Set<number>();
      for (const g of spoolGaps)
        for (let s = Number(g.value.seq_from); s <= Number(g.value.seq_to); s++) inGaps.add(s);
      const check = compareWithCapture(
        captured.filter((c) => !inGaps.has(c.seq)),
        events,
      );
      assert.deepEqual(check, EXACT_DELIVERY);
      t.diagnostic(
        `${captured.length} captured, ${lost} dropped by the full spool in ${spoolGaps.length} gap records`,
      );
    },
  );
});
