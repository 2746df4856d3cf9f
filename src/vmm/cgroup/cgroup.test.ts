// The file layout each cgroup version gets, on a temporary fake cgroupfs (plain directories:
// the kernel's control files are written as ordinary files). The real hierarchy is exercised
// by test/confinement.test.ts and cgroup-real.test.ts.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { sweepCgroups } from './cgroup.ts';
import { detectCgroups } from './detect.ts';

const MIB = 1024 * 1024;
const limits = { memoryBytes: 300 * MIB, cpus: 2, pids: 130 };

async function fakeTree(dirs: Record<string, string>): Promise<string> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-cgfake-'));
  for (const [p, content] of Object.entries(dirs)) {
    await fs.mkdir(path.join(root, path.dirname(p)), { recursive: true });
    if (!p.endsWith('/')) await fs.writeFile(path.join(root, p), content);
  }
  return root;
}
const read = (root: string, p: string) => fs.readFile(path.join(root, p), 'utf8');

const V1_MOUNTS = [
  'tmpfs /sys/fs/cgroup tmpfs rw 0 0',
  'cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0',
  'cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0',
  'cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0',
  'cgroup /sys/fs/cgroup/freezer cgroup rw,relatime,freezer 0 0',
  'cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0',
].join('\n');

test('hybrid host (cgroup2 without controllers): v1, limits in each hierarchy, join files for all four', async () => {
  const root = await fakeTree({ 'sys/fs/cgroup/unified/cgroup.controllers': '\n', 'sys/fs/cgroup/memory/': '', 'sys/fs/cgroup/pids/': '' });
  try {
    const d = await detectCgroups({ parent: 'kiln-t', mounts: V1_MOUNTS, root });
    assert.equal(d.manager?.version, 1, d.reason);
    assert.match(d.reason, /unified lacks memory, cpu, pids/);
    assert.deepEqual([...d.manager!.controllers].sort(), ['cpu', 'freezer', 'memory', 'pids']);
    const cg = await d.manager!.create('vm-1', limits);
    assert.equal(await read(root, 'sys/fs/cgroup/memory/kiln-t/vm-1/memory.limit_in_bytes'), String(300 * MIB));
    assert.equal(await read(root, 'sys/fs/cgroup/cpu,cpuacct/kiln-t/vm-1/cpu.cfs_quota_us'), '200000');
    assert.equal(await read(root, 'sys/fs/cgroup/cpu,cpuacct/kiln-t/vm-1/cpu.cfs_period_us'), '100000');
    assert.equal(await read(root, 'sys/fs/cgroup/pids/kiln-t/vm-1/pids.max'), '130');
    assert.equal(cg.procsFiles.length, 4);
    assert.equal(cg.memoryLimitFile, path.join(root, 'sys/fs/cgroup/memory/kiln-t/vm-1/memory.limit_in_bytes'));
    assert.deepEqual(await d.manager!.list(), ['vm-1']);
    // The fake freezer "freezes" at once (the file reads back what was written); no tasks.
    await fs.writeFile(path.join(root, 'sys/fs/cgroup/freezer/kiln-t/vm-1/cgroup.procs'), '');
    await cg.kill();
    assert.equal(await read(root, 'sys/fs/cgroup/freezer/kiln-t/vm-1/freezer.state'), 'THAWED');
    await cg.remove();
    assert.deepEqual(await d.manager!.list(), []);
    assert.equal(await d.manager!.open('vm-1'), null);
  } finally {
    await fs.rm(root, { recursive: true, force: true });
  }
});

test('unified host: v2, controllers enabled down the tree, memory/cpu/pids in one directory, cgroup.kill', async () => {
  const mounts = 'cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0';
  const root = await fakeTree({ 'sys/fs/cgroup/cgroup.controllers': 'cpuset cpu io memory pids\n', 'sys/fs/cgroup/cgroup.subtree_control': 'memory pids\n' });
  try {
    const d = await detectCgroups({ parent: 'kiln-t', mounts, root });
    assert.equal(d.manager?.version, 2, d.reason);
    const cg = await d.manager!.create('vm-2', { ...limits, cpus: 1 });
    assert.equal(await read(root, 'sys/fs/cgroup/cgroup.subtree_control'), '+memory +cpu +pids');
    assert.equal(await read(root, 'sys/fs/cgroup/kiln-t/cgroup.subtree_control'), '+memory +cpu +pids');
    assert.equal(await read(root, 'sys/fs/cgroup/kiln-t/vm-2/memory.max'), String(300 * MIB));
    assert.equal(await read(root, 'sys/fs/cgroup/kiln-t/vm-2/cpu.max'), '100000 100000');
    assert.equal(await read(root, 'sys/fs/cgroup/kiln-t/vm-2/pids.max'), '130');
    assert.deepEqual(cg.procsFiles, [path.join(root, 'sys/fs/cgroup/kiln-t/vm-2/cgroup.procs')]);
    await fs.writeFile(path.join(root, 'sys/fs/cgroup/kiln-t/vm-2/cgroup.kill'), '');
    await cg.kill();
    assert.equal(await read(root, 'sys/fs/cgroup/kiln-t/vm-2/cgroup.kill'), '1');
  } finally {
    await fs.rm(root, { recursive: true, force: true });
  }
});

test('a background VM gets the least CPU share at creation and the normal one when it is taken into use', async () => {
  const v1 = await fakeTree({ 'sys/fs/cgroup/unified/cgroup.controllers': '\n', 'sys/fs/cgroup/memory/': '', 'sys/fs/cgroup/pids/': '' });
  const v2 = await fakeTree({ 'sys/fs/cgroup/cgroup.controllers': 'cpu memory pids\n', 'sys/fs/cgroup/cgroup.subtree_control': '\n' });
  try {
    const m1 = (await detectCgroups({ parent: 'kiln-t', mounts: V1_MOUNTS, root: v1 })).manager!;
    const shares = 'sys/fs/cgroup/cpu,cpuacct/kiln-t/vm-bg/cpu.shares';
    const c1 = await m1.create('vm-bg', { ...limits, priority: 'background' });
    assert.equal(await read(v1, shares), '2');
    await c1.setCpuPriority('normal');
    assert.equal(await read(v1, shares), '1024');
    // A normal VM leaves the kernel's default alone.
    await m1.create('vm-fg', limits);
    await assert.rejects(read(v1, 'sys/fs/cgroup/cpu,cpuacct/kiln-t/vm-fg/cpu.shares'), { code: 'ENOENT' });

    const m2 = (await detectCgroups({ parent: 'kiln-t', mounts: 'cgroup2 /sys/fs/cgroup cgroup2 rw 0 0', root: v2 })).manager!;
    const c2 = await m2.create('vm-bg', { ...limits, priority: 'background' });
    assert.equal(await read(v2, 'sys/fs/cgroup/kiln-t/vm-bg/cpu.weight'), '1');
    await c2.setCpuPriority('normal');
    assert.equal(await read(v2, 'sys/fs/cgroup/kiln-t/vm-bg/cpu.weight'), '100');
  } finally {
    await fs.rm(v1, { recursive: true, force: true });
    await fs.rm(v2, { recursive: true, force: true });
  }
});

test('no usable hierarchy: no manager, and the reason names what is missing', async () => {
  const d = await detectCgroups({ parent: 'kiln-t', mounts: 'cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0', root: '/nonexistent' });
  assert.equal(d.manager, null);
  assert.match(d.reason, /no cgroup2 mount; no cgroup v1 hierarchy for cpu, pids/);
});

test('sweep removes the cgroups not kept, partial ones (a crash between mkdirs) included', async () => {
  const root = await fakeTree({ 'sys/fs/cgroup/unified/cgroup.controllers': '' });
  try {
    const m = (await detectCgroups({ parent: 'kiln-t', mounts: V1_MOUNTS, root })).manager!;
    await m.create('keep-me', limits);
    await m.create('orphan', limits);
    await fs.mkdir(path.join(root, 'sys/fs/cgroup/memory/kiln-t/half'), { recursive: true });
    assert.deepEqual(await sweepCgroups(m, new Set(['keep-me'])), ['half', 'orphan']);
    assert.deepEqual(await m.list(), ['keep-me']);
  } finally {
    await fs.rm(root, { recursive: true, force: true });
  }
});

test('names that could escape the parent are refused', async () => {
  const root = await fakeTree({ 'sys/fs/cgroup/unified/cgroup.controllers': '' });
  try {
    const m = (await detectCgroups({ parent: 'kiln-t', mounts: V1_MOUNTS, root })).manager!;
    await assert.rejects(m.create('../x', limits), /bad cgroup name/);
    await assert.rejects(m.create('', limits), /bad cgroup name/);
  } finally {
    await fs.rm(root, { recursive: true, force: true });
  }
});
