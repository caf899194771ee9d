import { execFileSync } from 'node:child_process';

/**
 * Where the tests find Kafka, the schema registry and PostgreSQL: endpoints from the environment
 * when given (all of KAFKA_BROKERS, SCHEMA_REGISTRY_URL and PGHOST), else containers when a
 * Docker engine answers, else the native local stack of `tcpaudit stack up`.
 */
export interface Endpoints {
  source: 'environment' | 'testcontainers' | 'native';
  env: Record<string, string>;
  stop(): Promise<void>;
}

function fromEnvironment(): Endpoints | null {
  const { KAFKA_BROKERS, SCHEMA_REGISTRY_URL, PGHOST } = process.env;
  if (!KAFKA_BROKERS || !SCHEMA_REGISTRY_URL || !PGHOST) return null;
  const env: Record<string, string> = { KAFKA_BROKERS, SCHEMA_REGISTRY_URL, PGHOST };
  for (const key of [
    'PGPORT',
    'PGUSER',
    'PGPASSWORD',
    'PGDATABASE',
    'TCPAUDIT_READER_USER',
    'TCPAUDIT_READER_PASSWORD',
  ]) {
    const value = process.env[key];
    if (value !== undefined) env[key] = value;
  }
  return { source: 'environment', env, stop: async () => undefined };
}

function dockerAnswers(): boolean {
  try {
    execFileSync('docker', ['info', '--format', '{{.ServerVersion}}'], {
      stdio: 'ignore',
      timeout: 5000,
    });
    return true;
  } catch {
    return false;
  }
}

async function native(): Promise<Endpoints> {
  const stack = await import('../stack');
  await stack.stackUp();
  const env: Record<string, string> = { ...stack.stackEnv() };
  return { source: 'native', env, stop: async () => undefined };
}

let shared: Promise<Endpoints> | null = null;

/** One set of endpoints per test process; the stack is left running for the next test file. */
export function endpoints(): Promise<Endpoints> {
  shared ??= (async () => {
    const given = fromEnvironment();
    if (given) return given;
    if (dockerAnswers()) {
      const { containerEndpoints } = await import('./containers');
      return containerEndpoints();
    }
    return native();
  })();
  return shared;
}

/** A name no earlier run used, so reruns never see each other's topics or groups. */
export function uniqueName(prefix: string): string {
  return `${prefix}.${Date.now().toString(36)}.${Math.random().toString(36).slice(2, 8)}`;
}
