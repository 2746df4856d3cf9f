import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { killAndWait, processesUnder } from './vmm-sweep.ts';

test('finds processes by the runtime dir on their command line, and only under this state dir', async () => {
  const state = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-sweep-'));
  const vms = path.join(state, 'vms');
  const mine = spawn('sh', ['-c', 'sleep 30; :', `${vms}/vm-0123456789/qmp.sock`], { stdio: 'ignore' });
  const other = spawn('sh', ['-c', 'sleep 30; :', `${state}-other/vms/vm-aaaaaaaaaa/qmp.sock`], { stdio: 'ignore' });
  const prefix = spawn('sh', ['-c', 'sleep 30; :', `${vms}x/vm-bbbbbbbbbb/qmp.sock`], { stdio: 'ignore' });
  try {
    // Each child's command line is node's until it has exec'd sh (which stays: `; :`).
    const deadline = Date.now() + 5000;
    for (const p of [mine, other, prefix]) {
      while (!(await fs.readFile(`/proc/${p.pid}/cmdline`, 'utf8').catch(() => '')).startsWith('sh')) {
        assert.ok(Date.now() < deadline, 'the children exec sh within 5 s');
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    const found = await processesUnder(vms);
    assert.deepEqual(found, [{ pid: mine.pid!, vmId: 'vm-0123456789' }]);
    assert.deepEqual(await processesUnder(`${vms}/`), found, 'a trailing slash does not matter');
    const exited = new Promise((r) => mine.once('exit', r));
    assert.equal(await killAndWait(mine.pid!), true);
    await exited;
    assert.deepEqual(await processesUnder(vms), []);
    assert.equal(await killAndWait(mine.pid!), true, 'a process already gone counts as gone');
  } finally {
    for (const p of [mine, other, prefix]) p.kill('SIGKILL');
    await fs.rm(state, { recursive: true, force: true });
  }
});

test('finds a chrooted process by its root under the jails dir (a jailed Firecracker)', async () => {
  const state = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-sweep-jail-'));
  const jails = path.join(state, 'jailer');
  const root = path.join(jails, 'firecracker', 'vm-00000000aa', 'root');
  await fs.mkdir(path.join(root, 'bin'), { recursive: true });
  await fs.copyFile('/bin/busybox', path.join(root, 'bin', 'busybox'));
  const jailed = spawn('chroot', [root, '/bin/busybox', 'sleep', '30'], { stdio: 'ignore' });
  try {
    const deadline = Date.now() + 5000;
    let found: Awaited<ReturnType<typeof processesUnder>> = [];
    while (!found.length) {
      assert.ok(Date.now() < deadline, 'the chrooted process is found within 5 s');
      found = await processesUnder(path.join(state, 'vms'), jails);
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.deepEqual(found, [{ pid: jailed.pid!, vmId: 'vm-00000000aa' }]);
    assert.deepEqual(await processesUnder(path.join(state, 'vms')), [], 'without the jails dir it is not looked for');
  } finally {
    jailed.kill('SIGKILL');
    await fs.rm(state, { recursive: true, force: true });
  }
});
