import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseCidr, type Cidr } from './address';
import { decodeBatch, defaultContext, type CapturedEvent, type DecodeContext } from './decode';
import {
  DEFAULT_SEED_BUDGET_MS,
  emptyScan,
  scanListeners,
  validateSeeds,
  type ListenerScan,
  type ListenerSeed,
} from './listeners';
import { LAYOUT_VERSION, MAX_FILTER_CIDRS, MAX_FILTER_PORTS, RECORD_SIZE } from './layout';
import { SeqTracker, type LossInfo } from './loss';

export type { LossInfo } from './loss';
export type { CapturedEvent, ProcSource } from './decode';

/**
 * Default kernel ring buffer: 64 MiB, about 400,000 records. It is what absorbs a burst while
 * JavaScript is busy (the drain stops reading when JS falls behind, see native/Drain.cc): with
 * 8 MiB, bench/capture.js lost events at the fastest loopback storm of a 2-core machine.
 */
export const DEFAULT_RING_BYTES = 64 << 20;
const MAX_RING_BYTES = 1 << 30;
const PAGE_SIZE = 4096; // x86_64, the only architecture bpf/ builds for

export interface CaptureOptions {
  /** Kernel ring buffer size in bytes: a power of two, a multiple of 4096, at most 1 GiB. */
  ringBytes?: number;
  /** Print libbpf's own log on stderr (muted otherwise). */
  libbpfVerbose?: boolean;
  /**
   * In-kernel filters, set at load time. An event is kept when it passes all that are given:
   * its socket is in network namespace `filterNetns` (inode, as `stat -L /proc/<pid>/ns/net`),
   * either port is in `filterPorts` (at most 8), and either address is in one of
   * `filterCidrs` (at most 4, "10.0.0.0/8", "::1/128"; IPv4 ones also match v4-mapped IPv6).
   * Filtered events take no sequence number: gaps still mean loss.
   */
  filterPorts?: number[];
  filterCidrs?: string[];
  filterNetns?: number;
  /**
   * Seed the listeners map from /proc right after attaching (default true), so connections
   * accepted by servers that were listening before the capture started carry their process.
   * The scan stops after `seedBudgetMs` (default 2000); the result is `handle.listeners`.
   */
  seedListeners?: boolean;
  seedBudgetMs?: number;
  /** Called on the main thread once per batch, in ring order. */
  onEvents: (events: CapturedEvent[]) => void;
  /**
   * Called once per confirmed loss: a range of sequence numbers that will never arrive (a
   * gap confirmed one batch later, or, when the counters grew past the gaps and the ring has
   * been idle for a second or the capture stops, the numbers after the last delivered one).
   * Each lost record is reported exactly once.
   */
  onLoss?: (info: LossInfo) => void;
  /** Decoding failures and exceptions thrown by onEvents or onLoss; capture keeps running. */
  onError?: (err: Error) => void;
}

export interface CaptureStats {
  /** Records the kernel could not reserve (ring full), summed over CPUs. */
  kernelLost: number;
  /** Socket-local storage that could not be created: those events got a one-off connId. */
  sockMapErrors: number;
  listenerMapErrors: number;
  /**
   * Records dropped in the addon: only a batch JS could not take when capture stopped (while
   * running, a JS that falls behind makes the drain stop reading the ring instead).
   */
  userDropped: number;
  droppedBatches: number;
  /** Batches and records handed to JS by the addon. */
  batches: number;
  events: number;
  /**
   * The kernel's run time and run count of our BPF program; they only move while the sysctl
   * kernel.bpf_stats_enabled is 1 (bench/capture.ts turns it on). 0 once stopped.
   */
  progRunTimeNs: number;
  progRunCount: number;
  /** Records that failed to decode (their batch is reported through onError). */
  decodeFailed: number;
  /**
   * Sequence numbers below the highest one seen that never arrived: (highest + 1) - received.
   * A lower bound (losses after the last delivered event do not show); use with kernelLost.
   */
  seqMissing: number;
  /** Sequence numbers reported through onLoss so far. */
  lossReported: number;
}

/** What seeding the listeners map from /proc did; never a reason for capture to fail. */
export interface ListenerSeedReport extends Omit<ListenerScan, 'seeds'> {
  /** Entries written to the listeners map. */
  seeded: number;
  /** Keys the program had filled since attaching (a newer listen()): left as they were. */
  alreadyKnown: number;
  /** Writes that failed (map full...); firstError says why. */
  failed: number;
  firstError: string;
  elapsedMs: number;
  /** Why some or all listeners have no process, in words; '' when every one has. */
  why: string;
}

export interface CaptureHandle {
  /** Per-load id mixed into every connId (see decode.ts connectionId). */
  readonly runId: bigint;
  /**
   * Settles once listeners that predate the capture are seeded (or seeding was skipped or
   * failed, which the report says): connections accepted after that carry their process.
   * Never rejects.
   */
  readonly listeners: Promise<ListenerSeedReport>;
  stats(): CaptureStats;
  /**
   * Stops (true) or resumes (false) draining the kernel ring, which then fills up and loses
   * records. For tests and diagnostics: it makes loss happen on purpose.
   */
  pauseDrain(paused: boolean): void;
  /** Detaches the program and resolves once every queued batch went to onEvents. */
  stop(): Promise<void>;
}

/** The counters the addon keeps; the rest of CaptureStats is counted here. */
type NativeStats = Pick<
  CaptureStats,
  | 'kernelLost'
  | 'sockMapErrors'
  | 'listenerMapErrors'
  | 'userDropped'
  | 'droppedBatches'
  | 'batches'
  | 'events'
  | 'progRunTimeNs'
  | 'progRunCount'
>;

interface NativeCapture {
  stats(): NativeStats;
  clockOffsetNs(): bigint;
  runId(): bigint;
  pause(paused: boolean): void;
  close(): void;
  seedListeners(seeds: ListenerSeed[]): {
    inserted: number;
    existed: number;
    failed: number;
    firstError: string;
  };
}

interface NativeOptions {
  ringBytes: number;
  libbpfVerbose: boolean;
  filterNetns: number;
  filterPorts: number[];
  filterCidrs: Cidr[];
}

interface NativeAddon {
  layoutVersion: number;
  recordSize: number;
  Capture: new (
    objectPath: string,
    options: NativeOptions,
    onBatch: (buf: Buffer, count: number, clockOffsetNs: bigint) => void,
    onClosed: () => void,
  ) => NativeCapture;
}

/** Repo root: env TCPAUDIT_HOME, else three levels above dist/producer/capture/. */
export function captureHome(): string {
  return process.env.TCPAUDIT_HOME ?? resolve(__dirname, '..', '..', '..');
}

export function addonPath(home = captureHome()): string {
  return resolve(home, 'native', 'build', 'Release', 'tcpaudit.node');
}

export function bpfObjectPath(home = captureHome()): string {
  return resolve(home, 'bpf', '.output', 'tcpaudit.bpf.o');
}

let addon: NativeAddon | undefined;
// Running captures, so that one whose handle was dropped is not collected (and silently
// stopped by the addon's finalizer) while its program is still attached.
const running = new Set<NativeCapture>();

function loadAddon(): NativeAddon {
  if (addon) return addon;
  const path = addonPath();
  if (!existsSync(path)) {
    throw new Error(`capture addon not built (${path}): run scripts/setup-capture.sh`);
  }
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const loaded = require(path) as NativeAddon;
  if (loaded.layoutVersion !== LAYOUT_VERSION || loaded.recordSize !== RECORD_SIZE) {
    throw new Error(
      `capture addon has record layout ${loaded.layoutVersion}/${loaded.recordSize} bytes, ` +
        `this build decodes ${LAYOUT_VERSION}/${RECORD_SIZE}: run scripts/setup-capture.sh`,
    );
  }
  addon = loaded;
  return loaded;
}

export function validateRingBytes(value: unknown): number {
  const n = value ?? DEFAULT_RING_BYTES;
  if (
    typeof n !== 'number' ||
    !Number.isSafeInteger(n) ||
    n < PAGE_SIZE ||
    n > MAX_RING_BYTES ||
    (n & (n - 1)) !== 0
  ) {
    throw new RangeError(
      `ringBytes must be a power of two from ${PAGE_SIZE} to ${MAX_RING_BYTES}, got ${String(n)}`,
    );
  }
  return n;
}

/** Checks the filter options and turns them into what the addon writes into .rodata. */
export function validateFilters(options: {
  filterPorts?: unknown;
  filterCidrs?: unknown;
  filterNetns?: unknown;
}): { filterPorts: number[]; filterCidrs: Cidr[]; filterNetns: number } {
  const ports = options.filterPorts ?? [];
  if (!Array.isArray(ports) || ports.length > MAX_FILTER_PORTS) {
    throw new RangeError(`filterPorts must be an array of at most ${MAX_FILTER_PORTS} ports`);
  }
  for (const p of ports) {
    if (!Number.isInteger(p) || p < 1 || p > 65535) {
      throw new RangeError(`filterPorts: ${String(p)} is not a port (1..65535)`);
    }
  }
  const cidrs = options.filterCidrs ?? [];
  if (!Array.isArray(cidrs) || cidrs.length > MAX_FILTER_CIDRS) {
    throw new RangeError(`filterCidrs must be an array of at most ${MAX_FILTER_CIDRS} CIDRs`);
  }
  const netns = options.filterNetns ?? 0;
  if (!Number.isInteger(netns) || (netns as number) < 0 || (netns as number) > 0xffffffff) {
    throw new RangeError(`filterNetns must be a namespace inode number, got ${String(netns)}`);
  }
  return {
    filterPorts: [...new Set(ports as number[])],
    filterCidrs: cidrs.map((c) => parseCidr(String(c))),
    filterNetns: netns as number,
  };
}

/** Why listeners stayed without a process, for the log line; '' when none did. */
function seedWhy(scan: ListenerScan, failed: number, firstError: string): string {
  const why: string[] = [];
  if (scan.skipped) why.push(`seeding skipped: ${scan.skipped}`);
  if (scan.unattributed > 0) {
    why.push(
      `${scan.unattributed} listening sockets without a process` +
        (scan.fdUnreadable > 0
          ? `: the fds of ${scan.fdUnreadable} processes are not readable ` +
            '(other users need CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH, or root)'
          : ': no process holds them (exited, or passed in flight)'),
    );
  }
  if (scan.netnsUnreadable > 0) {
    why.push(`the network namespace of ${scan.netnsUnreadable} processes is not readable`);
  }
  if (scan.truncated) why.push('the scan hit its time or count limit');
  if (failed > 0) why.push(`${failed} map writes failed: ${firstError}`);
  return why.join('; ');
}

/** Scans /proc and seeds the map; any failure ends up in the report, never thrown. */
async function seed(
  capture: NativeCapture,
  filters: { filterNetns: number; filterPorts: number[] },
  budgetMs: number,
): Promise<ListenerSeedReport> {
  const started = performance.now();
  let scan = emptyScan();
  let result = { inserted: 0, existed: 0, failed: 0, firstError: '' };
  try {
    scan = await scanListeners({
      netns: filters.filterNetns,
      ports: filters.filterPorts,
      budgetMs,
    });
    result = capture.seedListeners(validateSeeds(scan.seeds));
  } catch (err) {
    scan = { ...scan, skipped: scan.skipped || `seeding failed: ${(err as Error).message}` };
  }
  const { seeds, ...counts } = scan;
  return {
    ...counts,
    seeded: result.inserted,
    alreadyKnown: result.existed,
    failed: result.failed + (scan.skipped ? seeds.length : 0),
    firstError: result.firstError,
    elapsedMs: Math.round(performance.now() - started),
    why: seedWhy(scan, result.failed, result.firstError),
  };
}

const { seeds: _noSeeds, ...nothingScanned } = emptyScan('disabled');
const seedDisabled: ListenerSeedReport = {
  ...nothingScanned,
  seeded: 0,
  alreadyKnown: 0,
  failed: 0,
  firstError: '',
  elapsedMs: 0,
  why: 'seeding skipped: disabled',
};

/** How often the counters are compared with the gaps when no batch arrives. */
const LOSS_CHECK_MS = 1000;

/** Loads and attaches the BPF program and delivers decoded events until stop(). */
export function startCapture(options: CaptureOptions): CaptureHandle {
  if (typeof options?.onEvents !== 'function') {
    throw new TypeError('startCapture: onEvents must be a function');
  }
  if (options.onError !== undefined && typeof options.onError !== 'function') {
    throw new TypeError('startCapture: onError must be a function');
  }
  if (options.onLoss !== undefined && typeof options.onLoss !== 'function') {
    throw new TypeError('startCapture: onLoss must be a function');
  }
  const filters = validateFilters(options);
  const ringBytes = validateRingBytes(options.ringBytes);
  const libbpfVerbose = options.libbpfVerbose ?? false;
  if (typeof libbpfVerbose !== 'boolean') {
    throw new TypeError('startCapture: libbpfVerbose must be a boolean');
  }
  const seedListeners = options.seedListeners ?? true;
  if (typeof seedListeners !== 'boolean') {
    throw new TypeError('startCapture: seedListeners must be a boolean');
  }
  const seedBudgetMs = options.seedBudgetMs ?? DEFAULT_SEED_BUDGET_MS;
  if (!Number.isInteger(seedBudgetMs) || seedBudgetMs < 0 || seedBudgetMs > 60_000) {
    throw new RangeError('startCapture: seedBudgetMs must be 0..60000');
  }
  const onError =
    options.onError ?? ((err: Error) => process.emitWarning(err.message, 'TcpauditCapture'));

  const native = loadAddon();
  const ctx: DecodeContext = defaultContext(0n);
  const seqs = new SeqTracker();
  let decoded = 0;
  let decodeFailed = 0;
  let highestSeq = -1;
  let batchesSinceCheck = 0;
  let closed: () => void = () => {};
  const done = new Promise<void>((resolveDone) => (closed = resolveDone));

  const report = (ranges: Array<{ from: number; to: number }>, counters: NativeStats) => {
    for (const r of ranges) {
      const info: LossInfo = {
        kernelLost: counters.kernelLost,
        userDropped: counters.userDropped,
        seqFrom: r.from,
        seqTo: r.to,
        missing: r.to - r.from + 1,
      };
      try {
        options.onLoss?.(info);
      } catch (err) {
        onError(err as Error);
      }
    }
  };

  // Losses after the last delivered record: only the counters show them. Claimed when the
  // ring has been drained since (idle for a check period, or the capture stopped).
  const checkTail = (counters: NativeStats) => {
    const unexplained = counters.kernelLost + counters.userDropped - seqs.reported - seqs.pending();
    if (unexplained > 0) report([seqs.takeTail(unexplained)], counters);
  };

  const onBatch = (buf: Buffer, count: number, clockOffsetNs: bigint) => {
    batchesSinceCheck++;
    let events: CapturedEvent[];
    try {
      ctx.clockOffsetNs = clockOffsetNs;
      events = decodeBatch(buf, count, ctx);
    } catch (err) {
      decodeFailed += count;
      onError(err as Error);
      return;
    }
    decoded += events.length;
    for (const e of events) {
      if (e.seq > highestSeq) highestSeq = e.seq;
      seqs.observe(e.seq);
    }
    const confirmed = seqs.endBatch();
    if (confirmed.length > 0) report(confirmed, capture.stats());
    try {
      options.onEvents(events);
    } catch (err) {
      onError(err as Error);
    }
  };

  const capture = new native.Capture(
    bpfObjectPath(),
    { ringBytes, libbpfVerbose, ...filters },
    onBatch,
    () => closed(),
  );
  running.add(capture);
  const lossTimer = setInterval(() => {
    if (batchesSinceCheck === 0) checkTail(capture.stats());
    batchesSinceCheck = 0;
  }, LOSS_CHECK_MS);
  lossTimer.unref();
  // after attaching: a listen() from now on is the program's, whose entry then wins
  const listeners = seedListeners
    ? seed(capture, filters, seedBudgetMs)
    : Promise.resolve({ ...seedDisabled });
  let stopping: Promise<void> | undefined;

  const stop = async () => {
    clearInterval(lossTimer);
    capture.close();
    running.delete(capture);
    await done;
    const counters = capture.stats();
    report(seqs.takeAll(), counters);
    checkTail(counters);
  };

  return {
    runId: capture.runId(),
    listeners,
    stats: () => ({
      ...capture.stats(),
      decodeFailed,
      seqMissing: highestSeq + 1 - decoded - decodeFailed,
      lossReported: seqs.reported,
    }),
    pauseDrain: (paused: boolean) => capture.pause(paused),
    stop: () => {
      stopping ??= stop();
      return stopping;
    },
  };
}
