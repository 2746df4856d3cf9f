import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { isKilnError } from '../errors.ts';
import { ensureVmlinux } from './extract-vmlinux.ts';
import { detectKernelImage, elfHasPvhNote, kernelImageInfo } from './kernel-format.ts';
import { userKernel } from './kernel.ts';
import { debianGuestKernel } from '../../test/helpers/guest-kernel.ts';

/** A minimal ELF64 with one PT_NOTE segment holding `notes`. */
function elf(notes: { name: string; type: number; desc: Buffer }[], banner = ''): Buffer {
  const body = Buffer.concat(
    notes.map((n) => {
      const name = Buffer.from(`${n.name}\0`, 'latin1');
      const pad = (b: Buffer) => Buffer.concat([b, Buffer.alloc((4 - (b.length % 4)) % 4)]);
      const head = Buffer.alloc(12);
      head.writeUInt32LE(name.length, 0);
      head.writeUInt32LE(n.desc.length, 4);
      head.writeUInt32LE(n.type, 8);
      return Buffer.concat([head, pad(name), pad(n.desc)]);
    }),
  );
  const ehdr = Buffer.alloc(64);
  Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]).copy(ehdr);
  ehdr.writeBigUInt64LE(64n, 0x20); // e_phoff
  ehdr.writeUInt16LE(56, 0x36); // e_phentsize
  ehdr.writeUInt16LE(1, 0x38); // e_phnum
  const phdr = Buffer.alloc(56);
  phdr.writeUInt32LE(4, 0); // PT_NOTE
  phdr.writeBigUInt64LE(120n, 8); // p_offset
  phdr.writeBigUInt64LE(BigInt(body.length), 32); // p_filesz
  return Buffer.concat([ehdr, phdr, body, Buffer.from(banner, 'latin1')]);
}

test('ELF: PVH entry note found among other notes; absent without it', () => {
  const gnu = { name: 'GNU', type: 3, desc: Buffer.alloc(20) };
  const pvh = { name: 'Xen', type: 18, desc: Buffer.alloc(4) };
  const other = { name: 'Xen', type: 5, desc: Buffer.from('xen-3.0') };
  assert.equal(elfHasPvhNote(elf([gnu, other, pvh])), true);
  assert.equal(elfHasPvhNote(elf([gnu, other])), false);
  assert.deepEqual(kernelImageInfo(elf([gnu], 'Linux version 6.1.160 (builder@fc) #1')), { format: 'elf', pvh: false, version: '6.1.160' });
});

test('bzImage: "HdrS" at 0x202, version from the header pointer', () => {
  const img = Buffer.alloc(0x1000);
  img.write('HdrS', 0x202, 'latin1');
  img.writeUInt16LE(0x600, 0x20e);
  img.write('6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\0', 0x800, 'latin1');
  assert.deepEqual(kernelImageInfo(img), { format: 'bzImage', version: '6.1.0-56-cloud-amd64' });
  assert.equal(kernelImageInfo(Buffer.from('not a kernel at all')), null);
});

test('a file that is no kernel is refused with the reason', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kfmt-'));
  try {
    const f = path.join(dir, 'initrd.img');
    await fs.writeFile(f, Buffer.alloc(4096, 1));
    await assert.rejects(detectKernelImage(f), (e) => isKilnError(e) && e.code === 'KILN_ERR_HOST_SETUP' && /neither a bzImage/.test(e.message));
    await assert.rejects(userKernel(path.join(dir, 'missing')), (e) => isKilnError(e) && /cannot read kernel image/.test(e.message));
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

test('Debian’s cloud kernel: a bzImage; its extracted vmlinux is ELF with the PVH note (QEMU can boot either)', async () => {
  const debian = await debianGuestKernel();
  // The version kiln read from the package name (e.g. 6.1.0-57-cloud-amd64) is the one the image says.
  assert.match(debian.version, /^\d+\.\d+\.\d+-\d+-cloud-amd64$/);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kfmt-'));
  try {
    const k = await userKernel(debian.path);
    assert.deepEqual({ ...k }, { version: debian.version, root: null, path: debian.path, format: 'bzImage', pvh: undefined, source: 'user' });
    const vmlinux = await ensureVmlinux(debian.path, dir);
    assert.deepEqual(await detectKernelImage(vmlinux), { format: 'elf', pvh: true, version: debian.version });
    const asUser = await userKernel(vmlinux);
    assert.equal(asUser.format, 'elf');
    assert.equal(asUser.pvh, true);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});
