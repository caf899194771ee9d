import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { endpoints, uniqueName } from './harness';
import { runCli } from './processes';
import { createRegistry, frame, registryHealth } from '../common/registry';
import { BadMessageError, registryDecoder } from '../processor/decode';
import { freshDatabase, registerSchemas, type TestDatabase } from './processor-helpers';

let db: TestDatabase;

before(async () => {
  db = await freshDatabase((await endpoints()).env);
});

after(async () => {
  await db?.drop();
});

/** Runs `tcpaudit process` to its end; its exit code and stderr lines. */
async function processExit(args: string[], env: Record<string, string>, timeoutMs = 30_000) {
  const p = runCli(['process', '--metrics-port', '0', ...args], env);
  const timer = setTimeout(() => p.child.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number | null>((resolve) => p.child.once('exit', resolve));
  clearTimeout(timer);
  await new Promise((r) => setImmediate(r));
  return { code, logs: p.logs };
}

/** A settings env that could touch nothing shared even if a check let it through. */
async function safeEnv(): Promise<Record<string, string>> {
  return {
    ...(await endpoints()).env,
    PGDATABASE: db.name,
    TCPAUDIT_TOPIC: uniqueName('tcpaudit.cfg'),
    TCPAUDIT_GROUP: uniqueName('cfg'),
  };
}

test('process config: each usage mistake exits 2 with one line before connecting', async () => {
  const env = await safeEnv();
  const cases: { args?: string[]; env?: Record<string, string>; want: RegExp }[] = [
    { args: ['--topic', 'bad topic!'], want: /topic/ },
    { args: ['--brokers', 'nohostport'], want: /broker/ },
    { env: { KAFKA_BROKERS: 'a b:1' }, want: /broker/ },
    { args: ['--registry', 'ftp://127.0.0.1/x'], want: /registry URL/ },
    { env: { SCHEMA_REGISTRY_URL: 'not a url' }, want: /registry URL/ },
    { args: ['--kafka-tls-ca', '/nonexistent/ca.pem'], want: /TLS CA file/ },
    { args: ['--kafka-sasl-mechanism', 'gssapi'], want: /SASL mechanism/ },
    { args: ['--log-level', 'loud'], want: /log level/ },
    { args: ['--metrics-port', '70000'], want: /--metrics-port/ },
    { args: ['--concurrency', '2x'], want: /--concurrency/ },
    { args: ['--group', ''], want: /--group/ },
    { env: { PGPORT: 'abc' }, want: /PGPORT/ },
    { env: { PGPORT: '99999' }, want: /PGPORT/ },
    { env: { PGPORT: '' }, want: /PGPORT/ },
    { env: { PGHOST: ' ' }, want: /PGHOST/ },
  ];
  for (const c of cases) {
    const what = JSON.stringify(c.args ?? c.env);
    const { code, logs } = await processExit(c.args ?? [], { ...env, ...c.env });
    assert.equal(code, 2, `${what}: ${JSON.stringify(logs)}`);
    assert.equal(logs.length, 1, `${what}: one line, got ${JSON.stringify(logs)}`);
    assert.match(String(logs[0].msg), /^tcpaudit process: /, what);
    assert.match(String(logs[0].msg), c.want, what);
  }
});

test('process config: PostgreSQL unreachable at start-up is retried, then exit 1 with one line', async () => {
  const port = await new Promise<number>((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(p));
    });
  });
  const started = Date.now();
  const { code, logs } = await processExit(['--startup-timeout', '4'], {
    ...(await safeEnv()),
    PGHOST: '127.0.0.1',
    PGPORT: String(port),
  });
  assert.equal(code, 1);
  assert.ok(Date.now() - started >= 3000, 'it waited');
  const retries = logs.filter((l) => l.msg === 'PostgreSQL unreachable: retrying');
  assert.ok(retries.length >= 2, JSON.stringify(logs));
  for (const r of retries) assert.equal(r.at, `127.0.0.1:${port}`);
  const last = logs[logs.length - 1];
  assert.equal(last.msg, 'start-up failed');
  assert.match(String(last.error), new RegExp(`PostgreSQL at 127\\.0\\.0\\.1:${port} unreachable`));
});

test('process config: a registry URL without the Confluent API path is refused at start-up', async () => {
  const env = await safeEnv();
  const origin = new URL(env.SCHEMA_REGISTRY_URL).origin;
  const { code, logs } = await processExit([], { ...env, SCHEMA_REGISTRY_URL: origin });
  assert.equal(code, 1, JSON.stringify(logs));
  const last = logs[logs.length - 1];
  assert.equal(last.msg, 'start-up failed');
  assert.ok(String(last.error).includes(origin), String(last.error));
  assert.match(String(last.error), /\/apis\/ccompat\/v7/);
  assert.equal((await registryHealth(env.SCHEMA_REGISTRY_URL)).ok, true);
});

test('process config: a 404 for a schema id is a bad message only from a healthy registry', async () => {
  const env = await safeEnv();
  const url = env.SCHEMA_REGISTRY_URL;
  const schemas = await registerSchemas(url, uniqueName('tcpaudit.cfg'));
  const message = frame(schemas.eventId, Buffer.from([0]));
  const origin = new URL(url).origin;
  const wrong = registryDecoder(
    createRegistry(origin),
    async () => (await registryHealth(origin)).ok,
  );
  await assert.rejects(
    async () => wrong(message),
    (err: Error) => !(err instanceof BadMessageError) && /not healthy/.test(err.message),
  );
  const right = registryDecoder(createRegistry(url), async () => (await registryHealth(url)).ok);
  await assert.rejects(
    async () => right(frame(987654321, Buffer.from([0]))),
    (err: Error) => err instanceof BadMessageError && /unknown schema id/.test(err.message),
  );
});
