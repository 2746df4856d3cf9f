// The one module that imports VMM backend folders; everything else sees driver.ts.
import type { BackendName, VmmDriver } from './driver.ts';
import { QemuDriver } from './qemu/qemu-driver.ts';

export function createDriver(name: BackendName): VmmDriver {
  switch (name) {
    case 'qemu':
      return new QemuDriver();
    case 'firecracker':
      throw new Error('the firecracker backend is not wired in yet');
  }
}
