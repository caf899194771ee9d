import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { resolve } from 'node:path';
import { after, describe, it } from 'node:test';

// Least privilege: `tcpaudit capture` as user nobody with only CAP_BPF and CAP_PERFMON.
// Needs root to switch users; the repository must be readable by nobody (checked below).
const ROOT = resolve(__dirname, '..', '..');
const CLI = resolve(ROOT, 'bin', 'tcpaudit.js');
const NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups'];
const WITH_CAPS = [...NOBODY, '--inh-caps=+bpf,+perfmon', '--ambient-caps=+bpf,+perfmon'];

function readableByNobody(): string | false {
  if (process.getuid?.() !== 0) return 'switching to nobody needs root';
  if (spawnSync('setpriv', ['--version']).status !== 0) return 'setpriv (util-linux) missing';
  const probe = spawnSync('setpriv', [...NOBODY, process.execPath, CLI, 'doctor', '--json']);
  const out = probe.stdout.toString();
  if (!out.startsWith('{')) return `the repository is not readable by nobody: ${probe.stderr}`;
  return false;
}

const skip = readableByNobody();

function listen(): Promise<Server> {
  const server = createServer((sock) => sock.resume().on('end', () => sock.end()));
  return new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(0, '127.0.0.1', () => ok(server));
  });
}

/** Resolves with everything written so far once `pattern` appears in the stream. */
function waitForOutput(
  child: ChildProcess,
  stream: 'stdout' | 'stderr',
  pattern: RegExp,
  ms: number,
) {
  return new Promise<string>((ok, fail) => {
    let text = '';
    const timer = setTimeout(
      () => fail(new Error(`no ${pattern} on ${stream} in ${ms} ms: ${text}`)),
      ms,
    );
    child[stream]!.on('data', (d: Buffer) => {
      text += d.toString();
      if (pattern.test(text)) {
        clearTimeout(timer);
        ok(text);
      }
    });
  });
}

describe('least privilege', { skip }, () => {
  const started: ChildProcess[] = [];
  after(() => {
    for (const child of started) if (child.exitCode === null) child.kill('SIGKILL');
  });

  it('captures as nobody with only CAP_BPF and CAP_PERFMON', async () => {
    const server = await listen();
    const port = (server.address() as AddressInfo).port;
    const capture = spawn('setpriv', [
      ...WITH_CAPS,
      process.execPath,
      CLI,
      'capture',
      '--port',
      String(port),
    ]);
    started.push(capture);
    const stdout = waitForOutput(
      capture,
      'stdout',
      /"newState":"CLOSED"[^\n]*\n(.|\n)*"newState":"CLOSED"/,
      10_000,
    );
    await waitForOutput(capture, 'stderr', /"attached"/, 10_000);

    // the client runs as nobody too: its socket's owner must say so
    const client = spawnSync('setpriv', [
      ...NOBODY,
      '/usr/bin/python3',
      '-c',
      `import socket; s = socket.create_connection(('127.0.0.1', ${port})); s.sendall(b'x' * 1000); s.close()`,
    ]);
    assert.equal(client.status, 0, client.stderr.toString());

    const lines = (await stdout)
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    capture.kill('SIGINT');
    await new Promise((r) => capture.once('exit', r));
    server.close();
    assert.equal(capture.exitCode, 0);

    const opener = lines.filter((e) => e.comm === 'python3');
    assert.deepEqual(opener.map((e) => `${e.oldState}>${e.newState}`).slice(0, 2), [
      'CLOSED>SYN-SENT',
      'SYN-SENT>ESTABLISHED',
    ]);
    for (const e of opener) {
      assert.equal(e.uid, 65534);
      assert.equal(e.sockUid, 65534);
      assert.equal(e.sockGid, 65534);
      assert.equal(e.remotePort, port);
    }
    assert.equal(opener[opener.length - 1].bytesSent, '1000');
  });

  it('seeds the listeners it may read, and says why the others have no process', async () => {
    // two servers listening before the capture: one of root's (whose fds nobody cannot read)
    // and one of nobody's own
    const serve = (asNobody: boolean) => {
      const code =
        'import socket, sys\n' +
        's = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)\n' +
        'print(s.getsockname()[1], flush=True)\n' +
        'while True:\n' +
        '    c, _ = s.accept(); c.recv(10); c.close()\n';
      const child = asNobody
        ? spawn('setpriv', [...NOBODY, '/usr/bin/python3', '-c', code])
        : spawn('/usr/bin/python3', ['-c', code]);
      started.push(child);
      return waitForOutput(child, 'stdout', /\d+\n/, 5000).then((out) => ({
        pid: child.pid!,
        port: Number(out.trim()),
      }));
    };
    const [rootServer, nobodyServer] = await Promise.all([serve(false), serve(true)]);
    const capture = spawn('setpriv', [
      ...WITH_CAPS,
      process.execPath,
      CLI,
      'capture',
      '--port',
      String(rootServer.port),
      '--port',
      String(nobodyServer.port),
    ]);
    started.push(capture);
    const seeded = await waitForOutput(capture, 'stderr', /"listeners"[^\n]*\n/, 10_000);
    const report = JSON.parse(seeded.split('\n').find((l) => l.includes('"listeners"'))!).listeners;
    assert.equal(report.sockets, 2);
    assert.equal(report.seeded, 1, "nobody's own listener");
    assert.equal(report.unattributed, 1, "root's listener");
    assert.ok(report.fdUnreadable > 0);
    assert.match(report.why, /not readable/);
    assert.match(report.why, /CAP_SYS_PTRACE/);

    const stdout = waitForOutput(
      capture,
      'stdout',
      /("newState":"CLOSED"[^\n]*\n(.|\n)*){4}/,
      10_000,
    );
    for (const server of [rootServer, nobodyServer]) {
      const client = spawnSync('/usr/bin/python3', [
        '-c',
        `import socket; s = socket.create_connection(('127.0.0.1', ${server.port})); s.sendall(b'x'); s.recv(10); s.close()`,
      ]);
      assert.equal(client.status, 0, client.stderr.toString());
    }
    const lines = (await stdout)
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    capture.kill('SIGINT');
    await new Promise((r) => capture.once('exit', r));
    assert.equal(capture.exitCode, 0);

    const accepted = (port: number) => lines.filter((e) => e.localPort === port);
    const ours = accepted(nobodyServer.port);
    assert.ok(ours.length > 0);
    for (const e of ours) {
      assert.deepEqual(
        [e.pid, e.comm, e.uid, e.procSource],
        [nobodyServer.pid, 'python3', 65534, 'listener-seeded'],
      );
    }
    // unknown stays unknown: pid 0, never a guess
    const roots = accepted(rootServer.port);
    assert.ok(roots.length > 0);
    assert.ok(roots.every((e) => e.pid === 0 && e.comm === '' && e.procSource === 'none'));
  });

  it('fails clearly without the capabilities', () => {
    const run = spawnSync('setpriv', [...NOBODY, process.execPath, CLI, 'capture'], {
      timeout: 10_000,
    });
    const stderr = run.stderr.toString();
    assert.notEqual(run.status, 0);
    assert.match(stderr, /CAP_BPF/);
    assert.match(stderr, /CAP_PERFMON/);
    assert.match(stderr, /tcpaudit doctor/);
    assert.equal(run.stdout.toString(), '');
  });

  it('doctor says why, and exits non-zero, without the capabilities', () => {
    const run = spawnSync('setpriv', [...NOBODY, process.execPath, CLI, 'doctor', '--json']);
    const report = JSON.parse(run.stdout.toString());
    assert.equal(run.status, 1);
    assert.equal(report.ok, false);
    const caps = report.checks.find((c: { name: string }) => c.name === 'capabilities');
    assert.equal(caps.status, 'fail');
    assert.match(caps.fix, /CAP_BPF and CAP_PERFMON/);
  });

  it('doctor passes as nobody with CAP_BPF and CAP_PERFMON', () => {
    const run = spawnSync('setpriv', [...WITH_CAPS, process.execPath, CLI, 'doctor', '--json']);
    const report = JSON.parse(run.stdout.toString());
    assert.equal(run.status, 0, run.stdout.toString());
    assert.equal(report.checks.find((c: { name: string }) => c.name === 'load').status, 'ok');
  });
});
