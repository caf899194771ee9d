import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import type { Logger } from '../common/log';
import {
  HOST,
  PORTS,
  PG_DATABASE,
  PG_PASSWORD,
  PG_READER_PASSWORD,
  PG_READER_USER,
  PG_USER,
} from './endpoints';
import { postgresHealthy } from './health';
import { servicePaths } from './paths';
import { needSetup, type Service } from './service';

/**
 * A private PostgreSQL 15 cluster in .tcpaudit/data/postgres, separate from any system cluster.
 * Debian's pg_ctl wrappers assume /etc/postgresql clusters, so the raw binaries are used.
 */

const PG_BIN = process.env.TCPAUDIT_PG_BIN ?? '/usr/lib/postgresql/15/bin';
/** Written after the role and database exist: a data dir without it is a half-done init. */
const BOOTSTRAPPED = 'tcpaudit-bootstrapped';

const paths = servicePaths('postgres');

/** PostgreSQL refuses to run as root, so as root we drop to the `postgres` OS user. */
function asServerUser(command: string, args: string[]): { command: string; args: string[] } {
  if (process.getuid?.() !== 0) return { command, args };
  const drop = ['--reuid=postgres', '--regid=postgres', '--init-groups', '--'];
  // setpriv execs in place (unlike runuser, which forks), so our pid is the postmaster's.
  return { command: 'setpriv', args: [...drop, command, ...args] };
}

function run(command: string, args: string[], input?: string): void {
  const cmd = asServerUser(command, args);
  const res = spawnSync(cmd.command, cmd.args, {
    cwd: path.dirname(paths.dataDir),
    input,
    encoding: 'utf8',
    timeout: 120_000,
  });
  if (res.error) throw new Error(`${path.basename(command)} failed: ${res.error.message}`);
  if (res.status !== 0) {
    const out = `${res.stdout ?? ''}${res.stderr ?? ''}`.trim().split('\n').slice(-10).join('\n');
    throw new Error(`${path.basename(command)} exited ${res.status}:\n${out}`);
  }
}

/** Only loopback, only TCP, only passwords: the cluster trusts nobody, not even local users. */
const HBA = `# Written by stack/postgres.ts: TCP from loopback with SCRAM passwords, nothing else.
host all all 127.0.0.1/32 scram-sha-256
`;

const CONF = `
# Added by stack/postgres.ts. No Unix socket: /var/run/postgresql belongs to the system cluster.
listen_addresses = '${HOST}'
port = ${PORTS.postgres}
unix_socket_directories = ''
password_encryption = 'scram-sha-256'
`;

/**
 * As root the server runs as `postgres`, which must be able to enter every folder above its
 * data dir. Checked up front: initdb's own "Permission denied" does not say what to do.
 */
function checkTraversable(dir: string): void {
  if (process.getuid?.() !== 0) return;
  for (let d = path.dirname(dir); d !== path.dirname(d); d = path.dirname(d)) {
    if ((fs.statSync(d).mode & 0o001) === 0) {
      throw new Error(
        `the postgres OS user cannot enter ${d} (mode ` +
          `${(fs.statSync(d).mode & 0o777).toString(8)}): chmod o+x it, or set TCPAUDIT_STACK_DIR ` +
          'to a folder it can reach',
      );
    }
  }
}

async function initCluster(log: Logger): Promise<void> {
  const dir = paths.dataDir;
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  // Our own folders: open them to traversal whatever the umask was (the cluster stays 0700).
  for (const d of [path.dirname(path.dirname(dir)), path.dirname(dir)]) fs.chmodSync(d, 0o755);
  checkTraversable(dir);
  fs.mkdirSync(dir, { mode: 0o700 });
  if (process.getuid?.() === 0) {
    const owner = spawnSync('chown', ['postgres:postgres', dir], { encoding: 'utf8' });
    if (owner.status !== 0) throw new Error(`chown of ${dir} failed: ${owner.stderr}`);
  }
  log.info('postgres initdb', { dataDir: dir });
  // trust is only for initdb's own bootstrap; pg_hba.conf is replaced right after.
  run(path.join(PG_BIN, 'initdb'), [
    '-D',
    dir,
    '-U',
    'postgres',
    '-E',
    'UTF8',
    '--no-locale',
    '-A',
    'trust',
  ]);
  fs.writeFileSync(path.join(dir, 'pg_hba.conf'), HBA);
  fs.appendFileSync(path.join(dir, 'postgresql.conf'), CONF);
  applyBootstrap(log, []);
}

/**
 * Cluster-level set-up that needs a superuser, which the processor's own login is not. Each
 * step runs once, in single-user mode (no port is open), and is recorded in the BOOTSTRAPPED
 * file, so a cluster made by an older checkout gets the steps it lacks on its next start.
 * Names and passwords are fixed identifiers, so plain interpolation is safe here.
 */
const BOOTSTRAP_STEPS: { name: string; sql: string[] }[] = [
  {
    name: 'owner',
    sql: [
      `CREATE ROLE ${PG_USER} LOGIN CREATEDB PASSWORD '${PG_PASSWORD}';`,
      `CREATE DATABASE ${PG_DATABASE} OWNER ${PG_USER};`,
    ],
  },
  {
    // The group role `tcpaudit query` runs under, and one login in it for local auditors.
    name: 'reader',
    sql: [
      'CREATE ROLE tcpaudit_reader NOLOGIN;',
      `CREATE ROLE ${PG_READER_USER} LOGIN PASSWORD '${PG_READER_PASSWORD}' IN ROLE ` +
        'tcpaudit_reader;',
    ],
  },
];

function applyBootstrap(log: Logger, done: string[]): void {
  const marker = path.join(paths.dataDir, BOOTSTRAPPED);
  for (const step of BOOTSTRAP_STEPS) {
    if (done.includes(step.name)) continue;
    run(
      path.join(PG_BIN, 'postgres'),
      ['--single', '-D', paths.dataDir, '-c', 'exit_on_error=on', 'postgres'],
      `${step.sql.join('\n')}\n`,
    );
    done.push(step.name);
    fs.writeFileSync(marker, `${done.join('\n')}\n`);
    log.info('postgres bootstrap step applied', { step: step.name });
  }
}

/** Steps already applied; a marker from before steps were named holds only a date. */
function appliedSteps(): string[] {
  const text = fs.readFileSync(path.join(paths.dataDir, BOOTSTRAPPED), 'utf8');
  const names = text.split('\n').filter((line) => /^[a-z]+$/.test(line));
  return names.length > 0 ? names : ['owner'];
}

export const postgres: Service = {
  name: 'postgres',
  port: PORTS.postgres,
  ports: [PORTS.postgres],
  paths,
  marker: paths.dataDir,
  stopSignal: 'SIGINT',
  startTimeoutMs: 30_000,
  async prepare(log) {
    const server = path.join(PG_BIN, 'postgres');
    if (!fs.existsSync(server)) throw needSetup(`PostgreSQL 15 server (${server})`);
    if (!fs.existsSync(path.join(paths.dataDir, BOOTSTRAPPED))) await initCluster(log);
    else applyBootstrap(log, appliedSteps());
    // A crash leaves postmaster.pid behind; PostgreSQL checks it is stale by itself.
  },
  launch() {
    const cmd = asServerUser(path.join(PG_BIN, 'postgres'), ['-D', paths.dataDir]);
    return { ...cmd, cwd: path.dirname(paths.dataDir), logFile: paths.logFile };
  },
  probe: postgresHealthy,
};
