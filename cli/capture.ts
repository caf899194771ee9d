import { parseArgs } from 'node:util';
import type { TcpEvent } from '../common/event';
import {
  DEFAULT_RING_BYTES,
  startCapture,
  validateRingBytes,
  type CaptureStats,
} from '../producer/capture/capture';
import { UsageError, positiveInt, untilSignal } from './options';

const HELP = `Usage: tcpaudit capture [options]

Prints every TCP state change on this host as one JSON line on stdout (64-bit counters and
timeNs as decimal strings). Stats go to stderr as JSON every 10 s and at the end.
Needs root, or CAP_BPF and CAP_PERFMON.

Options:
  --ring-bytes N   kernel ring buffer size, a power of two (default ${DEFAULT_RING_BYTES})
  --port P         only events whose local or remote port is P (repeatable)
  --verbose        show libbpf's log on stderr
  -h, --help       this text
`;

const STATS_EVERY_MS = 10_000;
// Past this much unwritten output (a slow reader on stdout) events are dropped and counted.
const MAX_PENDING_STDOUT = 16 << 20;

/** One event as a JSON line; bigints become decimal strings. */
export function eventLine(event: TcpEvent): string {
  return `${JSON.stringify(event, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))}\n`;
}

function parsePorts(values: string[] | undefined): Set<number> {
  const ports = new Set<number>();
  for (const text of values ?? []) {
    const port = positiveInt(text, '--port');
    if (port > 65535) throw new UsageError(`--port wants 1..65535, got "${text}"`);
    ports.add(port);
  }
  return ports;
}

export async function runCapture(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'ring-bytes': { type: 'string', default: String(DEFAULT_RING_BYTES) },
      port: { type: 'string', multiple: true },
      verbose: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const ringBytes = positiveInt(values['ring-bytes'], '--ring-bytes');
  try {
    validateRingBytes(ringBytes);
  } catch (err) {
    throw new UsageError(`--ring-bytes: ${(err as Error).message}`);
  }
  const ports = parsePorts(values.port);

  let printDropped = 0;
  let failure: Error | null = null;
  const writeStats = (final: boolean, capture: { stats(): CaptureStats }) => {
    const line = { stats: { ...capture.stats(), printDropped }, final };
    process.stderr.write(`${JSON.stringify(line)}\n`);
  };

  const capture = startCapture({
    ringBytes,
    libbpfVerbose: values.verbose,
    onEvents: (events) => {
      let out = '';
      let lines = 0;
      for (const e of events) {
        if (ports.size > 0 && !ports.has(e.localPort) && !ports.has(e.remotePort)) continue;
        out += eventLine(e);
        lines++;
      }
      if (lines === 0) return;
      if (process.stdout.writableLength > MAX_PENDING_STDOUT) {
        printDropped += lines;
        return;
      }
      process.stdout.write(out);
    },
    onError: (err) => {
      failure = err;
      process.stderr.write(`tcpaudit capture: ${err.message}\n`);
    },
  });

  const timer = setInterval(() => writeStats(false, capture), STATS_EVERY_MS);
  await untilSignal(() => failure !== null);
  clearInterval(timer);
  await capture.stop();
  writeStats(true, capture);
  return failure ? 1 : 0;
}
