// The per-VM root preparation (`rootfs.prepare` in every VM's timeline): nothing in it is
// proportional to the image's size. The image file itself is attached read-only and shared;
// the VM gets a clone of an empty sparse ext4 as its writable overlay layer (a reflink where
// the filesystem has them) and its config drive. bench/images.ts times exactly this function.
import fs from 'node:fs/promises';
import { encodeConfigDrive, type GuestConfig } from '../guest/config-drive.ts';
import { cloneFile, type CloneStrategy } from '../tools/cp.ts';
import { exists } from '../util/atomic.ts';
import type { CleanupStack } from '../util/cleanup-stack.ts';

export interface PrepareRootOptions {
  runtimeDir: string;
  /** Where the writable layer and the config drive go (see vm-spec.ts runtimeFiles). */
  scratch: string;
  config: string;
  scratchTemplate: string;
  guest: GuestConfig;
  /** Gets an undo for the runtime dir when this call created it. */
  undo?: CleanupStack;
}

/** Returns how the writable layer was made, or null when it already existed (a restart). */
export async function prepareVmRoot(o: PrepareRootOptions): Promise<CloneStrategy | null> {
  // mkdir -p reports the first directory it created: undefined means the dir was there.
  if ((await fs.mkdir(o.runtimeDir, { recursive: true, mode: 0o700 })) !== undefined) {
    o.undo?.push('runtime dir', () => fs.rm(o.runtimeDir, { recursive: true, force: true }));
  }
  // A restarted VM keeps its writable layer.
  const strategy = (await exists(o.scratch)) ? null : await cloneFile(o.scratchTemplate, o.scratch);
  await fs.writeFile(o.config, encodeConfigDrive(o.guest));
  return strategy;
}
