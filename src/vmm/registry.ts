// The one module that imports VMM backend folders; everything else sees driver.ts.
import path from 'node:path';
import type { BackendName, VmmDriver } from './driver.ts';
import { FirecrackerDriver, type JailerOptions } from './firecracker/firecracker-driver.ts';
export { decideJailer, jailerSettingsFromEnv, type JailerDecision } from './firecracker/jailer-default.ts';
import { QemuDriver } from './qemu/qemu-driver.ts';

export function createDriver(name: BackendName, opts: { assetsDir: string; firecrackerBinary?: string; jailer?: JailerOptions }): VmmDriver {
  switch (name) {
    case 'qemu':
      return new QemuDriver();
    case 'firecracker':
      // Firecracker boots only an ELF vmlinux: extracted once from the Debian bzImage.
      return new FirecrackerDriver({
        binary: opts.firecrackerBinary,
        vmlinuxCacheDir: path.join(opts.assetsDir, 'kernels', 'vmlinux'),
        ...(opts.jailer ? { jailer: opts.jailer } : {}),
      });
  }
}
