/** Small helpers shared by the subcommands: option checks and waiting for a stop signal. */

import fs from 'node:fs';
import { pgDefaults } from '../common/config';

/** Decimal digits only: "1e3", "0x10" and " 6" are mistakes, not numbers to guess at. */
export function positiveInt(text: string | undefined, flag: string): number {
  const value = /^[0-9]+$/.test(text ?? '') ? Number(text) : NaN;
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new UsageError(`${flag} wants a positive whole number, got "${text}"`);
  }
  return value;
}

/**
 * `--netns`: a network namespace inode number, or a file of one (/proc/PID/ns/net, or a
 * bind mount such as /run/netns/NAME). A file must live on nsfs, the file system of
 * /proc/self/ns/net, and a /proc link must name a net namespace: /etc/hostname, or
 * /proc/PID/ns/mnt, would give an inode that matches no socket and silently capture nothing.
 */
export function netnsInode(text: string, flag = '--netns'): number {
  if (/^[0-9]+$/.test(text)) {
    const inode = positiveInt(text, flag);
    if (inode > 0xffffffff) throw new UsageError(`${flag}: ${text} is not a namespace inode`);
    return inode;
  }
  let stat: fs.Stats;
  let nsfs: fs.Stats;
  try {
    stat = fs.statSync(text);
    nsfs = fs.statSync('/proc/self/ns/net');
  } catch (err) {
    throw new UsageError(`${flag}: cannot read ${text}: ${(err as Error).message}`);
  }
  if (stat.dev !== nsfs.dev) {
    throw new UsageError(`${flag}: ${text} is not a namespace file (such as /proc/PID/ns/net)`);
  }
  let link: string | null = null;
  try {
    link = fs.readlinkSync(text); // "net:[4026531840]" for a /proc link; a bind mount has none
  } catch {
    link = null;
  }
  const kind = link === null ? null : /^([a-z_]+):\[\d+\]$/.exec(link)?.[1];
  if (kind && kind !== 'net') {
    throw new UsageError(`${flag}: ${text} is a ${kind} namespace, not a network one`);
  }
  return stat.ino;
}

/** A mistake in how the command was called: printed without a stack trace, exit status 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/**
 * Resolves with the signal's name on SIGINT or SIGTERM (or 'failure' once `failed` says so).
 * A second signal while shutting down exits at once, for an operator who cannot wait; `onAgain`
 * runs first (synchronously) and returns what to tell the operator about what is left behind.
 */
export function untilSignal(
  failed: () => boolean = () => false,
  onAgain: () => string = () => '',
): Promise<string> {
  return new Promise((resolve) => {
    const poll = setInterval(() => {
      if (failed()) finish('failure');
    }, 200);
    const onSignal = (signal: NodeJS.Signals) => finish(signal);
    const finish = (reason: string) => {
      clearInterval(poll);
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      const again = (sig: NodeJS.Signals) => {
        let left = '';
        try {
          left = onAgain();
        } catch (err) {
          left = `(could not tell what is left: ${(err as Error).message})`;
        }
        process.stderr.write(`${sig} again: exiting without waiting${left ? `; ${left}` : ''}\n`);
        process.exit(130);
      };
      process.once('SIGINT', again);
      process.once('SIGTERM', again);
      resolve(reason);
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
  });
}

/**
 * Runs a settings check and makes any error it throws (ConfigError, KafkaConfigError, a plain
 * Error from common/) a UsageError: a bad flag or variable exits 2 with one line, no stack.
 */
export function asUsage<T>(check: () => T, prefix = ''): T {
  try {
    return check();
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`${prefix}${(err as Error).message}`);
  }
}

type Env = Record<string, string | undefined>;

/**
 * PostgreSQL settings from the standard PG* variables (defaults: the local stack), checked
 * before anything connects: a blank variable or a port outside 1..65535 is a usage error that
 * names the variable (node-postgres would take PGPORT=abc as NaN and never settle).
 */
export function pgSettings(env: Env = process.env) {
  for (const name of ['PGHOST', 'PGPORT', 'PGUSER', 'PGDATABASE']) {
    if (env[name] !== undefined && env[name]!.trim() === '')
      throw new UsageError(`${name} is set but blank: unset it or give a value`);
  }
  const portText = env.PGPORT ?? String(pgDefaults({}).port);
  const port = /^[0-9]{1,5}$/.test(portText) ? Number(portText) : NaN;
  if (!(port >= 1 && port <= 65535))
    throw new UsageError(`PGPORT "${portText}" is not a port number from 1 to 65535`);
  return { ...pgDefaults(env), port };
}
