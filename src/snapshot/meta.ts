// What a snapshot is tied to and made of. A restore is refused (KILN_ERR_SNAPSHOT_INCOMPATIBLE)
// unless this host's backend, VMM version, accelerator, kernel, initramfs (kiln-init and its
// modules) and machine layout are exactly the snapshot's: a migration stream loaded into a
// different QEMU or a guest memory image under another kernel fails in ways no error message
// explains. Files are checked by size on every restore and by sha256 once per file per kilnd
// (immutable files: a verified file stays verified).
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { KilnError } from '../errors.ts';
import type { SnapshotMemory } from '../vmm/driver.ts';

export const SNAPSHOT_FORMAT = 1;

/** Everything that must match between the host that took a snapshot and the one restoring it. */
export interface SnapshotCompat {
  backend: string;
  vmmVersion: string;
  accelerator: string;
  /** Kernel version and the kernel file's identity. */
  kernel: string;
  /** sha256 of the initramfs (kiln-init + modules). */
  initramfs: string;
  /** The machine type and its options (QEMU) or 'firecracker'. */
  machine: string;
}

export interface SnapshotFile {
  /** Relative to the snapshot directory. */
  name: string;
  size: number;
  /** null: size-checked only (the sparse 2 GiB scratch disk: hashing it reads 2 GiB of holes). */
  sha256: string | null;
}

/** The guest as it was when snapshotted: what a clone needs to rebuild the same machine. */
export interface SnapshotGuest {
  imageId: string;
  imageDigest: string;
  vcpus: number;
  memoryMib: number;
  kernelCmdline: string;
  /** The source VM's guest address and the tap name its NIC had (a clone's netns reuses both). */
  guestIp: string | null;
  tap: string | null;
  mac: string | null;
  /** The gateway MAC the guest had cached (the bridge's then): a clone's netns tap takes it. */
  gatewayMac: string | null;
  /** Session token the guest holds until its clone gets a new one (identity op). */
  agentToken: string | null;
  cmd: string[] | null;
  env: Record<string, string>;
  readiness: string;
  /** Extra drives were attached: clones of such a VM are refused (volumes are not copied). */
  extraDrives: number;
}

export interface SnapshotMeta {
  format: number;
  compat: SnapshotCompat;
  guest: SnapshotGuest;
  memory: SnapshotMemory;
  /** File names in the snapshot directory. */
  stateFile: string;
  memoryFile: string | null;
  scratchFile: string;
  configFile: string;
  vsockPath?: string;
  files: SnapshotFile[];
}

export function compatMismatches(want: SnapshotCompat, have: SnapshotCompat): string[] {
  return (Object.keys(want) as (keyof SnapshotCompat)[])
    .filter((k) => want[k] !== have[k])
    .map((k) => `${k}: snapshot ${JSON.stringify(want[k])}, this host ${JSON.stringify(have[k])}`);
}

export function assertCompatible(id: string, meta: SnapshotMeta, have: SnapshotCompat): void {
  if (meta.format !== SNAPSHOT_FORMAT) {
    throw new KilnError('KILN_ERR_SNAPSHOT_INCOMPATIBLE', `snapshot ${id} has format ${meta.format}; this kiln reads ${SNAPSHOT_FORMAT}`);
  }
  const diff = compatMismatches(meta.compat, have);
  if (diff.length) {
    throw new KilnError('KILN_ERR_SNAPSHOT_INCOMPATIBLE', `snapshot ${id} cannot be restored on this host: ${diff.join('; ')}`, { mismatches: diff });
  }
}

export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

export async function describeFile(dir: string, name: string, hash: boolean): Promise<SnapshotFile> {
  const file = path.join(dir, name);
  const { size } = await fs.stat(file);
  return { name, size, sha256: hash ? await sha256File(file) : null };
}

/**
 * Files verified (or being verified) in this process, by identity: immutable, so once is
 * enough, and concurrent restores of one snapshot share one hash of each file.
 */
const verified = new Map<string, Promise<boolean>>();

/** Size always, sha256 once per file identity; throws KILN_ERR_SNAPSHOT_CORRUPT naming the file. */
export async function verifyFiles(id: string, dir: string, files: readonly SnapshotFile[]): Promise<void> {
  for (const f of files) {
    const file = path.join(dir, f.name);
    const st = await fs.stat(file).catch(() => null);
    if (!st) throw new KilnError('KILN_ERR_SNAPSHOT_CORRUPT', `snapshot ${id}: ${f.name} is missing`, { file: f.name });
    if (st.size !== f.size) {
      throw new KilnError('KILN_ERR_SNAPSHOT_CORRUPT', `snapshot ${id}: ${f.name} is ${st.size} bytes, ${f.size} expected (truncated?)`, { file: f.name });
    }
    if (!f.sha256) continue;
    const key = `${file}\0${st.ino}\0${st.size}\0${st.mtimeMs}\0${f.sha256}`;
    let ok = verified.get(key);
    if (!ok) {
      const want = f.sha256;
      ok = sha256File(file).then((h) => h === want);
      verified.set(key, ok);
      // A failed or mismatching check is not remembered: the next restore checks again.
      void ok.then((good) => good || verified.delete(key), () => verified.delete(key));
    }
    if (!(await ok)) {
      throw new KilnError('KILN_ERR_SNAPSHOT_CORRUPT', `snapshot ${id}: ${f.name} fails its sha256 checksum`, { file: f.name });
    }
  }
}
