// Stopping a VM: the guest is asked (kiln-init's stop command with a grace period for the
// workload; systemd's poweroff for a classic VM), and the VMM is killed when it does not
// exit in time. A VM still booting has nothing to ask: its VMM is killed at once.
import { KilnError } from '../errors.ts';
import { stopCommand } from '../guest/console-protocol.ts';
import type { VmRecord } from '../store/store.ts';
import { CLASSIC_STOP_GRACE_MS } from './classic.ts';
import { ACTIVE, type LiveVm, type VmCore } from './vm-core.ts';
import type { VmConsole } from './vm-console.ts';

/** Margin past the guest's grace period before the VMM is killed. */
const KILL_MARGIN_MS = 5000;

export async function stopVm(core: VmCore, console: VmConsole, idOrName: string, graceMsIn?: number): Promise<VmRecord> {
  const { id, classic } = await core.get(idOrName);
  const graceMs = graceMsIn ?? (classic ? CLASSIC_STOP_GRACE_MS : core.deps.config.stopGraceMs);
  const live = await core.lock.run(id, async () => {
    const vm = await core.get(id);
    if (vm.state === 'stopped') return null;
    if (!ACTIVE.includes(vm.state) || vm.state === 'stopping') {
      throw new KilnError('KILN_ERR_INVALID_STATE', `cannot stop a VM that is ${vm.state}`);
    }
    const l = core.live.get(id);
    if (!l) throw new KilnError('KILN_ERR_INVALID_STATE', `VM ${id} has no running VMM`);
    if (vm.state === 'paused') await l.instance.resume();
    await core.transition(id, 'stopping');
    if (vm.state === 'booting') await l.instance.kill();
    else if (vm.classic) await powerOffClassic(core, vm, l);
    else await console.write(l, stopCommand(graceMs)).catch(() => l.instance.kill());
    return l;
  });
  if (live) {
    // kiln-init gets `graceMs` to stop the workload; past that plus a margin, pull the plug.
    const stopped = await Promise.race([
      live.instance.exited.then(() => true),
      new Promise<boolean>((r) => setTimeout(() => r(false), graceMs + KILL_MARGIN_MS).unref()),
    ]);
    if (!stopped) await live.instance.kill();
  }
  return core.waitFor(id, ['stopped'], 10_000).catch(() => core.get(id));
}

/**
 * systemd shuts a classic VM down: asked by the agent (SIGRTMIN+4 to PID 1, systemd's
 * poweroff), else by the ACPI power button (QMP system_powerdown), else it is killed.
 */
async function powerOffClassic(core: VmCore, vm: VmRecord, l: LiveVm): Promise<void> {
  try {
    if (!l.agent) throw new Error('no agent');
    await l.agent.client.shutdown(undefined, { timeoutMs: 5000 });
    core.deps.log.info({ vm: vm.id }, 'classic VM: poweroff requested through the agent');
  } catch (e) {
    core.deps.log.warn({ vm: vm.id, err: (e as Error).message }, 'classic VM: agent shutdown failed; pressing the ACPI power button');
    if (l.instance.powerdown) await l.instance.powerdown().catch(() => l.instance.kill());
    else await l.instance.kill();
  }
}
