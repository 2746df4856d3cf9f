// The initramfs for a user-supplied kernel (KILN_KERNEL): kiln-init and no modules, since
// modules of Debian's build would not load into another kernel.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { run } from '../util/process.ts';
import { ensureInitramfs } from './initramfs.ts';
import type { GuestKernel } from './kernel.ts';

test('a kernel without a module tree gets kiln-init and an empty module list', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'initramfs-'));
  try {
    const init = path.join(dir, 'kiln-init');
    await fs.writeFile(init, '#!/bin/sh\n', { mode: 0o755 });
    const kernel: GuestKernel = { version: '6.1.160', root: null, path: '/k/vmlinux', format: 'elf', pvh: false, source: 'user' };
    const a = await ensureInitramfs(dir, kernel, { path: init, hash: 'h1' });
    assert.deepEqual(a.modules, []);
    const { stdout } = await run('cpio', ['-it', '--quiet'], { input: await fs.readFile(a.path) });
    const entries = stdout.split('\n').filter(Boolean).sort();
    assert.ok(entries.includes('init'));
    assert.ok(entries.includes('lib/kiln/modules.order'));
    assert.deepEqual(entries.filter((e) => e.startsWith('lib/kiln/modules/')), [], 'no module files');
    const again = await ensureInitramfs(dir, kernel, { path: init, hash: 'h1' });
    assert.equal(again.path, a.path, 'built once');
    assert.match(path.basename(a.path), /^[0-9a-f]{16}\.cpio$/);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});
