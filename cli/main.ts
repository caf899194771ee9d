import { createLogger } from '../common/log';
import { UsageError } from './options';

const HELP = `Usage: tcpaudit <command> [options]

Commands:
  stack up|down|status|env   the local Kafka, schema registry and PostgreSQL on 127.0.0.1
  capture                    print this host's TCP state changes as JSON lines (no Kafka)
  doctor                     check that capture can work here (kernel, BTF, capabilities)
  produce                    capture and publish to Kafka
  process                    consume from Kafka and write audit rows to PostgreSQL
  query                      answer audit questions (read-only role), as a table or JSON

Run "tcpaudit <command> --help" for a command's options.
`;

type Command = (argv: string[]) => Promise<number>;

// Loaded on demand: "tcpaudit process" has no need of the native capture addon, and vice versa.
const COMMANDS: Record<string, () => Command> = {
  stack: () => require('../stack').runStackCommand,
  capture: () => require('./capture').runCapture,
  doctor: () => require('./doctor').runDoctor,
  produce: () => require('./produce').runProduce,
  process: () => require('./process').runProcess,
  query: () => require('./query').runQuery,
};

function isUsageError(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return (
    err instanceof UsageError ||
    code === 'TCPAUDIT_CONFIG' || // common/config.ts ConfigError: a bad flag or variable
    (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS'))
  );
}

/**
 * A reader that goes away must not cost data. Logs on stderr: when the pipe behind them closes
 * (`make run | tee` and a Ctrl-C that ends tee first), shutdown goes on without its logs.
 * Data on stdout (`tcpaudit capture | head`): the command stops as if told to, cleanly.
 */
function surviveClosedPipes(): void {
  process.stderr.on('error', () => undefined);
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.kill(process.pid, 'SIGTERM');
  });
}

export async function main(argv: string[]): Promise<number> {
  surviveClosedPipes();
  const [name, ...rest] = argv;
  if (!name || name === '-h' || name === '--help' || name === 'help') {
    process.stdout.write(HELP);
    return name ? 0 : 2;
  }
  const load = COMMANDS[name];
  if (!load) {
    process.stderr.write(`tcpaudit: unknown command "${name}"\n\n${HELP}`);
    return 2;
  }
  try {
    return await load()(rest);
  } catch (err) {
    if (isUsageError(err)) {
      process.stderr.write(`tcpaudit ${name}: ${(err as Error).message}\n`);
      return 2;
    }
    createLogger(name).error('failed', {
      error: (err as Error).message,
      stack: (err as Error).stack,
    });
    return 1;
  }
}
