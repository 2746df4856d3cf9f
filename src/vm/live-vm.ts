// A running VMM wired into the lifecycle: its console (markers, tagged workload output), its
// guest agent link, the rate limit on what the guest can make kilnd record, and its exit.
// Everything here reacts to the guest, which is untrusted: a marker counts once per boot, and
// every event a guest causes passes its gate first (docs/security.md, "Bounded guest input").
import { KilnError } from '../errors.ts';
import { GuestInputGate } from '../events/guest-input-gate.ts';
import { ConsoleFollower } from '../guest/console-follower.ts';
import { parseMarker, parseOutputLine } from '../guest/console-protocol.ts';
import type { VmRecord } from '../store/store.ts';
import type { VmmExit, VmmInstance } from '../vmm/driver.ts';
import { AgentLink, agentChannel } from './agent-link.ts';
import { ConsoleMux } from './console-mux.ts';
import type { Timeline } from './timeline.ts';
import type { LiveVm, VmCore } from './vm-core.ts';

export class LiveVms {
  constructor(
    private readonly core: VmCore,
    /** Boots a stopped VM again (a classic VM's guest asked for a reboot). */
    private readonly restart: (id: string) => Promise<unknown>,
  ) {}

  /** Wires a running VMM's console and exit into the lifecycle. `timeline`: the boot's, whose console phases the markers end. */
  track(vm: VmRecord, instance: VmmInstance, consoleOffset: number, timeline: Timeline | null): LiveVm {
    const { core } = this;
    const id = vm.id;
    let markReady!: () => void;
    let failBoot!: (e: Error) => void;
    const ready = new Promise<void>((res, rej) => {
      markReady = res;
      failBoot = rej;
    });
    ready.catch(() => {});
    const gi = core.deps.config.guestInput;
    const follower = new ConsoleFollower(instance.consoleLogPath, consoleOffset, { rotateAtBytes: Math.floor(gi.consoleLogMaxBytes / 2) });
    const live: LiveVm = {
      instance, follower, timeline, ready, markReady, failBoot, failReason: null, guestError: null, exitCode: null, deleting: false, agent: null,
      boot: vm.bootCount, outputSeq: 0, console: instance.openConsole ? new ConsoleMux(() => instance.openConsole!()) : null,
      gate: new GuestInputGate(gi.eventsPerSecond, gi.eventsBurst), seen: new Set(), misbehaved: false,
    };
    const channel = agentChannel(vm, core.runtimeDir(id));
    if (vm.agentToken && channel) {
      live.agent = new AgentLink(vm, channel, core.deps.agents, core.deps.log, {
        onHello: (hello) => this.guestEvent(id, live, 'vm.agent', { event: 'hello', agent: hello.agent, connects: hello.connects, boot: hello.boot }),
        onExit: (exit) => {
          live.exitCode = exit.code ?? 128 + (exit.signal ?? 0);
        },
        onProblem: (p) => {
          live.misbehaved = true;
          if (this.admit(id, live)) void this.markUnhealthy(id, `guest agent ${p.reason}: ${p.message}`);
        },
      });
    }
    follower.on('line', (line) => this.onConsoleLine(id, live, line));
    // This boot's output now starts at the beginning of the (truncated) file.
    follower.on('rotated', () => void core.deps.store.updateVm(id, { consoleOffset: 0 }).catch(() => {}));
    follower.on('error', (e) => core.deps.log.warn({ vm: id, err: e }, 'console follower error'));
    follower.start();
    core.live.set(id, live);
    void instance.exited.then((exit) => core.lock.run(id, () => this.onVmmExit(id, live, exit)));
    return live;
  }

  private onConsoleLine(id: string, live: LiveVm, line: string): void {
    const out = parseOutputLine(line);
    if (out) {
      this.core.output.emit('output', { vmId: id, boot: live.boot, seq: live.outputSeq++, ...out });
      return;
    }
    const m = parseMarker(line);
    if (!m) return;
    if (m.event === 'boot' || m.event === 'ready') {
      if (live.seen.has(m.event)) return;
      live.seen.add(m.event);
    }
    switch (m.event) {
      case 'boot':
        void live.timeline?.end('guest.kernel');
        live.timeline?.begin('guest.init');
        break;
      case 'ready':
        live.agent?.markConsoleReady();
        void live.timeline?.end('guest.init').then(() => live.markReady());
        if (!live.timeline) live.markReady();
        this.guestEvent(id, live, 'vm.guest', { event: 'ready', ...m.fields });
        break;
      case 'exit':
        live.exitCode = m.fields.code !== undefined ? Number(m.fields.code) : 128 + Number(m.fields.signal ?? 0);
        this.guestEvent(id, live, 'vm.guest', { event: 'exit', ...m.fields });
        break;
      case 'warn':
        if (this.guestEvent(id, live, 'vm.guest', { event: 'warn', ...m.fields })) this.core.deps.log.warn({ vm: id, ...m.fields }, 'guest warning');
        break;
      case 'error':
        live.guestError = `kiln-init failed at ${m.fields.stage ?? '?'}: ${(m.fields.msg ?? '').replaceAll('_', ' ')} (errno ${m.fields.errno ?? '?'})`;
        live.failBoot(new KilnError('KILN_ERR_GUEST_FAILED', live.guestError));
        this.guestEvent(id, live, 'vm.guest', { event: 'error', ...m.fields });
        break;
    }
  }

  /**
   * Whether the guest may make kilnd record one more thing now. When not, the VM gets at most
   * one `rate_limited` event per interval.
   */
  private admit(id: string, live: LiveVm): boolean {
    const v = live.gate.admit();
    if (v.pass) return true;
    if (v.notice) {
      this.core.deps.log.warn({ vm: id, dropped: v.notice.dropped }, 'guest input rate-limited');
      this.core.deps.bus.publish('vm.guest', id, { event: 'rate_limited', dropped: v.notice.dropped });
    }
    return false;
  }

  /** Records an event a guest caused, subject to its rate limit; true if it was recorded. */
  private guestEvent(id: string, live: LiveVm, type: string, data: Record<string, unknown>): boolean {
    if (!this.admit(id, live)) return false;
    this.core.deps.bus.publish(type, id, data);
    return true;
  }

  /** A guest that misbehaves on the agent channel stays up but is flagged, with the reason. */
  private async markUnhealthy(id: string, reason: string): Promise<void> {
    const { store, log, bus } = this.core.deps;
    if (!(await store.getVm(id))) return;
    log.warn({ vm: id, reason }, 'guest agent misbehaved: VM marked unhealthy');
    await store.updateVm(id, { health: 'unhealthy', healthReason: reason });
    bus.publish('vm.health', id, { health: 'unhealthy', reason });
  }

  private async onVmmExit(id: string, live: LiveVm, exit: VmmExit): Promise<void> {
    const { core } = this;
    if (core.live.get(id) !== live) return;
    core.live.delete(id);
    // The guest's last lines (its exit code, a container's final output) may not be read yet.
    await live.follower.drain();
    core.release(id, live, 'the VM stopped');
    live.failBoot(new KilnError('KILN_ERR_VMM_FAILED', exit.reason));
    if (live.deleting) return;
    const vm = await core.deps.store.getVm(id);
    if (!vm) return;
    const reason = live.failReason ?? (live.guestError ? `KILN_ERR_GUEST_FAILED: ${live.guestError}` : null);
    if (!reason && (vm.state === 'stopping' || exit.clean)) {
      const rebooting = !!vm.classic && vm.state !== 'stopping' && exit.reset === true;
      const why = vm.state === 'stopping' ? 'stopped on request'
        : rebooting ? 'guest rebooted: starting it again'
        : vm.classic ? 'guest powered off' : `guest powered off (workload exit code ${live.exitCode ?? 'unknown'})`;
      await core.transition(id, 'stopped', { pid: null, exitCode: live.exitCode }, why);
      await core.detachNetwork(vm);
      // `reboot` inside a classic VM means what it means on any machine. (QEMU runs with
      // -no-reboot so that a workload VM's reset ends it; here kilnd boots it again.)
      if (rebooting) setImmediate(() => void this.restart(id).catch((e) => core.deps.log.error({ vm: id, err: e }, 'restart after guest reboot failed')));
      return;
    }
    await core.failAndRelease(vm, reason ?? `KILN_ERR_VMM_FAILED: ${exit.reason}`);
  }
}
