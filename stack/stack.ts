import path from 'node:path';
import { createLogger, type Logger } from '../common/log';
import { HOST, stackEnv, type StackEnv } from './endpoints';
import { kafka } from './kafka';
import { postgres } from './postgres';
import {
  logTail,
  ownedPid,
  portInUse,
  removePid,
  sleep,
  spawnDetached,
  stopPid,
  writePid,
} from './process';
import { withLock } from './lock';
import { stackHome } from './paths';
import { registry } from './registry';
import type { Service, ServiceName } from './service';

export { stackEnv, type StackEnv } from './endpoints';
export type { ServiceName } from './service';

/** Start order matters only for reading logs; the services do not depend on each other. */
const SERVICES: readonly Service[] = [postgres, kafka, registry];

export interface StackOptions {
  /** Subset to act on; default all three. */
  services?: ServiceName[];
  log?: Logger;
}

export interface ServiceStatus {
  name: ServiceName;
  running: boolean;
  /** Our process (per this checkout's pid file), or null. */
  pid: number | null;
  /** Healthy on its port without being ours: another checkout (or clone) started it. */
  startedElsewhere: boolean;
  port: number;
  healthy: boolean;
  logFile: string;
}

/** Longest a command waits for another process's `up`/`down` (a cold up takes ~15 s). */
const LOCK_WAIT_MS = 240_000;
const lockFile = () => path.join(stackHome(), 'run', 'stack.lock');

function pick(opts: StackOptions): Service[] {
  const names = opts.services;
  if (!names) return [...SERVICES];
  for (const n of names) {
    if (!SERVICES.some((s) => s.name === n)) throw new Error(`unknown service "${n}"`);
  }
  return SERVICES.filter((s) => names.includes(s.name));
}

/** Polls the probe until healthy; fails early if the process dies, late if time runs out. */
async function awaitHealthy(svc: Service, pid: number, died: () => string | null): Promise<void> {
  const deadline = Date.now() + svc.startTimeoutMs;
  for (;;) {
    if (await svc.probe()) return;
    const death = died();
    if (death !== null) {
      throw new Error(
        `${svc.name} (pid ${pid}) ${death} during start-up; see ` +
          `${svc.paths.logFile}:\n${logTail(svc.paths.logFile)}`,
      );
    }
    if (Date.now() > deadline) {
      throw new Error(
        `${svc.name} (pid ${pid}) not healthy after ${svc.startTimeoutMs / 1000} s;` +
          ` it is left running for inspection; see ${svc.paths.logFile}`,
      );
    }
    await sleep(500);
  }
}

async function startOne(svc: Service, log: Logger): Promise<void> {
  const t0 = Date.now();
  const existing = ownedPid(svc.paths.pidFile, svc.marker);
  if (existing !== null) {
    // Ours and alive, maybe still booting from an earlier `up`: wait rather than restart.
    const gone = () => (ownedPid(svc.paths.pidFile, svc.marker) === null ? 'exited' : null);
    await awaitHealthy(svc, existing, gone);
    log.info(`${svc.name} already running`, { pid: existing, port: svc.port });
    return;
  }
  removePid(svc.paths.pidFile);
  // Another checkout's stack (same ports) that serves what we need is as good as ours.
  if (await svc.probe()) {
    log.info(`${svc.name} already running, started elsewhere: reusing it`, { port: svc.port });
    return;
  }
  for (const port of svc.ports) {
    if (await portInUse(HOST, port)) {
      throw new Error(
        `${svc.name}: port ${port} on ${HOST} is taken by something that is not a healthy ` +
          `${svc.name} this stack started (no live pid in ${svc.paths.pidFile}); ` +
          `stop it or free the port`,
      );
    }
  }
  await svc.prepare(log);
  const child = spawnDetached(svc.launch());
  let death: string | null = null;
  child.once('error', (err) => (death = `failed to start (${err.message})`));
  child.once('exit', (code, signal) => (death = `exited with ${signal ?? `code ${code}`}`));
  try {
    if (child.pid === undefined) await sleep(50); // let the 'error' event name the cause
    if (child.pid === undefined) throw new Error(`${svc.name}: ${death ?? 'spawn failed'}`);
    writePid(svc.paths.pidFile, child.pid);
    await awaitHealthy(svc, child.pid, () => death);
    log.info(`${svc.name} started`, {
      pid: child.pid,
      port: svc.port,
      ms: Date.now() - t0,
      log: svc.paths.logFile,
    });
  } finally {
    child.removeAllListeners();
  }
}

/**
 * Starts every service that is not already running and resolves once all are healthy.
 * Services start in parallel; one failing does not stop the others. Returns the endpoints.
 */
export async function stackUp(opts: StackOptions = {}): Promise<StackEnv> {
  const log = opts.log ?? createLogger('stack');
  const services = pick(opts);
  const results = await withLock(lockFile(), LOCK_WAIT_MS, () =>
    Promise.allSettled(services.map((s) => startOne(s, log))),
  );
  const failures = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as Error] : []));
  for (const err of failures) log.error('service failed to start', { error: err.message });
  if (failures.length > 0) {
    throw new Error(`stack up failed:\n${failures.map((e) => e.message).join('\n\n')}`);
  }
  return stackEnv();
}

/** Stops the services this stack started (per its pid files), keeping their data. */
export async function stackDown(opts: StackOptions = {}): Promise<void> {
  const log = opts.log ?? createLogger('stack');
  const services = pick(opts);
  await withLock(lockFile(), LOCK_WAIT_MS, () =>
    Promise.all(
      services.map(async (svc) => {
        const pid = ownedPid(svc.paths.pidFile, svc.marker);
        if (pid === null) {
          removePid(svc.paths.pidFile);
          if (await svc.probe())
            log.info(`${svc.name} started elsewhere: left running`, { port: svc.port });
          else log.info(`${svc.name} not running`);
          return;
        }
        const how = await stopPid(pid, svc.stopSignal, 30_000);
        removePid(svc.paths.pidFile);
        log.info(`${svc.name} ${how}`, { pid });
      }),
    ),
  );
}

export async function stackStatus(opts: StackOptions = {}): Promise<ServiceStatus[]> {
  return Promise.all(
    pick(opts).map(async (svc) => {
      const pid = ownedPid(svc.paths.pidFile, svc.marker);
      // The probe is a real login, metadata round trip or ccompat call: a service that passes
      // it serves our clients, whichever checkout started it (a second clone shares ports).
      const healthy = await svc.probe();
      return {
        name: svc.name,
        running: pid !== null || healthy,
        pid,
        startedElsewhere: pid === null && healthy,
        port: svc.port,
        healthy,
        logFile: svc.paths.logFile,
      };
    }),
  );
}
