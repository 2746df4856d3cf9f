// From a running VMM to a ready VM: the agent's authenticated hello (or, without an agent,
// kiln-init's console marker) within the boot deadline. A boot that does not get there is
// killed; the exit handler (live-vm.ts) records why.
import { KilnError } from '../errors.ts';
import type { AgentInfo, VmRecord } from '../store/store.ts';
import type { AgentLink } from './agent-link.ts';
import { fromMonotonic, preciseNow, type Timeline } from './timeline.ts';
import type { LiveVm, VmCore } from './vm-core.ts';

/** `restored`: a clone's timeline, whose `agent.hello` phase the hello ends. */
export async function awaitReady(core: VmCore, vm: VmRecord, live: LiveVm, t0: number, restored?: Timeline): Promise<void> {
  const { config, store, bus, metrics } = core.deps;
  const timeout = setTimeout(() => live.failBoot(new KilnError('KILN_ERR_BOOT_TIMEOUT', `guest not ready after ${config.bootTimeoutMs} ms`)), config.bootTimeoutMs);
  let agentReady: { info: AgentInfo; knownAt: number } | null = null;
  try {
    if (live.agent) {
      // The agent's readiness (push, or a logged fallback) is the VM's; the console's marker
      // only closes the guest.init phase.
      agentReady = await Promise.race([live.agent.ready(), live.ready.then(() => new Promise<never>(() => {}))]);
      // The hello proves the kernel booted and init finished, even if their console markers
      // are still on their way.
      await live.timeline?.settle(['guest.kernel', 'guest.init']);
      await restored?.end('agent.hello', fromMonotonic(agentReady.knownAt));
      const { info } = agentReady;
      // A problem reported while the hello was on its way (the agent is slower than a hostile
      // workload started at the same instant) is not erased by it.
      const healthy = info.readiness === 'push' && !live.misbehaved;
      await store.updateVm(vm.id, { agent: info, ...(healthy ? { health: 'healthy' as const, healthReason: null } : {}) });
      bus.publish('vm.agent', vm.id, { event: 'ready', readiness: info.readiness, channel: info.channel });
    } else {
      await live.ready;
    }
    await core.lock.run(vm.id, async () => {
      const cur = await store.getVm(vm.id);
      if (cur?.state !== 'booting' || core.live.get(vm.id) !== live) return;
      metrics.provisionTotal.observe({ backend: vm.backend, accelerator: vm.accelerator }, (preciseNow() - t0) / 1000);
      await core.transition(vm.id, 'ready');
    });
    if (agentReady && live.agent) void recordReadyLatency(core, vm.id, live.agent, agentReady);
  } catch (e) {
    // A boot that failed while its VMM still runs: kill it; the exit handler records why.
    if (core.live.get(vm.id) === live && !live.deleting) {
      live.failReason ??= `${(e as KilnError).code ?? 'KILN_ERR_GUEST_FAILED'}: ${(e as Error).message}`;
      await live.instance.kill().catch(() => {});
    }
  } finally {
    clearTimeout(timeout);
  }
}

async function recordReadyLatency(core: VmCore, id: string, link: AgentLink, ready: { info: AgentInfo; knownAt: number }): Promise<void> {
  const m = await link.latency(ready.knownAt);
  if (!m || core.live.get(id)?.agent !== link) return;
  const info = { ...ready.info, ...m };
  await core.deps.store.updateVm(id, { agent: info }).catch(() => {});
  core.deps.bus.publish('vm.agent', id, { event: 'latency', readiness: info.readiness, latency_ms: info.latencyMs, clock_error_ms: info.clockErrorMs });
}
