// A template clone is the boot list, edited:
//   rootfs.prepare ∥ network.prepare   replaced: copies of the snapshot's drives; a namespace
//                                       holding the snapshot's guest network behind the clone's address
//   vmm.spawn → vmm.restore            the driver times vmm.spawn and vmm.load itself
//   vm.track                           without console phases (the guest does not boot)
//   + vmm.resume, guest.identity, agent.await before vm.booting
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import { KilnError } from '../../errors.ts';
import { AgentClient } from '../../guest/agent/client.ts';
import { clonePlan, createCloneNetwork } from '../../net/clone-netns.ts';
import { tapName } from '../../net/network-manager.ts';
import { AGENT_SESSION_PORT, agentChannel } from '../agent-link.ts';
import type { VmRecord } from '../../store/store.ts';
import type { VmCore } from '../vm-core.ts';
import { runtimeFiles, vmSpec } from '../vm-spec.ts';
import { bootSteps, spawnVmm, trackStep, type StepParts } from './boot.ts';
import type { ProvisionStep, ProvisionSteps } from './pipeline.ts';


export function restoreSteps(p: StepParts): ProvisionSteps {
  return bootSteps(p)
    .replace('rootfs.prepare', cloneFilesStep())
    .replace('network.prepare', cloneNetworkStep(p))
    .remove('vmm.spawn')
    .insertBefore('vm.track', restoreStep(p))
    .replace('vm.track', trackStep(p, false))
    .insertAfter('vm.track', resumeStep(), identityStep(p), awaitAgentStep());
}

function cloneFilesStep(): ProvisionStep {
  return {
    name: 'rootfs.prepare',
    concurrent: true,
    async run(ctx) {
      const { dir, undo } = ctx;
      const files = runtimeFiles(dir);
      await fs.mkdir(dir, { recursive: true, mode: 0o700 });
      undo.push('runtime dir', () => fs.rm(dir, { recursive: true, force: true }));
      await ctx.clone!.prepareFiles(dir, files.scratch, files.config);
    },
  };
}

function cloneNetworkStep({ core }: StepParts): ProvisionStep {
  return {
    name: 'network.prepare',
    concurrent: true,
    async run(ctx) {
      const { vm, undo } = ctx;
      const network = core.deps.network;
      const net = ctx.clone!.guestNet!;
      const addr = network.address(vm.ip!);
      const plan = clonePlan({
        vmId: vm.id, bridge: network.bridge, hostVeth: tapName(vm.id), cloneIp: addr.ip, prefix: addr.prefix,
        gateway: addr.gateway, guestIp: net.ip, tap: net.tap, gatewayMac: net.gatewayMac, ...(net.mac ? { guestMac: net.mac } : {}),
        ...(network.tapOwner ? { tapOwner: network.tapOwner } : {}),
      });
      await createCloneNetwork(plan);
      undo.push('clone network', () => network.unplug(vm.id));
      ctx.netns = plan.netns;
      // The namespace's veth is the clone's port on the bridge: its anti-spoofing and egress
      // rules exist before the guest resumes.
      await network.sync();
    },
  };
}

function restoreStep(p: StepParts): ProvisionStep {
  const { core } = p;
  return {
    name: 'vmm.restore',
    untimed: true,
    async run(ctx) {
      const req = ctx.clone!;
      const spec = req.spec(vmSpec(ctx.vm, ctx.image, core.deps.assets, ctx.dir, core.deps.driver, undefined, []), ctx.netns);
      await spawnVmm(p, ctx, () => core.deps.driver.restore(spec, req.vmm, undefined, (name, fn) => ctx.timeline.step(name, fn)));
    },
  };
}

function resumeStep(): ProvisionStep {
  return { name: 'vmm.resume', run: (ctx) => ctx.instance!.resume() };
}

function identityStep({ core }: StepParts): ProvisionStep {
  return { name: 'guest.identity', run: (ctx) => giveIdentity(core, ctx.vm, ctx.clone!.guestToken, ctx.clone!.guestNet!.ip) };
}

/** From the identity's answer to the guest's hello with its new token (await-ready.ts). */
function awaitAgentStep(): ProvisionStep {
  return {
    name: 'agent.await',
    untimed: true,
    async run(ctx) {
      ctx.timeline.begin('agent.hello');
      ctx.live!.agent?.markConsoleReady();
    },
  };
}

/**
 * The identity op (hostname, token, env, RNG seed, clock, ARP flush) over the clone's own
 * session channel, authenticated with the token the guest holds (a fresh clone: the
 * snapshotted VM's; a pooled clone taken for a create: its own).
 */
export async function giveIdentity(core: VmCore, vm: VmRecord, guestToken: string, guestIp: string): Promise<void> {
  // TCP to its address (QEMU), or its vsock socket (Firecracker).
  const target = agentChannel(vm, core.runtimeDir(vm.id)) ?? { kind: 'tcp' as const, host: vm.ip!, port: AGENT_SESSION_PORT };
  const make = core.deps.agentClient ?? ((...a: ConstructorParameters<typeof AgentClient>) => new AgentClient(...a));
  const client = make(target, guestToken, { connectTimeoutMs: 2000, opTimeoutMs: 5000 });
  // A guest on an overloaded host is slow, not broken: it gets a boot's deadline.
  const deadline = Date.now() + core.deps.config.bootTimeoutMs;
  let answered = true;
  for (let attempt = 0; ; attempt++) {
    try {
      // An attempt that timed out may have been carried out, the answer lost: then the guest
      // holds the new token already, and a retry with the old one would be refused.
      if (!answered && guestToken !== vm.agentToken && (await tookIdentity(make, target, vm.agentToken!))) return;
      await client.identity({ hostname: vm.name, token: vm.agentToken!, env: vm.env, entropy: randomBytes(64) });
      return;
    } catch (e) {
      // The first SYN can race the guest's TCP timers catching up after the resume.
      if (Date.now() > deadline || (e as KilnError).code === 'KILN_ERR_AGENT_PROTOCOL') {
        throw new KilnError('KILN_ERR_GUEST_FAILED', `the clone's agent (${guestIp} behind ${vm.ip}) did not take its identity: ${(e as Error).message}`);
      }
      answered = (e as KilnError).code !== 'KILN_ERR_AGENT_TIMEOUT';
      await new Promise((r) => setTimeout(r, Math.min(50 * 2 ** attempt, 500)));
    }
  }
}

/** Whether the guest's agent accepts `token` (the identity op that gives it was carried out). */
async function tookIdentity(make: (...a: ConstructorParameters<typeof AgentClient>) => AgentClient, target: ConstructorParameters<typeof AgentClient>[0], token: string): Promise<boolean> {
  try {
    await make(target, token, { connectTimeoutMs: 2000, opTimeoutMs: 5000 }).status({ timeoutMs: 5000 });
    return true;
  } catch {
    return false;
  }
}
