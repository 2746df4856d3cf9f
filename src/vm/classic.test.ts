import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { KilnError } from '../errors.ts';
import { CONFIG_MAGIC, encodeConfigDrive } from '../guest/config-drive.ts';
import { mkfsExt4 } from '../tools/mkfs-ext4.ts';
import type { ImageRecord, VmRecord } from '../store/store.ts';
import { GIB, checkClassicInput, checkDiskSize, ensureClassicDisk, growDiskOffline, isValidHostname, newClassicVm, parseSshPublicKey } from './classic.ts';
import { guestConfig, vmSpec } from './vm-spec.ts';

const ed25519 = () => {
  const dir = execFileSync('mktemp', ['-d']).toString().trim();
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'me@host', '-f', path.join(dir, 'k')]);
  return execFileSync('cat', [path.join(dir, 'k.pub')]).toString().trim();
};
const blob = (type: string, body = Buffer.alloc(32, 1)) => Buffer.concat([Buffer.from([0, 0, 0, type.length]), Buffer.from(type), body]).toString('base64');

test('SSH public keys: real ones pass (comment kept), malformed or mislabelled ones are refused', () => {
  const k = ed25519();
  assert.equal(parseSshPublicKey(`  ${k}\n`), k);
  assert.equal(parseSshPublicKey(`ssh-rsa ${blob('ssh-rsa')}`), `ssh-rsa ${blob('ssh-rsa')}`);
  assert.throws(() => parseSshPublicKey('ssh-ed25519'), /TYPE BASE64/);
  assert.throws(() => parseSshPublicKey('ssh-ed25519 !!!'), /TYPE BASE64/);
  assert.throws(() => parseSshPublicKey(`ssh-dss ${blob('ssh-dss')}`), /unsupported key type/);
  assert.throws(() => parseSshPublicKey(`ssh-ed25519 ${blob('ssh-rsa')}`), /not a ssh-ed25519 key/);
  assert.throws(() => parseSshPublicKey(`ssh-ed25519 AAAA`), /too short/);
  // Options (command=…) and second lines are not accepted: kiln writes the file itself.
  assert.throws(() => parseSshPublicKey(`command="x" ${k}`));
  assert.throws(() => parseSshPublicKey(`${k}\n${k}`), /single line/);
});

test('host names: RFC 1123 labels', () => {
  for (const ok of ['a', 'web-1', 'web-1.example.test', 'A1', 'x'.repeat(63)]) assert.ok(isValidHostname(ok), ok);
  for (const bad of ['', '-a', 'a-', 'a_b', 'a..b', 'x'.repeat(64), `${'a.'.repeat(127)}a`]) assert.ok(!isValidHostname(bad), bad);
});

test('checkClassicInput: stable codes, index of the bad key, hostname defaults to the VM name', () => {
  const k = ed25519();
  assert.deepEqual(checkClassicInput({ ssh_authorized_keys: [k] }, 'vm-1'), { hostname: 'vm-1', keys: [k], userData: null });
  assert.throws(() => checkClassicInput({ ssh_authorized_keys: [k, 'nope'] }, 'a'),
    (e: KilnError) => e.code === 'KILN_ERR_SSH_KEY_INVALID' && (e.details as { index: number }).index === 1);
  assert.throws(() => checkClassicInput({}, 'my_vm'), (e: KilnError) => e.code === 'KILN_ERR_VALIDATION' && /pass "hostname"/.test(e.message));
  assert.equal(checkClassicInput({ hostname: 'h' }, 'my_vm').hostname, 'h');
  assert.throws(() => checkClassicInput({ user_data: 'echo hi' }, 'a'), (e: KilnError) => e.code === 'KILN_ERR_VALIDATION');
  assert.throws(() => checkClassicInput({ user_data: '#!/bin/sh\n\0' }, 'a'), (e: KilnError) => e.code === 'KILN_ERR_VALIDATION');
  assert.equal(checkClassicInput({ user_data: '#!/bin/sh\necho hi\n' }, 'a').userData, '#!/bin/sh\necho hi\n');
});

test('disk size: at least the base image, at most what the state filesystem can hold', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-classic-'));
  try {
    await checkDiskSize(GIB, 100, dir);
    await assert.rejects(checkDiskSize(GIB, 2 * GIB, dir), (e: KilnError) => e.code === 'KILN_ERR_VALIDATION');
    await assert.rejects(checkDiskSize(2 ** 50, GIB, dir), (e: KilnError) => e.code === 'KILN_ERR_RESOURCE_LIMIT');
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

test('config drive: a classic VM carries mode, instance id, keys and user-data; no scratch drive', () => {
  const classic = newClassicVm({ hostname: 'h1', keys: ['ssh-ed25519 AAAA x'], userData: '#!/bin/sh\necho "a b"\n', diskPath: '/d/vm-1.ext4', sizeBytes: GIB });
  const vm = { id: 'vm-1', name: 'n', env: {}, classic, kernelArgs: [], vcpus: 1, memoryMib: 256, accelerator: 'tcg' } as unknown as VmRecord;
  const image = { path: '/img/rootfs.ext4', config: { user: '0:0', cmd: ['/sbin/init'], env: {}, workdir: '/' } } as unknown as ImageRecord;
  const cfg = guestConfig(vm, image, 5000, [{ id: 'vol0', path: '/v', readOnly: false, target: '/data' } as never]);
  const text = encodeConfigDrive(cfg).toString('utf8').slice(CONFIG_MAGIC.length);
  const entries = text.slice(0, text.indexOf('\0\0')).split('\0');
  assert.deepEqual(entries, [
    'argv=/sbin/init', 'env=HOME=/root', 'hostname=h1', 'stop_grace_ms=5000', 'drive=root,root,0', 'mount=vol0,2,/data,rw',
    'mode=classic', 'instance_id=vm-1', 'ssh_key=ssh-ed25519 AAAA x', 'user_data=#!/bin/sh\necho "a b"\n',
  ]);
  const spec = vmSpec(vm, image, { kernel: { path: 'k' }, initramfs: { path: 'i' } } as never, '/run/vm-1', { kernelCmdline: (_a, extra) => extra.join(' ') },
    undefined, [{ id: 'vol0', path: '/v', readOnly: false, target: '/data' } as never]);
  assert.deepEqual(spec.drives.map((d) => [d.id, d.path, d.readOnly]), [
    ['root', '/d/vm-1.ext4', false], ['config', '/run/vm-1/config.img', true], ['vol0', '/v', false],
  ]);
  assert.match(spec.kernel.cmdline, /net\.ifnames=0/);
});

test('the disk: cloned from the base image, grown offline, kept on later boots, grown again', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-classic-'));
  try {
    const base = path.join(dir, 'base.ext4');
    const tree = path.join(dir, 'tree');
    await fs.mkdir(path.join(tree, 'etc'), { recursive: true });
    await fs.writeFile(path.join(tree, 'etc/hello'), 'from the base image\n');
    await mkfsExt4(base, { sizeMib: 32, label: 'kiln-root', fromDir: tree });
    const classic = newClassicVm({ hostname: 'h', keys: [], userData: null, diskPath: path.join(dir, 'disks/vm-1.ext4'), sizeBytes: 64 * 1024 * 1024 });
    await fs.mkdir(path.dirname(classic.disk.path));
    const made = await ensureClassicDisk(classic, { name: 'base', format: 'ext4', path: base });
    assert.ok(made && (made.strategy === 'reflink' || made.strategy === 'sparse-copy'));
    assert.equal((await fs.stat(classic.disk.path)).size, 64 * 1024 * 1024);
    const fsBytes = () => {
      const h = execFileSync('dumpe2fs', ['-h', classic.disk.path], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
      return Number(/Block count:\s+(\d+)/.exec(h)![1]) * Number(/Block size:\s+(\d+)/.exec(h)![1]);
    };
    assert.equal(fsBytes(), 64 * 1024 * 1024);
    assert.equal(await ensureClassicDisk(classic, { name: 'base', format: 'ext4', path: base }), null, 'an existing disk is the VM\'s state: never re-cloned');
    await growDiskOffline(classic.disk.path, 96 * 1024 * 1024);
    assert.equal(fsBytes(), 96 * 1024 * 1024);
    assert.match(execFileSync('debugfs', ['-R', 'cat /etc/hello', classic.disk.path], { stdio: ['ignore', 'pipe', 'ignore'] }).toString(), /from the base image/);
    await assert.rejects(growDiskOffline(classic.disk.path, 32 * 1024 * 1024), (e: KilnError) => e.code === 'KILN_ERR_VALIDATION');
    await assert.rejects(ensureClassicDisk({ ...classic, disk: { ...classic.disk, path: path.join(dir, 'disks/x.ext4') } }, { name: 'sq', format: 'squashfs', path: base }),
      (e: KilnError) => e.code === 'KILN_ERR_VALIDATION');
    assert.deepEqual(await fs.readdir(path.join(dir, 'disks')), ['vm-1.ext4'], 'a failed clone leaves no file');
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});
