import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { parseArgs } from 'node:util';
import { addonPath, bpfObjectPath, startCapture } from '../producer/capture/capture';

const HELP = `Usage: tcpaudit doctor [options]

Checks whether "tcpaudit capture" and "tcpaudit produce" can work on this host and as this
user: kernel version and BTF, the built BPF object and addon, capabilities, memlock limit,
then loads and attaches the BPF program for real. Prints one line per check (ok, warn or
fail, with the fix) and a verdict. Exit status 0 only if capture can work.

Options:
  --json       one JSON object instead of text
  -h, --help   this text
`;

export type CheckStatus = 'ok' | 'warn' | 'fail';

export interface Check {
  name: string;
  status: CheckStatus;
  detail: string;
  /** What to do about it; empty when there is nothing to do. */
  fix: string;
}

// include/uapi/linux/capability.h
const CAP_SYS_ADMIN = 21;
const CAP_PERFMON = 38;
const CAP_BPF = 39;

/** Kernel release as [major, minor], e.g. "6.18.44-fc" -> [6, 18]. */
export function kernelVersion(text = release()): [number, number] {
  const m = /^(\d+)\.(\d+)/.exec(text);
  return m ? [Number(m[1]), Number(m[2])] : [0, 0];
}

const atLeast = (v: [number, number], major: number, minor: number) =>
  v[0] > major || (v[0] === major && v[1] >= minor);

/** Effective capability set of this process, from /proc/self/status. */
export function effectiveCaps(status = readFileSync('/proc/self/status', 'utf8')): bigint {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(status);
  return m ? BigInt(`0x${m[1]}`) : 0n;
}

const hasCap = (caps: bigint, cap: number) => (caps & (1n << BigInt(cap))) !== 0n;

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

function checkKernel(): Check {
  const v = kernelVersion();
  const detail = `kernel ${release()}`;
  if (!atLeast(v, 5, 8)) {
    return {
      name: 'kernel',
      status: 'fail',
      detail: `${detail}: the BPF ring buffer and CAP_BPF need 5.8 or later`,
      fix: 'run on a kernel >= 5.8 (Debian 12 ships 6.1)',
    };
  }
  return { name: 'kernel', status: 'ok', detail, fix: '' };
}

function checkBtf(): Check {
  const path = '/sys/kernel/btf/vmlinux';
  if (existsSync(path)) return { name: 'btf', status: 'ok', detail: `${path} present`, fix: '' };
  return {
    name: 'btf',
    status: 'fail',
    detail: `${path} missing: no kernel BTF, so no CO-RE and no tp_btf`,
    fix: 'use a kernel built with CONFIG_DEBUG_INFO_BTF=y (stock Debian, Ubuntu, RHEL 8.2+)',
  };
}

function checkFile(name: string, path: string): Check {
  try {
    accessSync(path, constants.R_OK);
    return { name, status: 'ok', detail: path, fix: '' };
  } catch (err) {
    const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
    return {
      name,
      status: 'fail',
      detail: `${path} ${missing ? 'missing' : 'not readable by this user'}`,
      fix: missing
        ? 'build it: bash scripts/setup-capture.sh'
        : 'make the install readable (chmod -R a+rX) or set TCPAUDIT_HOME to a readable copy',
    };
  }
}

function checkCaps(): Check {
  const caps = effectiveCaps();
  const bpf = hasCap(caps, CAP_BPF);
  const perfmon = hasCap(caps, CAP_PERFMON);
  const admin = hasCap(caps, CAP_SYS_ADMIN);
  const held = [bpf && 'CAP_BPF', perfmon && 'CAP_PERFMON', admin && 'CAP_SYS_ADMIN'].filter(
    Boolean,
  );
  const detail = `effective ${held.length ? held.join(', ') : 'none of CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN'}`;
  if ((bpf && perfmon) || admin) return { name: 'capabilities', status: 'ok', detail, fix: '' };
  return {
    name: 'capabilities',
    status: 'fail',
    detail,
    fix:
      'grant CAP_BPF and CAP_PERFMON (kernel >= 5.8; CAP_SYS_ADMIN before), e.g. ' +
      'setcap cap_bpf,cap_perfmon+ep on node, --cap-add BPF --cap-add PERFMON, or ' +
      'AmbientCapabilities=CAP_BPF CAP_PERFMON in a systemd unit',
  };
}

/** "Max locked memory" soft limit in bytes (Infinity for unlimited), from /proc/self/limits. */
export function memlockLimit(limits = readText('/proc/self/limits') ?? ''): number | undefined {
  const m = /^Max locked memory\s+(\S+)/m.exec(limits);
  if (!m) return undefined;
  return m[1] === 'unlimited' ? Infinity : Number(m[1]);
}

function checkMemlock(): Check {
  const limit = memlockLimit();
  const text =
    limit === undefined ? 'unknown' : limit === Infinity ? 'unlimited' : `${limit} bytes`;
  // Since 5.11 BPF memory is charged to the memory cgroup, not to RLIMIT_MEMLOCK.
  if (atLeast(kernelVersion(), 5, 11) || limit === Infinity) {
    return {
      name: 'memlock',
      status: 'ok',
      detail: `RLIMIT_MEMLOCK ${text} (not used for BPF maps since kernel 5.11: memcg accounting)`,
      fix: '',
    };
  }
  const enough = limit !== undefined && limit >= 64 << 20;
  return {
    name: 'memlock',
    status: enough ? 'ok' : 'warn',
    detail: `RLIMIT_MEMLOCK ${text}; before 5.11 the ring buffer and maps count against it`,
    fix: enough ? '' : 'raise it: ulimit -l unlimited, or LimitMEMLOCK=infinity in systemd',
  };
}

function checkUnprivileged(): Check {
  const value = readText('/proc/sys/kernel/unprivileged_bpf_disabled')?.trim();
  if (value === undefined) {
    return { name: 'unprivileged_bpf', status: 'ok', detail: 'sysctl absent', fix: '' };
  }
  const meaning: Record<string, string> = {
    '0': 'unprivileged BPF allowed',
    '1': 'unprivileged BPF disabled (locked)',
    '2': 'unprivileged BPF disabled',
  };
  return {
    name: 'unprivileged_bpf',
    status: value === '0' ? 'warn' : 'ok',
    detail:
      `kernel.unprivileged_bpf_disabled=${value} (${meaning[value] ?? 'unknown'}); tcpaudit ` +
      'needs capabilities either way',
    fix:
      value === '0'
        ? 'hardening, not needed by tcpaudit: sysctl kernel.unprivileged_bpf_disabled=2'
        : '',
  };
}

function checkTracefs(): Check {
  const mounts = readText('/proc/mounts') ?? '';
  const types = new Set(mounts.split('\n').map((l) => l.split(' ')[2]));
  const found = ['tracefs', 'debugfs'].filter((t) => types.has(t));
  return {
    name: 'tracefs',
    status: 'ok',
    detail:
      `${found.length ? found.join(' and ') + ' mounted' : 'neither tracefs nor debugfs mounted'}: ` +
      'NOT needed, tcpaudit attaches to the BTF tracepoint (tp_btf) without them',
    fix: '',
  };
}

/** Loads and attaches the program for real, with a small ring, and detaches at once. */
async function checkLoad(): Promise<Check> {
  try {
    const capture = startCapture({ ringBytes: 1 << 16, onEvents: () => {} });
    await capture.stop();
    return {
      name: 'load',
      status: 'ok',
      detail: 'BPF program loaded and attached to tp_btf/inet_sock_set_state',
      fix: '',
    };
  } catch (err) {
    const message = (err as Error).message;
    return {
      name: 'load',
      status: 'fail',
      detail: message,
      fix: /EPERM|permitted|CAP_/.test(message)
        ? 'grant CAP_BPF and CAP_PERFMON (or run as root)'
        : "run with --verbose capture for libbpf's log: tcpaudit capture --verbose",
    };
  }
}

export async function runChecks(): Promise<Check[]> {
  const checks = [
    checkKernel(),
    checkBtf(),
    checkFile('bpf_object', bpfObjectPath()),
    checkFile('addon', addonPath()),
    checkCaps(),
    checkMemlock(),
    checkUnprivileged(),
    checkTracefs(),
  ];
  const buildOk = checks.every((c) => c.name === 'capabilities' || c.status !== 'fail');
  checks.push(
    buildOk
      ? await checkLoad()
      : {
          name: 'load',
          status: 'fail',
          detail: 'not tried: fix the failures above first',
          fix: '',
        },
  );
  return checks;
}

export async function runDoctor(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const checks = await runChecks();
  const ok = checks.every((c) => c.status !== 'fail');
  const verdict = ok
    ? 'capture can work on this host'
    : 'capture cannot work: see the failures above';
  if (values.json) {
    process.stdout.write(`${JSON.stringify({ ok, verdict, checks })}\n`);
  } else {
    for (const c of checks) {
      const fix = c.fix ? ` -> fix: ${c.fix}` : '';
      process.stdout.write(`${c.status.padEnd(4)} ${c.name.padEnd(16)} ${c.detail}${fix}\n`);
    }
    process.stdout.write(`verdict: ${verdict}\n`);
  }
  return ok ? 0 : 1;
}
