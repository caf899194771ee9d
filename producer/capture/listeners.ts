import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { setImmediate as yieldToLoop } from 'node:timers/promises';

/**
 * Listeners that predate the capture. The BPF program learns a listener's process at listen();
 * for sockets already listening when it attached, we find the process in /proc and seed the
 * listeners map, so that the connections they accept carry it (proc source "listener-seeded").
 *
 * How: every network namespace a readable /proc/<pid>/ns/net names is read once through
 * /proc/<pid>/net/tcp{,6} (state 0A = LISTEN) for (netns, port, socket inode); then the fds of
 * every process are matched against those inodes (`socket:[inode]`). A socket several
 * processes hold (a pre-forked server) goes to the oldest holder: the one most likely to have
 * called listen(). Its tid is unknown and written as the pid.
 *
 * Without CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (or root), other users' fds and namespaces
 * cannot be read: their listeners stay unattributed (pid 0, as before) and are counted.
 */

/** One listeners-map entry, as the addon's seedListeners() takes it. */
export interface ListenerSeed {
  netns: number;
  /** Host order, like the tracepoint's and /proc/net/tcp's port. */
  port: number;
  pid: number;
  uid: number;
  cgroupId: bigint;
  comm: string;
}

/** What the scan found and why some listeners have no process. */
export interface ListenerScan {
  seeds: ListenerSeed[];
  /** Listening sockets found in the namespaces we could read. */
  sockets: number;
  /** Listening sockets whose holding process was not found. */
  unattributed: number;
  /** Processes whose /proc/<pid>/fd could not be read (EACCES: not ours, no privilege). */
  fdUnreadable: number;
  /** Processes whose /proc/<pid>/ns/net could not be read: their namespace may be unseen. */
  netnsUnreadable: number;
  namespaces: number;
  processes: number;
  /** The time or count limit cut the scan short. */
  truncated: boolean;
  /** Why seeding was skipped entirely, or '' when it ran. */
  skipped: string;
}

export interface ScanOptions {
  /** Only this namespace (0: all), like the capture's filterNetns. */
  netns?: number;
  /** Only these local ports (empty: all), like the capture's filterPorts. */
  ports?: number[];
  /** Stop scanning after this long; what was found by then is still seeded. */
  budgetMs?: number;
  /** At most this many seeds (the rest of the map is left for listen() during capture). */
  maxSeeds?: number;
  /** For tests: a directory laid out like /proc. */
  procRoot?: string;
}

export const DEFAULT_SEED_BUDGET_MS = 2000;
/** Half of TCPAUDIT_MAX_LISTENERS (bpf/tcpaudit.h): new listen() calls keep room. */
export const MAX_SEEDS = 8192;
export const MAX_LISTENERS = 16384;
const STATE_LISTEN = '0A';
// Work between two yields to the event loop, so batches keep flowing while we scan.
const SLICE_MS = 5;

interface Socket {
  netns: number;
  port: number;
  inode: number;
}

/** Listening sockets of one namespace's /proc/<pid>/net/tcp or tcp6 text. */
export function parseListening(text: string, netns: number): Socket[] {
  const out: Socket[] = [];
  const lines = text.split('\n');
  for (let i = 1; i < lines.length; i++) {
    const f = lines[i].trim().split(/\s+/);
    if (f.length < 10 || f[3] !== STATE_LISTEN) continue;
    const colon = f[1].lastIndexOf(':');
    const port = parseInt(f[1].slice(colon + 1), 16);
    const inode = Number(f[9]);
    if (colon < 0 || !(port > 0 && port <= 65535) || !Number.isSafeInteger(inode) || inode <= 0) {
      continue;
    }
    out.push({ netns, port, inode });
  }
  return out;
}

/** Inode of a namespace link such as `net:[4026531840]`, or 0. */
function nsInode(link: string): number {
  const m = /^net:\[(\d+)\]$/.exec(link);
  return m ? Number(m[1]) : 0;
}

function tryRead(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** Process start time in clock ticks (field 22 of /proc/<pid>/stat), for "oldest holder". */
function startTime(proc: string, pid: number): number {
  const stat = tryRead(`${proc}/${pid}/stat`);
  if (!stat) return Number.MAX_SAFE_INTEGER;
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[19]) || Number.MAX_SAFE_INTEGER;
}

/**
 * Where the cgroup v2 hierarchy is mounted, so a cgroup path becomes the id the kernel's
 * bpf_get_current_cgroup_id() returns (the directory's inode). '' when there is none.
 */
function cgroup2Mount(proc: string): string {
  for (const line of (tryRead(`${proc}/self/mountinfo`) ?? '').split('\n')) {
    const [pre, post] = line.split(' - ');
    const f = pre?.split(' ') ?? [];
    if (post?.startsWith('cgroup2 ') && f[3] === '/') return f[4];
  }
  return '';
}

function cgroupId(proc: string, pid: number, mount: string, cache: Map<string, bigint>): bigint {
  if (!mount) return 0n;
  const line = (tryRead(`${proc}/${pid}/cgroup`) ?? '')
    .split('\n')
    .find((l) => l.startsWith('0::'));
  if (!line) return 0n;
  const path = line.slice(3);
  let id = cache.get(path);
  if (id === undefined) {
    try {
      id = statSync(`${mount}${path}`, { bigint: true }).ino;
    } catch {
      id = 0n;
    }
    cache.set(path, id);
  }
  return id;
}

/** Real uid from /proc/<pid>/status (what bpf_get_current_uid_gid() reports), or undefined. */
function realUid(proc: string, pid: number): number | undefined {
  const m = /^Uid:\s+(\d+)/m.exec(tryRead(`${proc}/${pid}/status`) ?? '');
  return m ? Number(m[1]) : undefined;
}

/**
 * Pids and uids in /proc are those of our own namespaces; the kernel records the initial
 * ones. Outside them a seed would name the wrong process, so we seed nothing.
 */
function foreignNamespaces(proc: string): string {
  const nspid = /^NSpid:\s+(.*)$/m.exec(tryRead(`${proc}/self/status`) ?? '');
  if (nspid && nspid[1].trim().split(/\s+/).length > 1) return 'not in the initial PID namespace';
  const uidMap = (tryRead(`${proc}/self/uid_map`) ?? '').trim().split(/\s+/);
  if (uidMap.length === 3 && uidMap.join(' ') !== '0 0 4294967295') {
    return 'not in the initial user namespace';
  }
  return '';
}

function pidsOf(proc: string): number[] {
  return readdirSync(proc)
    .filter((name) => /^\d+$/.test(name))
    .map(Number);
}

/** A scan that found nothing; `skipped` says why it did not run, or '' when it is to run. */
export function emptyScan(skipped = ''): ListenerScan {
  return {
    seeds: [],
    sockets: 0,
    unattributed: 0,
    fdUnreadable: 0,
    netnsUnreadable: 0,
    namespaces: 0,
    processes: 0,
    truncated: false,
    skipped,
  };
}

/** Finds the listeners of this host and their processes. Never throws for an unreadable file. */
export async function scanListeners(options: ScanOptions = {}): Promise<ListenerScan> {
  const proc = options.procRoot ?? '/proc';
  const deadline = Date.now() + (options.budgetMs ?? DEFAULT_SEED_BUDGET_MS);
  const maxSeeds = Math.min(options.maxSeeds ?? MAX_SEEDS, MAX_LISTENERS);
  const wantNetns = options.netns ?? 0;
  const wantPorts = new Set(options.ports ?? []);
  const scan = emptyScan(foreignNamespaces(proc));
  if (scan.skipped) return scan;

  let sliceEnd = Date.now() + SLICE_MS;
  // true when out of time; yields to the event loop every SLICE_MS of work
  const pause = async (): Promise<boolean> => {
    if (Date.now() < sliceEnd) return false;
    await yieldToLoop();
    sliceEnd = Date.now() + SLICE_MS;
    if (Date.now() > deadline) scan.truncated = true;
    return scan.truncated;
  };

  // 1. one reader per namespace: ours first, then any process of each other namespace
  const pids = pidsOf(proc);
  scan.processes = pids.length;
  const readers = new Map<number, string>();
  const own = nsInode(readlinkSafe(`${proc}/self/ns/net`));
  if (own) readers.set(own, `${proc}/self`);
  for (const pid of pids) {
    const netns = nsInode(readlinkSafe(`${proc}/${pid}/ns/net`, () => scan.netnsUnreadable++));
    if (netns && !readers.has(netns)) readers.set(netns, `${proc}/${pid}`);
    if (await pause()) break;
  }

  // 2. listening sockets by inode
  const byInode = new Map<number, Socket>();
  for (const [netns, dir] of readers) {
    if (wantNetns && netns !== wantNetns) continue;
    scan.namespaces++;
    for (const table of ['tcp', 'tcp6']) {
      for (const s of parseListening(tryRead(`${dir}/net/${table}`) ?? '', netns)) {
        if (wantPorts.size === 0 || wantPorts.has(s.port)) byInode.set(s.inode, s);
      }
    }
  }
  scan.sockets = byInode.size;
  if (byInode.size === 0) return scan;

  // 3. who holds them
  const holders = new Map<number, number[]>();
  for (const pid of pids) {
    if (scan.truncated || (await pause())) break;
    let fds: string[];
    try {
      fds = readdirSync(`${proc}/${pid}/fd`);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EACCES' || code === 'EPERM') scan.fdUnreadable++;
      continue; // ENOENT: the process exited meanwhile
    }
    let denied = false;
    for (let i = 0; i < fds.length; i++) {
      if (i % 1024 === 1023 && (await pause())) break;
      const link = readlinkSafe(`${proc}/${pid}/fd/${fds[i]}`, () => (denied = true));
      if (!link.startsWith('socket:[')) continue;
      const inode = Number(link.slice(8, -1));
      if (!byInode.has(inode)) continue;
      const list = holders.get(inode) ?? [];
      if (!list.includes(pid)) list.push(pid);
      holders.set(inode, list);
    }
    if (denied) scan.fdUnreadable++;
  }

  // 4. one seed per (netns, port): the oldest holder of any of its sockets
  const perKey = new Map<string, number[]>();
  for (const [inode, s] of byInode) {
    const list = holders.get(inode);
    if (!list) {
      scan.unattributed++;
      continue;
    }
    const key = `${s.netns}:${s.port}`;
    perKey.set(key, [...(perKey.get(key) ?? []), ...list]);
  }
  const mount = cgroup2Mount(proc);
  const cgroups = new Map<string, bigint>();
  const starts = new Map<number, number>();
  const start = (pid: number) => {
    if (!starts.has(pid)) starts.set(pid, startTime(proc, pid));
    return starts.get(pid)!;
  };
  for (const [key, list] of perKey) {
    if (scan.seeds.length >= maxSeeds) {
      scan.truncated = true;
      break;
    }
    const [netns, port] = key.split(':').map(Number);
    const pid = [...new Set(list)].sort((a, b) => start(a) - start(b) || a - b)[0];
    const comm = commOf(tryRead(`${proc}/${pid}/comm`));
    const uid = realUid(proc, pid);
    if (comm === undefined || uid === undefined) {
      scan.unattributed++; // exited since we saw its fds
      continue;
    }
    scan.seeds.push({ netns, port, pid, uid, comm, cgroupId: cgroupId(proc, pid, mount, cgroups) });
  }
  return scan;
}

/** readlink, '' on failure; `onDenied` hears about EACCES/EPERM. */
function readlinkSafe(path: string, onDenied?: () => void): string {
  try {
    return readlinkSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if ((code === 'EACCES' || code === 'EPERM') && onDenied) onDenied();
    return '';
  }
}

const COMM_BYTES = 15; // TASK_COMM_LEN - 1

/** /proc/<pid>/comm without its newline, cut to what the record's comm holds. */
function commOf(text: string | undefined): string | undefined {
  if (text === undefined) return undefined;
  let comm = text.replace(/\n$/, '');
  while (Buffer.byteLength(comm) > COMM_BYTES) comm = comm.slice(0, -1);
  return comm;
}

/** Checks seeds before they cross into the addon: a bad one is a bug in the scan, not data. */
export function validateSeeds(seeds: unknown): ListenerSeed[] {
  if (!Array.isArray(seeds) || seeds.length > MAX_LISTENERS) {
    throw new RangeError(`listener seeds must be an array of at most ${MAX_LISTENERS}`);
  }
  const u32 = (v: unknown) =>
    Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff;
  for (const s of seeds as ListenerSeed[]) {
    if (
      typeof s !== 'object' ||
      s === null ||
      !u32(s.netns) ||
      s.netns === 0 ||
      !Number.isInteger(s.port) ||
      s.port < 1 ||
      s.port > 65535 ||
      !u32(s.pid) ||
      s.pid === 0 ||
      !u32(s.uid) ||
      typeof s.cgroupId !== 'bigint' ||
      s.cgroupId < 0n ||
      s.cgroupId >= 1n << 64n ||
      typeof s.comm !== 'string' ||
      Buffer.byteLength(s.comm) > COMM_BYTES
    ) {
      const text = JSON.stringify(s, (_k, v) => (typeof v === 'bigint' ? String(v) : v));
      throw new TypeError(`invalid listener seed ${text}`);
    }
  }
  return seeds as ListenerSeed[];
}
