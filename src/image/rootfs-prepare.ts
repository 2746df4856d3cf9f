// The per-VM root preparation (`rootfs.prepare` in every VM's timeline): nothing in it is
// proportional to the image's size. The image file itself is attached read-only and shared;
// the VM gets its own writable overlay layer and its config drive. bench/images.ts times
// exactly this function.
//
// The writable layer is a copy of an empty, sparse 2 GiB ext4 template. Where the filesystem
// has reflinks it is a reflink (O(1)). Elsewhere it is stamped from the template's written
// extents (about 1 MiB of superblocks, bitmaps, root directory and journal header, read once
// per template and kept in memory) into a new sparse file: a handful of writes, no child
// process (`cp --sparse=always` cost 4–10 ms per VM here, mostly spawning cp).
import fsSync, { constants } from 'node:fs';
import fs from 'node:fs/promises';
import { encodeConfigDrive, type GuestConfig } from '../guest/config-drive.ts';
import { dataExtents } from '../tools/filefrag.ts';
import type { CleanupStack } from '../util/cleanup-stack.ts';

export type WritableLayerStrategy = 'reflink' | 'extent-copy';

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

interface TemplateImage {
  size: number;
  extents: { offset: number; data: Buffer }[];
  /** Learned on first use: false once a reflink attempt failed for this template. */
  reflink: boolean;
}

const templates = new Map<string, Promise<TemplateImage>>();

async function loadTemplate(file: string): Promise<TemplateImage> {
  const st = await fs.stat(file);
  const key = `${file}\0${st.ino}\0${st.size}\0${st.mtimeMs}`;
  let t = templates.get(key);
  if (!t) {
    t = (async () => {
      const extents = [];
      const fh = await fs.open(file, 'r');
      try {
        for (const e of await dataExtents(file)) {
          const data = Buffer.alloc(e.length);
          await fh.read(data, 0, e.length, e.offset);
          extents.push({ offset: e.offset, data });
        }
      } finally {
        await fh.close();
      }
      return { size: st.size, extents, reflink: true };
    })();
    t.catch(() => templates.delete(key));
    templates.set(key, t);
  }
  return t;
}

/**
 * Synchronous on purpose: a create, a truncate and about a dozen page-cache writes (~160 KiB),
 * where each async call would be a thread-pool round trip (≈0.7 ms of the ~2 ms per VM on
 * this loaded 2-CPU host). Bounded work, so the event loop is held for well under a millisecond.
 */
async function stampFromExtents(t: TemplateImage, dest: string): Promise<void> {
  const fd = fsSync.openSync(dest, 'wx', 0o600);
  try {
    fsSync.ftruncateSync(fd, t.size);
    for (const e of t.extents) fsSync.writeSync(fd, e.data, 0, e.data.length, e.offset);
  } catch (e) {
    fsSync.closeSync(fd);
    await fs.rm(dest, { force: true });
    throw e;
  }
  fsSync.closeSync(fd);
}

/** A new writable layer at `dest` from `template`; EEXIST if `dest` exists. */
export async function cloneWritableLayer(template: string, dest: string): Promise<WritableLayerStrategy> {
  const t = await loadTemplate(template);
  if (t.reflink) {
    try {
      await fs.copyFile(template, dest, constants.COPYFILE_FICLONE_FORCE | constants.COPYFILE_EXCL);
      return 'reflink';
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EEXIST' || code === 'ENOENT') throw e;
      t.reflink = false;
    }
  }
  await stampFromExtents(t, dest);
  return 'extent-copy';
}

/** Returns how the writable layer was made, or null when it already existed (a restart). */
export async function prepareVmRoot(o: PrepareRootOptions): Promise<WritableLayerStrategy | null> {
  // mkdir -p reports the first directory it created: undefined means the dir was there.
  if ((await fs.mkdir(o.runtimeDir, { recursive: true, mode: 0o700 })) !== undefined) {
    o.undo?.push('runtime dir', () => fs.rm(o.runtimeDir, { recursive: true, force: true }));
  }
  let strategy: WritableLayerStrategy | null = null;
  try {
    // A restarted VM keeps its writable layer.
    strategy = await cloneWritableLayer(o.scratchTemplate, o.scratch);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  await fs.writeFile(o.config, encodeConfigDrive(o.guest));
  return strategy;
}
