import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';

/**
 * Process bookkeeping for the stack's daemons. A pid file alone is not proof: pids are
 * reused, and other engineers may run their own services on this machine. A pid counts as
 * ours only while its command line still contains a marker unique to our `.tcpaudit/` tree,
 * so `stack down` can never signal a stranger.
 */

export function readPid(pidFile: string): number | null {
  try {
    const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
    return Number.isInteger(pid) && pid > 1 ? pid : null;
  } catch {
    return null;
  }
}

export function writePid(pidFile: string, pid: number): void {
  fs.mkdirSync(path.dirname(pidFile), { recursive: true });
  fs.writeFileSync(pidFile, `${pid}\n`);
}

export function removePid(pidFile: string): void {
  fs.rmSync(pidFile, { force: true });
}

function cmdline(pid: number): string | null {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  } catch {
    return null;
  }
}

function isZombie(pid: number): boolean {
  try {
    // Field 3 of /proc/<pid>/stat is the state; the comm before it may hold spaces.
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return false;
  }
}

/** The pid from pidFile if that process is alive and still ours (see above), else null. */
export function ownedPid(pidFile: string, marker: string): number | null {
  const pid = readPid(pidFile);
  if (pid === null) return null;
  const cmd = cmdline(pid);
  if (cmd === null || !cmd.includes(marker) || isZombie(pid)) return null;
  return pid;
}

export interface Launch {
  command: string;
  args: string[];
  cwd: string;
  env?: NodeJS.ProcessEnv;
  logFile: string;
}

/**
 * Starts a daemon in its own session with output appended to its log file, and unrefs it,
 * so it outlives the CLI that launched it.
 */
export function spawnDetached(launch: Launch): ChildProcess {
  fs.mkdirSync(path.dirname(launch.logFile), { recursive: true });
  const out = fs.openSync(launch.logFile, 'a');
  try {
    const child = spawn(launch.command, launch.args, {
      cwd: launch.cwd,
      env: launch.env ?? process.env,
      detached: true,
      stdio: ['ignore', out, out],
    });
    child.unref();
    return child;
  } finally {
    fs.closeSync(out); // the child holds its own copy of the descriptor
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !isZombie(pid);
  } catch {
    return false;
  }
}

/**
 * Asks a process to stop with `signal`, waits up to graceMs, then SIGKILLs it.
 * Returns how it ended, for the operator log.
 */
export async function stopPid(
  pid: number,
  signal: NodeJS.Signals,
  graceMs: number,
): Promise<'stopped' | 'killed' | 'gone'> {
  try {
    process.kill(pid, signal);
  } catch {
    return 'gone';
  }
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline) {
    if (!alive(pid)) return 'stopped';
    await sleep(100);
  }
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return 'stopped';
  }
  while (alive(pid)) await sleep(50);
  return 'killed';
}

/** True when something accepts TCP connections on host:port. */
export function portInUse(host: string, port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (inUse: boolean) => {
      socket.destroy();
      resolve(inUse);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** Last lines of a log, so a start-up failure can be diagnosed from the error alone. */
export function logTail(logFile: string, lines = 15): string {
  try {
    const text = fs.readFileSync(logFile, 'utf8');
    return text.trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log written)';
  }
}
