import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { stateName, type TcpEvent } from '../../common/event';
import { ipv4Text, ipv6Text } from './address';
import { AF_INET, AF_INET6, COMM_LEN, LAYOUT_VERSION, OFF, RECORD_SIZE } from './layout';

/**
 * Where an event's process came from (enum tcpaudit_proc_source in bpf/tcpaudit.h):
 * 'none' (unknown: pid 0), 'owner' (connect()/listen() in the owner's context), 'listener'
 * (accepted: the listener's process, recorded at listen()), 'current' (first seen in a
 * syscall), 'listener-seeded' (accepted by a listener that predates the capture, whose process
 * was read from /proc at start).
 */
export const PROC_SOURCES = ['none', 'owner', 'listener', 'current', 'listener-seeded'] as const;
export type ProcSource = (typeof PROC_SOURCES)[number] | 'unknown';

/** A decoded record: the producer's TcpEvent plus what only the capture layer reports. */
export interface CapturedEvent extends TcpEvent {
  procSource: ProcSource;
}

/** What every record of a batch shares; the caller measures the clock offset per batch. */
export interface DecodeContext {
  host: string;
  bootId: string;
  /** CLOCK_REALTIME minus CLOCK_BOOTTIME, ns: turns the kernel's stamp into epoch ns. */
  clockOffsetNs: bigint;
}

/** A batch that does not match the layout this build knows: never retried, never guessed at. */
export class RecordLayoutError extends Error {
  readonly code = 'TCPAUDIT_RECORD_LAYOUT';
  constructor(message: string) {
    super(message);
    this.name = 'RecordLayoutError';
  }
}

let cachedBootId: string | undefined;

/** The kernel's boot id (a UUID), read once: it cannot change while we run. */
export function bootId(): string {
  cachedBootId ??= readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  return cachedBootId;
}

export function defaultContext(clockOffsetNs: bigint): DecodeContext {
  return { host: hostname(), bootId: bootId(), clockOffsetNs };
}

/**
 * Connection id: `<first 8 hex of boot id>-<run id hex>-<counter hex>`. The counter is the
 * BPF program's per-load socket counter; the run id (boot-clock ns when the program was
 * loaded) keeps ids unique when the program is reloaded within one boot, and the boot id
 * across reboots. Unique per host; add the host name for a fleet-wide key.
 */
export function connectionId(bootIdText: string, runId: bigint, counter: bigint): string {
  return `${connectionPrefix(bootIdText, runId)}${counter.toString(16)}`;
}

function connectionPrefix(bootIdText: string, runId: bigint): string {
  const boot = bootIdText.replace(/-/g, '').slice(0, 8);
  return `${boot}-${runId.toString(16)}-`;
}

// The decoder reads 64-bit fields as two 32-bit halves: most values fit 32 bits, and a number
// or a small BigInt costs far less than readBigUInt64LE on the hot path.
const TWO_32 = 4294967296;

/** A 64-bit field known to stay below 2^53 (sequence numbers, inodes), as a number. */
function u64Number(buf: Buffer, at: number): number {
  return buf.readUInt32LE(at) + buf.readUInt32LE(at + 4) * TWO_32;
}

function u64BigInt(buf: Buffer, at: number): bigint {
  return buf.readUInt32LE(at + 4) === 0 ? BigInt(buf.readUInt32LE(at)) : buf.readBigUInt64LE(at);
}

function u64Hex(buf: Buffer, at: number): string {
  return buf.readUInt32LE(at + 4) === 0
    ? buf.readUInt32LE(at).toString(16)
    : buf.readBigUInt64LE(at).toString(16);
}

// One run id per capture: its connId prefix is built once, not once per event.
let prefixBoot = '';
let prefixRunLo = -1;
let prefixRunHi = -1;
let prefix = '';

function cachedPrefix(bootIdText: string, buf: Buffer, at: number): string {
  const lo = buf.readUInt32LE(at);
  const hi = buf.readUInt32LE(at + 4);
  if (lo !== prefixRunLo || hi !== prefixRunHi || bootIdText !== prefixBoot) {
    prefix = connectionPrefix(bootIdText, buf.readBigUInt64LE(at));
    prefixBoot = bootIdText;
    prefixRunLo = lo;
    prefixRunHi = hi;
  }
  return prefix;
}

function commText(buf: Buffer, at: number): string {
  let end = at;
  while (end < at + COMM_LEN && buf[end] !== 0) end++;
  return buf.toString('utf8', at, end);
}

/** Decodes `count` packed records (bpf/tcpaudit.h) from one batch. Pure but for the context. */
export function decodeBatch(buf: Buffer, count: number, ctx: DecodeContext): CapturedEvent[] {
  if (!Number.isSafeInteger(count) || count < 0 || count * RECORD_SIZE > buf.length) {
    throw new RecordLayoutError(
      `batch of ${buf.length} bytes cannot hold ${count} records of ${RECORD_SIZE} bytes`,
    );
  }
  const events: CapturedEvent[] = new Array(count);

  for (let i = 0; i < count; i++) {
    const at = i * RECORD_SIZE;
    const version = buf.readUInt16LE(at + OFF.version);
    if (version !== LAYOUT_VERSION) {
      throw new RecordLayoutError(
        `record layout version ${version}, this build decodes ${LAYOUT_VERSION}: ` +
          'rebuild bpf/ and native/ with scripts/setup-capture.sh',
      );
    }
    const af = buf.readUInt16LE(at + OFF.family);
    if (af !== AF_INET && af !== AF_INET6) {
      throw new RecordLayoutError(`record ${i}: address family ${af} is neither IPv4 nor IPv6`);
    }
    const v4 = af === AF_INET;
    const addr = v4 ? ipv4Text : ipv6Text;

    events[i] = {
      seq: u64Number(buf, at + OFF.seq),
      connId: cachedPrefix(ctx.bootId, buf, at + OFF.runId) + u64Hex(buf, at + OFF.connId),
      host: ctx.host,
      bootId: ctx.bootId,
      timeNs: buf.readBigUInt64LE(at + OFF.tsNs) + ctx.clockOffsetNs,
      family: v4 ? 4 : 6,
      localAddr: addr(buf, at + OFF.saddr),
      localPort: buf.readUInt16LE(at + OFF.sport),
      remoteAddr: addr(buf, at + OFF.daddr),
      remotePort: buf.readUInt16LE(at + OFF.dport),
      oldState: stateName(buf[at + OFF.oldState]),
      newState: stateName(buf[at + OFF.newState]),
      pid: buf.readUInt32LE(at + OFF.pid),
      tid: buf.readUInt32LE(at + OFF.tid),
      comm: commText(buf, at + OFF.comm),
      procSource: PROC_SOURCES[buf[at + OFF.procSource]] ?? 'unknown',
      uid: buf.readUInt32LE(at + OFF.uid),
      netns: buf.readUInt32LE(at + OFF.netns),
      cgroupId: u64BigInt(buf, at + OFF.cgroupId),
      bytesSent: u64BigInt(buf, at + OFF.bytesSent),
      bytesReceived: u64BigInt(buf, at + OFF.bytesReceived),
      segsOut: buf.readUInt32LE(at + OFF.segsOut),
      segsIn: buf.readUInt32LE(at + OFF.segsIn),
      retransmits: buf.readUInt32LE(at + OFF.totalRetrans),
      srttUs: buf.readUInt32LE(at + OFF.srttUs),
      sockInode: u64Number(buf, at + OFF.sockInode),
      sockUid: buf.readUInt32LE(at + OFF.sockUid),
      sockGid: buf.readUInt32LE(at + OFF.sockGid),
    };
  }
  return events;
}
