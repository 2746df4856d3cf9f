// Live events for the API role: every node appends to the one events table in PostgreSQL, in
// commit order (an advisory lock makes seq order commit order: src/store/pg/event-repo.ts), so
// following the table by seq sees every node's events once and in order. One follower per API
// process, polling only while someone listens; /v1/events itself is kilnd's own route
// (src/api/routes/events.ts) over this source, so replay, gaps and back-pressure are the same.
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { EventRecord, Store } from '../store/store.ts';

/** How often the table is read while a stream is open: the delay a live event may have. */
export const FOLLOW_INTERVAL_MS = 200;
const PAGE = 500;

export class StoreEventFollower {
  private readonly emitter = new EventEmitter<{ event: [EventRecord] }>();
  private listeners = 0;
  /** Bumped when the last listener leaves: a poll of an older run stops and emits nothing. */
  private run = 0;
  /** The current run's first read of the cursor (the newest stored event). */
  private started: Promise<void> = Promise.resolve();

  constructor(
    private readonly store: Store,
    private readonly log: Logger,
    private readonly intervalMs = FOLLOW_INTERVAL_MS,
  ) {
    this.emitter.setMaxListeners(0);
  }

  /**
   * Resolves once following: an event committed after this resolves reaches `fn`, in seq
   * order. What came before is the route's replay (`?since=`), not this.
   */
  async subscribe(fn: (e: EventRecord) => void): Promise<() => void> {
    this.emitter.on('event', fn);
    if (this.listeners++ === 0) {
      const run = ++this.run;
      this.started = this.store.lastEventSeq().then((seq) => {
        if (run === this.run) this.schedule(run, seq ?? 0);
      });
    }
    let done = false;
    const unsubscribe = () => {
      if (done) return;
      done = true;
      this.emitter.off('event', fn);
      if (--this.listeners === 0) this.run++;
    };
    try {
      await this.started;
    } catch (e) {
      unsubscribe();
      throw e;
    }
    return unsubscribe;
  }

  private schedule(run: number, cursor: number): void {
    setTimeout(() => {
      this.poll(run, cursor)
        .catch((e) => {
          this.log.warn({ err: e }, 'following the events table failed; retrying');
          return cursor;
        })
        .then((next) => {
          if (run === this.run) this.schedule(run, next);
        });
    }, this.intervalMs).unref();
  }

  private async poll(run: number, cursor: number): Promise<number> {
    for (;;) {
      const page = await this.store.listEvents({ afterSeq: cursor, limit: PAGE });
      if (run !== this.run) return cursor;
      for (const e of page) {
        cursor = e.seq;
        this.emitter.emit('event', e);
      }
      if (page.length < PAGE) return cursor;
    }
  }

  /** Stops following; open streams get nothing more. */
  close(): void {
    this.run++;
    this.listeners = 0;
    this.emitter.removeAllListeners();
  }
}
