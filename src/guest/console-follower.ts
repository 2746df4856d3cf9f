// Follows a VM's serial console log as it grows. Readiness is pushed: QEMU appends the
// guest's bytes to the file and inotify (fs.watch) wakes us; there is no polling interval.
// With `rotateAtBytes` it also caps the file (docs/security.md, "Bounded guest input"): the
// VMM holds it open with O_APPEND, so it is rotated by copy-and-truncate (console.log →
// console.log.1, then console.log cut to zero; the VMM's next write lands at the new end).
// Together the two files stay under 2 × rotateAtBytes plus what arrives during one rotation.
import fs from 'node:fs';
import { EventEmitter } from 'node:events';

const READ_CHUNK = 64 * 1024;
/** A guest that never prints a newline cannot make kilnd buffer without bound. */
const MAX_LINE = 16 * 1024;

export interface ConsoleFollowerOptions {
  /** Rotate once the file holds this much (the follower of the VM's lifecycle only). */
  rotateAtBytes?: number;
}

export class ConsoleFollower extends EventEmitter<{ line: [string]; data: [Buffer]; error: [Error]; rotated: [] }> {
  private fd: number | null = null;
  private watcher: fs.FSWatcher | null = null;
  private reading = false;
  private again = false;
  private partial = '';
  private closed = false;
  private drained: (() => void)[] = [];

  constructor(
    private readonly file: string,
    private offset: number,
    private readonly opts: ConsoleFollowerOptions = {},
  ) {
    super();
  }

  start(): this {
    try {
      this.fd = fs.openSync(this.file, 'r');
      this.watcher = fs.watch(this.file, { persistent: false }, () => this.pump());
      this.watcher.on('error', (e) => this.emit('error', e));
    } catch (e) {
      queueMicrotask(() => this.emit('error', e as Error));
      return this;
    }
    this.pump();
    return this;
  }

  private pump(): void {
    if (this.closed || this.fd === null) return;
    if (this.reading) {
      this.again = true;
      return;
    }
    this.reading = true;
    const buf = Buffer.allocUnsafe(READ_CHUNK);
    const step = (): void => {
      if (this.closed || this.fd === null) return;
      fs.read(this.fd, buf, 0, READ_CHUNK, this.offset, (err, n) => {
        if (err) {
          this.reading = false;
          this.emit('error', err);
          return;
        }
        if (n > 0) {
          this.offset += n;
          this.consume(Buffer.from(buf.subarray(0, n)));
          if (this.opts.rotateAtBytes && this.offset >= this.opts.rotateAtBytes) {
            this.rotate().then(step, (e: Error) => {
              this.reading = false;
              this.emit('error', e);
            });
            return;
          }
          step();
          return;
        }
        // Someone else rotated the file (another follower of the same VM): start over at 0.
        if (this.fd !== null && fs.fstatSync(this.fd).size < this.offset) {
          this.offset = 0;
          step();
          return;
        }
        this.reading = false;
        if (this.again) {
          this.again = false;
          this.pump();
        } else {
          for (const done of this.drained.splice(0)) done();
        }
      });
    };
    step();
  }

  /** Copy, catch up with what arrived meanwhile, truncate: only that last instant can lose bytes. */
  private async rotate(): Promise<void> {
    await fs.promises.copyFile(this.file, `${this.file}.1`);
    if (this.closed || this.fd === null) return;
    const buf = Buffer.allocUnsafe(READ_CHUNK);
    // Bounded: a writer faster than local reads must not keep us here.
    for (let n, i = 0; i < 16 && (n = fs.readSync(this.fd, buf, 0, READ_CHUNK, this.offset)) > 0; i++) {
      this.offset += n;
      this.consume(Buffer.from(buf.subarray(0, n)));
    }
    fs.truncateSync(this.file, 0);
    this.offset = 0;
    this.emit('rotated');
  }

  private consume(chunk: Buffer): void {
    this.emit('data', chunk);
    if (this.listenerCount('line') === 0) return;
    let text = this.partial + chunk.toString('utf8');
    let nl: number;
    while ((nl = text.indexOf('\n')) >= 0) {
      this.emit('line', text.slice(0, nl).replace(/\r$/, ''));
      text = text.slice(nl + 1);
    }
    this.partial = text.length > MAX_LINE ? '' : text;
  }

  get position(): number {
    return this.offset;
  }

  /**
   * Reads to the end of what the file holds now, then resolves: the VMM has exited, so the
   * last lines it wrote are delivered before the follower is closed.
   */
  drain(timeoutMs = 1000): Promise<void> {
    if (this.closed || this.fd === null) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.drained.push(() => {
        clearTimeout(timer);
        resolve();
      });
      this.pump();
    });
  }

  close(): void {
    for (const done of this.drained.splice(0)) done();
    if (this.closed) return;
    this.closed = true;
    this.watcher?.close();
    if (this.fd !== null) fs.close(this.fd, () => {});
    this.fd = null;
  }
}
