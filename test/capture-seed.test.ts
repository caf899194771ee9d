import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import {
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { startCapture, type CapturedEvent } from '../producer/capture/capture';
import { parseListening, scanListeners, validateSeeds } from '../producer/capture/listeners';

// Listeners that predate the capture: found in /proc and seeded into the listeners map.
const skip = process.getuid?.() === 0 ? false : 'loading BPF needs root';

const HEADER =
  '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n';
const row = (local: string, st: string, inode: number) =>
  `   0: ${local} 00000000:0000 ${st} 00000000:00000000 00:00000000 00000000     0        0 ${inode} 1 0000000000000000 100 0 0 10 0\n`;

describe('finding listeners in /proc', () => {
  it('reads LISTEN rows only, with the port in host order', () => {
    const text =
      HEADER +
      row('0100007F:1F90', '0A', 111) + // 127.0.0.1:8080
      row('0100007F:1F91', '01', 112) + // established: not a listener
      row('0000000000000000FFFF00000100007F:0016', '0A', 113) + // v4-mapped, port 22
      row('00000000:0000', '0A', 0); // no inode: skipped
    assert.deepEqual(parseListening(text, 7), [
      { netns: 7, port: 8080, inode: 111 },
      { netns: 7, port: 22, inode: 113 },
    ]);
  });

  it('gives each (netns, port) the oldest process holding its socket', async () => {
    const proc = mkdtempSync(join(tmpdir(), 'tcpaudit-proc-'));
    try {
      const task = (name: string, netns: number, fds: Record<string, string>, start: number) => {
        mkdirSync(join(proc, name, 'ns'), { recursive: true });
        mkdirSync(join(proc, name, 'fd'));
        symlinkSync(`net:[${netns}]`, join(proc, name, 'ns', 'net'));
        for (const [fd, target] of Object.entries(fds))
          symlinkSync(target, join(proc, name, 'fd', fd));
        writeFileSync(
          join(proc, name, 'comm'),
          `${name === '300' ? 'a-very-long-name-cut' : 'srv'}\n`,
        );
        writeFileSync(join(proc, name, 'status'), 'Name:\tsrv\nUid:\t1000\t1000\t1000\t1000\n');
        writeFileSync(join(proc, name, 'stat'), `${name} (s r v) S ${'0 '.repeat(18)}${start} 0\n`);
      };
      task('self', 900, {}, 1);
      mkdirSync(join(proc, 'self', 'net'));
      writeFileSync(join(proc, 'self', 'net', 'tcp'), HEADER + row('0100007F:1F90', '0A', 555));
      writeFileSync(join(proc, 'self', 'net', 'tcp6'), HEADER);
      task('100', 900, { '3': 'socket:[555]' }, 500); // a pre-forked worker
      task('99', 900, { '4': 'socket:[555]', '5': 'pipe:[1]' }, 400); // its parent, older
      task('300', 901, { '3': 'socket:[777]' }, 600); // another namespace
      mkdirSync(join(proc, '300', 'net'));
      writeFileSync(join(proc, '300', 'net', 'tcp'), HEADER);
      writeFileSync(
        join(proc, '300', 'net', 'tcp6'),
        HEADER +
          row('00000000000000000000000001000000:0050', '0A', 777) +
          row('00000000000000000000000001000000:0051', '0A', 778),
      );

      const scan = await scanListeners({ procRoot: proc });
      assert.equal(scan.skipped, '');
      assert.equal(scan.namespaces, 2);
      assert.equal(scan.sockets, 3);
      assert.equal(scan.unattributed, 1, 'nobody holds inode 778');
      const byPort = new Map(scan.seeds.map((s) => [s.port, s]));
      assert.deepEqual(byPort.get(8080), {
        netns: 900,
        port: 8080,
        pid: 99,
        uid: 1000,
        comm: 'srv',
        cgroupId: 0n,
      });
      assert.equal(byPort.get(80)?.netns, 901);
      assert.equal(byPort.get(80)?.comm, 'a-very-long-nam', 'cut to 15 bytes like a task comm');
      assert.doesNotThrow(() => validateSeeds(scan.seeds));

      const filtered = await scanListeners({ procRoot: proc, netns: 901, ports: [81] });
      assert.deepEqual([filtered.sockets, filtered.seeds.length], [1, 0]);
    } finally {
      rmSync(proc, { recursive: true, force: true });
    }
  });

  it('refuses malformed seeds before they reach the addon', () => {
    const good = { netns: 1, port: 80, pid: 2, uid: 0, cgroupId: 0n, comm: 'x' };
    assert.doesNotThrow(() => validateSeeds([good]));
    for (const bad of [
      { ...good, port: 0 },
      { ...good, port: 65536 },
      { ...good, pid: 0 },
      { ...good, netns: -1 },
      { ...good, cgroupId: 1 },
      { ...good, comm: 'sixteen-bytes-xx' },
    ]) {
      assert.throws(
        () => validateSeeds([bad]),
        TypeError,
        JSON.stringify(bad, (_k, v) => String(v)),
      );
    }
  });
});

/** A python3 server on 127.0.0.1 and ::1, started before any capture; resolves its ports. */
function pythonListener(): Promise<{ child: ChildProcess; p4: number; p6: number }> {
  const child = spawn('/usr/bin/python3', [
    '-c',
    'import socket, sys, threading\n' +
      'def serve(s):\n' +
      '    while True:\n' +
      '        c, _ = s.accept()\n' +
      '        c.recv(100); c.close()\n' +
      'ports = []\n' +
      'for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):\n' +
      '    s = socket.socket(fam); s.bind((host, 0)); s.listen(16)\n' +
      '    ports.append(s.getsockname()[1])\n' +
      '    threading.Thread(target=serve, args=(s,), daemon=True).start()\n' +
      'print(*ports, flush=True)\n' +
      'sys.stdin.read()\n',
  ]);
  return new Promise((ok, fail) => {
    let out = '';
    const timer = setTimeout(
      () => fail(new Error(`python3 listener: no ports in 5 s: ${out}`)),
      5000,
    );
    child.once('error', fail);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (!out.includes('\n')) return;
      clearTimeout(timer);
      const [p4, p6] = out.trim().split(' ').map(Number);
      ok({ child, p4, p6 });
    });
  });
}

function oneConnection(host: string, port: number): Promise<void> {
  return new Promise((ok, fail) => {
    const c = connect({ host, port }, () => c.end('x'));
    c.once('error', fail);
    c.resume().once('close', () => ok());
  });
}

async function waitFor(check: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('listeners that predate the capture', { skip }, () => {
  const started: ChildProcess[] = [];
  after(() => {
    for (const child of started) if (child.exitCode === null) child.kill('SIGKILL');
  });

  it('give the connections they accept their process (IPv4 and IPv6)', async (t) => {
    const { child, p4, p6 } = await pythonListener();
    started.push(child);
    const pid = child.pid!;
    const seen: CapturedEvent[] = [];
    const capture = startCapture({
      filterPorts: [p4, p6],
      onEvents: (events) => seen.push(...events),
    });
    try {
      const report = await capture.listeners;
      t.diagnostic(`seeding: ${JSON.stringify(report)}`);
      assert.equal(report.sockets, 2, 'both sockets found (the port filter applies)');
      assert.equal(report.seeded, 2);
      assert.equal(report.unattributed, 0);

      await oneConnection('127.0.0.1', p4);
      await oneConnection('::1', p6);
      await waitFor(() => seen.filter((e) => e.newState === 'CLOSED').length >= 4, 'both closes');
    } finally {
      await capture.stop();
    }

    const netns = statSync('/proc/self/ns/net').ino;
    const sameCgroup =
      readFileSync(`/proc/${pid}/cgroup`, 'utf8') === readFileSync('/proc/self/cgroup', 'utf8');
    for (const [family, port] of [
      [4, p4],
      [6, p6],
    ] as const) {
      const accepted = seen.filter((e) => e.localPort === port && e.family === family);
      assert.equal(accepted[0].oldState, 'LISTEN', 'the child is seen from its birth');
      assert.ok(accepted.length >= 3, `IPv${family}: the child's events`);
      for (const e of accepted) {
        const where = `IPv${family} ${e.oldState}>${e.newState}`;
        assert.equal(e.pid, pid, where);
        assert.equal(e.tid, pid, where);
        assert.equal(e.comm, 'python3', where);
        assert.equal(e.uid, 0, where);
        assert.equal(e.netns, netns, where);
        assert.equal(e.procSource, 'listener-seeded', where);
      }
      // the kernel recorded our own cgroup on the client: the seeded id must be the same one
      const client = seen.find((e) => e.remotePort === port && e.procSource === 'owner');
      assert.ok(client && client.pid === process.pid);
      if (sameCgroup) assert.equal(accepted[0].cgroupId, client.cgroupId, 'cgroup id from /proc');
    }
    child.kill('SIGKILL');
  });

  it('reports pid 0 when nothing is known (seeding off)', async () => {
    const { child, p4 } = await pythonListener();
    started.push(child);
    const seen: CapturedEvent[] = [];
    const capture = startCapture({
      filterPorts: [p4],
      seedListeners: false,
      onEvents: (events) => seen.push(...events),
    });
    try {
      assert.equal((await capture.listeners).skipped, 'disabled');
      await oneConnection('127.0.0.1', p4);
      await waitFor(() => seen.filter((e) => e.newState === 'CLOSED').length >= 2, 'both closes');
    } finally {
      await capture.stop();
      child.kill('SIGKILL');
    }
    const accepted = seen.filter((e) => e.localPort === p4 && e.oldState === 'LISTEN');
    assert.equal(accepted.length, 1);
    assert.deepEqual([accepted[0].pid, accepted[0].comm, accepted[0].procSource], [0, '', 'none']);
  });

  it('lets a listen() made after attaching win over the seed', async () => {
    // a listener the program sees at listen(): its entry exists before seeding, so the seed
    // for the same (netns, port) is counted as already known and the owner stays ours
    const seen: CapturedEvent[] = [];
    const capture = startCapture({
      seedBudgetMs: 5000,
      onEvents: (events) => seen.push(...events),
    });
    const { createServer } = await import('node:net');
    const server = createServer((s) => s.resume().on('end', () => s.end()));
    try {
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
      const report = await capture.listeners;
      assert.equal(report.failed, 0, report.why);
      const port = (server.address() as import('node:net').AddressInfo).port;
      await oneConnection('127.0.0.1', port);
      await waitFor(
        () => seen.some((e) => e.localPort === port && e.oldState === 'LISTEN'),
        'the accepted child',
      );
      const child = seen.find((e) => e.localPort === port && e.oldState === 'LISTEN')!;
      assert.deepEqual([child.pid, child.procSource], [process.pid, 'listener']);
    } finally {
      server.close();
      await capture.stop();
    }
  });
});
