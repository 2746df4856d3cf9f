// What kind of kernel image a file is, from its bytes, so a user-supplied kernel (KILN_KERNEL)
// can be a bzImage or an ELF vmlinux and each VMM gets what it can boot: Firecracker boots
// only ELF (kiln extracts one from a bzImage); QEMU boots a bzImage, or an ELF only through
// its PVH entry point (the Xen PVH ELF note, CONFIG_PVH=y).
import fs from 'node:fs/promises';
import { KilnError } from '../errors.ts';

export type KernelFormat = 'bzImage' | 'elf';

export interface KernelImageInfo {
  format: KernelFormat;
  /** ELF only: has the PVH entry note QEMU needs to boot it directly. */
  pvh?: boolean;
  /** The kernel release ("6.1.0-56-cloud-amd64"), from the boot header or the "Linux version" banner. */
  version?: string;
}

const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);
/** x86 boot protocol: "HdrS" at 0x202, the version-string pointer at 0x20e (relative to 0x200). */
const BZ_HDRS_OFFSET = 0x202;
const PT_NOTE = 4;
/** XEN_ELFNOTE_PHYS32_ENTRY, the note QEMU's PVH loader looks for. */
const XEN_ELFNOTE_PHYS32_ENTRY = 18;

function bzImageVersion(img: Buffer): string | undefined {
  const ptr = img.readUInt16LE(0x20e);
  if (!ptr) return undefined;
  const start = ptr + 0x200;
  if (start >= img.length) return undefined;
  const end = img.indexOf(0, start);
  const s = img.subarray(start, end < 0 ? Math.min(img.length, start + 256) : end).toString('latin1');
  return /^[\x21-\x7e]+/.exec(s)?.[0];
}

function elfVersion(img: Buffer): string | undefined {
  const at = img.indexOf('Linux version ', 0, 'latin1');
  if (at < 0) return undefined;
  return /^[\x21-\x7e]+/.exec(img.toString('latin1', at + 14, at + 14 + 128))?.[0];
}

/** True when a 64-bit little-endian ELF has a PT_NOTE holding the Xen PVH entry note. */
export function elfHasPvhNote(img: Buffer): boolean {
  if (img.length < 64 || img[4] !== 2 || img[5] !== 1) return false;
  const phoff = Number(img.readBigUInt64LE(0x20));
  const phentsize = img.readUInt16LE(0x36);
  const phnum = img.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (ph + 56 > img.length || img.readUInt32LE(ph) !== PT_NOTE) continue;
    const off = Number(img.readBigUInt64LE(ph + 8));
    const end = Math.min(img.length, off + Number(img.readBigUInt64LE(ph + 32)));
    for (let n = off; n + 12 <= end; ) {
      const namesz = img.readUInt32LE(n);
      const descsz = img.readUInt32LE(n + 4);
      const type = img.readUInt32LE(n + 8);
      const name = img.subarray(n + 12, n + 12 + namesz).toString('latin1').replace(/\0+$/, '');
      if (name === 'Xen' && type === XEN_ELFNOTE_PHYS32_ENTRY) return true;
      n += 12 + Math.ceil(namesz / 4) * 4 + Math.ceil(descsz / 4) * 4;
    }
  }
  return false;
}

export function kernelImageInfo(img: Buffer): KernelImageInfo | null {
  if (img.length >= 4 && img.subarray(0, 4).equals(ELF_MAGIC)) return { format: 'elf', pvh: elfHasPvhNote(img), version: elfVersion(img) };
  if (img.length > 0x210 && img.toString('latin1', BZ_HDRS_OFFSET, BZ_HDRS_OFFSET + 4) === 'HdrS') {
    return { format: 'bzImage', version: bzImageVersion(img) };
  }
  return null;
}

/** Reads `file` and says what kernel image it is; a file that is neither is refused. */
export async function detectKernelImage(file: string): Promise<KernelImageInfo> {
  let img: Buffer;
  try {
    img = await fs.readFile(file);
  } catch (e) {
    throw new KilnError('KILN_ERR_HOST_SETUP', `cannot read kernel image ${file}: ${(e as NodeJS.ErrnoException).code ?? e}`, { kernel: file }, { cause: e });
  }
  const info = kernelImageInfo(img);
  if (!info) {
    throw new KilnError('KILN_ERR_HOST_SETUP', `${file} is neither a bzImage (no "HdrS" boot header) nor an ELF vmlinux`, { kernel: file });
  }
  return info;
}
