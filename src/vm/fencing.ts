// Cluster fencing of this node's VMs (src/cluster/node-member.ts decides when). A node cut off
// from the store past the deadline has been given up by the others: they mark its VMs lost and
// may start its containers elsewhere. So every VMM it runs dies now, and nothing boots until
// the node has rejoined. Nothing is written to the store here (it may be unreachable); the
// rejoin records these VMs stopped.
import fs from 'node:fs/promises';
import type { VmCore } from './vm-core.ts';

/**
 * Kills every VMM of this node and refuses boots until unfenceNode(). Called again while
 * fenced, it kills what a boot in flight spawned meanwhile. The VMs it killed.
 */
export async function fenceNode(core: VmCore, reason: string): Promise<string[]> {
  core.fenced = reason;
  const killed: string[] = [];
  for (const [id, live] of [...core.live]) {
    // Released first: the exit handler then finds it gone and records nothing.
    core.release(id, live, `this node is fenced: ${reason}`);
    await live.instance.kill().catch((e) => core.deps.log.error({ vm: id, err: e }, 'fencing: could not kill the VMM'));
    killed.push(id);
  }
  if (killed.length) await core.deps.network.takeDown(killed);
  return killed;
}

/**
 * After the rejoin: boots may start again; the fenced VMs' taps and rules go (a stopped one
 * keeps its runtime dir, as a stop does; one another node took over meanwhile is not this
 * node's any more: its runtime dir goes too).
 */
export async function unfenceNode(core: VmCore, vmIds: readonly string[]): Promise<void> {
  core.fenced = null;
  for (const id of vmIds) {
    const vm = await core.deps.store.getVm(id);
    if (vm?.state === 'stopped') await core.detachNetwork(vm);
    else if (!vm) {
      await core.deps.network.unplug(id).catch((e) => core.deps.log.error({ vm: id, err: e }, 'removing tap failed'));
      await fs.rm(core.runtimeDir(id), { recursive: true, force: true });
    }
  }
  await core.deps.network.sync().catch((e) => core.deps.log.error({ err: e }, 'updating nftables failed'));
}
