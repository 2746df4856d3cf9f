// A push/pull queue for turning callbacks (process output, inotify lines) into the async
// iterables Connect's server-streaming handlers yield from; optional keepalive items while
// nothing else arrives, as envd sends them to keep proxies from closing idle streams.

export class AsyncQueue<T> {
  private readonly items: T[] = [];
  private waiter: (() => void) | null = null;
  private ended = false;
  private error: unknown = null;

  push(item: T): void {
    if (this.ended) return;
    this.items.push(item);
    this.wake();
  }

  end(error: unknown = null): void {
    if (this.ended) return;
    this.ended = true;
    this.error = error;
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  /** Yields items until end(); `keepalive()` every `keepaliveMs` of silence; stops on `signal`. */
  async *drain(signal: AbortSignal, keepaliveMs?: number, keepalive?: () => T): AsyncGenerator<T> {
    for (;;) {
      while (this.items.length) yield this.items.shift()!;
      if (this.ended) {
        if (this.error) throw this.error;
        return;
      }
      if (signal.aborted) return;
      let timer: NodeJS.Timeout | undefined;
      let onAbort: (() => void) | undefined;
      const timedOut = await new Promise<boolean>((resolve) => {
        this.waiter = () => resolve(false);
        onAbort = () => resolve(false);
        signal.addEventListener('abort', onAbort, { once: true });
        if (keepaliveMs && keepalive) timer = setTimeout(() => resolve(true), keepaliveMs);
      });
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort!);
      this.waiter = null;
      if (timedOut && keepalive && !this.items.length) yield keepalive();
    }
  }
}
