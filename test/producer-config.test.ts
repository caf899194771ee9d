import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { inspect } from 'node:util';
import { describe, test } from 'node:test';
import {
  describeKafka,
  kafkaClientSettings,
  kafkajsConfig,
  KafkaConfigError,
  settingsFromMessage,
  settingsToMessage,
} from '../common/kafka-config';
import { missingRuntimeSettings } from '../producer/runtime-settings';
import { endpoints, uniqueName } from './harness';
import { runCli } from './processes';

const files: Record<string, string> = {
  '/etc/kafka/ca.pem': 'CA PEM',
  '/etc/kafka/client.pem': 'CERT PEM',
  '/etc/kafka/client.key': 'KEY PEM SECRET',
  '/etc/kafka/password': 'hunter2-from-file\nignored second line',
};
const read = (f: string) => {
  if (!(f in files)) throw new Error('ENOENT: no such file');
  return files[f];
};
const settings = (flags: Record<string, unknown>, env: Record<string, string> = {}) =>
  kafkaClientSettings(flags, 'test-client', env, read);

describe('Kafka client settings', () => {
  test('plaintext without authentication by default, brokers from the environment', () => {
    const s = settings({}, { KAFKA_BROKERS: 'k1:9092,k2:9092' });
    assert.deepEqual(s, {
      brokers: ['k1:9092', 'k2:9092'],
      clientId: 'test-client',
      tls: null,
      sasl: null,
    });
    assert.deepEqual(kafkajsConfig(s), {
      clientId: 'test-client',
      brokers: ['k1:9092', 'k2:9092'],
    });
  });

  test('TLS with CA and client certificate from flags; the key is not enumerable', () => {
    const s = settings({
      'kafka-tls': true,
      'kafka-tls-ca': '/etc/kafka/ca.pem',
      'kafka-tls-cert': '/etc/kafka/client.pem',
      'kafka-tls-key': '/etc/kafka/client.key',
    });
    assert.equal(s.tls?.ca, 'CA PEM');
    assert.equal(s.tls?.cert, 'CERT PEM');
    assert.equal(s.tls?.key, 'KEY PEM SECRET');
    assert.equal(s.tls?.rejectUnauthorized, true);
    assert.ok(!JSON.stringify(s).includes('SECRET'));
    assert.ok(!inspect(s, { depth: 5 }).includes('SECRET'));
  });

  test('settings cross to the Kafka thread with their secrets, hidden again on arrival', () => {
    const s = settings(
      {
        'kafka-tls-cert': '/etc/kafka/client.pem',
        'kafka-tls-key': '/etc/kafka/client.key',
        'kafka-sasl-mechanism': 'scram-sha-256',
        'kafka-sasl-username': 'audit',
      },
      { KAFKA_SASL_PASSWORD: 'hunter2' },
    );
    // What postMessage/workerData does: the hidden fields would not survive it on their own.
    assert.equal(structuredClone(s).tls?.key, undefined);
    const back = settingsFromMessage(structuredClone(settingsToMessage(s)));
    assert.equal(back.tls?.key, 'KEY PEM SECRET');
    assert.equal(back.sasl?.password, 'hunter2');
    assert.deepEqual(back, s);
    assert.ok(!inspect(back, { depth: 5 }).includes('SECRET'));
    assert.ok(!JSON.stringify(back).includes('hunter2'));
  });

  test('a TLS file in the environment turns TLS on', () => {
    const s = settings({}, { KAFKA_TLS_CA: '/etc/kafka/ca.pem' });
    assert.equal(s.tls?.ca, 'CA PEM');
  });

  for (const mechanism of ['PLAIN', 'scram-sha-256', 'SCRAM-SHA-512']) {
    test(`SASL ${mechanism} from the environment; the password is never printed`, () => {
      const s = settings(
        {},
        {
          KAFKA_TLS: '1',
          KAFKA_SASL_MECHANISM: mechanism,
          KAFKA_SASL_USERNAME: 'audit',
          KAFKA_SASL_PASSWORD: 'hunter2',
        },
      );
      assert.equal(s.sasl?.mechanism, mechanism.toLowerCase());
      assert.equal(s.sasl?.username, 'audit');
      assert.equal(s.sasl?.password, 'hunter2');
      const config = kafkajsConfig(s);
      assert.equal((config.sasl as { password: string }).password, 'hunter2', 'kafkajs reads it');
      for (const shown of [
        JSON.stringify(s),
        inspect(s, { depth: 5 }),
        JSON.stringify(describeKafka(s)),
        inspect(config, { depth: 5 }),
        JSON.stringify({ ...s.sasl }),
      ]) {
        assert.ok(!shown.includes('hunter2'), shown);
      }
    });
  }

  test('flags win over the environment; the password comes from a file', () => {
    const s = settings(
      {
        'kafka-sasl-mechanism': 'scram-sha-512',
        'kafka-sasl-username': 'flag-user',
        'kafka-sasl-password-file': '/etc/kafka/password',
      },
      {
        KAFKA_SASL_MECHANISM: 'plain',
        KAFKA_SASL_USERNAME: 'env-user',
        KAFKA_SASL_PASSWORD: 'env-pass',
      },
    );
    assert.deepEqual({ ...s.sasl }, { mechanism: 'scram-sha-512', username: 'flag-user' });
    assert.equal(s.sasl?.password, 'hunter2-from-file');
  });

  const refusals: Array<[string, Record<string, unknown>, Record<string, string>, RegExp]> = [
    [
      'a mechanism without a username',
      {},
      { KAFKA_SASL_MECHANISM: 'scram-sha-256', KAFKA_SASL_PASSWORD: 'x' },
      /needs a username/,
    ],
    [
      'a mechanism without a password',
      { 'kafka-sasl-mechanism': 'scram-sha-256', 'kafka-sasl-username': 'u' },
      {},
      /needs a password/,
    ],
    [
      'an unknown mechanism',
      {},
      { KAFKA_SASL_MECHANISM: 'GSSAPI', KAFKA_SASL_USERNAME: 'u', KAFKA_SASL_PASSWORD: 'x' },
      /unknown SASL mechanism "GSSAPI"/,
    ],
    ['a username without a mechanism', {}, { KAFKA_SASL_USERNAME: 'u' }, /needs a mechanism/],
    [
      'a certificate without its key',
      { 'kafka-tls-cert': '/etc/kafka/client.pem' },
      {},
      /needs its key/,
    ],
    [
      'a key without its certificate',
      {},
      { KAFKA_TLS_KEY: '/etc/kafka/client.key' },
      /needs its certificate/,
    ],
    [
      'SASL PLAIN without TLS',
      {},
      { KAFKA_SASL_MECHANISM: 'plain', KAFKA_SASL_USERNAME: 'u', KAFKA_SASL_PASSWORD: 'x' },
      /sends the password in clear/,
    ],
    [
      'a CA file that cannot be read',
      { 'kafka-tls-ca': '/nope.pem' },
      {},
      /cannot read TLS CA file "\/nope.pem"/,
    ],
  ];
  for (const [what, flags, env, message] of refusals) {
    test(`refuses ${what}`, () => {
      assert.throws(
        () => settings(flags, env),
        (err: Error) => err instanceof KafkaConfigError && message.test(err.message),
      );
    });
  }

  test('PLAIN without TLS is allowed when the operator says the network is trusted', () => {
    const s = settings(
      {},
      {
        KAFKA_SASL_MECHANISM: 'plain',
        KAFKA_SASL_USERNAME: 'u',
        KAFKA_SASL_PASSWORD: 'x',
        KAFKA_SASL_ALLOW_PLAINTEXT: '1',
      },
    );
    assert.equal(s.sasl?.mechanism, 'plain');
  });
});

describe('tcpaudit produce with security settings', () => {
  test('a bad combination is a usage error (exit 2) before anything starts', async () => {
    const p = runCli(['produce', '--kafka-sasl-mechanism', 'scram-sha-256'], {
      KAFKA_SASL_PASSWORD: 'hunter2',
    });
    assert.equal(await new Promise((r) => p.child.once('exit', r)), 2);
    const text = p.logs.map((l) => String(l.msg)).join('\n');
    assert.match(text, /needs a username/);
  });

  test(
    'TLS files OpenSSL refuses are a usage error (exit 2), not a Kafka that never answers',
    { timeout: 30_000 },
    async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcpaudit-tls-'));
      const cert = path.join(dir, 'client.pem');
      const key = path.join(dir, 'client.key');
      fs.writeFileSync(
        cert,
        '-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n',
      );
      fs.writeFileSync(key, '-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n');
      let p: ReturnType<typeof runCli> | undefined;
      try {
        p = runCli(['produce', '--kafka-tls-cert', cert, '--kafka-tls-key', key], {
          KAFKA_BROKERS: '127.0.0.1:29492',
        });
        // 'close': after the child's stderr is read to its end.
        const code = await new Promise((r) => p!.child.once('close', r));
        const text = p.logs.map((l) => String(l.msg)).join('\n');
        assert.equal(code, 2, text);
        assert.match(text, /PEM/);
      } finally {
        p?.child.kill('SIGKILL');
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  const skip = process.getuid?.() === 0 ? false : 'loading BPF needs root';
  test('the SASL password appears in no log line', { skip, timeout: 60_000 }, async () => {
    const stack = await endpoints();
    const p = runCli(['produce', '--metrics-port', 'off', '--log-level', 'debug'], {
      SCHEMA_REGISTRY_URL: stack.env.SCHEMA_REGISTRY_URL,
      KAFKA_BROKERS: '127.0.0.1:29492',
      TCPAUDIT_TOPIC: uniqueName('tcpaudit.sasl'),
      KAFKA_SASL_MECHANISM: 'scram-sha-256',
      KAFKA_SASL_USERNAME: 'audit',
      KAFKA_SASL_PASSWORD: 'hunter2-never-logged',
    });
    const producing = await p.waitForLog('producing');
    assert.deepEqual((producing.kafka as Record<string, unknown>).sasl, {
      mechanism: 'scram-sha-256',
      username: 'audit',
    });
    await p.waitForLog('kafka unavailable, holding events');
    await p.stop();
    assert.ok(p.logs.length > 3);
    assert.ok(!JSON.stringify(p.logs).includes('hunter2'));
    // The producer names its partitioner, so kafkajs' v2 "switched default partitioner"
    // warning never reaches the logs.
    assert.ok(!JSON.stringify(p.logs).includes('switched default partitioner'));
  });
});

describe('runtime settings', () => {
  test('names the memory settings a process was started without', () => {
    const all = { MALLOC_ARENA_MAX: '2', MALLOC_MMAP_THRESHOLD_: '131072' };
    assert.deepEqual(missingRuntimeSettings(['--max-semi-space-size=4'], all), []);
    // NODE_OPTIONS counts as the command line.
    const viaOptions = { ...all, NODE_OPTIONS: '--max-semi-space-size=4' };
    assert.deepEqual(missingRuntimeSettings([], viaOptions), []);
    assert.deepEqual(missingRuntimeSettings([], {}), [
      '--max-semi-space-size=4',
      'MALLOC_ARENA_MAX=2',
      'MALLOC_MMAP_THRESHOLD_=131072',
    ]);
    // Another value is not the setting measured.
    assert.deepEqual(
      missingRuntimeSettings(['--max-semi-space-size=16'], { ...all, MALLOC_ARENA_MAX: '8' }),
      ['--max-semi-space-size=4', 'MALLOC_ARENA_MAX=2'],
    );
  });
});
