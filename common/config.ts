/**
 * Endpoint settings shared by the producer and the processor. Each value comes from a flag,
 * else from the environment, else from the defaults of the local stack (`tcpaudit stack up`),
 * resolved in one place so every command agrees.
 */

import { isIP } from 'node:net';

export interface KafkaSettings {
  brokers: string[];
  clientId: string;
  topic: string;
}

export interface RegistrySettings {
  url: string;
}

export const DEFAULTS = {
  brokers: '127.0.0.1:19092',
  registryUrl: 'http://127.0.0.1:18081/apis/ccompat/v7',
  topic: 'tcpaudit.events',
} as const;

/** Events topic T: the producer's gap records go to T.gaps (subject T.gaps-value), by host. */
export const gapsTopic = (topic: string) => `${topic}.gaps`;
/** Events topic T: the processor copies the messages it cannot store to T.dlq. */
export const deadLetterTopic = (topic: string) => `${topic}.dlq`;

type Env = Record<string, string | undefined>;

/**
 * A setting that cannot work, found before anything connects: the message names the flag or
 * the environment variable it came from. The CLI prints it on one line and exits 2.
 */
export class ConfigError extends Error {
  readonly code = 'TCPAUDIT_CONFIG';
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** A value from its flag, else its variable, else the default; with where it came from. */
function pickSetting(
  flag: string | undefined,
  flagName: string,
  env: Env,
  variable: string,
  fallback: string,
): { value: string; source: string } {
  if (flag !== undefined) return { value: flag, source: flagName };
  const fromEnv = env[variable];
  if (fromEnv !== undefined) return { value: fromEnv, source: variable };
  return { value: fallback, source: `${flagName} (default)` };
}

const LABEL = /^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$/;

/**
 * A host name by RFC 1123 (underscores allowed, as resolvers do), or an IP address. Four
 * numeric labels must make an IPv4 address: "999.1.1.1" is a typo, not a name to look up.
 */
export function validHost(host: string): boolean {
  if (isIP(host) !== 0) return true;
  const name = host.endsWith('.') ? host.slice(0, -1) : host;
  if (name.length === 0 || name.length > 253) return false;
  const labels = name.split('.');
  if (labels.every((l) => /^\d+$/.test(l))) return false; // numeric but not a valid IPv4
  return labels.every((l) => LABEL.test(l));
}

/** host:port or [ipv6]:port, port 1..65535; `source` names the flag or variable in errors. */
export function parseBrokers(text: string, source = '--brokers (KAFKA_BROKERS)'): string[] {
  const brokers = text
    .split(',')
    .map((b) => b.trim())
    .filter((b) => b.length > 0);
  if (brokers.length === 0)
    throw new ConfigError(`${source}: no Kafka broker given, expected host:port[,host:port...]`);
  for (const broker of brokers) {
    const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^\s:[\]]+)):(\d{1,5})$/.exec(broker);
    const port = m ? Number(m[3]) : 0;
    const hostOk = m !== null && (m[1] !== undefined ? isIP(m[1]) === 6 : validHost(m[2]));
    if (!m || !hostOk || port < 1 || port > 65535) {
      throw new ConfigError(
        `${source}: bad Kafka broker "${broker}", expected host:port with a port from 1 to 65535`,
      );
    }
  }
  return brokers;
}

/** The brokers from --brokers, else KAFKA_BROKERS, else the local stack's. */
export function brokerSettings(flags: { brokers?: string }, env: Env = process.env): string[] {
  const { value, source } = pickSetting(
    flags.brokers,
    '--brokers',
    env,
    'KAFKA_BROKERS',
    DEFAULTS.brokers,
  );
  return parseBrokers(value, source);
}

export function kafkaSettings(
  flags: { brokers?: string; topic?: string },
  clientId: string,
  env: Env = process.env,
): KafkaSettings {
  const { value: topic, source } = pickSetting(
    flags.topic,
    '--topic',
    env,
    'TCPAUDIT_TOPIC',
    DEFAULTS.topic,
  );
  // Kafka's own rule (Topic.validate): 1 to 249 of these characters, and not "." or "..".
  if (!/^[A-Za-z0-9._-]{1,249}$/.test(topic) || topic === '.' || topic === '..') {
    throw new ConfigError(
      `${source}: bad topic name "${topic}": use 1 to 249 letters, digits, '.', '_' and '-'`,
    );
  }
  return { brokers: brokerSettings(flags, env), clientId, topic };
}

export function registrySettings(flags: { registry?: string }, env: Env = process.env) {
  const { value: url, source } = pickSetting(
    flags.registry,
    '--registry',
    env,
    'SCHEMA_REGISTRY_URL',
    DEFAULTS.registryUrl,
  );
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new ConfigError(`${source}: bad schema registry URL "${url}"`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new ConfigError(`${source}: bad schema registry URL "${url}": expected http or https`);
  }
  if (parsed.search || parsed.hash) {
    throw new ConfigError(
      `${source}: bad schema registry URL "${url}": no query or fragment, only a base path`,
    );
  }
  return { url: url.replace(/\/+$/, '') } satisfies RegistrySettings;
}

/** PostgreSQL: node-postgres reads the standard PG* variables itself; these fill the gaps. */
export function pgDefaults(env: Env = process.env) {
  return {
    host: env.PGHOST ?? '127.0.0.1',
    port: Number(env.PGPORT ?? 15432),
    user: env.PGUSER ?? 'tcpaudit',
    password: env.PGPASSWORD ?? 'tcpaudit',
    database: env.PGDATABASE ?? 'tcpaudit',
  };
}
