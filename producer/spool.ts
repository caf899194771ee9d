import fs from 'node:fs';
import path from 'node:path';

/**
 * A bounded on-disk queue of encoded messages, for when Kafka is away longer than the memory
 * queue lasts. Segment files in one directory, named by a counter so that name order is queue
 * order; each holds records of one capture run (the run id is in the name, for gap records).
 * Appends go to the newest segment; replay takes the oldest whole segment, which is deleted
 * only once every record in it is acknowledged, so a crash replays instead of losing.
 *
 * Record: u32 length of the rest | f64 seq | u16 key length | key (utf8) | value.
 * A torn last record (the process died mid-write) is cut off when the spool is opened.
 */

export type Overflow = 'drop-oldest' | 'drop-newest';

export interface SpoolRecord {
  key: string;
  value: Buffer;
  seq: number;
}

/** Records the spool could not keep, as one range of one run. */
export interface Dropped {
  runId: string;
  count: number;
  seqFrom: number;
  seqTo: number;
}

interface Segment {
  number: number;
  runId: string;
  file: string;
  bytes: number;
  count: number;
  seqFrom: number;
  seqTo: number;
  /** Taken for replay: not appended to, not dropped. */
  leased: boolean;
}

/** A segment taken for replay. `release` deletes it: call once all its records are sent. */
export interface Lease {
  runId: string;
  records: SpoolRecord[];
  release(): void;
}

const NAME = /^(\d{16})-([0-9a-z]+)\.spool$/;
const HEADER = 4 + 8 + 2;
/** New segments start numbering here, so that prepend() has room below. */
const FIRST_NUMBER = 1e12;

export class Spool {
  readonly dir: string;
  readonly maxBytes: number;
  readonly overflow: Overflow;
  readonly segmentBytes: number;
  private segments: Segment[] = [];
  private active: { seg: Segment; fd: number } | null = null;
  private readonly runId: string;

  constructor(opts: { dir: string; maxBytes: number; overflow: Overflow; runId: string }) {
    this.dir = opts.dir;
    this.maxBytes = opts.maxBytes;
    this.overflow = opts.overflow;
    // Small enough that drop-oldest gives back a sixteenth of the spool at a time, large
    // enough that files stay few; replay holds one segment in memory.
    this.segmentBytes = Math.max(64 << 10, Math.min(16 << 20, Math.floor(opts.maxBytes / 16)));
    this.runId = opts.runId;
    fs.mkdirSync(this.dir, { recursive: true });
    this.load();
  }

  /** Bytes on disk, leased segments included. */
  get bytes(): number {
    return this.segments.reduce((n, s) => n + s.bytes, 0);
  }

  /** Records on disk, leased segments included. */
  get records(): number {
    return this.segments.reduce((n, s) => n + s.count, 0);
  }

  /** Records waiting that are not leased yet. */
  get waiting(): number {
    return this.segments.reduce((n, s) => n + (s.leased ? 0 : s.count), 0);
  }

  private load(): void {
    const names = fs
      .readdirSync(this.dir)
      .filter((n) => NAME.test(n))
      .sort();
    for (const name of names) {
      const [, num, runId] = NAME.exec(name)!;
      const file = path.join(this.dir, name);
      const { records, validBytes } = readSegment(file);
      if (validBytes < fs.statSync(file).size) fs.truncateSync(file, validBytes);
      if (records.length === 0) {
        fs.rmSync(file, { force: true });
        continue;
      }
      this.segments.push({
        number: Number(num),
        runId,
        file,
        bytes: validBytes,
        count: records.length,
        seqFrom: records[0].seq,
        seqTo: records[records.length - 1].seq,
        leased: false,
      });
    }
  }

  private nextNumber(): number {
    const last = this.segments[this.segments.length - 1];
    return last ? last.number + 1 : FIRST_NUMBER;
  }

  private fileFor(number: number, runId: string): string {
    return path.join(this.dir, `${String(number).padStart(16, '0')}-${runId}.spool`);
  }

  private openActive(): { seg: Segment; fd: number } {
    if (this.active && this.active.seg.bytes < this.segmentBytes) return this.active;
    this.closeActive();
    const number = this.nextNumber();
    const file = this.fileFor(number, this.runId);
    const seg: Segment = {
      number,
      runId: this.runId,
      file,
      bytes: 0,
      count: 0,
      seqFrom: -1,
      seqTo: -1,
      leased: false,
    };
    this.segments.push(seg);
    this.active = { seg, fd: fs.openSync(file, 'a') };
    return this.active;
  }

  private closeActive(): void {
    if (!this.active) return;
    fs.closeSync(this.active.fd);
    if (this.active.seg.count === 0) this.removeSegment(this.active.seg);
    this.active = null;
  }

  private removeSegment(seg: Segment): void {
    fs.rmSync(seg.file, { force: true });
    this.segments = this.segments.filter((s) => s !== seg);
  }

  /**
   * Appends records in order. What does not fit is dropped by the overflow policy: the newest
   * (these records) or the oldest whole segments. Returns what was dropped, per run.
   */
  append(records: SpoolRecord[]): Dropped[] {
    const dropped: Dropped[] = [];
    const encoded = records.map(encode);
    let size = encoded.reduce((n, b) => n + b.length, 0);
    let first = 0;
    if (this.overflow === 'drop-oldest') {
      while (this.bytes + size > this.maxBytes) {
        const victim =
          this.segments.find((s) => !s.leased && s !== this.active?.seg) ??
          (this.active && !this.active.seg.leased && this.active.seg.count > 0
            ? this.active.seg
            : null);
        if (!victim) break;
        if (victim === this.active?.seg) this.closeActive();
        dropped.push({
          runId: victim.runId,
          count: victim.count,
          seqFrom: victim.seqFrom,
          seqTo: victim.seqTo,
        });
        this.removeSegment(victim);
      }
    }
    // Past this point only these records can give way: the oldest of them under drop-oldest
    // (a batch larger than the whole spool), the newest under drop-newest.
    let last = encoded.length;
    while (first < last && this.bytes + size > this.maxBytes) {
      if (this.overflow === 'drop-oldest') size -= encoded[first++].length;
      else size -= encoded[--last].length;
    }
    if (first > 0) dropped.push(range(this.runId, records.slice(0, first)));
    if (last < encoded.length) dropped.push(range(this.runId, records.slice(last)));

    let i = first;
    while (i < last) {
      const active = this.openActive();
      const parts: Buffer[] = [];
      let bytes = 0;
      const start = i;
      while (i < last && active.seg.bytes + bytes < this.segmentBytes) {
        parts.push(encoded[i]);
        bytes += encoded[i].length;
        i++;
      }
      fs.writeSync(active.fd, parts.length === 1 ? parts[0] : Buffer.concat(parts, bytes));
      if (active.seg.count === 0) active.seg.seqFrom = records[start].seq;
      active.seg.seqTo = records[i - 1].seq;
      active.seg.count += i - start;
      active.seg.bytes += bytes;
    }
    return dropped;
  }

  /**
   * Writes records that are older than everything spooled (the memory queue, at shutdown) as
   * a new first segment. Not subject to the limit: these were captured before anything
   * in the spool and dropping them now would leave a hole that nobody replays around.
   */
  prepend(records: SpoolRecord[], runId = this.runId): void {
    if (records.length === 0) return;
    const number = (this.segments[0]?.number ?? FIRST_NUMBER) - 1;
    const file = this.fileFor(number, runId);
    const data = Buffer.concat(records.map(encode));
    fs.writeFileSync(file, data);
    this.segments.unshift({
      number,
      runId,
      file,
      bytes: data.length,
      count: records.length,
      seqFrom: records[0].seq,
      seqTo: records[records.length - 1].seq,
      leased: false,
    });
  }

  /** Takes the oldest segment for replay, or null when nothing is waiting. */
  take(): Lease | null {
    let seg = this.segments.find((s) => !s.leased);
    if (!seg) return null;
    if (seg === this.active?.seg) this.closeActive();
    seg = this.segments.find((s) => !s.leased);
    if (!seg) return null;
    const taken = seg;
    taken.leased = true;
    const { records } = readSegment(taken.file);
    return {
      runId: taken.runId,
      records,
      release: () => this.removeSegment(taken),
    };
  }

  close(): void {
    this.closeActive();
  }
}

function encode(r: SpoolRecord): Buffer {
  const keyLen = Buffer.byteLength(r.key);
  const out = Buffer.allocUnsafe(HEADER + keyLen + r.value.length);
  out.writeUInt32LE(out.length - 4, 0);
  out.writeDoubleLE(r.seq, 4);
  out.writeUInt16LE(keyLen, 12);
  out.write(r.key, HEADER, 'utf8');
  r.value.copy(out, HEADER + keyLen);
  return out;
}

function range(runId: string, records: SpoolRecord[]): Dropped {
  return {
    runId,
    count: records.length,
    seqFrom: records[0].seq,
    seqTo: records[records.length - 1].seq,
  };
}

export function readSegment(file: string): { records: SpoolRecord[]; validBytes: number } {
  const buf = fs.readFileSync(file);
  const records: SpoolRecord[] = [];
  let at = 0;
  while (at + HEADER <= buf.length) {
    const len = buf.readUInt32LE(at);
    if (at + 4 + len > buf.length || len < HEADER - 4) break;
    const seq = buf.readDoubleLE(at + 4);
    const keyLen = buf.readUInt16LE(at + 12);
    const key = buf.toString('utf8', at + HEADER, at + HEADER + keyLen);
    // A copy, so that the segment's buffer is not kept alive by one record.
    const value = Buffer.from(buf.subarray(at + HEADER + keyLen, at + 4 + len));
    records.push({ key, value, seq });
    at += 4 + len;
  }
  return { records, validBytes: at };
}
