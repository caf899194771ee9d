import net from 'node:net';
import { parseArgs } from 'node:util';
import { Client } from 'pg';
import { pgSettings, UsageError } from './options';

const HELP = `Usage: tcpaudit query [filters] [--json]

Answers the common audit questions from the connections table, newest first. Runs only on
the read-only role: the login (PGUSER) must be a member of tcpaudit_reader, which the session
switches to (SET ROLE); a login that could still write is refused.

Filters (all optional, combined with AND):
  --addr IP           local or remote address (an IPv4 address also matches its IPv4-mapped
                      IPv6 form ::ffff:a.b.c.d, and the reverse)
                                                    --port N       local or remote port
  --remote-addr IP    remote address                --remote-port N
  --comm NAME         process name                  --pid N
  --host NAME         capturing host                --outcome O    open, completed, refused, reset, aborted, expired
  --role R            outbound, inbound, listener, unknown
  --since TIME        opened at or after: ISO-8601, or a time ago such as 30m, 1h, 7d
                      ("7d ago" works too; units s, m, h, d)
  --until TIME        opened before
  --limit N           at most N rows (default 100)
  --json              one JSON array instead of a table

An administrator gives an auditor a login once:
  CREATE ROLE tcpaudit_reader NOLOGIN;            -- if the processor could not
  CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE tcpaudit_reader;
`;

export interface QueryFilters {
  addr?: string;
  port?: number;
  remoteAddr?: string;
  remotePort?: number;
  comm?: string;
  pid?: number;
  host?: string;
  outcome?: string;
  role?: string;
  since?: Date;
  until?: Date;
  limit: number;
}

const OUTCOMES = ['open', 'completed', 'refused', 'reset', 'aborted', 'expired'];
const ROLES = ['outbound', 'inbound', 'listener', 'unknown'];

/** Values travel as parameters only; the SQL text depends on which filters are set, never on their values. */
export function buildQuery(f: QueryFilters): { text: string; values: unknown[] } {
  const where: string[] = [];
  const values: unknown[] = [];
  const add = (sql: (p: string) => string, value: unknown) => {
    values.push(value);
    where.push(sql(`$${values.length}`));
  };
  if (f.addr !== undefined)
    add(
      (p) => `(local_addr = ANY(${p}::inet[]) OR remote_addr = ANY(${p}::inet[]))`,
      addressForms(f.addr),
    );
  if (f.port !== undefined) add((p) => `(local_port = ${p} OR remote_port = ${p})`, f.port);
  if (f.remoteAddr !== undefined)
    add((p) => `remote_addr = ANY(${p}::inet[])`, addressForms(f.remoteAddr));
  if (f.remotePort !== undefined) add((p) => `remote_port = ${p}`, f.remotePort);
  if (f.comm !== undefined) add((p) => `comm = ${p}`, f.comm);
  if (f.pid !== undefined) add((p) => `pid = ${p}`, f.pid);
  if (f.host !== undefined) add((p) => `host = ${p}`, f.host);
  if (f.outcome !== undefined) add((p) => `outcome = ${p}`, f.outcome);
  if (f.role !== undefined) add((p) => `role = ${p}`, f.role);
  if (f.since !== undefined) add((p) => `opened_at >= ${p}`, f.since.toISOString());
  if (f.until !== undefined) add((p) => `opened_at < ${p}`, f.until.toISOString());
  values.push(f.limit);
  const text = `SELECT opened_at, host, role, outcome, comm, pid, uid, host(local_addr) AS local_addr,
      local_port, host(remote_addr) AS remote_addr, remote_port, closed_by, close_kind, connect_ms,
      duration_ms, bytes_sent, bytes_received, has_gap, conn_id
    FROM connections ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
    ORDER BY opened_at DESC LIMIT $${values.length}`;
  return { text, values };
}

/**
 * The forms one address is stored in: a dual-stack socket (a Java server's, say) reports an
 * IPv4 peer as ::ffff:a.b.c.d, so an IPv4 address also matches that form, and the reverse.
 */
export function addressForms(ip: string): string[] {
  if (net.isIP(ip) === 4) return [ip, `::ffff:${ip}`];
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(ip);
  return mapped && net.isIP(mapped[1]) === 4 ? [ip, mapped[1]] : [ip];
}

function parseAddr(text: string | undefined, flag: string): string | undefined {
  if (text === undefined) return undefined;
  if (net.isIP(text) === 0 || text.includes('%'))
    throw new UsageError(`bad ${flag} "${text}": expected an IPv4 or IPv6 address`);
  return text;
}

/** Years PostgreSQL and ISO-8601 both write plainly; beyond them a time is a typo. */
const MIN_MS = new Date('0001-01-01T00:00:00Z').getTime();
const MAX_MS = Date.UTC(9999, 11, 31, 23, 59, 59);

export function parseTime(text: string, flag = '--since', now = Date.now()): Date {
  const rel = /^(\d+)\s*([smhd])(?:\s+ago)?$/.exec(text.trim());
  const d = rel
    ? new Date(now - Number(rel[1]) * { s: 1e3, m: 6e4, h: 3.6e6, d: 8.64e7 }[rel[2] as 's'])
    : new Date(text);
  const ms = d.getTime();
  if (Number.isNaN(ms) || ms < MIN_MS || ms > MAX_MS)
    throw new UsageError(
      `bad ${flag} "${text}": ISO-8601, or a time ago such as 30m, 1h, 7d (years 1 to 9999)`,
    );
  return d;
}

function int(text: string | undefined, name: string, max = 2 ** 31 - 1): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0 || n > max) throw new UsageError(`bad ${name} "${text}"`);
  return n;
}

export function parseFilters(argv: string[]): {
  filters: QueryFilters;
  json: boolean;
  help: boolean;
} {
  const { values: v } = parseArgs({
    args: argv,
    options: {
      addr: { type: 'string' },
      port: { type: 'string' },
      'remote-addr': { type: 'string' },
      'remote-port': { type: 'string' },
      comm: { type: 'string' },
      pid: { type: 'string' },
      host: { type: 'string' },
      outcome: { type: 'string' },
      role: { type: 'string' },
      since: { type: 'string' },
      until: { type: 'string' },
      limit: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (v.outcome !== undefined && !OUTCOMES.includes(v.outcome))
    throw new UsageError(`bad --outcome "${v.outcome}"`);
  if (v.role !== undefined && !ROLES.includes(v.role))
    throw new UsageError(`bad --role "${v.role}"`);
  const filters: QueryFilters = {
    addr: parseAddr(v.addr, '--addr'),
    port: int(v.port, '--port', 65535),
    remoteAddr: parseAddr(v['remote-addr'], '--remote-addr'),
    remotePort: int(v['remote-port'], '--remote-port', 65535),
    comm: v.comm,
    pid: int(v.pid, '--pid'),
    host: v.host,
    outcome: v.outcome,
    role: v.role,
    since: v.since === undefined ? undefined : parseTime(v.since, '--since'),
    until: v.until === undefined ? undefined : parseTime(v.until, '--until'),
    limit: int(v.limit, '--limit', 100_000) ?? 100,
  };
  return { filters, json: v.json ?? false, help: v.help ?? false };
}

export class WritableSessionError extends Error {
  readonly code = 'TCPAUDIT_QUERY_WRITABLE';
  constructor(message: string) {
    super(message);
    this.name = 'WritableSessionError';
  }
}

/**
 * Switches the session to tcpaudit_reader and makes sure it cannot write: SET ROLE when the
 * login is a member, then a check that no audit table accepts INSERT, UPDATE or DELETE.
 */
export async function readOnlySession(db: Client): Promise<void> {
  const member = await db.query(
    "SELECT pg_has_role(current_user, 'tcpaudit_reader', 'MEMBER') AS m FROM pg_roles WHERE rolname = 'tcpaudit_reader'",
  );
  if (member.rows[0]?.m) await db.query('SET ROLE tcpaudit_reader');
  await db.query('SET default_transaction_read_only = on');
  const { rows } = await db.query<{ t: string }>(
    `SELECT t FROM unnest(ARRAY['connections','tcp_events','capture_gaps','dead_letters','consumer_offsets']) AS t
      WHERE to_regclass(t) IS NOT NULL AND (has_table_privilege(current_user, t, 'INSERT')
         OR has_table_privilege(current_user, t, 'UPDATE') OR has_table_privilege(current_user, t, 'DELETE'))`,
  );
  if (rows.length > 0) {
    const who = (await db.query('SELECT current_user AS u')).rows[0].u;
    throw new WritableSessionError(
      `refusing to run: role ${who} can write ${rows.map((r) => r.t).join(', ')}; ` +
        'connect as a login that is a member of tcpaudit_reader (see --help)',
    );
  }
}

function table(rows: Record<string, unknown>[]): string {
  if (rows.length === 0) return '(no rows)\n';
  const cols = Object.keys(rows[0]);
  const cell = (v: unknown) => (v === null ? '' : v instanceof Date ? v.toISOString() : String(v));
  const widths = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]) =>
    vals
      .map((s, i) => s.padEnd(widths[i]))
      .join(' | ')
      .trimEnd();
  return (
    [
      line(cols),
      widths.map((w) => '-'.repeat(w)).join('-+-'),
      ...rows.map((r) => line(cols.map((c) => cell(r[c])))),
    ].join('\n') + '\n'
  );
}

export async function runQuery(argv: string[]): Promise<number> {
  const { filters, json, help } = parseFilters(argv);
  if (help) {
    process.stdout.write(HELP);
    return 0;
  }
  const db = new Client(pgSettings());
  await db.connect();
  try {
    await readOnlySession(db);
    const { text, values } = buildQuery(filters);
    const { rows } = await db.query(text, values);
    process.stdout.write(json ? `${JSON.stringify(rows, null, 1)}\n` : table(rows));
    return 0;
  } catch (err) {
    if (err instanceof WritableSessionError) {
      process.stderr.write(`tcpaudit query: ${err.message}\n`);
      return 3;
    }
    throw err;
  } finally {
    await db.end();
  }
}
