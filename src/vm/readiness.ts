// How kilnd learns that a guest is ready, per boot. The happy path is the agent's push (it
// connects to kilnd and says hello the moment it is up: nothing polls). The fallbacks exist
// for when that channel is unavailable, are logged when used, and are measured by
// bench/readiness: the host's neighbour table (the guest's network came up) followed by a
// backoff probe of the agent, and backoff polling of the agent from VMM start.
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import type { AgentClient } from '../guest/agent/client.ts';
import type { NeighbourWatch } from '../net/neighbour-watch.ts';
import { pollWithBackoff } from './backoff.ts';

export type DetectedBy = 'push' | 'neighbour' | 'poll';

/** In 'auto', how long after the console says ready kilnd waits for the push before polling. */
export const PUSH_GRACE_MS = 2000;

export interface ReadinessInput {
  mode: DetectedBy;
  /** 'auto' falls back from push to polling when no hello follows the console's ready. */
  fallback: boolean;
  ip: string;
  mac: string;
  client: AgentClient;
  /** Resolves with performance.now() when the agent's authenticated hello arrives. */
  hello: Promise<number>;
  /** Resolves when kiln-init printed its ready marker on the serial console. */
  consoleReady: Promise<void>;
  neighbours: NeighbourWatch;
  signal: AbortSignal;
  onFallback: (why: string) => void;
}

export interface Readiness {
  by: DetectedBy;
  /** performance.now() when the host knew. */
  knownAt: number;
}

const probe = (client: AgentClient, signal: AbortSignal) => () =>
  client.status({ signal, timeoutMs: 1000 }).then(() => true);

export async function detectReadiness(r: ReadinessInput): Promise<Readiness> {
  const poll = async (): Promise<Readiness> => {
    await pollWithBackoff(probe(r.client, r.signal), { signal: r.signal });
    return { by: 'poll', knownAt: performance.now() };
  };
  switch (r.mode) {
    case 'poll':
      return poll();
    case 'neighbour': {
      // The neighbour entry says the guest's network is up; the agent follows shortly, so a
      // backoff probe restarted from that moment finds it quickly.
      await r.neighbours.waitFor(r.ip, r.mac, r.signal);
      await pollWithBackoff(probe(r.client, r.signal), { signal: r.signal });
      return { by: 'neighbour', knownAt: performance.now() };
    }
    case 'push': {
      const pushed = r.hello.then((knownAt): Readiness => ({ by: 'push', knownAt }));
      if (!r.fallback) return pushed;
      // Once the hello is in, the fallback is moot: without this it fired anyway 2 s after the
      // console's marker, logging a missing push and probing a VM that was already ready.
      const settled = new AbortController();
      void pushed.then(() => settled.abort());
      const fallback = r.consoleReady
        .then(() => sleep(PUSH_GRACE_MS, undefined, { signal: AbortSignal.any([r.signal, settled.signal]) }))
        .then(() => {
          r.onFallback(`no agent hello ${PUSH_GRACE_MS} ms after the console reported ready`);
          return poll();
        });
      fallback.catch(() => {});
      return Promise.race([pushed, fallback]);
    }
  }
}

/** One clock sample: when the request left, when the answer came, what the guest said. */
export interface ClockSample {
  sentAt: number;
  receivedAt: number;
  time: { boottime_us: number; ready_boottime_us: number };
}

/**
 * Places the guest's "ready" instant on the host's clock with `time` round trips: the guest
 * answers with its boot clock now and at ready; each answer was produced somewhere inside its
 * round trip, so the mapping's error is at most half of it. The shortest of a few wins (NTP's
 * rule).
 */
export async function measureReadyLatency(sample: () => Promise<ClockSample>, knownAt: number, samples = 5): Promise<{ latencyMs: number; clockErrorMs: number }> {
  let best: { latencyMs: number; clockErrorMs: number } | null = null;
  for (let i = 0; i < samples; i++) {
    const { sentAt, receivedAt, time } = await sample();
    const readyOnHost = (sentAt + receivedAt) / 2 - (time.boottime_us - time.ready_boottime_us) / 1000;
    const err = (receivedAt - sentAt) / 2;
    if (!best || err < best.clockErrorMs) best = { latencyMs: knownAt - readyOnHost, clockErrorMs: err };
  }
  return best!;
}
