// Readiness fallback 1: the host's neighbour table. Since the isolation work (issue #13) the
// host holds a permanent entry for every leased address from the moment its tap exists and
// never learns one from a guest's ARP (arp_accept off), so a wait here ends at once and the
// mode is in effect the backoff probe of the agent that follows it (src/vm/readiness.ts).
// The agent's push is the readiness path; this stays for bench/readiness and diagnostics.
// One `ip monitor` per daemon, started while someone waits and stopped when nobody does.
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { KilnError } from '../errors.ts';
import { listNeighbours, monitorNeighbours, type NeighbourEvent } from '../tools/ip.ts';
import type { LineStream } from '../util/process.ts';

const LIVE_STATES = new Set(['REACHABLE', 'STALE', 'DELAY', 'PROBE', 'PERMANENT', 'NOARP']);

interface Waiter {
  ip: string;
  mac: string;
  resolve: (at: number) => void;
}

export class NeighbourWatch {
  #monitor: LineStream | null = null;
  readonly #waiters = new Set<Waiter>();

  constructor(
    private readonly bridge: string,
    private readonly log: Logger,
  ) {}

  /** Resolves with performance.now() at the moment the host learned `ip` is at `mac`. */
  async waitFor(ip: string, mac: string, signal: AbortSignal): Promise<number> {
    signal.throwIfAborted();
    return new Promise<number>((resolve, reject) => {
      const w: Waiter = {
        ip,
        mac,
        resolve: (at) => {
          cleanup();
          resolve(at);
        },
      };
      const onAbort = () => {
        cleanup();
        reject(signal.reason ?? new KilnError('KILN_ERR_BOOT_TIMEOUT', `no neighbour entry for ${ip}`));
      };
      const cleanup = () => {
        this.#waiters.delete(w);
        signal.removeEventListener('abort', onAbort);
        if (this.#waiters.size === 0) this.#stop();
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.#waiters.add(w);
      this.#start();
      // An entry that appeared before the monitor started is in the table already.
      void listNeighbours(this.bridge)
        .then((entries) => {
          for (const e of entries) this.#dispatch({ ip: e.dst, mac: e.lladdr ?? null, state: e.state?.[0] ?? '' });
        })
        .catch((e) => this.log.warn({ err: e }, 'reading the neighbour table failed'));
    });
  }

  #dispatch(e: NeighbourEvent): void {
    if (!e.mac || !LIVE_STATES.has(e.state)) return;
    const at = performance.now();
    for (const w of this.#waiters) if (w.ip === e.ip && w.mac === e.mac.toLowerCase()) w.resolve(at);
  }

  #start(): void {
    if (this.#monitor) return;
    const m = monitorNeighbours(this.bridge, (e) => this.#dispatch(e));
    this.#monitor = m;
    m.done.catch((e) => {
      this.log.warn({ err: e }, 'neighbour monitor ended');
      if (this.#monitor === m) this.#monitor = null;
    });
  }

  #stop(): void {
    this.#monitor?.stop();
    this.#monitor = null;
  }

  close(): void {
    this.#stop();
  }
}
