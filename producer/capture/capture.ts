import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { TcpEvent } from '../../common/event';
import { decodeBatch, defaultContext, type DecodeContext } from './decode';
import { LAYOUT_VERSION, RECORD_SIZE } from './layout';

/** Default kernel ring buffer: 8 MiB holds about 50,000 records between two 10 ms drains. */
export const DEFAULT_RING_BYTES = 8 << 20;
const MAX_RING_BYTES = 1 << 30;
const PAGE_SIZE = 4096; // x86_64, the only architecture bpf/ builds for

export interface CaptureOptions {
  /** Kernel ring buffer size in bytes: a power of two, a multiple of 4096, at most 1 GiB. */
  ringBytes?: number;
  /** Print libbpf's own log on stderr (muted otherwise). */
  libbpfVerbose?: boolean;
  /** Called on the main thread once per batch, in ring order. */
  onEvents: (events: TcpEvent[]) => void;
  /** Decoding failures and exceptions thrown by onEvents; capture keeps running. */
  onError?: (err: Error) => void;
}

export interface CaptureStats {
  /** Records the kernel could not reserve (ring full), summed over CPUs. */
  kernelLost: number;
  /** Socket-map updates that failed: those sockets got a fresh connId per event. */
  sockMapErrors: number;
  listenerMapErrors: number;
  /** Records dropped in the addon because JS fell more than 64 batches behind. */
  userDropped: number;
  droppedBatches: number;
  /** Batches and records handed to JS by the addon. */
  batches: number;
  events: number;
  /** Records that failed to decode (their batch is reported through onError). */
  decodeFailed: number;
  /**
   * Sequence numbers below the highest one seen that never arrived: (highest + 1) - received.
   * A lower bound (losses after the last delivered event do not show); use with kernelLost.
   */
  seqMissing: number;
}

export interface CaptureHandle {
  /** Per-load id mixed into every connId (see decode.ts connectionId). */
  readonly runId: bigint;
  stats(): CaptureStats;
  /** Detaches the program and resolves once every queued batch went to onEvents. */
  stop(): Promise<void>;
}

interface NativeStats {
  kernelLost: number;
  sockMapErrors: number;
  listenerMapErrors: number;
  userDropped: number;
  droppedBatches: number;
  batches: number;
  events: number;
}

interface NativeCapture {
  stats(): NativeStats;
  clockOffsetNs(): bigint;
  runId(): bigint;
  close(): void;
}

interface NativeAddon {
  layoutVersion: number;
  recordSize: number;
  Capture: new (
    objectPath: string,
    options: { ringBytes: number; libbpfVerbose: boolean },
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

/** Loads and attaches the BPF program and delivers decoded events until stop(). */
export function startCapture(options: CaptureOptions): CaptureHandle {
  if (typeof options?.onEvents !== 'function') {
    throw new TypeError('startCapture: onEvents must be a function');
  }
  if (options.onError !== undefined && typeof options.onError !== 'function') {
    throw new TypeError('startCapture: onError must be a function');
  }
  const ringBytes = validateRingBytes(options.ringBytes);
  const libbpfVerbose = options.libbpfVerbose ?? false;
  if (typeof libbpfVerbose !== 'boolean') {
    throw new TypeError('startCapture: libbpfVerbose must be a boolean');
  }
  const onError =
    options.onError ?? ((err: Error) => process.emitWarning(err.message, 'TcpauditCapture'));

  const native = loadAddon();
  const ctx: DecodeContext = defaultContext(0n);
  let decoded = 0;
  let decodeFailed = 0;
  let highestSeq = -1;
  let closed: () => void = () => {};
  const done = new Promise<void>((resolveDone) => (closed = resolveDone));

  const onBatch = (buf: Buffer, count: number, clockOffsetNs: bigint) => {
    let events: TcpEvent[];
    try {
      ctx.clockOffsetNs = clockOffsetNs;
      events = decodeBatch(buf, count, ctx);
    } catch (err) {
      decodeFailed += count;
      onError(err as Error);
      return;
    }
    decoded += events.length;
    for (const e of events) if (e.seq > highestSeq) highestSeq = e.seq;
    try {
      options.onEvents(events);
    } catch (err) {
      onError(err as Error);
    }
  };

  const capture = new native.Capture(bpfObjectPath(), { ringBytes, libbpfVerbose }, onBatch, () =>
    closed(),
  );
  running.add(capture);
  let stopping: Promise<void> | undefined;

  return {
    runId: capture.runId(),
    stats: () => ({
      ...capture.stats(),
      decodeFailed,
      seqMissing: highestSeq + 1 - decoded - decodeFailed,
    }),
    stop: () => {
      stopping ??= (capture.close(), running.delete(capture), done);
      return stopping;
    },
  };
}
