/**
 * One write in flight per partition, running on while the consumer fetches that partition's
 * next batch. kafkajs fetches again only once every batch of a fetch is handled, so a batch
 * handled to its commit left the database idle through each fetch and each wait for the
 * slowest partition. The next batch of a partition waits for the write before it (settle), so
 * batches still commit in offset order, one transaction each.
 */
export class WriteBehind {
  private readonly writing = new Map<string, Promise<void>>();
  private readonly failures = new Map<string, Error>();

  /**
   * Waits for the partition's write in flight. If it failed, throws its error, once: the
   * caller's retry (kafkajs backs off, then fetches again) then starts over from that batch.
   */
  async settle(key: string): Promise<void> {
    await this.writing.get(key);
    const failure = this.failures.get(key);
    if (failure === undefined) return;
    this.failures.delete(key);
    throw failure;
  }

  /**
   * Starts `work` as the partition's write in flight (settle first). `onFailure` is told at
   * once, so the batch can be fetched again even when no later batch comes to settle it.
   */
  start(key: string, work: () => Promise<void>, onFailure: (err: Error) => void): void {
    const done: Promise<void> = work()
      .catch((err: Error) => {
        this.failures.set(key, err);
        onFailure(err);
      })
      .finally(() => {
        if (this.writing.get(key) === done) this.writing.delete(key);
      });
    this.writing.set(key, done);
  }

  /** Resolves when no write is in flight (their failures stay for settle). */
  async idle(): Promise<void> {
    while (this.writing.size > 0) await Promise.all(this.writing.values());
  }
}
