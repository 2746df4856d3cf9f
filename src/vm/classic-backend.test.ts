// Classic VMs (systemd guests) are refused on Firecracker: it cannot tell a guest reboot from a
// power-off or a crash (src/vmm/firecracker/firecracker-driver.ts, classicUnsupported).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isKilnError } from '../errors.ts';
import { FirecrackerDriver } from '../vmm/firecracker/firecracker-driver.ts';
import { QemuDriver } from '../vmm/qemu/qemu-driver.ts';
import type { VmmDriver } from '../vmm/driver.ts';
import type { VmCore } from './vm-core.ts';
import { assertClassicBackend, checkClassic, type CreateVmInput } from './vm-record.ts';

// The two checks, on a core that has only a driver (they read nothing else).
const managerWith = (driver: VmmDriver) => {
  const core = { deps: { driver } } as unknown as VmCore;
  return {
    checkClassic: (input: unknown, name: string) => checkClassic(core, input as CreateVmInput, name),
    assertClassicBackend: (code: 'KILN_ERR_VALIDATION' | 'KILN_ERR_INVALID_STATE') => assertClassicBackend(core, code),
  };
};

test('a new classic VM on Firecracker is refused (KILN_ERR_VALIDATION on "classic"), with the reason', () => {
  const m = managerWith(new FirecrackerDriver());
  assert.throws(
    () => m.checkClassic({ classic: {} }, 'c1'),
    (e) => isKilnError(e) && e.code === 'KILN_ERR_VALIDATION' && e.details?.field === 'classic' && /exits 0 on every reset/.test(e.message) && /KILN_BACKEND=qemu/.test(e.message),
  );
  assert.throws(() => m.assertClassicBackend('KILN_ERR_INVALID_STATE'), (e) => isKilnError(e) && e.code === 'KILN_ERR_INVALID_STATE');
});

test('QEMU takes classic VMs', () => {
  const qemu: VmmDriver = new QemuDriver();
  assert.equal(qemu.classicUnsupported, undefined);
  assert.doesNotThrow(() => managerWith(qemu).assertClassicBackend('KILN_ERR_VALIDATION'));
});
