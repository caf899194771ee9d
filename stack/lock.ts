import fs from 'node:fs';
import path from 'node:path';
import { sleep } from './process';

/**
 * Cross-process mutex for `stack up`/`stack down`. `node --test` runs test files in parallel
 * processes and each may call stackUp(): without the lock two of them could both see a
 * service stopped and both launch it, and the loser dies on a taken port.
 * The lock is a file created with O_EXCL that holds the owner's pid; a lock whose owner is
 * dead (crashed, SIGKILLed) is stale and gets taken over.
 */

function ownerAlive(lockFile: string): boolean {
  try {
    const pid = Number(fs.readFileSync(lockFile, 'utf8').trim());
    if (!Number.isInteger(pid) || pid <= 1) return false;
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the pid exists but belongs to someone else, so it is alive.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export async function withLock<T>(lockFile: string, waitMs: number, fn: () => Promise<T>) {
  fs.mkdirSync(path.dirname(lockFile), { recursive: true });
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      fs.writeFileSync(lockFile, `${process.pid}\n`, { flag: 'wx' });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    if (!ownerAlive(lockFile)) {
      fs.rmSync(lockFile, { force: true });
      continue;
    }
    if (Date.now() > deadline) {
      throw new Error(`another stack command holds ${lockFile}; waited ${waitMs / 1000} s`);
    }
    await sleep(200);
  }
  try {
    return await fn();
  } finally {
    fs.rmSync(lockFile, { force: true });
  }
}
