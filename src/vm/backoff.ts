// Readiness fallback 2: poll with exponential backoff under a hard deadline (DESIGN.md §4:
// start 50 ms, double, cap 2 s). Used only when the push path is unavailable.
import { setTimeout as sleep } from 'node:timers/promises';

export interface BackoffOptions {
  initialMs?: number;
  maxMs?: number;
  signal: AbortSignal;
}

/** Calls `probe` until it returns true; the signal is the hard deadline. Returns the attempt count. */
export async function pollWithBackoff(probe: () => Promise<boolean>, opts: BackoffOptions): Promise<number> {
  let delay = opts.initialMs ?? 50;
  const max = opts.maxMs ?? 2000;
  for (let attempt = 1; ; attempt++) {
    opts.signal.throwIfAborted();
    if (await probe().catch(() => false)) return attempt;
    // Surface the deadline's own reason, not the timer's generic AbortError.
    await sleep(delay, undefined, { signal: opts.signal }).catch(() => opts.signal.throwIfAborted());
    delay = Math.min(delay * 2, max);
  }
}
