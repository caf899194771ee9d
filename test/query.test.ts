import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Client } from 'pg';
import { endpoints, uniqueName } from './harness';
import { CLI } from './processes';
import { createRegistry } from '../common/registry';
import { registryDecoder } from '../processor/decode';
import { handleBatch } from '../processor/handler';
import { buildQuery, parseFilters, readOnlySession, WritableSessionError } from '../cli/query';
import {
  encodeEvent,
  freshDatabase,
  registerSchemas,
  syntheticStream,
  type TestDatabase,
} from './processor-helpers';

const run = promisify(execFile);
let db: TestDatabase;

before(async () => {
  const env = (await endpoints()).env;
  db = await freshDatabase(env);
  const topic = uniqueName('tcpaudit.query');
  const schemas = await registerSchemas(env.SCHEMA_REGISTRY_URL, topic);
  const stream = syntheticStream(40, 2, Date.now() * 1000 - 60_000_000, 'q');
  await handleBatch(
    stream.changes.map((c, i) => ({
      topic,
      partition: 0,
      offset: String(i),
      key: null,
      value: encodeEvent(schemas, c),
    })),
    db.pool,
    registryDecoder(createRegistry(env.SCHEMA_REGISTRY_URL)),
    'q',
  );
});

after(async () => {
  await db?.drop();
});

const count = async (argv: string[]) => {
  const { text, values } = buildQuery(parseFilters(argv).filters);
  return (await db.pool.query(text, values)).rowCount;
};

test('query: each filter narrows with parameters only', async () => {
  assert.equal(await count([]), 40);
  assert.equal(await count(['--outcome', 'refused']), 5);
  assert.equal(await count(['--role', 'listener']), 5);
  assert.equal(await count(['--host', 'host1']), 20);
  assert.equal(await count(['--remote-port', '443', '--outcome', 'reset']), 5);
  assert.equal(await count(['--port', '443']), 35);
  assert.equal(await count(['--addr', '10.9.0.2']), 35);
  assert.equal(await count(['--comm', 'proc0']), 8);
  assert.equal(await count(['--pid', '100']), 20);
  assert.equal(await count(['--since', '10m']), 40);
  assert.equal(await count(['--until', '10m']), 0);
  assert.equal(await count(['--limit', '3']), 3);
  const injected = buildQuery(parseFilters(['--comm', "x' OR '1'='1"]).filters);
  assert.doesNotMatch(injected.text, /OR '1'/);
  assert.equal((await db.pool.query(injected.text, injected.values)).rowCount, 0);
  assert.throws(() => parseFilters(['--outcome', 'bogus']), /bad --outcome/);
});

test('query: refuses a login that can write, and its session cannot write anyway', async () => {
  const c = new Client({
    host: db.env.PGHOST,
    port: Number(db.env.PGPORT),
    user: db.env.PGUSER,
    password: db.env.PGPASSWORD,
    database: db.name,
  });
  await c.connect();
  try {
    await assert.rejects(readOnlySession(c), WritableSessionError);
    await assert.rejects(
      c.query("INSERT INTO host_runs VALUES ('h', 'b', 'r', now(), now())"),
      (err: { code?: string }) => err.code === '25006',
    );
  } finally {
    await c.end();
  }
  const child = await run(process.execPath, [CLI, 'query', '--json'], {
    env: { ...process.env, ...db.env },
  }).catch((e) => e);
  assert.equal(child.code, 3);
  assert.match(child.stderr, /refusing to run: role tcpaudit can write/);
});

// Needs a login in tcpaudit_reader, which only an administrator can make (CREATEROLE): the
// native stack makes one and names it in TCPAUDIT_READER_USER / TCPAUDIT_READER_PASSWORD.
test('query: runs on the reader role, and an INSERT through its connection fails', async (t) => {
  const given = (await endpoints()).env;
  const reader = given.TCPAUDIT_READER_USER;
  if (!reader) {
    t.skip('no tcpaudit_reader login: set TCPAUDIT_READER_USER and TCPAUDIT_READER_PASSWORD');
    return;
  }
  const password = given.TCPAUDIT_READER_PASSWORD ?? '';
  const env = { ...process.env, ...db.env, PGUSER: reader, PGPASSWORD: password };
  const { stdout } = await run(process.execPath, [CLI, 'query', '--json', '--outcome', 'refused'], {
    env,
  });
  assert.equal(JSON.parse(stdout).length, 5);
  const c = new Client({
    host: db.env.PGHOST,
    port: Number(db.env.PGPORT),
    user: reader,
    password: env.PGPASSWORD,
    database: db.name,
  });
  await c.connect();
  try {
    await readOnlySession(c);
    await assert.rejects(c.query("INSERT INTO host_runs VALUES ('h', 'b', 'r', now(), now())"));
  } finally {
    await c.end();
  }
});

test('query: an IPv4 --addr also matches its IPv4-mapped form (dual-stack sockets), and back', async () => {
  const env = (await endpoints()).env;
  const topic = uniqueName('tcpaudit.query6');
  const schemas = await registerSchemas(env.SCHEMA_REGISTRY_URL, topic);
  const stream = syntheticStream(2, 1, Date.now() * 1000 - 30_000_000, 'm');
  const mapped = stream.changes.map((c) => ({
    ...c,
    family: 6 as const,
    localAddr: '::ffff:10.77.0.1',
    remoteAddr: '::ffff:10.77.0.2',
  }));
  await handleBatch(
    mapped.map((c, i) => ({
      topic,
      partition: 0,
      offset: String(i),
      key: null,
      value: encodeEvent(schemas, c),
    })),
    db.pool,
    registryDecoder(createRegistry(env.SCHEMA_REGISTRY_URL)),
    'q6',
  );
  assert.equal(await count(['--addr', '10.77.0.2']), 2);
  assert.equal(await count(['--remote-addr', '10.77.0.2']), 2);
  assert.equal(await count(['--addr', '10.77.0.1']), 2);
  assert.equal(await count(['--remote-addr', '10.77.0.1']), 0);
  assert.equal(await count(['--addr', '::ffff:10.77.0.2']), 2);
  assert.equal(await count(['--addr', '::ffff:10.9.0.2']), 35);
});

test('query: bad addresses and times are usage errors (exit 2, one line); "7d ago" is accepted', async () => {
  assert.throws(() => parseFilters(['--addr', 'notanip']), /bad --addr "notanip"/);
  assert.throws(() => parseFilters(['--remote-addr', 'fe80::1%eth0']), /bad --remote-addr/);
  assert.throws(() => parseFilters(['--since', '99999999999d']), /bad --since/);
  assert.throws(() => parseFilters(['--until', '+100000-01-01T00:00:00Z']), /bad --until/);
  const day = 86_400_000;
  const ago = parseFilters(['--since', '7d ago']).filters.since!.getTime();
  assert.ok(Math.abs(Date.now() - 7 * day - ago) < 60_000);
  assert.equal(parseFilters(['--since', '7d']).filters.since!.getTime() - ago < 60_000, true);
  for (const args of [
    ['--addr', 'notanip'],
    ['--since', '99999999999d'],
  ]) {
    const child = await run(process.execPath, [CLI, 'query', ...args], {
      env: { ...process.env, ...db.env },
    }).catch((e) => e);
    assert.equal(child.code, 2, args.join(' '));
    assert.equal(child.stderr.trimEnd().split('\n').length, 1, child.stderr);
    assert.match(child.stderr, /^tcpaudit query: bad --/);
  }
});
