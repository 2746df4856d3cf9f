import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { isKilnError } from '../errors.ts';
import { assertCompatible, compatMismatches, describeFile, SNAPSHOT_FORMAT, verifyFiles, type SnapshotCompat, type SnapshotMeta } from './meta.ts';

const compat: SnapshotCompat = {
  backend: 'qemu', vmmVersion: '7.2.22', accelerator: 'tcg', kernel: '6.1.0-41-amd64 (8 bytes)', initramfs: 'abc', machine: 'console=ttyS0 quiet',
};
const meta = (c: SnapshotCompat, format = SNAPSHOT_FORMAT) => ({ format, compat: c }) as SnapshotMeta;

test('a snapshot restores only where backend, VMM, accelerator, kernel, initramfs and machine all match', () => {
  assert.doesNotThrow(() => assertCompatible('s', meta(compat), { ...compat }));
  for (const k of Object.keys(compat) as (keyof SnapshotCompat)[]) {
    assert.throws(
      () => assertCompatible('s', meta(compat), { ...compat, [k]: 'other' }),
      (e) => isKilnError(e) && e.code === 'KILN_ERR_SNAPSHOT_INCOMPATIBLE' && e.message.includes(k),
      k,
    );
  }
  assert.deepEqual(compatMismatches(compat, { ...compat, vmmVersion: '8.0.0', initramfs: 'def' }), [
    'vmmVersion: snapshot "7.2.22", this host "8.0.0"',
    'initramfs: snapshot "abc", this host "def"',
  ]);
  assert.throws(() => assertCompatible('s', meta(compat, 99), compat), (e) => isKilnError(e) && e.code === 'KILN_ERR_SNAPSHOT_INCOMPATIBLE');
});

test('files: missing, truncated or changed are KILN_ERR_SNAPSHOT_CORRUPT naming the file; intact ones pass', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-meta-'));
  try {
    await fs.writeFile(path.join(dir, 'vmstate'), Buffer.alloc(4096, 7));
    await fs.writeFile(path.join(dir, 'scratch.ext4'), Buffer.alloc(100));
    const files = [await describeFile(dir, 'vmstate', true), await describeFile(dir, 'scratch.ext4', false)];
    assert.equal(files[1]!.sha256, null);
    await verifyFiles('s', dir, files);
    const corrupt = (file: string, re: RegExp) => (e: unknown) => isKilnError(e) && e.code === 'KILN_ERR_SNAPSHOT_CORRUPT' && e.details?.file === file && re.test(e.message);
    await fs.truncate(path.join(dir, 'scratch.ext4'), 50);
    await assert.rejects(verifyFiles('s', dir, files), corrupt('scratch.ext4', /truncated/));
    await fs.truncate(path.join(dir, 'scratch.ext4'), 100);
    // Same size, other bytes, and a new identity (a verified file is not hashed twice).
    await fs.rm(path.join(dir, 'vmstate'));
    await fs.writeFile(path.join(dir, 'vmstate'), Buffer.alloc(4096, 8));
    await assert.rejects(verifyFiles('s', dir, files), corrupt('vmstate', /sha256/));
    await fs.rm(path.join(dir, 'vmstate'));
    await assert.rejects(verifyFiles('s', dir, files), corrupt('vmstate', /missing/));
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});
