import { parseArgs } from 'node:util';
import type { TcpEvent } from '../common/event';
import {
  DEFAULT_RING_BYTES,
  startCapture,
  validateFilters,
  validateRingBytes,
  type CaptureStats,
} from '../producer/capture/capture';
import { MAX_FILTER_CIDRS, MAX_FILTER_PORTS } from '../producer/capture/layout';
import { UsageError, netnsInode, positiveInt, untilSignal } from './options';

const HELP = `Usage: tcpaudit capture [options]

Prints every TCP state change on this host as one JSON line on stdout (64-bit counters and
timeNs as decimal strings). Stats go to stderr as JSON every 10 s and at the end, and every
lost record is reported on stderr as {"loss": {"seqFrom", "seqTo", "missing", "kernelLost",
"userDropped"}}. Servers already listening at start are found in /proc, so the connections
they accept carry their process ("procSource":"listener-seeded"); {"listeners": {...}} on
stderr says how many were seeded, in how long, and why any could not be. Needs root, or CAP_BPF and CAP_PERFMON ("tcpaudit doctor" checks).

Filters run in the kernel (filtered events cost no ring space and take no sequence number);
an event is printed when it passes every kind given, and any one value of a kind:
  --port P         local or remote port P (repeatable, up to ${MAX_FILTER_PORTS})
  --cidr CIDR      local or remote address in CIDR, e.g. 10.0.0.0/8, ::1/128 (repeatable, up to
                   ${MAX_FILTER_CIDRS}); IPv4 CIDRs also match v4-mapped IPv6 addresses
  --netns NS       sockets of one network namespace: its inode number, or a path such as
                   /proc/1234/ns/net

Options:
  --ring-bytes N   kernel ring buffer size, a power of two (default ${DEFAULT_RING_BYTES})
  --no-seed        do not look for listeners that predate the capture in /proc
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

function parsePorts(values: string[] | undefined): number[] {
  const ports = new Set<number>();
  for (const text of values ?? []) {
    const port = positiveInt(text, '--port');
    if (port > 65535) throw new UsageError(`--port wants 1..65535, got "${text}"`);
    ports.add(port);
  }
  return [...ports];
}

/** A namespace inode number, or the inode of a namespace file such as /proc/PID/ns/net. */
function parseNetns(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  return netnsInode(text, '--netns'); // refuses 0 and files that are not a net namespace
}

export async function runCapture(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'ring-bytes': { type: 'string', default: String(DEFAULT_RING_BYTES) },
      port: { type: 'string', multiple: true },
      cidr: { type: 'string', multiple: true },
      netns: { type: 'string' },
      verbose: { type: 'boolean', default: false },
      'no-seed': { type: 'boolean', default: false },
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
  const requested = {
    filterPorts: parsePorts(values.port),
    filterCidrs: values.cidr ?? [],
    filterNetns: parseNetns(values.netns),
  };
  if (requested.filterPorts.length > MAX_FILTER_PORTS) {
    throw new UsageError(`--port: at most ${MAX_FILTER_PORTS} ports`);
  }
  if (requested.filterCidrs.length > MAX_FILTER_CIDRS) {
    throw new UsageError(`--cidr: at most ${MAX_FILTER_CIDRS} CIDRs`);
  }
  try {
    validateFilters(requested);
  } catch (err) {
    throw new UsageError(`--cidr: ${(err as Error).message}`);
  }

  let printDropped = 0;
  let failure: Error | null = null;
  const writeStats = (final: boolean, capture: { stats(): CaptureStats }) => {
    const line = { stats: { ...capture.stats(), printDropped }, final };
    process.stderr.write(`${JSON.stringify(line)}\n`);
  };

  let capture: ReturnType<typeof startCapture>;
  try {
    capture = startCapture({
      ringBytes,
      libbpfVerbose: values.verbose,
      seedListeners: !values['no-seed'],
      ...requested,
      onEvents: (events) => {
        if (events.length === 0) return;
        if (process.stdout.writableLength > MAX_PENDING_STDOUT) {
          printDropped += events.length;
          return;
        }
        let out = '';
        for (const e of events) out += eventLine(e);
        process.stdout.write(out);
      },
      onLoss: (loss) => process.stderr.write(`${JSON.stringify({ loss })}\n`),
      onError: (err) => {
        failure = err;
        process.stderr.write(`tcpaudit capture: ${err.message}\n`);
      },
    });
  } catch (err) {
    // Not a crash: the usual causes (capabilities, kernel, build) deserve one plain line.
    process.stderr.write(
      `tcpaudit capture: ${(err as Error).message}\n` +
        'tcpaudit capture: run "tcpaudit doctor" to check this host\n',
    );
    return 1;
  }
  // In hex, as the producer logs it and as it appears in every connection id.
  const runId = capture.runId.toString(16);
  process.stderr.write(`${JSON.stringify({ attached: { runId, ringBytes, ...requested } })}\n`);

  // Listeners that predate us, seeded from /proc: how many, how long, and why any are missing.
  void capture.listeners.then((report) =>
    process.stderr.write(`${JSON.stringify({ listeners: report })}\n`),
  );

  const timer = setInterval(() => writeStats(false, capture), STATS_EVERY_MS);
  await untilSignal(() => failure !== null);
  clearInterval(timer);
  await capture.stop();
  writeStats(true, capture);
  return failure ? 1 : 0;
}
