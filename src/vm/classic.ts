// Classic VMs: long-lived machines with systemd and SSH, each on its own writable disk cloned
// from a base image. This file holds what is specific to them on the host: input checks
// (keys, hostname, user-data, disk size), the disk (clone, grow, offline resize) and the
// guest configuration kiln-init needs to hand PID 1 over to systemd.
import fs from 'node:fs/promises';
import path from 'node:path';
import { KilnError } from '../errors.ts';
import type { GuestClassicConfig } from '../guest/config-drive.ts';
import { cloneWritableDisk } from '../image/writable-disk.ts';
import type { ClassicVm, ImageRecord } from '../store/store.ts';
import { e2fsckForce, resize2fs } from '../tools/e2fs.ts';

export const GIB = 1024 ** 3;
export const DEFAULT_DISK_GIB = 4;
/** Graceful stop of a whole systemd (under TCG it takes several seconds): its own default. */
export const CLASSIC_STOP_GRACE_MS = 60_000;
export const USER_DATA_MAX_BYTES = 64 * 1024;

export interface ClassicInput {
  hostname?: string;
  ssh_authorized_keys?: string[];
  user_data?: string;
  disk_size_gib?: number;
}

const KEY_TYPES = new Set([
  'ssh-ed25519', 'ssh-rsa', 'ecdsa-sha2-nistp256', 'ecdsa-sha2-nistp384', 'ecdsa-sha2-nistp521',
  'sk-ssh-ed25519@openssh.com', 'sk-ecdsa-sha2-nistp256@openssh.com',
]);

/**
 * One authorized_keys line: `TYPE BASE64 [comment]`, no options (kiln writes the file; options
 * like command= are the user's to add inside the VM). The blob must itself start with TYPE,
 * which catches truncated or pasted-wrong keys. Returns the normalised line.
 */
export function parseSshPublicKey(line: string): string {
  const t = line.trim();
  if (/[\r\n\0]/.test(t)) throw new Error('must be a single line');
  const m = /^(\S+) ([A-Za-z0-9+/]+={0,2})(?: (.*))?$/.exec(t);
  if (!m) throw new Error('expected "TYPE BASE64 [comment]"');
  const [, type, b64, comment] = m;
  if (!KEY_TYPES.has(type!)) throw new Error(`unsupported key type ${JSON.stringify(type!.slice(0, 40))}`);
  const blob = Buffer.from(b64!, 'base64');
  if (blob.length < 4 + type!.length) throw new Error('key blob too short');
  const n = blob.readUInt32BE(0);
  if (n !== type!.length || blob.subarray(4, 4 + n).toString('latin1') !== type) {
    throw new Error(`key blob is not a ${type} key`);
  }
  return comment ? `${type} ${b64} ${comment}` : `${type} ${b64}`;
}

/** RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens, ≤ 253. */
export function isValidHostname(h: string): boolean {
  return h.length <= 253 && h.split('.').every((l) => /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/.test(l));
}

/** Everything about a classic request that can be checked before anything exists. */
export function checkClassicInput(c: ClassicInput, vmName: string): { hostname: string; keys: string[]; userData: string | null } {
  const keys = (c.ssh_authorized_keys ?? []).map((k, index) => {
    try {
      return parseSshPublicKey(k);
    } catch (e) {
      throw new KilnError('KILN_ERR_SSH_KEY_INVALID', `ssh_authorized_keys[${index}]: ${(e as Error).message}`, { index });
    }
  });
  // The VM name is a valid label unless it has "_" or ends in "." / "-": then name one.
  const hostname = c.hostname ?? vmName;
  if (!isValidHostname(hostname)) {
    throw new KilnError('KILN_ERR_VALIDATION', `hostname ${JSON.stringify(hostname)} is not a valid host name${c.hostname ? '' : ' (it defaults to the VM name: pass "hostname")'}`);
  }
  const userData = c.user_data ?? null;
  if (userData !== null) {
    if (!userData.startsWith('#!')) throw new KilnError('KILN_ERR_VALIDATION', 'user_data must be a script starting with "#!" (it is executed as is)');
    if (userData.includes('\0')) throw new KilnError('KILN_ERR_VALIDATION', 'user_data cannot contain NUL bytes');
    if (Buffer.byteLength(userData) > USER_DATA_MAX_BYTES) throw new KilnError('KILN_ERR_VALIDATION', `user_data is limited to ${USER_DATA_MAX_BYTES} bytes`);
  }
  return { hostname, keys, userData };
}

export function classicDiskPath(stateDir: string, vmId: string): string {
  return path.join(stateDir, 'disks', `${vmId}.ext4`);
}

/** Bytes free for the state dir's files (a sparse disk can grow to its full size). */
async function freeBytes(dir: string): Promise<number> {
  await fs.mkdir(dir, { recursive: true });
  const s = await fs.statfs(dir);
  return s.bavail * s.bsize;
}

/**
 * The disk size a classic VM gets: at least its base image, at most what the state
 * filesystem could ever hold (disks are sparse, but one that can never be filled is a lie
 * that ends in I/O errors inside the guest).
 */
export async function checkDiskSize(sizeBytes: number, minBytes: number, stateDir: string, currentBytes = 0): Promise<void> {
  if (sizeBytes < minBytes) {
    throw new KilnError('KILN_ERR_VALIDATION', `disk_size_gib ${sizeBytes / GIB} is smaller than ${(minBytes / GIB).toFixed(2)} GiB (${currentBytes ? 'the disk now; disks only grow' : 'the base image'})`);
  }
  const free = await freeBytes(path.join(stateDir, 'disks'));
  if (sizeBytes - currentBytes > free) {
    throw new KilnError('KILN_ERR_RESOURCE_LIMIT', `a ${sizeBytes / GIB} GiB disk needs ${((sizeBytes - currentBytes) / GIB).toFixed(1)} GiB more than the ${(free / GIB).toFixed(1)} GiB free for kiln's state dir`, { free_bytes: free });
  }
}

export function newClassicVm(o: { hostname: string; keys: string[]; userData: string | null; diskPath: string; sizeBytes: number }): ClassicVm {
  return {
    hostname: o.hostname,
    sshAuthorizedKeys: o.keys,
    userData: o.userData,
    disk: { path: o.diskPath, sizeBytes: o.sizeBytes, strategy: null, cloneMs: null },
  };
}

/** Grows an ext4 image file to `sizeBytes` offline (the VM is not running). */
export async function growDiskOffline(file: string, sizeBytes: number): Promise<void> {
  const { size } = await fs.stat(file);
  if (sizeBytes < size) throw new KilnError('KILN_ERR_VALIDATION', `disks only grow: ${file} is already ${size} bytes`);
  if (sizeBytes === size) return;
  await fs.truncate(file, sizeBytes);
  await e2fsckForce(file);
  await resize2fs(file);
}

/**
 * The VM's disk on its first boot: a clone of the base image (reflink where possible), grown
 * to the requested size. Later boots find it in place: it is the VM's state. A disk left
 * half-made by a crash is redone (written under a temporary name, renamed when complete).
 */
export async function ensureClassicDisk(c: ClassicVm, image: Pick<ImageRecord, 'name' | 'format' | 'path'>): Promise<{ strategy: ClassicVm['disk']['strategy']; ms: number } | null> {
  if (await fs.stat(c.disk.path).catch(() => null)) return null;
  const tmp = `${c.disk.path}.tmp`;
  await fs.rm(tmp, { force: true });
  try {
    const cloned = await cloneWritableDisk(image, tmp);
    await growDiskOffline(tmp, c.disk.sizeBytes);
    await fs.rename(tmp, c.disk.path);
    return { strategy: cloned.strategy, ms: cloned.ms };
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
}

export function guestClassicConfig(vmId: string, c: ClassicVm): GuestClassicConfig {
  return { instanceId: vmId, sshAuthorizedKeys: c.sshAuthorizedKeys, ...(c.userData !== null ? { userData: c.userData } : {}) };
}
