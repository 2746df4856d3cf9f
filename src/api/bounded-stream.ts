// Streams a hijacked HTTP response (SSE, `logs?follow=1`) to a client that may read slower
// than kilnd produces, or not at all. Node buffers whatever the socket cannot take yet; left
// alone, one stalled client holding a stream open would grow kilnd's memory with every event
// or log line a guest causes. Each stream may have at most `maxBuffered` bytes queued: past
// that the client is cut off (it reconnects and resumes: SSE with `Last-Event-ID`/`since`,
// logs from the log file), and kilnd's memory stays bounded per client.
import type { ServerResponse } from 'node:http';

/** Bytes queued for one streaming client before it is dropped. */
export const STREAM_BUFFER_MAX = 1024 * 1024;

export class BoundedStream {
  #closed = false;
  #onClose: (() => void)[] = [];

  constructor(
    private readonly res: ServerResponse,
    private readonly maxBuffered = STREAM_BUFFER_MAX,
  ) {
    res.once('close', () => this.#finish());
  }

  get closed(): boolean {
    return this.#closed || this.res.destroyed;
  }

  /** Queues `chunk`; a client with more than the cap queued is cut off. False once closed. */
  write(chunk: string | Buffer): boolean {
    if (this.closed) return false;
    this.res.write(chunk);
    if (this.res.writableLength > this.maxBuffered) {
      this.res.destroy();
      this.#finish();
      return false;
    }
    return true;
  }

  /**
   * Resolves when what is queued has gone out (or the stream closed): for producers that can
   * wait, such as a replay read from the store page by page.
   */
  drained(): Promise<void> {
    if (this.closed || !this.res.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.res.off('drain', done);
        this.res.off('close', done);
        resolve();
      };
      this.res.once('drain', done);
      this.res.once('close', done);
    });
  }

  end(chunk?: string): void {
    if (this.closed) return;
    this.res.end(chunk);
    this.#finish();
  }

  /** Runs once when the stream ends for any reason (client gone, cut off, ended). */
  onClose(fn: () => void): void {
    if (this.#closed) fn();
    else this.#onClose.push(fn);
  }

  #finish(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const fn of this.#onClose.splice(0)) fn();
  }
}
