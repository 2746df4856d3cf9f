// kilnd's link to one running VM's guest agent: the control-channel registration (hello,
// workload exit, misbehaviour), the session client, and the readiness detection of the
// current boot. Created when a VMM is tracked, closed when it exits or the VM is deleted.
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import path from 'node:path';
import { AgentClient, type AgentTarget } from '../guest/agent/client.ts';
import type { AgentListener, AgentProblem } from '../guest/agent/listener.ts';
import type { HelloMessage, WorkloadExitMessage } from '../guest/agent/messages.ts';
import { macFor } from '../net/ipv4.ts';
import type { NeighbourWatch } from '../net/neighbour-watch.ts';
import type { AgentInfo, VmRecord } from '../store/store.ts';
import { detectReadiness, measureReadyLatency, type ClockSample, type DetectedBy } from './readiness.ts';

/** Guest TCP port of the agent's sessions (kiln-init's default). */
export const AGENT_SESSION_PORT = 10240;
/** vsock port of the agent: sessions to the guest on it, pushes to the host (CID 2) on it. */
export const AGENT_VSOCK_PORT = 10240;
/** Every Firecracker VM has its own vsock device, so every guest can have the same CID. */
export const GUEST_CID = 3;

/**
 * The best channel a VM has: Firecracker's hybrid vsock (a Unix socket on the host, no
 * network needed), else TCP over kiln's bridge. QEMU's vhost-vsock would need AF_VSOCK
 * sockets on the host, which Node does not have, so QEMU VMs use TCP.
 */
export function agentChannel(vm: Pick<VmRecord, 'backend' | 'ip'>, runtimeDir: string): AgentTarget | null {
  // In a directory of its own: under Firecracker's jailer that directory is a link into the jail.
  if (vm.backend === 'firecracker') return { kind: 'vsock', udsPath: path.join(runtimeDir, 'vsock', 'vsock.sock'), port: AGENT_VSOCK_PORT };
  return vm.ip ? { kind: 'tcp', host: vm.ip, port: AGENT_SESSION_PORT } : null;
}

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

  #stopUnix: Promise<(() => Promise<void>) | null> = Promise.resolve(null);

  constructor(
    private readonly vm: Pick<VmRecord, 'id' | 'ip' | 'agentToken' | 'readiness'>,
    private readonly target: AgentTarget,
    private readonly hub: AgentHub,
    private readonly log: Logger,
    events: AgentLinkEvents,
  ) {
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
      vm.ip ? { ip: vm.ip } : {},
    );
    if (target.kind === 'vsock' && hub.listener) {
      // Firecracker hands a guest-initiated vsock connection to `<uds>_<port>` on the host.
      this.#stopUnix = hub.listener.listenUnix(`${target.udsPath}_${target.port}`, vm.id).catch((e) => {
        log.error({ vm: vm.id, err: e }, 'cannot listen for the agent on vsock');
        return null;
      });
    }
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
    // The neighbour table needs an address on kiln's bridge.
    if (mode === 'neighbour' && !this.vm.ip) mode = 'poll';
    const r = await detectReadiness({
      mode,
      fallback: this.vm.readiness === 'auto',
      ip: this.vm.ip ?? '',
      mac: this.vm.ip ? macFor(this.vm.ip) : '',
      client: this.#probe,
      hello: this.hello,
      consoleReady: this.consoleReady,
      neighbours: this.hub.neighbours,
      signal,
      onFallback: (why) => this.log.warn({ vm: this.vm.id, why }, 'agent push missing: readiness by backoff polling'),
    });
    return { info: { channel: this.target.kind, readiness: r.by, version: this.version, latencyMs: null, clockErrorMs: null }, knownAt: r.knownAt };
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
    void this.#stopUnix.then((stop) => stop?.());
  }
}

const round3 = (x: number) => Math.round(x * 1000) / 1000;
