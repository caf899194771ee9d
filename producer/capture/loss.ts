/**
 * Turns sequence gaps and the loss counters into loss reports. The BPF program takes a
 * sequence number before it reserves ring space, so every record the kernel could not reserve,
 * and every batch the addon dropped, leaves a gap. Records of two CPUs may reach the ring in
 * the opposite order of their numbers, so a gap is only confirmed once a whole later batch has
 * gone by without filling it.
 */

/** One confirmed loss: sequence numbers seqFrom..seqTo (inclusive) will never arrive. */
export interface LossInfo {
  /** Records the kernel could not reserve, since the capture started (cumulative). */
  kernelLost: number;
  /** Records the addon dropped because JS was too slow, since the start (cumulative). */
  userDropped: number;
  seqFrom: number;
  seqTo: number;
  /** seqTo - seqFrom + 1 */
  missing: number;
}

interface Gap {
  from: number;
  to: number;
  batch: number;
}

export class SeqTracker {
  /** Every sequence number below this one has arrived or is in a gap. */
  next = 0;
  /** Sequence numbers reported lost so far. */
  reported = 0;
  #gaps: Gap[] = [];
  #batch = 0;

  /** Records one delivered sequence number. */
  observe(seq: number): void {
    if (seq >= this.next) {
      if (seq > this.next) this.#gaps.push({ from: this.next, to: seq - 1, batch: this.#batch });
      this.next = seq + 1;
      return;
    }
    // late arrival: take it out of its gap (gaps are few; a linear scan is fine)
    for (let i = 0; i < this.#gaps.length; i++) {
      const g = this.#gaps[i];
      if (seq < g.from || seq > g.to) continue;
      const parts: Gap[] = [];
      if (g.from < seq) parts.push({ from: g.from, to: seq - 1, batch: g.batch });
      if (seq < g.to) parts.push({ from: seq + 1, to: g.to, batch: g.batch });
      this.#gaps.splice(i, 1, ...parts);
      return;
    }
  }

  /** Ends a batch; returns the gaps that a whole later batch did not fill. */
  endBatch(): Array<{ from: number; to: number }> {
    this.#batch++;
    return this.#take((g) => g.batch < this.#batch - 1);
  }

  /** Every open gap, confirmed or not (at stop: nothing more will arrive). */
  takeAll(): Array<{ from: number; to: number }> {
    return this.#take(() => true);
  }

  /** Sequence numbers in gaps not yet confirmed. */
  pending(): number {
    return this.#gaps.reduce((n, g) => n + g.to - g.from + 1, 0);
  }

  /**
   * Losses after the last delivered record show in the counters only: claims the next
   * `count` numbers as lost. Call only when the ring is known to be empty.
   */
  takeTail(count: number): { from: number; to: number } {
    const range = { from: this.next, to: this.next + count - 1 };
    this.next += count;
    this.reported += count;
    return range;
  }

  #take(pick: (g: Gap) => boolean): Array<{ from: number; to: number }> {
    const out: Array<{ from: number; to: number }> = [];
    this.#gaps = this.#gaps.filter((g) => {
      if (!pick(g)) return true;
      out.push({ from: g.from, to: g.to });
      this.reported += g.to - g.from + 1;
      return false;
    });
    return out;
  }
}
