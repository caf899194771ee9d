import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { endpoints } from './harness';
import { CLI } from './processes';

/**
 * The real CLI, as an operator runs it: mistakes are one line and exit status 2, found before
 * the registry, Kafka or the kernel is touched; an unusable registry is one line and exit 1.
 */

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

const ENDPOINT_VARS = ['KAFKA_BROKERS', 'SCHEMA_REGISTRY_URL', 'TCPAUDIT_TOPIC'];

function run(args: string[], env: Record<string, string> = {}, timeoutMs = 30_000) {
  const base = { ...process.env };
  for (const key of ENDPOINT_VARS) delete base[key];
  const child = spawn(process.execPath, [CLI, ...args], {
    env: { ...base, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const started = Date.now();
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return new Promise<Result>((resolve) =>
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, ms: Date.now() - started });
    }),
  );
}

/** A TCP server that accepts and never answers, counting connections: Kafka or a registry. */
async function silentServer() {
  const sockets = new Set<net.Socket>();
  let connections = 0;
  const server = net.createServer((s) => {
    connections++;
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as net.AddressInfo).port,
    connections: () => connections,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((r) => server.close(r));
    },
  };
}

let kafka: Awaited<ReturnType<typeof silentServer>>;
let registry: Awaited<ReturnType<typeof silentServer>>;
let dir: string;
before(async () => {
  kafka = await silentServer();
  registry = await silentServer();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcpaudit-usage-'));
  fs.writeFileSync(path.join(dir, 'a-file'), 'not a directory\n');
});
after(async () => {
  await kafka.close();
  await registry.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('tcpaudit produce refuses a bad setting before it contacts anything', () => {
  // [flags, extra environment, what the one line must name]
  const cases: Array<[string[], Record<string, string>, RegExp]> = [
    [['--topic', 'bad topic!'], {}, /--topic: bad topic name "bad topic!"/],
    [['--topic', '..'], {}, /--topic: bad topic name/],
    [['--brokers', ''], {}, /--brokers: no Kafka broker given/],
    [[], { KAFKA_BROKERS: ' , ' }, /KAFKA_BROKERS: no Kafka broker given/],
    [['--brokers', 'localhost'], {}, /--brokers: bad Kafka broker "localhost"/],
    [['--brokers', 'a b:9092'], {}, /--brokers: bad Kafka broker "a b:9092"/],
    [['--brokers', '127.0.0.1:70000'], {}, /--brokers: bad Kafka broker/],
    [['--registry', 'ftp://x'], {}, /--registry: bad schema registry URL "ftp:\/\/x"/],
    [['--registry', 'not a url'], {}, /--registry: bad schema registry URL "not a url"/],
    [[], { SCHEMA_REGISTRY_URL: 'http://[::1' }, /SCHEMA_REGISTRY_URL: bad schema registry URL/],
    [['--ring-bytes', '1000'], {}, /--ring-bytes: .*power of two/],
    [['--partitions', '0'], {}, /--partitions wants a positive whole number, got "0"/],
    [['--partitions', 'abc'], {}, /--partitions wants a positive whole number/],
    [['--partitions', '1e3'], {}, /--partitions wants a positive whole number, got "1e3"/],
    [['--max-queued', '0'], {}, /--max-queued wants a positive whole number/],
    [['--registry-timeout-ms', '0'], {}, /--registry-timeout-ms wants a positive whole number/],
    [['--spool-dir', '<dir>/a-file'], {}, /--spool-dir: .*a-file exists and is not a directory/],
    [['--spool-dir', '<dir>/a-file/sub'], {}, /--spool-dir: cannot create .*ENOTDIR/],
    [['--spool-dir', '/proc/tcpaudit-spool'], {}, /--spool-dir: cannot create/],
    [['--metrics-host', '999.1.1.1'], {}, /--metrics-host: "999.1.1.1" is neither/],
    [['--netns', '/etc/hostname'], {}, /--netns: \/etc\/hostname is not a namespace file/],
    [['--netns', '/proc/self/ns/mnt'], {}, /--netns: .* is a mnt namespace, not a network one/],
    [['--netns', '0'], {}, /--netns wants a positive whole number, got "0"/],
    [['--netns', '/nonexistent/ns'], {}, /--netns: cannot read \/nonexistent\/ns/],
    [['--log-level', 'loud'], {}, /--log-level \(TCPAUDIT_LOG_LEVEL\): unknown log level/],
  ];
  for (const [flags, env, message] of cases) {
    const shown = [...flags, ...Object.entries(env).map(([k, v]) => `${k}=${v}`)].join(' ');
    test(`exit 2 and one line for ${shown}`, async () => {
      const args = [
        'produce',
        '--port',
        '1',
        '--metrics-port',
        'off',
        ...flags.map((f) => f.replace('<dir>', dir)),
      ];
      const before = kafka.connections() + registry.connections();
      const r = await run(args, {
        KAFKA_BROKERS: `127.0.0.1:${kafka.port}`,
        SCHEMA_REGISTRY_URL: `http://127.0.0.1:${registry.port}/apis/ccompat/v7`,
        ...env,
      });
      assert.equal(r.code, 2, r.stderr);
      const lines = r.stderr.trimEnd().split('\n');
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0], /^tcpaudit produce: /);
      assert.match(lines[0], message);
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
      await new Promise((res) => setTimeout(res, 100));
      assert.equal(kafka.connections() + registry.connections(), before, 'contacted nothing');
    });
  }

  test('plain digits pass the checks: the run goes on to the registry', async () => {
    const r = await run(
      [
        'produce',
        '--port',
        '1',
        '--metrics-port',
        'off',
        '--partitions',
        '3',
        '--registry-timeout-ms',
        '200',
      ],
      {
        KAFKA_BROKERS: `127.0.0.1:${kafka.port}`,
        SCHEMA_REGISTRY_URL: `http://127.0.0.1:${registry.port}`,
      },
    );
    assert.equal(r.code, 1, r.stderr); // the silent registry, not a usage error
    assert.match(r.stderr, /schema registry unusable/);
  });
});

describe('tcpaudit produce and an unusable schema registry', () => {
  test('a registry that accepts and never answers: each attempt logged, then exit 1 naming the URL', async () => {
    const url = `http://127.0.0.1:${registry.port}/apis/ccompat/v7`;
    const r = await run(
      ['produce', '--port', '1', '--metrics-port', 'off', '--registry-timeout-ms', '300'],
      { KAFKA_BROKERS: `127.0.0.1:${kafka.port}`, SCHEMA_REGISTRY_URL: url },
    );
    assert.equal(r.code, 1, r.stderr);
    assert.ok(r.ms < 15_000, `gave up after ${r.ms} ms`);
    const logs = r.stderr
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const attempts = logs.filter((l) => l.msg === 'schema registry request failed');
    assert.equal(attempts.length, 3);
    for (const a of attempts) assert.equal(a.url, `${url}/subjects`);
    const last = logs[logs.length - 1];
    assert.equal(last.level, 'error');
    assert.equal(last.url, url);
    assert.match(String(last.error), /unreachable after 3 attempts/);
    assert.ok(!r.stderr.includes('    at '), 'no stack trace');
  });

  test('a URL without the ccompat path (GET /subjects gives 404) is named as such', async () => {
    const server = http.createServer((req, res) => {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end('{"message":"not found"}');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    try {
      const r = await run(['produce', '--port', '1', '--metrics-port', 'off'], {
        KAFKA_BROKERS: `127.0.0.1:${kafka.port}`,
        SCHEMA_REGISTRY_URL: url,
      });
      assert.equal(r.code, 1, r.stderr);
      const last = JSON.parse(r.stderr.trimEnd().split('\n').pop()!) as Record<string, unknown>;
      assert.equal(last.url, url);
      assert.match(String(last.error), /probably lacks \/apis\/ccompat\/v7/);
    } finally {
      server.close();
    }
  });

  test('a server that is not a Confluent registry (no JSON array) is refused', async () => {
    const server = http.createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<html>hello</html>');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/apis/ccompat/v7`;
    try {
      const r = await run(['produce', '--port', '1', '--metrics-port', 'off'], {
        KAFKA_BROKERS: `127.0.0.1:${kafka.port}`,
        SCHEMA_REGISTRY_URL: url,
      });
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /does not speak the Confluent API/);
    } finally {
      server.close();
    }
  });
});

describe('tcpaudit stack', () => {
  test('with no command prints its usage and exits 2, like a bare tcpaudit', async () => {
    const r = await run(['stack']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /Usage: tcpaudit stack <command>/);
    assert.equal(r.stdout, '');
    const help = await run(['stack', '--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /Usage: tcpaudit stack/);
  });

  // From a second checkout: a stack dir with no pid files of its own, the shared stack's ports.
  const probe = (port: number) =>
    new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => (s.destroy(), resolve(true)));
      s.on('error', () => resolve(false));
    });

  test('status and up from another checkout see a healthy stack as started elsewhere', async (t) => {
    await endpoints(); // with no endpoints given, this starts the native stack
    const answering = await Promise.all([15432, 19092, 18081].map(probe));
    if (!answering.every(Boolean)) return t.skip('the endpoints given are not the local stack');
    const home = fs.mkdtempSync(path.join(os.tmpdir(), 'tcpaudit-clone-'));
    try {
      const env = { TCPAUDIT_STACK_DIR: home };
      const status = await run(['stack', 'status', '--json'], env);
      assert.equal(status.code, 0, status.stdout + status.stderr);
      const rows = JSON.parse(status.stdout) as Array<Record<string, unknown>>;
      for (const row of rows) {
        assert.equal(row.healthy, true, JSON.stringify(row));
        assert.equal(row.running, true);
        assert.equal(row.pid, null);
        assert.equal(row.startedElsewhere, true);
      }
      const table = await run(['stack', 'status'], env);
      assert.match(table.stdout, /started elsewhere/);
      const up = await run(['stack', 'up'], env);
      assert.equal(up.code, 0, up.stderr);
      for (const name of ['postgres', 'kafka', 'registry'])
        assert.match(
          up.stderr,
          new RegExp(`${name} already running, started elsewhere: reusing it`),
        );
      assert.deepEqual(fs.readdirSync(path.join(home, 'run')), [], 'nothing started here');
    } finally {
      fs.rmSync(home, { recursive: true, force: true });
    }
  });
});
