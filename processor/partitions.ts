import type { Pool } from 'pg';
import type { Logger } from '../common/log';

/** Serialises partition maintenance between processors sharing a database. */
const MAINTENANCE_LOCK = 0x7463_7062;

/** Partitioned tables and their partition key. Partitions are daily, named <table>_pYYYYMMDD. */
export const PARTITIONED = [
  { table: 'tcp_events', key: 'event_time' },
  { table: 'connections', key: 'opened_at' },
] as const;

const DAY_MS = 86_400_000;

function dayStart(ms: number): number {
  return Math.floor(ms / DAY_MS) * DAY_MS;
}

function dayName(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10).replace(/-/g, '');
}

function dayFromName(name: string): number | null {
  const m = /_p(\d{4})(\d{2})(\d{2})$/.exec(name);
  return m ? Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3])) : null;
}

async function partitionsOf(pool: Pool, table: string): Promise<string[]> {
  const { rows } = await pool.query<{ name: string }>(
    `SELECT c.relname AS name FROM pg_inherits i
       JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
      WHERE p.relname = $1`,
    [table],
  );
  return rows.map((r) => r.name);
}

/**
 * Creates the daily partitions from `daysBack` days ago to `daysAhead` days ahead (UTC). Rows
 * the DEFAULT partition already holds for a new day are moved into it in the same transaction,
 * so creation never fails on them. Identifiers come from fixed table names and dates only.
 */
export async function ensurePartitions(
  pool: Pool,
  log: Logger,
  daysAhead = 3,
  daysBack = 1,
  nowMs = Date.now(),
) {
  const db = await pool.connect();
  try {
    await db.query('SELECT pg_advisory_lock($1)', [MAINTENANCE_LOCK]);
    for (const { table, key } of PARTITIONED) {
      const existing = new Set(await partitionsOf(pool, table));
      for (let d = -daysBack; d <= daysAhead; d++) {
        const from = dayStart(nowMs) + d * DAY_MS;
        const name = `${table}_p${dayName(from)}`;
        if (existing.has(name)) continue;
        const [a, b] = [new Date(from).toISOString(), new Date(from + DAY_MS).toISOString()];
        await db.query('BEGIN');
        try {
          await db.query(
            `CREATE TABLE ${name} (LIKE ${table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)`,
          );
          await db.query(
            `WITH moved AS (DELETE FROM ${table}_default WHERE ${key} >= $1 AND ${key} < $2 RETURNING *)
             INSERT INTO ${name} SELECT * FROM moved`,
            [a, b],
          );
          await db.query(
            `ALTER TABLE ${table} ATTACH PARTITION ${name} FOR VALUES FROM ('${a}') TO ('${b}')`,
          );
          await db.query('COMMIT');
          log.info('partition created', { partition: name });
        } catch (err) {
          await db.query('ROLLBACK');
          throw err;
        }
      }
    }
  } finally {
    await db.query('SELECT pg_advisory_unlock($1)', [MAINTENANCE_LOCK]).catch(() => undefined);
    db.release();
  }
}

/**
 * Drops the partitions wholly older than `retentionDays` and deletes such rows from the DEFAULT
 * partitions. Connections still open in a dropped connections partition are kept: they move to
 * the DEFAULT partition (their day is no longer covered), so a long-lived connection outlives
 * the retention of the day it opened. 0 keeps everything.
 */
export async function dropExpiredPartitions(
  pool: Pool,
  log: Logger,
  retentionDays: number,
  nowMs = Date.now(),
) {
  if (!(retentionDays > 0)) return [];
  const cutoff = dayStart(nowMs) - retentionDays * DAY_MS;
  const dropped: string[] = [];
  const db = await pool.connect();
  try {
    await db.query('SELECT pg_advisory_lock($1)', [MAINTENANCE_LOCK]);
    for (const { table, key } of PARTITIONED) {
      for (const name of await partitionsOf(pool, table)) {
        const day = dayFromName(name);
        if (day === null || day + DAY_MS > cutoff) continue;
        await db.query('BEGIN');
        try {
          await db.query(`ALTER TABLE ${table} DETACH PARTITION ${name}`);
          if (table === 'connections') {
            await db.query(`INSERT INTO connections SELECT * FROM ${name} WHERE outcome = 'open'`);
          }
          await db.query(`DROP TABLE ${name}`);
          await db.query('COMMIT');
        } catch (err) {
          await db.query('ROLLBACK');
          throw err;
        }
        dropped.push(name);
        log.info('partition dropped', { partition: name, retentionDays });
      }
      const extra = table === 'connections' ? " AND outcome <> 'open'" : '';
      await db.query(`DELETE FROM ${table}_default WHERE ${key} < $1${extra}`, [
        new Date(cutoff).toISOString(),
      ]);
    }
  } finally {
    await db.query('SELECT pg_advisory_unlock($1)', [MAINTENANCE_LOCK]).catch(() => undefined);
    db.release();
  }
  return dropped;
}

/**
 * Grants the auditors' role read access when it exists. Reading through the partitioned parents
 * needs SELECT on them only, so new partitions need no grant of their own.
 */
export async function grantReader(pool: Pool, log: Logger) {
  const { rows } = await pool.query("SELECT 1 FROM pg_roles WHERE rolname = 'tcpaudit_reader'");
  if (rows.length === 0) {
    log.warn(
      'role tcpaudit_reader missing: an administrator must run CREATE ROLE tcpaudit_reader NOLOGIN',
    );
    return false;
  }
  await pool.query('GRANT USAGE ON SCHEMA public TO tcpaudit_reader');
  await pool.query(`GRANT SELECT ON tcp_events, connections, capture_gaps, host_runs, dead_letters
    TO tcpaudit_reader`);
  return true;
}
