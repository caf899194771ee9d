import { createLogger } from '../common/log';
import {
  stackDown,
  stackEnv,
  stackStatus,
  stackUp,
  type ServiceName,
  type ServiceStatus,
} from './stack';

/**
 * `tcpaudit stack <up|down|status|env>`. Operator logs go to stderr as JSON lines; stdout
 * carries only data (the status table, the env assignments) so it can be piped or eval'd.
 */

export const STACK_USAGE = `Usage: tcpaudit stack <command> [options] [service...]

Runs the local development stack (PostgreSQL, Kafka, schema registry) on 127.0.0.1,
with data and logs under .tcpaudit/. Install its binaries first: scripts/setup-stack.sh

Commands:
  up        start every service not already running; wait until all are healthy (a
            healthy service already on its port, started elsewhere, is reused)
  down      stop the services this stack started (SIGTERM, then SIGKILL); data is kept
  status    one line per service: running, pid, port, healthy (exit 3 if any is not);
            a healthy service another checkout started shows pid "started elsewhere"
  env       print the endpoints as shell assignments, e.g. eval "$(tcpaudit stack env)"

Options:
  --json    status: print JSON instead of a table
  --export  env: prefix each line with "export "
  -h, --help

Services (default all): postgres kafka registry
`;

const SERVICE_NAMES: readonly string[] = ['postgres', 'kafka', 'registry'];

interface Parsed {
  command: string | undefined;
  flags: Set<string>;
  services: ServiceName[] | undefined;
}

function parse(args: string[]): Parsed {
  const flags = new Set(args.filter((a) => a.startsWith('-')));
  const words = args.filter((a) => !a.startsWith('-'));
  const [command, ...rest] = words;
  for (const name of rest) {
    if (!SERVICE_NAMES.includes(name)) throw new Error(`unknown service "${name}"`);
  }
  const services = rest.length > 0 ? (rest as ServiceName[]) : undefined;
  return { command, flags, services };
}

function table(rows: ServiceStatus[]): string {
  const widths = [10, 9, 19, 7, 9];
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('');
  const body = rows.map((r) =>
    line([
      r.name,
      r.running ? 'yes' : 'no',
      r.pid !== null ? String(r.pid) : r.startedElsewhere ? 'started elsewhere' : '-',
      String(r.port),
      r.healthy ? 'yes' : 'no',
      r.logFile,
    ]),
  );
  return [line(['SERVICE', 'RUNNING', 'PID', 'PORT', 'HEALTHY', 'LOG']), ...body].join('\n') + '\n';
}

const KNOWN_FLAGS = new Set(['--json', '--export', '-h', '--help']);

/** Runs one stack command; resolves to the process exit code. */
export async function runStackCommand(args: string[]): Promise<number> {
  const log = createLogger('stack');
  let parsed: Parsed;
  try {
    parsed = parse(args);
    const bad = [...parsed.flags].find((f) => !KNOWN_FLAGS.has(f));
    if (bad) throw new Error(`unknown option "${bad}"`);
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n\n${STACK_USAGE}`);
    return 2;
  }
  const { command, flags, services } = parsed;
  if (flags.has('-h') || flags.has('--help') || command === 'help') {
    process.stdout.write(STACK_USAGE);
    return 0;
  }
  if (command === undefined) {
    // Like a bare `tcpaudit`: a missing command is a usage mistake, not a request for help.
    process.stderr.write(`tcpaudit stack: no command given\n\n${STACK_USAGE}`);
    return 2;
  }
  try {
    switch (command) {
      case 'up':
        await stackUp({ services, log });
        return 0;
      case 'down':
        await stackDown({ services, log });
        return 0;
      case 'status': {
        const rows = await stackStatus({ services });
        process.stdout.write(flags.has('--json') ? `${JSON.stringify(rows)}\n` : table(rows));
        // LSB convention for `status`: 3 means "not running", so scripts can test it.
        return rows.every((r) => r.healthy) ? 0 : 3;
      }
      case 'env': {
        const prefix = flags.has('--export') ? 'export ' : '';
        for (const [key, value] of Object.entries(stackEnv())) {
          process.stdout.write(`${prefix}${key}=${value}\n`); // values hold no shell specials
        }
        return 0;
      }
      default:
        process.stderr.write(`unknown stack command "${command}"\n\n${STACK_USAGE}`);
        return 2;
    }
  } catch (err) {
    log.error(`stack ${command} failed`, { error: (err as Error).message });
    return 1;
  }
}
