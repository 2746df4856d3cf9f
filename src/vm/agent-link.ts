// kilnd's link to one running VM's guest agent: the control-channel registration (hello,
// workload exit, misbehaviour), the session client, and the readiness detection of the
// current boot. Created when a VMM is tracked, closed when it exits or the VM is deleted.
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { AgentClient } from '../guest/agent/client.ts';
import type { AgentListener, AgentProblem } from '../guest/agent/listener.ts';
import type { HelloMessage, WorkloadExitMessage } from '../guest/agent/messages.ts';
import { macFor } from '../net/ipv4.ts';
import type { NeighbourWatch } from '../net/neighbour-watch.ts';
import type { AgentInfo, VmRecord } from '../store/store.ts';
import { detectReadiness, measureReadyLatency, type ClockSample, type DetectedBy } from './readiness.ts';

/** Guest TCP port of the agent's sessions (kiln-init's default). */
export const AGENT_SESSION_PORT = 10240;

export interface AgentHub {
  /** Null when kilnd could not listen for pushes: readiness falls back, and says why. */
  listener: AgentListener | null;
  pushUnavailable: string | null;
  /** `<bridge address>:<port>` the guest pushes to. */
  pushTarget: string;
  neighbours: NeighbourWatch;
}

export interface AgentLinkEvents {
  onHello(hello: HelloMessage): void;
  onExit(exit: WorkloadExitMessage): void;
  onProblem(problem: AgentProblem): void;
}

export class AgentLink {
  readonly client: AgentClient;
  /** Readiness probes give up fast: a guest that is not up yet must not hold a probe for long. */
  readonly #probe: AgentClient;
  readonly #abort = new AbortController();
  #helloAt!: (at: number) => void;
  readonly hello = new Promise<number>((r) => (this.#helloAt = r));
  #consoleReady!: () => void;
  readonly consoleReady = new Promise<void>((r) => (this.#consoleReady = r));
  version: string | null = null;

  constructor(
    private readonly vm: Pick<VmRecord, 'id' | 'ip' | 'agentToken' | 'readiness'>,
    private readonly hub: AgentHub,
    private readonly log: Logger,
    events: AgentLinkEvents,
  ) {
    const target = { kind: 'tcp', host: vm.ip!, port: AGENT_SESSION_PORT } as const;
    this.client = new AgentClient(target, vm.agentToken!);
    this.#probe = new AgentClient(target, vm.agentToken!, { connectTimeoutMs: 1000, opTimeoutMs: 1000 });
    hub.listener?.expect(
      vm.id,
      vm.agentToken!,
      {
        onHello: (hello) => {
          this.version = hello.agent;
          this.#helloAt(performance.now());
          events.onHello(hello);
        },
        onExit: (exit) => events.onExit(exit),
        onProblem: (p) => events.onProblem(p),
      },
      { ip: vm.ip! },
    );
  }

  /** Whether the guest is told to push (agent_host in its config drive). */
  static pushes(vm: Pick<VmRecord, 'readiness'>, hub: AgentHub): boolean {
    return hub.listener !== null && (vm.readiness === 'auto' || vm.readiness === 'push');
  }

  markConsoleReady(): void {
    this.#consoleReady();
  }

  /** Detects readiness for this boot; resolves with how, and when the host knew (performance.now()). */
  async ready(): Promise<{ info: AgentInfo; knownAt: number }> {
    const signal = this.#abort.signal;
    let mode: DetectedBy = this.vm.readiness === 'auto' ? 'push' : this.vm.readiness;
    if (mode === 'push' && !this.hub.listener) {
      this.log.warn({ vm: this.vm.id, why: this.hub.pushUnavailable }, 'agent push unavailable: readiness by neighbour table + backoff probe');
      mode = 'neighbour';
    }
    const r = await detectReadiness({
      mode,
      fallback: this.vm.readiness === 'auto',
      ip: this.vm.ip!,
      mac: macFor(this.vm.ip!),
      client: this.#probe,
      hello: this.hello,
      consoleReady: this.consoleReady,
      neighbours: this.hub.neighbours,
      signal,
      onFallback: (why) => this.log.warn({ vm: this.vm.id, why }, 'agent push missing: readiness by backoff polling'),
    });
    return { info: { channel: 'tcp', readiness: r.by, version: this.version, latencyMs: null, clockErrorMs: null }, knownAt: r.knownAt };
  }

  /**
   * Guest ready → host knew, on the host's clock. Measured after the VM is ready (it must
   * not delay readiness); null when the guest went away meanwhile.
   */
  async latency(knownAt: number): Promise<Pick<AgentInfo, 'latencyMs' | 'clockErrorMs'> | null> {
    try {
      const m = await measureReadyLatency(() => this.clockSample(this.#abort.signal), knownAt);
      return { latencyMs: round3(m.latencyMs), clockErrorMs: round3(m.clockErrorMs) };
    } catch (e) {
      this.log.debug({ vm: this.vm.id, err: e }, 'could not measure readiness latency');
      return null;
    }
  }

  /**
   * PID 1 answers on the control channel when it is connected (short, symmetric round trip);
   * otherwise a session does (connect + fork in the guest: a wider error bound).
   */
  private async clockSample(signal: AbortSignal): Promise<ClockSample> {
    const viaControl = await this.hub.listener?.time(this.vm.id);
    if (viaControl) return viaControl;
    const sentAt = performance.now();
    const time = await this.client.time({ signal, timeoutMs: 2000 });
    return { sentAt, receivedAt: performance.now(), time };
  }

  close(): void {
    this.#abort.abort();
    this.hub.listener?.forget(this.vm.id);
  }
}

const round3 = (x: number) => Math.round(x * 1000) / 1000;
