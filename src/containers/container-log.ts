// A container's stdout/stderr, kept on the host: JSON lines with kilnd's receive timestamp,
// in two files that rotate (log.jsonl → log.1.jsonl) so one container never holds more than
// `maxBytes` however much its guest writes. A console replay after a kilnd restart repeats
// pieces already stored; each carries (boot, seq) and anything not after the last stored
// piece is dropped, so the log holds each piece once.
import { EventEmitter } from 'node:events';
import fs from 'node:fs/promises';
import path from 'node:path';

export const DEFAULT_LOG_MAX_BYTES = 8 * 1024 * 1024;

export interface LogRecord {
  /** kilnd's clock when the piece arrived, ms since the epoch. */
  ts: number;
  stream: 'stdout' | 'stderr';
  text: string;
  /** The piece did not end a line. */
  partial: boolean;
  boot: number;
  seq: number;
}

export interface LogPiece {
  boot: number;
  seq: number;
  stream: 'stdout' | 'stderr';
  text: string;
  partial: boolean;
}

const after = (a: { boot: number; seq: number }, b: { boot: number; seq: number } | null) =>
  b === null || a.boot > b.boot || (a.boot === b.boot && a.seq > b.seq);

export class ContainerLog extends EventEmitter<{ record: [LogRecord] }> {
  private last: { boot: number; seq: number } | null = null;
  private pending: string[] = [];
  private pendingBytes = 0;
  private flushing: Promise<void> = Promise.resolve();
  private size = 0;

  private constructor(
    readonly dir: string,
    private readonly maxBytes: number,
    private readonly onWriteError: (e: Error) => void,
  ) {
    super();
    this.setMaxListeners(0);
  }

  /** `onWriteError`: a write that failed (disk full…); the pieces are still streamed live. */
  static async open(dir: string, maxBytes = DEFAULT_LOG_MAX_BYTES, onWriteError: (e: Error) => void = () => {}): Promise<ContainerLog> {
    await fs.mkdir(dir, { recursive: true });
    const log = new ContainerLog(dir, maxBytes, onWriteError);
    log.size = (await fs.stat(log.current).catch(() => null))?.size ?? 0;
    const records = await log.read();
    const tail = records.at(-1);
    if (tail) log.last = { boot: tail.boot, seq: tail.seq };
    return log;
  }

  private get current(): string {
    return path.join(this.dir, 'log.jsonl');
  }

  private get previous(): string {
    return path.join(this.dir, 'log.1.jsonl');
  }

  append(piece: LogPiece): void {
    if (!after(piece, this.last)) return;
    this.last = { boot: piece.boot, seq: piece.seq };
    const rec: LogRecord = { ts: Date.now(), ...piece };
    const line = JSON.stringify(rec) + '\n';
    this.pending.push(line);
    this.pendingBytes += line.length;
    // A disk slower than the guest cannot make us queue more than the log would keep anyway.
    while (this.pendingBytes > this.maxBytes && this.pending.length > 1) this.pendingBytes -= this.pending.shift()!.length;
    this.emit('record', rec);
    if (this.pending.length === 1) this.flushing = this.flushing.then(() => this.flush());
  }

  /** Resolves once everything appended so far is on disk. */
  async settle(): Promise<void> {
    await this.flushing;
  }

  private async flush(): Promise<void> {
    const half = this.maxBytes / 2;
    while (this.pending.length) {
      const lines = this.pending;
      this.pending = [];
      this.pendingBytes = 0;
      // Half the budget per file: a rotation keeps the newest half to whole budget.
      let batch = '';
      let batchBytes = 0;
      for (const line of lines) {
        const n = Buffer.byteLength(line);
        if (this.size + batchBytes + n > half && this.size + batchBytes > 0) {
          if (batch) await fs.appendFile(this.current, batch).catch((e) => this.writeFailed(e));
          await fs.rename(this.current, this.previous).catch((e) => this.writeFailed(e));
          this.size = 0;
          batch = '';
          batchBytes = 0;
        }
        batch += line;
        batchBytes += n;
      }
      if (batch) await fs.appendFile(this.current, batch).catch((e) => this.writeFailed(e));
      this.size += batchBytes;
    }
  }

  /** The log's directory goes with its container (ENOENT mid-flush is a removal, not a fault). */
  private writeFailed(e: NodeJS.ErrnoException): void {
    if (e.code !== 'ENOENT') this.onWriteError(e);
  }

  /** Everything retained, oldest first; `tail`: only the last N records. */
  async read(tail?: number): Promise<LogRecord[]> {
    await this.flushing;
    const out: LogRecord[] = [];
    for (const file of [this.previous, this.current]) {
      const text = await fs.readFile(file, 'utf8').catch(() => '');
      for (const line of text.split('\n')) {
        if (!line) continue;
        try {
          out.push(JSON.parse(line) as LogRecord);
        } catch {
          // A line cut by a crash mid-write: skip it.
        }
      }
    }
    return tail === undefined ? out : out.slice(Math.max(0, out.length - tail));
  }

  /**
   * The retained records, then every new one, without a gap or a repeat in between.
   * Returns a stop function.
   */
  async follow(onRecord: (r: LogRecord) => void, tail?: number): Promise<() => void> {
    const early: LogRecord[] = [];
    let live = false;
    let lastSent: { boot: number; seq: number } | null = null;
    const send = (r: LogRecord) => {
      if (!after(r, lastSent)) return;
      lastSent = { boot: r.boot, seq: r.seq };
      onRecord(r);
    };
    const listener = (r: LogRecord) => (live ? send(r) : early.push(r));
    this.on('record', listener);
    for (const r of await this.read(tail)) send(r);
    for (const r of early) send(r);
    live = true;
    return () => this.off('record', listener);
  }
}

/** Records as text, the way `docker logs` prints them (`timestamps`: RFC 3339 per line). */
export function renderLog(records: LogRecord[], timestamps: boolean): string {
  let out = '';
  let atLineStart = true;
  for (const r of records) {
    if (timestamps && atLineStart) out += `${new Date(r.ts).toISOString()} `;
    out += r.text + (r.partial ? '' : '\n');
    atLineStart = !r.partial;
  }
  return out;
}
