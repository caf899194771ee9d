import type { Logger } from '../common/log';
import type { Launch } from './process';
import type { ServicePaths } from './paths';

export type ServiceName = 'postgres' | 'kafka' | 'registry';

/** What the orchestration in stack/index.ts needs to know about one daemon. */
export interface Service {
  name: ServiceName;
  /** The client-facing port; status and the env map report it. */
  port: number;
  /** Every port the daemon binds: all must be free before a start. */
  ports: number[];
  paths: ServicePaths;
  /** Text that only our instance has in its command line (see process.ts ownedPid). */
  marker: string;
  /** PostgreSQL's SIGTERM waits for clients to leave; its SIGINT is the fast shutdown. */
  stopSignal: NodeJS.Signals;
  startTimeoutMs: number;
  /** One-time and every-time preparation before a start: init data dirs, write configs. */
  prepare(log: Logger): Promise<void>;
  launch(): Launch;
  probe(): Promise<boolean>;
}

/** Error for a missing prerequisite that scripts/setup-stack.sh would install. */
export function needSetup(what: string): Error {
  return new Error(`${what} not found: run scripts/setup-stack.sh first`);
}
