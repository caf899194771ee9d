/**
 * Fixed endpoints of the local stack. Ports are deliberately not the defaults (5432, 9092,
 * 8081) so the stack can run beside a system PostgreSQL or another developer's Kafka.
 * Everything binds to 127.0.0.1 only.
 */
export const HOST = '127.0.0.1';

export const PORTS = {
  postgres: 15432,
  kafka: 19092,
  kafkaController: 19093,
  registry: 18081,
} as const;

/** Local-only credentials: the role can log in from 127.0.0.1 and nowhere else. */
export const PG_USER = 'tcpaudit';
export const PG_PASSWORD = 'tcpaudit';
export const PG_DATABASE = 'tcpaudit';
/** A login in the read-only group role tcpaudit_reader, for `tcpaudit query`. */
export const PG_READER_USER = 'tcpaudit_auditor';
export const PG_READER_PASSWORD = 'tcpaudit_auditor';

/** Apicurio serves the Confluent-compatible API (what our clients speak) under this path. */
export const REGISTRY_CCOMPAT_PATH = '/apis/ccompat/v7';

export interface StackEnv {
  PGHOST: string;
  PGPORT: string;
  PGUSER: string;
  PGPASSWORD: string;
  PGDATABASE: string;
  KAFKA_BROKERS: string;
  SCHEMA_REGISTRY_URL: string;
  TCPAUDIT_READER_USER: string;
  TCPAUDIT_READER_PASSWORD: string;
}

/** The variables the producer, processor and tests read (see common/config.ts). */
export function stackEnv(): StackEnv {
  return {
    PGHOST: HOST,
    PGPORT: String(PORTS.postgres),
    PGUSER: PG_USER,
    PGPASSWORD: PG_PASSWORD,
    PGDATABASE: PG_DATABASE,
    KAFKA_BROKERS: `${HOST}:${PORTS.kafka}`,
    SCHEMA_REGISTRY_URL: `http://${HOST}:${PORTS.registry}${REGISTRY_CCOMPAT_PATH}`,
    TCPAUDIT_READER_USER: PG_READER_USER,
    TCPAUDIT_READER_PASSWORD: PG_READER_PASSWORD,
  };
}
