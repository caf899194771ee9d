/**
 * Kafka client settings shared by every tcpaudit client (producer, processor): brokers,
 * TLS and SASL. Each value comes from a flag, else the environment, else nothing (plaintext,
 * no authentication: the local stack). Bad combinations are refused here, before a client
 * connects, with a message that names the flag and the variable.
 *
 * Secrets (the SASL password, the TLS key) are held in non-enumerable properties, so a
 * settings object that reaches a log line or an error dump prints without them.
 */
import fs from 'node:fs';
import tls from 'node:tls';
import type { KafkaConfig, SASLOptions } from 'kafkajs';
import { brokerSettings } from './config';

type Env = Record<string, string | undefined>;

export const SASL_MECHANISMS = ['plain', 'scram-sha-256', 'scram-sha-512'] as const;
export type SaslMechanism = (typeof SASL_MECHANISMS)[number];

/** Flags as parseArgs returns them; every client command declares these (see kafkaFlagSpecs). */
export interface KafkaSecurityFlags {
  'kafka-tls'?: boolean;
  'kafka-tls-ca'?: string;
  'kafka-tls-cert'?: string;
  'kafka-tls-key'?: string;
  'kafka-tls-insecure'?: boolean;
  'kafka-sasl-mechanism'?: string;
  'kafka-sasl-username'?: string;
  'kafka-sasl-password-file'?: string;
}

/** parseArgs option specs for the flags above, so each command declares them the same way. */
export const kafkaFlagSpecs = {
  'kafka-tls': { type: 'boolean' },
  'kafka-tls-ca': { type: 'string' },
  'kafka-tls-cert': { type: 'string' },
  'kafka-tls-key': { type: 'string' },
  'kafka-tls-insecure': { type: 'boolean' },
  'kafka-sasl-mechanism': { type: 'string' },
  'kafka-sasl-username': { type: 'string' },
  'kafka-sasl-password-file': { type: 'string' },
} as const;

/** Help text lines for the flags above. */
export const KAFKA_SECURITY_HELP = `  --kafka-tls             connect to the brokers over TLS            [env KAFKA_TLS=1]
  --kafka-tls-ca FILE     CA bundle (PEM) to verify the brokers      [env KAFKA_TLS_CA]
  --kafka-tls-cert FILE   client certificate (PEM), with --kafka-tls-key  [env KAFKA_TLS_CERT]
  --kafka-tls-key FILE    client private key (PEM)                   [env KAFKA_TLS_KEY]
  --kafka-tls-insecure    do not verify the brokers' certificates (testing only)
  --kafka-sasl-mechanism M  plain, scram-sha-256 or scram-sha-512    [env KAFKA_SASL_MECHANISM]
  --kafka-sasl-username U   SASL user                                [env KAFKA_SASL_USERNAME]
  --kafka-sasl-password-file FILE  SASL password, first line of FILE [env KAFKA_SASL_PASSWORD]
`;

export interface KafkaTls {
  /** PEM text read from the files given; undefined means the system's CA store. */
  ca?: string;
  cert?: string;
  /** Non-enumerable. */
  readonly key?: string;
  rejectUnauthorized: boolean;
}

export interface KafkaSasl {
  mechanism: SaslMechanism;
  username: string;
  /** Non-enumerable. */
  readonly password: string;
}

export interface KafkaClientSettings {
  brokers: string[];
  clientId: string;
  tls: KafkaTls | null;
  sasl: KafkaSasl | null;
}

/** A setting that cannot work: refused before any connection is tried. */
export class KafkaConfigError extends Error {
  readonly code = 'TCPAUDIT_KAFKA_CONFIG';
  constructor(message: string) {
    super(message);
    this.name = 'KafkaConfigError';
  }
}

function truthy(text: string | undefined): boolean {
  return text !== undefined && /^(1|true|yes|on)$/i.test(text.trim());
}

function hide<T extends object>(target: T, name: string, value: string | undefined): T {
  if (value !== undefined) Object.defineProperty(target, name, { value, enumerable: false });
  return target;
}

function readPem(file: string, what: string, readFile: (f: string) => string): string {
  try {
    return readFile(file);
  } catch (err) {
    throw new KafkaConfigError(`cannot read ${what} "${file}": ${(err as Error).message}`);
  }
}

/**
 * Resolves brokers, TLS and SASL from flags, else the environment. `readFile` is for tests.
 * Refuses: an unknown mechanism, a mechanism without username or password, a username or
 * password without a mechanism, a certificate without its key (or the reverse), and SASL
 * PLAIN without TLS unless KAFKA_SASL_ALLOW_PLAINTEXT=1 says the network is trusted.
 */
export function kafkaClientSettings(
  flags: KafkaSecurityFlags & { brokers?: string },
  clientId: string,
  env: Env = process.env,
  readFile: (f: string) => string = (f) => fs.readFileSync(f, 'utf8'),
): KafkaClientSettings {
  const brokers = brokerSettings(flags, env);

  const caFile = flags['kafka-tls-ca'] ?? env.KAFKA_TLS_CA;
  const certFile = flags['kafka-tls-cert'] ?? env.KAFKA_TLS_CERT;
  const keyFile = flags['kafka-tls-key'] ?? env.KAFKA_TLS_KEY;
  const insecure = flags['kafka-tls-insecure'] ?? truthy(env.KAFKA_TLS_INSECURE);
  if (certFile !== undefined && keyFile === undefined) {
    throw new KafkaConfigError(
      'a TLS client certificate needs its key: give --kafka-tls-key (KAFKA_TLS_KEY)',
    );
  }
  if (keyFile !== undefined && certFile === undefined) {
    throw new KafkaConfigError(
      'a TLS client key needs its certificate: give --kafka-tls-cert (KAFKA_TLS_CERT)',
    );
  }
  // Any TLS file implies TLS: a CA given for a plaintext connection would be silently unused.
  const tlsOn =
    (flags['kafka-tls'] ?? truthy(env.KAFKA_TLS)) ||
    caFile !== undefined ||
    certFile !== undefined ||
    insecure;
  let tls: KafkaTls | null = null;
  if (tlsOn) {
    tls = { rejectUnauthorized: !insecure };
    if (caFile !== undefined) tls.ca = readPem(caFile, 'TLS CA file', readFile);
    if (certFile !== undefined) tls.cert = readPem(certFile, 'TLS certificate file', readFile);
    hide(
      tls,
      'key',
      keyFile === undefined ? undefined : readPem(keyFile, 'TLS key file', readFile),
    );
  }

  const mechanismText = flags['kafka-sasl-mechanism'] ?? env.KAFKA_SASL_MECHANISM;
  const username = flags['kafka-sasl-username'] ?? env.KAFKA_SASL_USERNAME;
  const passwordFile = flags['kafka-sasl-password-file'] ?? env.KAFKA_SASL_PASSWORD_FILE;
  let password = env.KAFKA_SASL_PASSWORD;
  if (passwordFile !== undefined) {
    password = readPem(passwordFile, 'SASL password file', readFile).split(/\r?\n/)[0];
  }
  let sasl: KafkaSasl | null = null;
  if (mechanismText === undefined || mechanismText === '') {
    if (username !== undefined || password !== undefined) {
      throw new KafkaConfigError(
        'a SASL username or password needs a mechanism: give ' +
          '--kafka-sasl-mechanism (KAFKA_SASL_MECHANISM) plain, scram-sha-256 or scram-sha-512',
      );
    }
  } else {
    const mechanism = mechanismText.toLowerCase() as SaslMechanism;
    if (!SASL_MECHANISMS.includes(mechanism)) {
      throw new KafkaConfigError(
        `unknown SASL mechanism "${mechanismText}": use plain, ` + 'scram-sha-256 or scram-sha-512',
      );
    }
    if (!username) {
      throw new KafkaConfigError(
        `SASL ${mechanism} needs a username: give --kafka-sasl-username ` + '(KAFKA_SASL_USERNAME)',
      );
    }
    if (!password) {
      throw new KafkaConfigError(
        `SASL ${mechanism} needs a password: set KAFKA_SASL_PASSWORD ` +
          'or give --kafka-sasl-password-file (a password on the command line would show in ps)',
      );
    }
    if (mechanism === 'plain' && !tls && !truthy(env.KAFKA_SASL_ALLOW_PLAINTEXT)) {
      throw new KafkaConfigError(
        'SASL PLAIN sends the password in clear: use --kafka-tls, or set ' +
          'KAFKA_SASL_ALLOW_PLAINTEXT=1 on a network you trust',
      );
    }
    sasl = hide({ mechanism, username } as KafkaSasl, 'password', password);
  }
  return { brokers, clientId, tls, sasl };
}

/** KafkaClientSettings as they cross to a worker thread, secrets as plain fields. */
export interface KafkaSettingsMessage {
  brokers: string[];
  clientId: string;
  tls: (Omit<KafkaTls, 'key'> & { key?: string }) | null;
  sasl: (Omit<KafkaSasl, 'password'> & { password: string }) | null;
}

/**
 * For postMessage/workerData: a structured clone copies enumerable properties only, so the
 * hidden key and password are spelled out here and hidden again by `settingsFromMessage`.
 */
export function settingsToMessage(s: KafkaClientSettings): KafkaSettingsMessage {
  return {
    brokers: [...s.brokers],
    clientId: s.clientId,
    tls: s.tls ? { ...s.tls, key: s.tls.key } : null,
    sasl: s.sasl ? { ...s.sasl, password: s.sasl.password } : null,
  };
}

export function settingsFromMessage(m: KafkaSettingsMessage): KafkaClientSettings {
  let tls: KafkaTls | null = null;
  if (m.tls) {
    const { key, ...rest } = m.tls;
    tls = hide(rest as KafkaTls, 'key', key);
  }
  let sasl: KafkaSasl | null = null;
  if (m.sasl) {
    const { password, ...rest } = m.sasl;
    sasl = hide(rest as KafkaSasl, 'password', password);
  }
  return { brokers: m.brokers, clientId: m.clientId, tls, sasl };
}

/** What can be logged about the settings: no secrets, only whether they are set. */
export function describeKafka(s: KafkaClientSettings): Record<string, unknown> {
  return {
    brokers: s.brokers,
    tls: s.tls
      ? {
          ca: s.tls.ca !== undefined,
          clientCert: s.tls.cert !== undefined,
          verify: s.tls.rejectUnauthorized,
        }
      : false,
    sasl: s.sasl ? { mechanism: s.sasl.mechanism, username: s.sasl.username } : false,
  };
}

/** The kafkajs client configuration for these settings (logging left to the caller). */
export function kafkajsConfig(s: KafkaClientSettings): KafkaConfig {
  const config: KafkaConfig = { clientId: s.clientId, brokers: s.brokers };
  if (s.tls) {
    // kafkajs copies `ssl` with Object.assign, which would drop a non-enumerable key: the
    // key goes into a secure context instead, where no printed object shows it.
    const secureContext = tls.createSecureContext({
      ca: s.tls.ca,
      cert: s.tls.cert,
      key: s.tls.key,
    });
    config.ssl = { rejectUnauthorized: s.tls.rejectUnauthorized, secureContext };
  }
  if (s.sasl) {
    config.sasl = hide(
      { mechanism: s.sasl.mechanism, username: s.sasl.username } as SASLOptions,
      'password',
      s.sasl.password,
    );
  }
  return config;
}
