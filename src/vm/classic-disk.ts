// A classic VM's own disk, resized while the VM is stopped (grow only; offline: truncate,
// e2fsck, resize2fs), under the VM's lock.
import fs from 'node:fs/promises';
import { KilnError } from '../errors.ts';
import type { VmRecord } from '../store/store.ts';
import { GIB, checkDiskSize, growDiskOffline } from './classic.ts';
import type { VmCore } from './vm-core.ts';

export async function resizeClassicDisk(core: VmCore, idOrName: string, sizeGib: number): Promise<VmRecord> {
  const { id } = await core.get(idOrName);
  return core.lock.run(id, async () => {
    const vm = await core.get(id);
    if (!vm.classic) throw new KilnError('KILN_ERR_INVALID_STATE', `VM ${id} is not a classic VM: it has no disk of its own to resize`);
    if (vm.state !== 'stopped') throw new KilnError('KILN_ERR_INVALID_STATE', `VM ${id} is ${vm.state}; its disk is resized while it is stopped (kiln vm stop first)`);
    const sizeBytes = sizeGib * GIB;
    const current = vm.classic.disk.sizeBytes;
    await checkDiskSize(sizeBytes, current, core.deps.config.stateDir, current);
    if (await fs.stat(vm.classic.disk.path).catch(() => null)) await growDiskOffline(vm.classic.disk.path, sizeBytes);
    const classic = { ...vm.classic, disk: { ...vm.classic.disk, sizeBytes } };
    const out = await core.deps.store.updateVm(id, { classic });
    core.deps.bus.publish('vm.disk', id, { event: 'resized', from_bytes: current, to_bytes: sizeBytes });
    return out;
  });
}
