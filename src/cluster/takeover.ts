// Restart-policy containers of a lost node, started on a surviving one. After each heartbeat
// (so only a node the cluster counts as alive does it) a node looks for container VMs in state
// `lost` and claims each with a compare-and-set: `lost` → `stopped` on this node, with a new
// address from this node's subnet. Of nodes racing for one container exactly one wins; the lost
// node's rejoin (lost → stopped on the old node) races the same way, so either the container
// moved or it stays with its old node, never both. Then the winner boots it.
//
// What cannot move stays lost, with the reason in its state_reason: a container with volumes
// (a volume is a file on its node; a host directory is the old host's) and one whose policy
// does not restart it ("no", stopped by its user, out of on-failure retries).
import type { Logger } from 'pino';
import type { ContainerRecord, Store, VmRecord } from '../store/store.ts';

export const STAYS_LOST_VOLUMES = 'its node was lost; it was not started elsewhere because its volumes are on that node';

export interface TakeoverDeps {
  /** The shared (unscoped) store: it sees every node's containers. */
  store: Store;
  nodeId: string;
  /** Leases an address in this node's subnet for the moved VM (NetworkManager.lease); null when full. */
  leaseAddress: (vmId: string) => Promise<string | null>;
  /** Boots the claimed (now stopped, this node's) container VM: ContainerService.startMoved. */
  start: (vmId: string) => Promise<void>;
  log: Logger;
  publish?: (type: string, vmId: string | null, data: Record<string, unknown>) => void;
}

/** Whether a lost container's policy would start it again (the restart policy's "it died"). */
export function wantsRestart(c: ContainerRecord): boolean {
  if (c.userStopped) return false;
  if (c.restart.name === 'always') return true;
  return c.restart.name === 'on-failure' && (c.restart.maxRetries === null || c.restartCount < c.restart.maxRetries);
}

export class Takeover {
  constructor(private readonly d: TakeoverDeps) {}

  /** One pass: every lost container this node may take. The ones it started. */
  async sweep(): Promise<string[]> {
    const { store } = this.d;
    // Cheap when nothing is lost (the usual case): the nodes table is small.
    if (!(await store.listNodes()).some((n) => n.state === 'lost')) return [];
    const containers = new Map((await store.listContainers()).map((c) => [c.id, c]));
    if (containers.size === 0) return [];
    const moved: string[] = [];
    for (const vm of await store.listVms()) {
      const c = containers.get(vm.id);
      if (!c || vm.state !== 'lost' || !vm.nodeId || vm.nodeId === this.d.nodeId || !wantsRestart(c)) continue;
      if (vm.volumes.length > 0) {
        if (vm.stateReason !== STAYS_LOST_VOLUMES) await store.transitionVm(vm.id, ['lost'], { stateReason: STAYS_LOST_VOLUMES });
        continue;
      }
      if (await this.claim(vm, c)) moved.push(vm.id);
    }
    return moved;
  }

  private async claim(vm: VmRecord, c: ContainerRecord): Promise<boolean> {
    const { store, log } = this.d;
    const from = vm.nodeId!;
    const reason = `its node ${from} was lost: started on node ${this.d.nodeId} by its restart policy (${c.restart.name})`;
    // The compare-and-set: of every node (and the old one's rejoin) exactly one moves it.
    const won = await store.transitionVm(vm.id, ['lost'], { nodeId: this.d.nodeId, state: 'stopped', stateReason: reason, pid: null, ip: null, consoleOffset: 0, exitCode: null });
    if (!won) return false;
    log.warn({ container: vm.id, from }, 'taking over a restart-policy container of a lost node');
    this.d.publish?.('container.moved', vm.id, { from, to: this.d.nodeId });
    try {
      if (vm.network === 'bridge' && !(await this.d.leaseAddress(vm.id))) throw new Error("no free address left in this node's subnet");
      await this.d.start(vm.id);
    } catch (e) {
      // Stays stopped on this node, with why: `kiln container start` retries it here.
      log.error({ container: vm.id, err: e }, 'could not start the container taken over from a lost node');
      await store.transitionVm(vm.id, ['stopped'], { stateReason: `${reason}; its start failed: ${(e as Error).message}` }).catch(() => {});
    }
    return true;
  }
}
