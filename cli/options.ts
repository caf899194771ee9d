/** Small helpers shared by the subcommands: option checks and waiting for a stop signal. */

export function positiveInt(text: string | undefined, flag: string): number {
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new UsageError(`${flag} wants a positive whole number, got "${text}"`);
  }
  return value;
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
