/**
 * Endpoint settings shared by the producer and the processor. Each value comes from a flag,
 * else from the environment, else from the defaults of the local stack (`tcpaudit stack up`),
 * resolved in one place so every command agrees.
 */

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

type Env = Record<string, string | undefined>;

export function parseBrokers(text: string): string[] {
  const brokers = text
    .split(',')
    .map((b) => b.trim())
    .filter((b) => b.length > 0);
  if (brokers.length === 0)
    throw new Error('no Kafka broker given: set KAFKA_BROKERS or --brokers');
  for (const broker of brokers) {
    if (!/^[^\s:]+:\d{1,5}$/.test(broker) && !/^\[[0-9a-fA-F:]+\]:\d{1,5}$/.test(broker)) {
      throw new Error(`bad Kafka broker "${broker}": expected host:port`);
    }
  }
  return brokers;
}

export function kafkaSettings(
  flags: { brokers?: string; topic?: string },
  clientId: string,
  env: Env = process.env,
): KafkaSettings {
  const topic = flags.topic ?? env.TCPAUDIT_TOPIC ?? DEFAULTS.topic;
  if (!/^[A-Za-z0-9._-]{1,249}$/.test(topic)) {
    throw new Error(`bad topic name "${topic}": use letters, digits, '.', '_' and '-'`);
  }
  return {
    brokers: parseBrokers(flags.brokers ?? env.KAFKA_BROKERS ?? DEFAULTS.brokers),
    clientId,
    topic,
  };
}

export function registrySettings(flags: { registry?: string }, env: Env = process.env) {
  const url = flags.registry ?? env.SCHEMA_REGISTRY_URL ?? DEFAULTS.registryUrl;
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new Error(`bad schema registry URL "${url}"`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new Error(`bad schema registry URL "${url}": expected http or https`);
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
