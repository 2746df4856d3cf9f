// Restart safety: on daemon start, re-attach to every VMM that still runs, settle the VMs
// whose VMM went away while kilnd was down, and remove what nothing owns: VMMs named by a
// spawn intent or found by their command line, runtime dirs and classic disks of no VM.
import fs from 'node:fs/promises';
import path from 'node:path';
import type { BackendName } from '../vmm/driver.ts';
import type { VmRecord } from '../store/store.ts';
import { awaitReady } from './await-ready.ts';
import { classicDiskPath } from './classic.ts';
import type { LiveVms } from './live-vm.ts';
import { readIntents, type SpawnIntent } from './provision/spawn-intent.ts';
import { preciseNow } from './timeline.ts';
import { ACTIVE, type VmCore } from './vm-core.ts';
import type { VmConsole } from './vm-console.ts';
import { vmSpec, type VmNetAttachment } from './vm-spec.ts';
import { killAndWait, processesUnder } from './vmm-sweep.ts';
import { tapName } from '../net/network-manager.ts';

export class Reconciler {
  constructor(
    private readonly core: VmCore,
    private readonly lives: LiveVms,
    private readonly console: VmConsole,
  ) {}

  async reconcile(): Promise<void> {
    const { core } = this;
    const { store, log, network, config } = core.deps;
    // Read before any VM is settled: settling a failed VM removes its runtime dir, intent included.
    const intents = await readIntents(core.vmsDir);
    const vms = await store.listVms();
    for (const vm of vms) {
      await core.lock.run(vm.id, () => this.reconcileOne(vm)).catch((e) => log.error({ vm: vm.id, err: e }, 'reconcile failed'));
    }
    await this.killUnownedVmms(intents);
    await network.sweep().catch((e) => log.error({ err: e }, 'network sweep failed'));
    const known = new Set(vms.map((v) => v.id));
    for (const dir of await fs.readdir(core.vmsDir).catch(() => [] as string[])) {
      if (!known.has(dir)) {
        log.warn({ dir }, 'removing runtime dir of an unknown VM');
        await fs.rm(path.join(core.vmsDir, dir), { recursive: true, force: true });
      }
    }
    // Classic disks of VMs deleted while kilnd was stopping, and clones a crash left half-made.
    const disks = path.dirname(classicDiskPath(config.stateDir, 'x'));
    const keep = new Set(vms.flatMap((v) => (v.classic ? [path.basename(v.classic.disk.path)] : [])));
    for (const f of await fs.readdir(disks).catch(() => [] as string[])) {
      if (!keep.has(f)) {
        log.warn({ disk: f }, 'removing a disk no VM refers to');
        await fs.rm(path.join(disks, f), { force: true });
      }
    }
  }

  /**
   * VMMs no VM owns after the re-attach: those a spawn intent names (by its cgroup, through the
   * driver, and its pid) and any process whose command line names a runtime dir under this
   * state dir (a VMM whose intent was lost with its dir). Killed before the network sweep, so
   * their taps and namespaces go with them.
   */
  private async killUnownedVmms(intents: SpawnIntent[]): Promise<void> {
    const { core } = this;
    const { log, config } = core.deps;
    const owned = new Set([...core.live.values()].map((l) => l.instance.pid));
    const ownedVms = new Set(core.live.keys());
    for (const i of intents) {
      if (ownedVms.has(i.vmId)) continue;
      const driver = this.driverFor(i.backend);
      if (i.cgroup && driver?.reap) {
        const n = await driver.reap(i.cgroup).catch((e) => (log.error({ vm: i.vmId, err: e }, 'reaping a VM cgroup failed'), 0));
        if (n) log.warn({ vm: i.vmId, processes: n }, 'killed the processes of a VMM no VM owns (its cgroup)');
      }
    }
    const jails = path.join(config.stateDir, 'jailer');
    const found = await processesUnder(core.vmsDir, jails).catch((e) => (log.error({ err: e }, 'VMM sweep failed'), []));
    const intentPids = new Set(intents.map((i) => i.pid));
    for (const p of found) {
      if (owned.has(p.pid)) continue;
      const named = intentPids.has(p.pid) ? 'its spawn intent' : 'its command line';
      log.warn({ vm: p.vmId, pid: p.pid, by: named }, 'killing a VMM process no VM owns');
      if (!(await killAndWait(p.pid))) log.error({ vm: p.vmId, pid: p.pid }, 'a VMM process no VM owns did not die within 5 s of SIGKILL');
    }
  }

  private driverFor(backend: BackendName | string) {
    const { driver, driverFor } = this.core.deps;
    return backend === driver.name ? driver : driverFor?.(backend as BackendName);
  }

  private async reconcileOne(vm: VmRecord): Promise<void> {
    const { core } = this;
    if (vm.state === 'creating') {
      await core.failAndRelease(vm, 'KILN_ERR_VMM_FAILED: kilnd stopped while the VM was being created');
      return;
    }
    if (!ACTIVE.includes(vm.state)) return;
    const { store, assets, volumes, log, images } = core.deps;
    // Its path on this node (its copy), which the running VMM has open.
    const image = await images.get(vm.imageId).catch(() => null);
    const dir = core.runtimeDir(vm.id);
    const driver = this.driverFor(vm.backend);
    const extra = await volumes.drivesFor(vm, dir).catch(() => []);
    const instance = image && vm.pid && driver ? await driver.attach(vmSpec(vm, image, assets, dir, driver, this.netAttachment(vm), extra), vm.pid) : null;
    if (!instance) {
      const tail = await this.console.logs(vm.id).catch(() => '');
      const text = (await fs.readFile(path.join(dir, 'console.log'), 'utf8').catch(() => '')).slice(vm.consoleOffset);
      // kiln-init says poweroff; under systemd (classic VMs) the kernel's own last line does.
      const poweredOff = text.includes('@kiln:poweroff') || (!!vm.classic && text.includes('reboot: Power down'));
      if (poweredOff || vm.state === 'stopping') {
        await core.transition(vm.id, 'stopped', { pid: null }, 'VMM exited while kilnd was down (guest powered off)');
        await core.detachNetwork(vm);
      } else {
        log.warn({ vm: vm.id, tail: tail.slice(-500) }, 'VMM vanished while kilnd was down');
        await core.failAndRelease(vm, 'KILN_ERR_VMM_FAILED: the VMM process exited while kilnd was down');
      }
      return;
    }
    // Replaying the console from this boot's start recovers readiness and exit codes that
    // happened while kilnd was down.
    const live = this.lives.track(vm, instance, vm.consoleOffset, null);
    log.info({ vm: vm.id, pid: instance.pid, state: vm.state }, 're-attached to running VMM');
    if (vm.state === 'stopping') live.instance.kill().catch(() => {});
    else if (vm.state === 'booting') void awaitReady(core, vm, live, preciseNow());
  }

  /** The NIC a running VM already has. */
  private netAttachment(vm: VmRecord): VmNetAttachment | undefined {
    if (vm.network !== 'bridge' || !vm.ip) return undefined;
    const { network } = this.core.deps;
    const addr = network.address(vm.ip);
    return { nic: { tap: tapName(vm.id), mac: addr.mac }, kernelArgs: network.kernelArgs(addr) };
  }
}
