// Debian's cloud kernel, obtained the way kilnd obtains it (src/guest/kernel.ts: apt downloads
// the package, it is unpacked into the assets dir) into the cache the VM tests share. Unit
// tests of kernel handling use it, so they run on any clone: the first run downloads it.
import { ensureGuestKernel, type GuestKernel } from '../../src/guest/kernel.ts';
import { TEST_ASSETS_DIR } from './assets.ts';

export function debianGuestKernel(): Promise<GuestKernel> {
  return ensureGuestKernel(TEST_ASSETS_DIR, (msg) => process.stderr.write(`${msg}\n`));
}
