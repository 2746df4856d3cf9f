import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { mkfsExt4 } from '../tools/mkfs-ext4.ts';
import { run } from '../util/process.ts';
import { cloneWritableDisk } from './writable-disk.ts';

let tmp: string;
before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-wdisk-'));
});
after(() => fs.rm(tmp, { recursive: true, force: true }));

async function hasTool(t: string): Promise<boolean> {
  return run('sh', ['-c', `command -v ${t}`]).then(() => true, () => false);
}

test('refuses read-only image formats', async () => {
  await assert.rejects(cloneWritableDisk({ name: 'x', format: 'squashfs', path: '/nonexistent' }, path.join(tmp, 'd')), { code: 'KILN_ERR_VALIDATION' });
});

test('sparse copy where the filesystem has no reflinks (tmpfs), and it stays sparse', async () => {
  const mnt = path.join(tmp, 'tmpfs');
  await fs.mkdir(mnt);
  await run('mount', ['-t', 'tmpfs', '-o', 'size=600m', 'kiln-wdisk', mnt]);
  try {
    const img = path.join(mnt, 'root.ext4');
    await mkfsExt4(img, { sizeMib: 512, label: 't' });
    const r = await cloneWritableDisk({ name: 'i', format: 'ext4', path: img }, path.join(mnt, 'vm/disk.ext4'));
    assert.equal(r.strategy, 'sparse-copy');
    const st = await fs.stat(r.path);
    assert.equal(st.size, 512 * 1024 * 1024);
    assert.ok(st.blocks * 512 < 64 * 1024 * 1024, `sparse: ${st.blocks * 512} bytes allocated`);
    await run('e2fsck', ['-fn', r.path]);
  } finally {
    await run('umount', [mnt]);
  }
});

test('reflink on btrfs', async () => {
  assert.ok(await hasTool('mkfs.btrfs'), 'btrfs-progs is installed (scripts/setup-host.sh)');
  const dev = path.join(tmp, 'btrfs.img');
  const fh = await fs.open(dev, 'w');
  await fh.truncate(512 * 1024 * 1024);
  await fh.close();
  await run('mkfs.btrfs', ['-q', dev]);
  const mnt = path.join(tmp, 'btrfs');
  await fs.mkdir(mnt);
  await run('mount', ['-o', 'loop', dev, mnt]);
  try {
    const img = path.join(mnt, 'root.ext4');
    await mkfsExt4(img, { sizeMib: 256, label: 't' });
    const r = await cloneWritableDisk({ name: 'i', format: 'ext4', path: img }, path.join(mnt, 'vm/disk.ext4'));
    assert.equal(r.strategy, 'reflink');
    await run('e2fsck', ['-fn', r.path]);
  } finally {
    await run('umount', [mnt]);
  }
});
