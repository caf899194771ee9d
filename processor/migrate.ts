import fs from 'node:fs';
import path from 'node:path';
import type { Pool } from 'pg';
import type { Logger } from '../common/log';
import { repoRoot } from '../common/paths';

/** Any constant key: it serialises concurrent processors that start against one database. */
const MIGRATION_LOCK = 0x7463_7061;

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export function loadMigrations(
  dir = path.join(repoRoot(), 'processor', 'migrations'),
): Migration[] {
  return fs
    .readdirSync(dir)
    .filter((file) => /^\d+_[a-z0-9_]+\.sql$/.test(file))
    .map((file) => ({
      version: Number(file.split('_')[0]),
      name: file.replace(/\.sql$/, ''),
      sql: fs.readFileSync(path.join(dir, file), 'utf8'),
    }))
    .sort((a, b) => a.version - b.version);
}

/** Applies, each in its own transaction, the migrations the database has not seen yet. */
export async function migrate(pool: Pool, log: Logger, migrations = loadMigrations()) {
  const client = await pool.connect();
  try {
    await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK]);
    await client.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
      version integer PRIMARY KEY,
      name text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now())`);
    const done = await client.query<{ version: number }>('SELECT version FROM schema_migrations');
    const applied = new Set(done.rows.map((row) => row.version));
    for (const migration of migrations) {
      if (applied.has(migration.version)) continue;
      await client.query('BEGIN');
      try {
        await client.query(migration.sql);
        await client.query('INSERT INTO schema_migrations (version, name) VALUES ($1, $2)', [
          migration.version,
          migration.name,
        ]);
        await client.query('COMMIT');
      } catch (err) {
        await client.query('ROLLBACK');
        throw new Error(`migration ${migration.name} failed: ${(err as Error).message}`);
      }
      log.info('migration applied', { migration: migration.name });
    }
  } finally {
    await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK]).catch(() => undefined);
    client.release();
  }
}
