/**
 * Capture benchmark: kernel cost per event, a loopback connection storm without and with
 * capture side by side, and the JS decode rate. Run as root after a build:
 *
 *   node dist/bench/capture.js [--seconds 3] [--runs 3]
 *
 * Targets (printed next to each figure): <= 500 ns/event in the kernel, no loss at the fastest
 * storm, >= 1,000,000 events/s decoded. Figures are medians of --runs runs; the sysctl
 * kernel.bpf_stats_enabled is set to 1 for the capture runs and restored afterwards.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { startCapture } from '../producer/capture/capture';
import { decodeBatch, type DecodeContext } from '../producer/capture/decode';
import { AF_INET, AF_INET6, LAYOUT_VERSION, OFF, RECORD_SIZE } from '../producer/capture/layout';

const STATS_SYSCTL = '/proc/sys/kernel/bpf_stats_enabled';
const MAX_CONNECTIONS = 500_000; // per storm process and run: the storm stops by itself
const STORM_SOURCE = resolve(__dirname, '..', '..', 'bench', 'capture-storm.c');

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmt = (n: number) => Math.round(n).toLocaleString('en-US');

/** Compiles the C storm into a temporary directory; returns its path. */
function buildStorm(dir: string): string {
  const out = join(dir, 'capture-storm');
  execFileSync('cc', ['-O2', '-Wall', '-o', out, STORM_SOURCE]);
  return out;
}

/** One storm: `procs` processes for `seconds`; resolves with connections per second in total. */
async function storm(binary: string, procs: number, seconds: number): Promise<number> {
  const runs = Array.from({ length: procs }, () => {
    const child = spawn(binary, [String(seconds), String(MAX_CONNECTIONS)]);
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    return new Promise<{ made: number; secs: number }>((ok, fail) =>
      child.once('exit', (code) => {
        if (code !== 0) return fail(new Error(`capture-storm exited with ${code}`));
        const [made, secs] = out.trim().split(' ').map(Number);
        ok({ made, secs });
      }),
    );
  });
  const results = await Promise.all(runs);
  return results.reduce((sum, r) => sum + r.made / r.secs, 0);
}

interface CaptureRun {
  connsPerSec: number;
  eventsPerSec: number;
  lost: number;
  nsPerEvent: number;
}

async function stormWithCapture(
  binary: string,
  procs: number,
  seconds: number,
): Promise<CaptureRun> {
  let events = 0;
  const capture = startCapture({ onEvents: (batch) => (events += batch.length) });
  const before = capture.stats();
  const start = process.hrtime.bigint();
  const connsPerSec = await storm(binary, procs, seconds);
  // the last records are at most one drain (10 ms) behind
  await new Promise((r) => setTimeout(r, 200));
  const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
  const after = capture.stats();
  await capture.stop();
  const runs = after.progRunCount - before.progRunCount;
  return {
    connsPerSec,
    eventsPerSec: events / elapsed,
    lost: after.kernelLost + after.userDropped,
    nsPerEvent: runs > 0 ? (after.progRunTimeNs - before.progRunTimeNs) / runs : NaN,
  };
}

/** A batch of `count` synthetic records, half IPv4 and half IPv6, as the kernel writes them. */
export function syntheticBatch(count: number): Buffer {
  const buf = Buffer.alloc(count * RECORD_SIZE);
  for (let i = 0; i < count; i++) {
    const at = i * RECORD_SIZE;
    const v6 = i % 2 === 1;
    buf.writeBigUInt64LE(BigInt(i), at + OFF.seq);
    buf.writeBigUInt64LE(5_000_000_000n + BigInt(i), at + OFF.tsNs);
    buf.writeBigUInt64LE(0x1234567n, at + OFF.runId);
    buf.writeBigUInt64LE(BigInt(i >> 3), at + OFF.connId);
    buf.writeBigUInt64LE(4242n, at + OFF.cgroupId);
    buf.writeBigUInt64LE(BigInt(i * 100), at + OFF.bytesSent);
    buf.writeBigUInt64LE(BigInt(i * 50), at + OFF.bytesReceived);
    if (v6) {
      buf[at + OFF.saddr + 15] = 1;
      buf.writeUInt16BE(0x2001, at + OFF.daddr);
      buf.writeUInt16BE(0xdb8, at + OFF.daddr + 2);
      buf[at + OFF.daddr + 15] = i & 0xff;
    } else {
      Buffer.from([127, 0, 0, 1]).copy(buf, at + OFF.saddr);
      Buffer.from([10, 1, (i >> 8) & 0xff, i & 0xff]).copy(buf, at + OFF.daddr);
    }
    buf.writeUInt32LE(1000 + (i & 7), at + OFF.pid);
    buf.writeUInt32LE(1000 + (i & 7), at + OFF.tid);
    buf.writeUInt32LE(0, at + OFF.uid);
    buf.writeUInt32LE(4026531833, at + OFF.netns);
    buf.writeUInt16LE(LAYOUT_VERSION, at + OFF.version);
    buf.writeUInt16LE(v6 ? AF_INET6 : AF_INET, at + OFF.family);
    buf.writeUInt16LE(40000 + (i & 1023), at + OFF.sport);
    buf.writeUInt16LE(443, at + OFF.dport);
    buf[at + OFF.oldState] = 1 + (i % 10);
    buf[at + OFF.newState] = 1 + ((i + 1) % 10);
    buf.write(i % 3 ? 'curl' : 'python3', at + OFF.comm, 'latin1');
    buf.writeBigUInt64LE(BigInt(500000 + (i >> 3)), at + OFF.sockInode);
  }
  return buf;
}

/** Records decoded per second over about `ms` of repeated decodeBatch calls. */
function decodeRate(batch: Buffer, count: number, ms: number): number {
  const ctx: DecodeContext = {
    host: 'bench',
    bootId: 'f55b3d14-5451-4a01-a043-9ff884f227c5',
    clockOffsetNs: 1n,
  };
  let decoded = 0;
  const start = process.hrtime.bigint();
  const until = start + BigInt(ms) * 1_000_000n;
  while (process.hrtime.bigint() < until) decoded += decodeBatch(batch, count, ctx).length;
  return decoded / (Number(process.hrtime.bigint() - start) / 1e9);
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: { seconds: { type: 'string', default: '3' }, runs: { type: 'string', default: '3' } },
  });
  const seconds = Number(values.seconds);
  const runs = Number(values.runs);
  if (!(seconds > 0 && seconds <= 30) || !(Number.isInteger(runs) && runs >= 1 && runs <= 9)) {
    process.stderr.write('bench/capture: --seconds wants (0, 30], --runs 1..9\n');
    return 2;
  }
  if (process.getuid?.() !== 0) {
    process.stderr.write('bench/capture: needs root (BPF, and the bpf_stats_enabled sysctl)\n');
    return 1;
  }

  // JS decode alone
  const COUNT = 4096; // the addon's largest batch
  const batch = syntheticBatch(COUNT);
  decodeRate(batch, COUNT, 300); // warm-up
  const decodeRuns = Array.from({ length: 5 }, () => decodeRate(batch, COUNT, 1000));

  // storms: as many processes as CPUs, each against its own listener
  const dir = mkdtempSync(join(tmpdir(), 'tcpaudit-bench-'));
  const previous = readFileSync(STATS_SYSCTL, 'utf8').trim();
  const procs = cpus().length;
  const bare: number[] = [];
  const captured: CaptureRun[] = [];
  try {
    const binary = buildStorm(dir);
    writeFileSync(STATS_SYSCTL, '1');
    for (let i = 0; i < runs; i++) {
      bare.push(await storm(binary, procs, seconds));
      captured.push(await stormWithCapture(binary, procs, seconds));
    }
  } finally {
    writeFileSync(STATS_SYSCTL, previous);
    rmSync(dir, { recursive: true, force: true });
  }

  const ns = median(captured.map((r) => r.nsPerEvent));
  const lost = captured.map((r) => r.lost);
  const decodeMedian = median(decodeRuns);
  const lines = [
    `capture bench: ${procs} storm processes x ${seconds} s, median of ${runs} runs (kernel ${readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim()})`,
    '',
    '                              without capture    with capture',
    `loopback connections/s        ${fmt(median(bare)).padStart(15)}    ${fmt(median(captured.map((r) => r.connsPerSec))).padStart(12)}`,
    `events/s captured into JS     ${'-'.padStart(15)}    ${fmt(median(captured.map((r) => r.eventsPerSec))).padStart(12)}`,
    `records lost (per run)        ${'-'.padStart(15)}    ${lost.join(', ').padStart(12)}`,
    '',
    `kernel ns/event (run_time_ns/run_cnt)   ${ns.toFixed(0).padStart(8)}   target <= 500: ${ns <= 500 ? 'met' : 'MISSED'}`,
    `decodeBatch events/s (JS alone)         ${fmt(decodeMedian).padStart(8)}   target >= 1,000,000: ${decodeMedian >= 1e6 ? 'met' : 'MISSED'}`,
    `loss at the fastest storm               ${String(Math.max(...lost)).padStart(8)}   target 0: ${Math.max(...lost) === 0 ? 'met' : 'MISSED'}`,
    '',
    `runs: without ${bare.map(fmt).join(' / ')} conn/s; with ${captured.map((r) => fmt(r.connsPerSec)).join(' / ')} conn/s; ` +
      `ns/event ${captured.map((r) => r.nsPerEvent.toFixed(0)).join(' / ')}; decode ${decodeRuns.map(fmt).join(' / ')} events/s`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  return 0;
}

if (require.main === module) {
  main().then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`bench/capture: ${(err as Error).stack}\n`);
      process.exit(1);
    },
  );
}
