import assert from 'node:assert/strict';
import { test } from 'node:test';
import { vmmMemory, vmmMemoryFromSmaps } from './vmm-memory.ts';

const map = (start: number, sizeKib: number, rssKib: number, path = '') =>
  `${start.toString(16)}-${(start + sizeKib * 1024).toString(16)} rw-p 00000000 00:00 0 ${path}\nSize: ${sizeKib} kB\nRss: ${rssKib} kB\nPss: ${rssKib} kB\n`;

test('guest RAM (the anonymous mapping of the configured size) is not overhead', () => {
  const smaps =
    map(0x400000, 2048, 1800, '/usr/bin/firecracker') +
    map(0x7f0000000000, 256 * 1024, 90_000) +
    map(0x7f1000000000, 132, 40, '[heap]') +
    map(0x7f2000000000, 8, 8);
  assert.deepEqual(vmmMemoryFromSmaps(smaps, 256), { overheadKib: 1800 + 40 + 8, guestKib: 90_000 });
});

test('a guest split around the PCI hole counts both regions as guest RAM', () => {
  const smaps = map(0x1000000, 3072 * 1024, 500_000) + map(0x200000000000, 1024 * 1024, 1000) + map(0x300000000000, 64, 64, '/lib/libc.so');
  assert.deepEqual(vmmMemoryFromSmaps(smaps, 4096), { overheadKib: 64, guestKib: 501_000 });
});

test('a file-backed mapping of the guest size is not mistaken for guest RAM', () => {
  const smaps = map(0x1000, 256 * 1024, 100, '/img/rootfs.squashfs') + map(0x20000000, 256 * 1024, 2000);
  assert.deepEqual(vmmMemoryFromSmaps(smaps, 256), { overheadKib: 100, guestKib: 2000 });
});

test('reads a live process (this one): it has resident memory', async () => {
  const m = await vmmMemory(process.pid, 1);
  assert.ok(m.overheadKib > 1000, `overhead ${m.overheadKib} KiB`);
});
