import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';

export const ROOT = path.resolve(__dirname, '..', '..');
export const CLI = path.join(ROOT, 'bin', 'tcpaudit.js');

export interface Running {
  child: ChildProcess;
  logs: Record<string, unknown>[];
  /** Resolves once a log line has this msg; rejects if the process exits first. */
  waitForLog(msg: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** SIGTERM, then the exit code. */
  stop(): Promise<number | null>;
}

/** Runs a tcpaudit subcommand as its own process, collecting its JSON logs from stderr. */
export function runCli(args: string[], env: Record<string, string>): Running {
  const child = spawn(process.execPath, [CLI, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: Record<string, unknown>[] = [];
  const waiters: { msg: string; resolve: (l: Record<string, unknown>) => void }[] = [];
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => resolve(code)),
  );
  readline.createInterface({ input: child.stderr! }).on('line', (line) => {
    let entry: Record<string, unknown>;
    try {
      entry = JSON.parse(line);
    } catch {
      entry = { msg: line };
    }
    logs.push(entry);
    for (const w of waiters.filter((w) => w.msg === entry.msg)) w.resolve(entry);
  });
  child.stdout!.resume();
  return {
    child,
    logs,
    waitForLog(msg, timeoutMs = 60_000) {
      const seen = logs.find((l) => l.msg === msg);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () =>
            reject(new Error(`no "${msg}" log within ${timeoutMs} ms: ${JSON.stringify(logs)}`)),
          timeoutMs,
        );
        waiters.push({ msg, resolve: (l) => (clearTimeout(timer), resolve(l)) });
        void exited.then((code) => {
          clearTimeout(timer);
          reject(new Error(`tcpaudit ${args[0]} exited (${code}) first: ${JSON.stringify(logs)}`));
        });
      });
    },
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}
