// A node's view of a shared store: the VMs (and containers) it runs. Every node-local service
// (VM manager, admission, network, containers) lists and reconciles "all VMs"; on a shared
// PostgreSQL that must mean this node's, or one node's start would fail another's VMs as
// "VMM vanished". New VMs are stamped with the node's id, and so are new volumes, snapshots
// and templates (their files are on this node's disk: the API role routes to it and places
// VMs that use them here). Everything else passes through.
import type { ContainerRecord, SnapshotRecord, Store, TemplateRecord, VmRecord, VolumeRecord } from '../store/store.ts';

export function scopeStoreToNode(store: Store, nodeId: string): Store {
  const mine = (vm: VmRecord | null) => (vm && vm.nodeId === nodeId ? vm : null);
  const overrides: Partial<Store> = {
    insertVm: (vm: VmRecord) => store.insertVm({ ...vm, nodeId }),
    insertVolume: (v: VolumeRecord) => store.insertVolume({ ...v, nodeId }),
    insertSnapshot: (s: SnapshotRecord) => store.insertSnapshot({ ...s, nodeId }),
    insertTemplate: (t: TemplateRecord) => store.insertTemplate({ ...t, nodeId }),
    getVm: async (idOrName: string) => mine(await store.getVm(idOrName)),
    listVms: async () => (await store.listVms()).filter((v) => v.nodeId === nodeId),
    listContainers: async () => {
      const own = new Set((await store.listVms()).filter((v) => v.nodeId === nodeId).map((v) => v.id));
      return (await store.listContainers()).filter((c: ContainerRecord) => own.has(c.id));
    },
    getContainer: async (id: string) => ((await store.getVm(id))?.nodeId === nodeId ? store.getContainer(id) : null),
  };
  return new Proxy(store, {
    get(target, prop, receiver) {
      if (typeof prop === 'string' && prop in overrides) return overrides[prop as keyof Store];
      const v = Reflect.get(target, prop, receiver);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}
