import path from 'node:path';
import { repoRoot } from '../common/paths';

/**
 * Where the local stack keeps everything it owns: all under the git-ignored `.tcpaudit/` at the
 * repo root, so `rm -rf .tcpaudit` is a full reset and nothing leaks into the system's own
 * PostgreSQL cluster or /var. TCPAUDIT_STACK_DIR moves it, e.g. when the checkout sits below
 * a folder the `postgres` OS user cannot enter (setup-stack.sh honours it too).
 */
export function stackHome(): string {
  return process.env.TCPAUDIT_STACK_DIR ?? path.join(repoRoot(), '.tcpaudit');
}

export interface ServicePaths {
  dataDir: string;
  logFile: string;
  pidFile: string;
}

export function servicePaths(name: string): ServicePaths {
  const home = stackHome();
  return {
    dataDir: path.join(home, 'data', name),
    logFile: path.join(home, 'logs', `${name}.log`),
    pidFile: path.join(home, 'run', `${name}.pid`),
  };
}

/** Binaries fetched by scripts/setup-stack.sh (see stack/kafka and stack/registry poms). */
export const kafkaLibDir = (): string => path.join(stackHome(), 'kafka', 'libs');
export const registryAppDir = (): string => path.join(stackHome(), 'registry', 'app');
