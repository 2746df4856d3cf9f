import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isKilnError, type KilnError } from '../../errors.ts';
import { FirecrackerDriver } from './firecracker-driver.ts';
import { JAIL, jailerArgv, jailLayout, linkIntoJail, type JailerOptions } from './jailer.ts';
import { baseSpec, contractProblems, makeAssets, readRecords, tempDir, writeFakeBinaries, type Assets, type FakeBinaries } from './testing/harness.ts';
import { specFile } from './testing/paths.ts';
import { loadSpec } from './testing/spec-validator.ts';
import { processGone } from './vmm-process.ts';

let dir: string;
before(async () => {
  dir = await tempDir('jail');
});
after(() => fs.rm(dir, { recursive: true, force: true }));

test('argv carries every documented flag, then -- and Firecracker’s own arguments', () => {
  const j: JailerOptions = {
    uid: 123,
    gid: 100,
    chrootBaseDir: '/srv/kiln-jail',
    cgroupVersion: 2,
    cgroups: { 'cpu.max': '50000 100000', 'memory.max': '536870912' },
    parentCgroup: 'kiln/vms',
    resourceLimits: { fsize: 250000000, 'no-file': 1024 },
    netns: '/var/run/netns/default-ns',
    daemonize: true,
    newPidNs: true,
  };
  assert.deepEqual(
    jailerArgv({ jailer: j, execFile: '/usr/bin/firecracker', id: 'vm-1', netns: '/var/run/netns/vm-1', firecrackerArgs: ['--api-sock', '/firecracker.socket'] }),
    [
      '--id', 'vm-1',
      '--exec-file', '/usr/bin/firecracker',
      '--uid', '123',
      '--gid', '100',
      '--chroot-base-dir', '/srv/kiln-jail',
      '--cgroup-version', '2',
      '--cgroup', 'cpu.max=50000 100000',
      '--cgroup', 'memory.max=536870912',
      '--parent-cgroup', 'kiln/vms',
      '--resource-limit', 'fsize=250000000',
      '--resource-limit', 'no-file=1024',
      '--netns', '/var/run/netns/vm-1',
      '--daemonize',
      '--new-pid-ns',
      '--', '--api-sock', '/firecracker.socket',
    ],
  );
});

test('defaults: cgroup v2, no base dir flag (jailer default /srv/jailer), no daemonize', () => {
  const argv = jailerArgv({ jailer: { uid: 1, gid: 2 }, execFile: '/fc', id: 'x', firecrackerArgs: [] });
  assert.deepEqual(argv, ['--id', 'x', '--exec-file', '/fc', '--uid', '1', '--gid', '2', '--cgroup-version', '2', '--']);
  assert.equal(jailLayout({}, '/usr/bin/firecracker', 'x').root, '/srv/jailer/firecracker/x/root');
});

test('the layout maps paths in and out of <base>/<exec_file_name>/<id>/root, and refuses paths outside', () => {
  const j = jailLayout({ chrootBaseDir: '/srv/j' }, '/opt/fc/firecracker-v1.13.1', 'vm-1');
  assert.equal(j.dir, '/srv/j/firecracker-v1.13.1/vm-1');
  assert.equal(j.root, '/srv/j/firecracker-v1.13.1/vm-1/root');
  assert.equal(j.hostPath('/drives/root'), '/srv/j/firecracker-v1.13.1/vm-1/root/drives/root');
  assert.equal(j.toJail('/srv/j/firecracker-v1.13.1/vm-1/root/vsock.sock'), '/vsock.sock');
  assert.throws(() => j.toJail('/srv/j/firecracker-v1.13.1/vm-1/escape'), (e) => isKilnError(e) && e.code === 'KILN_ERR_VALIDATION');
  assert.throws(() => j.toJail('/etc/passwd'), /outside the jail/);
});

test('files are hard-linked into the jail (same inode), copied across filesystems, chowned when asked', async () => {
  const src = path.join(dir, 'disk.img');
  await fs.writeFile(src, 'disk');
  const j = jailLayout({ chrootBaseDir: path.join(dir, 'base') }, '/usr/bin/firecracker', 'link-1');
  assert.equal(await linkIntoJail(src, j, '/drives/a'), 'link');
  assert.equal((await fs.stat(j.hostPath('/drives/a'))).ino, (await fs.stat(src)).ino);
  const exdev = async () => {
    throw Object.assign(new Error('cross-device link'), { code: 'EXDEV' });
  };
  assert.equal(await linkIntoJail(src, j, '/drives/b', { link: exdev }), 'copy');
  assert.notEqual((await fs.stat(j.hostPath('/drives/b'))).ino, (await fs.stat(src)).ino);
  assert.equal(await fs.readFile(j.hostPath('/drives/b'), 'utf8'), 'disk');
  if (process.getuid?.() === 0) {
    await linkIntoJail(src, j, '/drives/c', { link: exdev, chown: { uid: 4242, gid: 4343 } });
    const st = await fs.stat(j.hostPath('/drives/c'));
    assert.deepEqual([st.uid, st.gid], [4242, 4343]);
  }
  const enoent = async () => {
    throw Object.assign(new Error('nope'), { code: 'ENOENT' });
  };
  await assert.rejects(linkIntoJail(src, j, '/drives/d', { link: enoent }), /nope/);
});

describe('the driver under the (stand-in) jailer', () => {
  let bins: FakeBinaries;
  let assets: Assets;
  let n = 0;
  before(async () => {
    [bins, assets] = await Promise.all([writeFakeBinaries(dir), makeAssets(dir)]);
  });

  function driver(jailer: Partial<JailerOptions> = {}, env: Record<string, string> = {}) {
    const record = path.join(dir, `jail-${++n}.jsonl`);
    const argvFile = path.join(dir, `jailer-argv-${n}.json`);
    const d = new FirecrackerDriver({
      binary: bins.firecracker,
      socketTimeoutMs: 20_000,
      jailer: { binary: bins.jailer, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, chrootBaseDir: path.join(dir, 'srv'), ...jailer },
      env: { ...process.env, FAKE_FC_SPEC: specFile('1.13.1'), FAKE_FC_RECORD: record, FAKE_JAILER_RECORD: argvFile, FAKE_FC_GUEST_ECHO_PORTS: '52', ...env },
    });
    return { d, record, argvFile };
  }

  test('boot steps: jailer.prepare after fc.kernel, jailer.spawn in place of fc.spawn, jailer.pid after fc.waitSocket', () => {
    const { d } = driver();
    const names = d.bootSteps(baseSpec(dir, assets)).names;
    assert.deepEqual(names.slice(0, 6), ['fc.prepare', 'fc.kernel', 'jailer.prepare', 'jailer.spawn', 'fc.waitSocket', 'jailer.pid']);
    assert.ok(!names.includes('fc.spawn'), 'fc.spawn replaced');
  });

  test('every path the VMM is given is jail-relative and exists in the jail', async () => {
    const { d, record, argvFile } = driver();
    const spec = baseSpec(dir, assets, 'jvm-1', { vsock: { guestCid: 3 } });
    const vm = await d.start(spec);
    try {
      const recs = await readRecords(record);
      assert.deepEqual(contractProblems(await loadSpec(specFile('1.13.1')), recs), []);
      const body = (p: string) => recs.find((r) => r.path === p)!.body as Record<string, unknown>;
      assert.deepEqual(body('/boot-source'), { kernel_image_path: JAIL.kernel, boot_args: spec.kernel.cmdline, initrd_path: JAIL.initrd });
      assert.equal(body('/drives/root').path_on_host, '/drives/root');
      assert.equal(body('/drives/scratch_1').path_on_host, '/drives/scratch_1');
      assert.equal(body('/vsock').uds_path, JAIL.vsock);
      const jail = vm.jail!;
      assert.equal(jail.root, path.join(dir, 'srv', 'firecracker', 'jvm-1', 'root'));
      assert.equal((await fs.stat(jail.hostPath('/drives/root'))).ino, (await fs.stat(assets.rootImage)).ino, 'hard link, not a copy');
      const argv = JSON.parse(await fs.readFile(argvFile, 'utf8')) as { single: Record<string, string>; forwarded: string[] };
      assert.equal(argv.single['--id'], 'jvm-1');
      assert.equal(argv.single['--exec-file'], bins.firecracker);
      assert.equal(argv.single['--cgroup-version'], '2');
      assert.deepEqual(argv.forwarded, ['--api-sock', '/firecracker.socket', '--log-path', JAIL.log, '--level', 'Warning', '--show-level', '--metrics-path', JAIL.metrics]);
      // kilnd's side of the socket stays in the runtime dir: a link into the jail.
      assert.equal(vm.vsockPath, path.join(spec.runtimeDir, 'vsock', 'vsock.sock'));
      assert.equal(await fs.realpath(path.dirname(vm.vsockPath!)), jail.hostPath(JAIL.vsockDir));
      const { socket } = await vm.connectVsock(52);
      socket.destroy();
      assert.equal(await fs.readFile(path.join(spec.runtimeDir, 'vmm.pid'), 'utf8'), `${vm.pid}\n`);
    } finally {
      await vm.kill();
    }
    assert.equal(await processGone(vm.pid), true);
  });

  test('--new-pid-ns: the VMM’s pid comes from the jail, and kill/exited follow that process', async () => {
    const { d } = driver({ newPidNs: true });
    const spec = baseSpec(dir, assets, 'jvm-2');
    const vm = await d.start(spec);
    const pidFile = await fs.readFile(vm.jail!.hostPath('/firecracker.pid'), 'utf8');
    assert.equal(vm.pid, Number(pidFile.trim()));
    assert.equal((await vm.api.describeInstance()).state, 'Running');
    await vm.kill();
    assert.equal((await vm.exited).clean, false);
    assert.equal(await processGone(vm.pid), true);
  });

  test('a failed jailed boot removes the jail it built', async () => {
    const { d } = driver({}, { FAKE_FC_MODE: 'die-on', FAKE_FC_DIE_ON: 'PUT /drives' });
    const spec = baseSpec(dir, assets, 'jvm-3');
    await assert.rejects(d.start(spec), (e: KilnError) => e.code === 'KILN_ERR_VMM_FAILED' && /fc\.drives/.test(e.message));
    await assert.rejects(fs.stat(path.join(dir, 'srv', 'firecracker', 'jvm-3')), { code: 'ENOENT' });
  });

  test('a snapshot taken in one jail restores in another at the same jail paths (no vsock_override on 1.13)', async () => {
    const a = driver();
    const vmA = await a.d.start(baseSpec(dir, assets, 'jvm-4', { vsock: { guestCid: 3 } }));
    const snapDir = path.join(dir, 'snap-jvm-4');
    await fs.mkdir(snapDir, { recursive: true });
    let snap;
    try {
      snap = await vmA.snapshot(snapDir, { resume: false });
      const creates = (await readRecords(a.record)).filter((r) => r.path === '/snapshot/create');
      assert.deepEqual(creates[0]!.body, { snapshot_type: 'Full', snapshot_path: '/snapshot-out/vmstate', mem_file_path: '/snapshot-out/memory' });
      assert.equal(snap.vsockPath, JAIL.vsock, 'the path the jailed VMM had');
      await fs.access(snap.stateFile);
      await fs.access(snap.memoryFile!);
      await assert.rejects(vmA.createSnapshot({ snapshotPath: path.join(dir, 'outside.vmstate'), memFilePath: path.join(dir, 'outside.mem') }), /outside the jail/);
    } finally {
      await vmA.kill();
    }
    const b = driver();
    const vmB = await b.d.restore(baseSpec(dir, assets, 'jvm-5', { vsock: { guestCid: 3 } }), snap);
    try {
      const recs = await readRecords(b.record);
      assert.deepEqual(contractProblems(await loadSpec(specFile('1.13.1')), recs), []);
      assert.deepEqual(recs.find((r) => r.path === '/snapshot/load')!.body, {
        snapshot_path: JAIL.snapshotState,
        mem_backend: { backend_type: 'File', backend_path: JAIL.snapshotMemory },
        resume_vm: false,
      });
      await vmB.resume();
      const { socket } = await vmB.connectVsock(52);
      socket.destroy();
    } finally {
      await vmB.kill();
    }
  });
});
