// The base provisioning list, a cold boot:
//   image.fetch → rootfs.prepare ∥ network.prepare → vmm.spawn → vm.track → vm.booting
// image.fetch is instant when this node has a copy of the image; in a cluster, a node that
// has none fetches it from a peer (or pulls it again) first, and the timeline shows how long.
// A classic VM replaces rootfs.prepare (classicSteps); a template clone edits the list
// further (restore.ts). The two prepare steps are independent and run concurrently.
import fs from 'node:fs/promises';
import path from 'node:path';
import { encodeConfigDrive } from '../../guest/config-drive.ts';
import { prepareVmRoot } from '../../image/rootfs-prepare.ts';
import type { VmRecord } from '../../store/store.ts';
import { StepList } from '../../util/steps.ts';
import type { VmmInstance } from '../../vmm/driver.ts';
import { AGENT_SESSION_PORT, AGENT_VSOCK_PORT, AgentLink, GUEST_CID, agentChannel } from '../agent-link.ts';
import { ensureClassicDisk } from '../classic.ts';
import type { LiveVms } from '../live-vm.ts';
import type { VmCore } from '../vm-core.ts';
import { guestConfig, runtimeFiles, vmSpec } from '../vm-spec.ts';
import type { ProvisionCtx, ProvisionStep, ProvisionSteps } from './pipeline.ts';
import { removeIntent, writeIntent } from './spawn-intent.ts';

export interface StepParts {
  core: VmCore;
  lives: LiveVms;
}

export function bootSteps(p: StepParts): ProvisionSteps {
  return new StepList<ProvisionCtx>([imageStep(p), rootfsStep(p), networkStep(p), spawnStep(p), trackStep(p, true), bootingStep(p)]);
}

/** A classic VM: its own disk (kept across boots) and config drive instead of a writable layer. */
export function classicSteps(p: StepParts): ProvisionSteps {
  return bootSteps(p).replace('rootfs.prepare', classicRootfsStep(p));
}

/** This node's copy of the VM's image: ctx.image.path is on this node's disk afterwards. */
export function imageStep({ core }: StepParts): ProvisionStep {
  return {
    name: 'image.fetch',
    async run(ctx) {
      ctx.image = await core.deps.images.ensureLocal(ctx.image);
    },
  };
}

function rootfsStep({ core }: StepParts): ProvisionStep {
  return {
    name: 'rootfs.prepare',
    concurrent: true,
    async run(ctx) {
      const { vm, image, dir, undo } = ctx;
      const files = runtimeFiles(dir);
      ctx.drives = await core.deps.volumes.drivesFor(vm, dir);
      const strategy = await prepareVmRoot({
        runtimeDir: dir, scratch: files.scratch, config: files.config, scratchTemplate: core.deps.assets.scratchTemplate,
        guest: { ...guestConfig(vm, image, core.deps.config.stopGraceMs, ctx.drives), agent: agentConfig(core, vm) }, undo,
      });
      if (strategy) core.deps.log.debug({ vm: vm.id, strategy }, 'writable layer cloned');
      await core.deps.volumes.buildDrives(vm, ctx.drives);
    },
  };
}

function classicRootfsStep({ core }: StepParts): ProvisionStep {
  return {
    name: 'rootfs.prepare',
    concurrent: true,
    async run(ctx) {
      const { vm, image, dir, undo } = ctx;
      ctx.drives = await core.deps.volumes.drivesFor(vm, dir);
      // The disk is outside the runtime dir: a failed boot keeps it (and the VM's data).
      if ((await fs.mkdir(dir, { recursive: true, mode: 0o700 })) !== undefined) undo.push('runtime dir', () => fs.rm(dir, { recursive: true, force: true }));
      const made = await ensureClassicDisk(vm.classic!, image);
      if (made) {
        vm.classic = { ...vm.classic!, disk: { ...vm.classic!.disk, strategy: made.strategy, cloneMs: Math.round(made.ms * 100) / 100 } };
        await core.deps.store.updateVm(vm.id, { classic: vm.classic });
        core.deps.log.info({ vm: vm.id, strategy: made.strategy, ms: made.ms }, 'classic VM disk cloned from its base image');
      }
      const guest = { ...guestConfig(vm, image, core.deps.config.stopGraceMs, ctx.drives), agent: agentConfig(core, vm) };
      await fs.writeFile(runtimeFiles(dir).config, encodeConfigDrive(guest));
      await core.deps.volumes.buildDrives(vm, ctx.drives);
    },
  };
}

function networkStep({ core }: StepParts): ProvisionStep {
  return {
    name: 'network.prepare',
    concurrent: true,
    async run(ctx) {
      const { vm, undo } = ctx;
      if (vm.network !== 'bridge' || !vm.ip) return;
      const network = core.deps.network;
      const nic = await network.plug(vm);
      undo.push('tap', () => network.unplug(vm.id));
      // The port publications are rendered with the tap.
      ctx.net = { nic, kernelArgs: network.kernelArgs(network.address(vm.ip)) };
    },
  };
}

function spawnStep(p: StepParts): ProvisionStep {
  const { core } = p;
  return {
    name: 'vmm.spawn',
    async run(ctx) {
      const { vm, image, dir } = ctx;
      const spec = vmSpec(vm, image, core.deps.assets, dir, core.deps.driver, ctx.net, ctx.drives);
      const channel = agentChannel(vm, dir);
      if (vm.agentToken && channel?.kind === 'vsock') spec.vsock = { guestCid: GUEST_CID, udsPath: channel.udsPath };
      if (core.fileBackedMemory.has(vm.id)) spec.memoryFile = { path: path.join(dir, 'memory'), shared: true };
      ctx.consoleOffset = (await fs.stat(path.join(dir, 'console.log')).catch(() => null))?.size ?? 0;
      await spawnVmm(p, ctx, () => core.deps.driver.start(spec));
    },
  };
}

/**
 * Starts a VMM with its intent on disk first (spawn-intent.ts), so that no instant exists at
 * which a VMM runs that a restarted kilnd could not name; registers its kill.
 */
export async function spawnVmm({ core }: StepParts, ctx: ProvisionCtx, start: () => Promise<VmmInstance>): Promise<void> {
  const { vm, dir, undo } = ctx;
  const intent = { vmId: vm.id, backend: core.deps.driver.name, boot: vm.bootCount, cgroup: core.deps.driver.reap ? vm.id : null, pid: null, at: Date.now() };
  // The runtime dir exists: every list's rootfs.prepare made it.
  await writeIntent(dir, intent);
  undo.push('spawn intent', () => removeIntent(dir));
  const instance = await start();
  undo.push('vmm', () => instance.kill());
  ctx.instance = instance;
  await writeIntent(dir, { ...intent, pid: instance.pid });
}

/** Hands the VMM to the lifecycle; `phases`: its console markers end the boot's guest phases. */
export function trackStep({ core, lives }: StepParts, phases: boolean): ProvisionStep {
  return {
    name: 'vm.track',
    untimed: true,
    async run(ctx) {
      const live = lives.track(ctx.vm, ctx.instance!, ctx.consoleOffset, phases ? ctx.timeline : null);
      ctx.live = live;
      if (phases) ctx.timeline.begin('guest.kernel');
      ctx.undo.push('live vm', () => {
        live.deleting = true;
        core.release(ctx.vm.id, live, 'the VM failed to provision');
      });
    },
  };
}

/** The last step: the record says booting, with the VMM's pid. */
function bootingStep({ core }: StepParts): ProvisionStep {
  return {
    name: 'vm.booting',
    untimed: true,
    async run(ctx) {
      await core.transition(ctx.vm.id, 'booting', { pid: ctx.instance!.pid, consoleOffset: ctx.consoleOffset, exitCode: null, agent: null });
    },
  };
}

/** The config-drive keys that start the guest agent (docs/agent-protocol.md). */
function agentConfig(core: VmCore, vm: VmRecord) {
  const channel = agentChannel(vm, core.runtimeDir(vm.id));
  if (!vm.agentToken || !channel) return undefined;
  if (channel.kind === 'vsock') return { token: vm.agentToken, vsockPort: AGENT_VSOCK_PORT };
  const hub = core.deps.agents;
  return { token: vm.agentToken, port: AGENT_SESSION_PORT, ...(AgentLink.pushes(vm, hub) ? { host: hub.pushTarget } : {}) };
}
