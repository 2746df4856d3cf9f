// Docker's restart policies: "no", "on-failure[:N]", "always". Restarts are delayed with a
// backoff (100 ms, doubling, capped at 30 s) that resets once a run lasted STABLE_RUN_MS.
import { KilnError } from '../errors.ts';
import type { RestartPolicy } from '../store/store.ts';

export const BACKOFF_INITIAL_MS = 100;
export const BACKOFF_MAX_MS = 30_000;
/** A run at least this long was not a crash loop: the next restart starts from 100 ms again. */
export const STABLE_RUN_MS = 10_000;

export function parseRestartPolicy(text: string | undefined): RestartPolicy {
  if (text === undefined || text === 'no') return { name: 'no', maxRetries: null };
  if (text === 'always') return { name: 'always', maxRetries: null };
  const m = /^on-failure(?::(\d{1,6}))?$/.exec(text);
  if (m) return { name: 'on-failure', maxRetries: m[1] === undefined ? null : Number(m[1]) };
  throw new KilnError('KILN_ERR_VALIDATION', `restart policy must be "no", "on-failure[:N]" or "always", not ${JSON.stringify(text)}`);
}

export function formatRestartPolicy(p: RestartPolicy): string {
  return p.name === 'on-failure' && p.maxRetries !== null ? `on-failure:${p.maxRetries}` : p.name;
}

export interface ExitFacts {
  exitCode: number | null;
  userStopped: boolean;
  restartCount: number;
}

/** Whether the policy restarts a container that just exited. */
export function shouldRestart(p: RestartPolicy, e: ExitFacts): boolean {
  if (e.userStopped) return false;
  switch (p.name) {
    case 'no':
      return false;
    case 'always':
      return true;
    case 'on-failure':
      // An unknown exit code (the VM died without reporting one) counts as a failure.
      return e.exitCode !== 0 && (p.maxRetries === null || e.restartCount < p.maxRetries);
  }
}

/** The delay before restart number `step` (0-based) of a crash loop. */
export function backoffDelay(step: number): number {
  return Math.min(BACKOFF_INITIAL_MS * 2 ** Math.min(step, 30), BACKOFF_MAX_MS);
}

/** The backoff step for the next restart: back to 0 after a stable run. */
export function nextBackoffStep(step: number, ranMs: number): number {
  return ranMs >= STABLE_RUN_MS ? 0 : step + 1;
}
