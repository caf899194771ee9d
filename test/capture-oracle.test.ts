import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Server } from 'node:net';
import { resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { stateName } from '../common/event';

// bpftrace, attached to the classic tracepoint sock:inet_sock_set_state, is an independent
// witness: every transition it sees on this test's ports must be in `tcpaudit capture`'s
// output. bpftrace (unlike tcpaudit) reads the tracepoint's format from tracefs: if tracefs
// is not mounted, this test mounts it at /sys/kernel/tracing and unmounts it afterwards.
const CLI = resolve(__dirname, '..', '..', 'bin', 'tcpaudit.js');
const TRACEFS = '/sys/kernel/tracing';

function why(): string | false {
  if (process.getuid?.() !== 0) return 'bpftrace and loading BPF need root';
  if (spawnSync('bpftrace', ['--version']).status !== 0)
    return 'bpftrace missing: scripts/setup-capture.sh installs it';
  return false;
}
const skip = why();

const tracefsMounted = () =>
  readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[2] === 'tracefs');

function listen(host: string, serverCloses: boolean): Promise<Server> {
  const server = createServer((sock) => {
    sock.resume();
    if (serverCloses) sock.once('data', () => sock.end());
    else sock.on('end', () => sock.end());
  });
  return new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(0, host, () => ok(server));
  });
}

/** A port nobody listens on: bound, then released. */
async function freePort(host: string): Promise<number> {
  const s = await listen(host, false);
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** Client that sends a little; closes first unless the server does. Resolves either way. */
function client(host: string, port: number, closesFirst: boolean): Promise<string> {
  return new Promise((ok) => {
    const c = connect({ host, port }, () => {
      if (closesFirst) c.end('hello');
      else c.write('hello');
    });
    c.on('end', () => c.end());
    c.once('error', (err: NodeJS.ErrnoException) => ok(err.code ?? 'error'));
    c.resume().once('close', () => ok('closed'));
  });
}

function waitForText(
  child: ChildProcess,
  stream: 'stdout' | 'stderr',
  pattern: RegExp,
  ms: number,
) {
  return new Promise<void>((ok, fail) => {
    let text = '';
    const timer = setTimeout(() => fail(new Error(`no ${pattern} in ${ms} ms: ${text}`)), ms);
    child[stream]!.on('data', (d: Buffer) => {
      text += d.toString();
      if (pattern.test(text)) {
        clearTimeout(timer);
        ok();
      }
    });
  });
}

function collect(child: ChildProcess): Promise<string> {
  let text = '';
  child.stdout!.on('data', (d: Buffer) => (text += d.toString()));
  return new Promise((ok) => child.once('exit', () => ok(text)));
}

describe('bpftrace oracle', { skip }, () => {
  let mountedHere = false;
  before(() => {
    if (!tracefsMounted()) {
      const mount = spawnSync('mount', ['-t', 'tracefs', 'tracefs', TRACEFS]);
      assert.equal(mount.status, 0, `mounting tracefs for bpftrace: ${mount.stderr}`);
      mountedHere = true;
    }
  });
  after(() => {
    if (mountedHere) spawnSync('umount', [TRACEFS]);
  });

  const limit = { timeout: 120_000 }; // a stuck tracer must fail the test, not hang the run
  it(
    'every transition bpftrace sees is in the capture, with the same states and ports',
    limit,
    async (t) => {
      if (mountedHere)
        t.diagnostic(`tracefs was not mounted: mounted it at ${TRACEFS} for bpftrace`);
      const v4 = await listen('127.0.0.1', false); // client closes first
      const v6 = await listen('::1', true); // server closes first
      const refused4 = await freePort('127.0.0.1');
      const refused6 = await freePort('::1');
      const p4 = (v4.address() as AddressInfo).port;
      const p6 = (v6.address() as AddressInfo).port;
      const ports = [p4, p6, refused4, refused6];

      const match = ports.map((p) => `args->sport == ${p} || args->dport == ${p}`).join(' || ');
      // Unbuffered: bpftrace sometimes ignores SIGINT on this kernel (seen stuck in epoll_wait),
      // and then only SIGKILL ends it; what it printed must already be in the pipe by then.
      const bpftrace = spawn('bpftrace', [
        '-B',
        'none',
        '-e',
        `tracepoint:sock:inet_sock_set_state /args->protocol == 6 && (${match})/ ` +
          '{ printf("%d %d %d %d %d\\n", args->family, args->sport, args->dport, args->oldstate, args->newstate); }',
      ]);
      const capture = spawn(process.execPath, [
        CLI,
        'capture',
        ...ports.flatMap((p) => ['--port', String(p)]),
      ]);
      const oracleOut = collect(bpftrace);
      const captureOut = collect(capture);
      await Promise.all([
        waitForText(bpftrace, 'stdout', /Attaching/, 30_000),
        waitForText(capture, 'stderr', /"attached"/, 10_000),
      ]);
      await new Promise((r) => setTimeout(r, 1000)); // "Attaching" is printed just before attach

      const outcomes: string[] = [];
      for (let i = 0; i < 3; i++) {
        outcomes.push(
          ...(await Promise.all([
            client('127.0.0.1', p4, true),
            client('::1', p6, false),
            client('127.0.0.1', refused4, true),
            client('::1', refused6, true),
          ])),
        );
      }
      await new Promise((r) => v4.close(r));
      await new Promise((r) => v6.close(r));
      assert.deepEqual(outcomes.filter((o) => o === 'ECONNREFUSED').length, 6);
      await new Promise((r) => setTimeout(r, 500));
      bpftrace.kill('SIGINT');
      capture.kill('SIGINT');
      const stubborn = setTimeout(() => bpftrace.kill('SIGKILL'), 5000);
      await oracleOut.finally(() => clearTimeout(stubborn));

      const key = (family: number, sport: number, dport: number, from: string, to: string) =>
        `${family === 2 || family === 4 ? 4 : 6} ${sport}>${dport} ${from}>${to}`;
      const oracle = (await oracleOut)
        .split('\n')
        .filter((l) => /^\d+ \d+ \d+ \d+ \d+$/.test(l))
        .map((l) => {
          const [family, sport, dport, from, to] = l.split(' ').map(Number);
          return key(family, sport, dport, stateName(from), stateName(to));
        });
      const captured = (await captureOut)
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l))
        .map((e) => key(e.family, e.localPort, e.remotePort, e.oldState, e.newState));

      // per connection: 3 x (v4 client 5 + child 5, v6 client 5 + child 5, 2 refused x 2) + 2
      assert.ok(
        oracle.length >= 3 * (10 + 10 + 4) + 2,
        `bpftrace saw ${oracle.length} transitions`,
      );
      const counts = new Map<string, number>();
      for (const k of captured) counts.set(k, (counts.get(k) ?? 0) + 1);
      const missing: string[] = [];
      for (const k of oracle) {
        const n = counts.get(k) ?? 0;
        if (n === 0) missing.push(k);
        else counts.set(k, n - 1);
      }
      assert.deepEqual(missing, [], 'transitions bpftrace saw and capture did not');
      assert.equal(captured.length, oracle.length, 'nor did capture see more');
      assert.ok(
        oracle.some((k) => k.endsWith('SYN-SENT>CLOSED')),
        'refused connections included',
      );
      assert.ok(oracle.some((k) => k.startsWith('6 ') && k.endsWith('CLOSE-WAIT>LAST-ACK')));
      t.diagnostic(`${oracle.length} transitions seen by both`);
    },
  );
});
