// Classic VMs with real guests: Debian's systemd as PID 1, SSH from the host with the key the
// test generates (to the VM's address on this test daemon's own bridge), hostname, a
// user-data script run exactly once, disk contents across stop/start, offline resize, the
// serial console over WebSocket (classic and plain VMs), and bad input refused with nothing
// left behind. One classic VM is shared by the tests that can share it: systemd under TCG
// boots in ~20 s.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { CreateVmBody, Vm } from '../src/api/schemas.ts';
import { tapName } from '../src/net/network-manager.ts';
import { linkExists } from '../src/tools/ip.ts';
import { run } from '../src/util/process.ts';
import { expectApiError } from './helpers/api-errors.ts';
import { BACKEND_SKIP } from './helpers/backend.ts';
import { startKilnd, vmmPids, waitForState, type TestDaemon } from './helpers/kilnd.ts';
import { runKiln } from './helpers/kiln-cli.ts';
import { readUntil } from './helpers/console-ws.ts';
import { until } from './helpers/until.ts';

// Firecracker on x86 has no ACPI power-off and its serial console is the VMM's stdio: the
// classic suite runs on QEMU (docs/classic-vms.md: Firecracker).
const skip = BACKEND_SKIP ?? (process.env.KILN_BACKEND === 'firecracker' ? 'KILN_BACKEND=firecracker: classic VMs need QEMU (Firecracker on x86 has no ACPI power-off; run this suite without KILN_BACKEND)' : undefined);
const BOOT_MS = 180_000;

let d: TestDaemon;
let keyDir: string;
let pubKey: string;
let vm: Vm;

const USER_DATA = '#!/bin/sh\nset -e\necho "ran at $(date +%s)" >> /root/user-data.log\nhostname > /root/user-data-hostname\n';

before(async () => {
  if (skip) return;
  keyDir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-classic-key-'));
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'kiln-test', '-f', path.join(keyDir, 'id')]);
  pubKey = (await fs.readFile(path.join(keyDir, 'id.pub'), 'utf8')).trim();
  d = await startKilnd();
  // Through the CLI: its classic flags are what a user types.
  await fs.writeFile(path.join(keyDir, 'user-data.sh'), USER_DATA);
  const created = await kiln('--json', 'vm', 'create', '--classic', '--name', 'classic-1', '--hostname', 'web-1.example.test',
    '--ssh-key', path.join(keyDir, 'id.pub'), '--user-data', path.join(keyDir, 'user-data.sh'), '--disk-size', '2');
  assert.equal(created.code, 0, created.stderr);
  vm = JSON.parse(created.stdout) as Vm;
});

const kiln = (...args: string[]) => runKiln(d, args, { timeoutMs: BOOT_MS });
after(async () => {
  await d?.dispose();
  if (keyDir) await fs.rm(keyDir, { recursive: true, force: true });
});

/** Runs a command over SSH as root with the test's key; no agent, no known_hosts, no password. */
async function ssh(ip: string, command: string): Promise<string> {
  const r = await run('ssh', [
    '-i', path.join(keyDir, 'id'), '-F', '/dev/null',
    '-o', 'BatchMode=yes', '-o', 'IdentitiesOnly=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
    '-o', 'ConnectTimeout=20', '-o', 'LogLevel=ERROR',
    `root@${ip}`, command,
  ], { timeoutMs: 60_000 });
  return r.stdout;
}

async function sh(id: string, script: string): Promise<string> {
  const r = await d.client.exec(id, { cmd: ['/bin/sh', '-c', script] });
  assert.equal(r.exit_code, 0, `${script}: ${r.stderr}`);
  return r.stdout;
}


describe('classic VM', { skip }, () => {
  test('boots systemd as PID 1 from its own cloned disk, with its hostname', async () => {
    assert.equal(vm.state, 'ready');
    assert.ok(vm.classic);
    assert.equal(vm.classic.hostname, 'web-1.example.test');
    assert.equal(vm.classic.ssh_authorized_keys, 1);
    assert.ok(vm.classic.disk.strategy === 'reflink' || vm.classic.disk.strategy === 'sparse-copy', `strategy ${vm.classic.disk.strategy}`);
    assert.equal(vm.classic.disk.size_bytes, 2 * 1024 ** 3);
    assert.equal(vm.agent?.readiness, 'push', 'the agent service pushed its hello');
    assert.equal((await sh(vm.id, 'cat /proc/1/comm')).trim(), 'systemd');
    assert.match(await sh(vm.id, 'readlink -f /proc/1/exe'), /\/systemd\n$/);
    assert.equal((await sh(vm.id, 'hostname')).trim(), 'web-1.example.test');
    // The root is the VM's writable ext4 disk, not an overlay.
    assert.match(await sh(vm.id, 'findmnt -n -o FSTYPE,OPTIONS /'), /^ext4\s+rw/);
    // systemd reached its target: nothing failed (timesyncd and friends are masked, not failed).
    const state = await d.client.exec(vm.id, { cmd: ['systemctl', 'is-system-running', '--wait'] });
    assert.equal(state.stdout.trim(), 'running', await sh(vm.id, 'systemctl --failed --no-legend || true'));
  });

  test('is reachable over SSH from the host with the injected key (and only with it)', async () => {
    assert.ok(vm.ip);
    const out = await ssh(vm.ip, 'cat /proc/1/comm; hostname; id -u');
    assert.equal(out, 'systemd\nweb-1.example.test\n0\n');
    // Password logins are off: a client with no usable key is refused.
    await assert.rejects(
      run('ssh', ['-F', '/dev/null', '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
        '-o', 'PubkeyAuthentication=no', '-o', 'ConnectTimeout=20', `root@${vm.ip}`, 'true'], { timeoutMs: 60_000 }),
      /Permission denied/,
    );
    // The host key was made in this VM at first boot, not shipped in the image.
    assert.match(await sh(vm.id, 'ls /etc/ssh/ssh_host_*_key'), /^\/etc\/ssh\/ssh_host_ed25519_key\n$/);
  });

  test('ran the user-data script once at first boot', async () => {
    const log = await waitForFile(vm.id, '/root/user-data.log');
    assert.equal(log.split('\n').filter(Boolean).length, 1, log);
    assert.equal((await sh(vm.id, 'cat /root/user-data-hostname')).trim(), 'web-1.example.test');
  });

  test('console over WebSocket: a root shell on the serial line, and kilnd keeps its log meanwhile', async () => {
    const ws = await d.client.console(vm.id);
    try {
      ws.send('\r');
      await readUntil(ws, /# $|#\s*$/m);
      ws.send('echo "$((6 * 7))-from-console $(cat /proc/1/comm)"\r');
      const out = await readUntil(ws, /42-from-console systemd/);
      assert.match(out, /42-from-console systemd/);
    } finally {
      ws.close();
    }
    // The same bytes reach the console log (QEMU writes it beside the socket, a moment apart).
    await until('the console bytes in the console log', async () => /42-from-console systemd/.test(await d.client.logs(vm.id)), 10_000);
  });

  test('a kilnd restart (SIGKILL) re-attaches: still ready, console, agent and SSH work', async () => {
    const { stateDir, network } = d;
    await d.kill();
    d = await startKilnd({ stateDir, network });
    const again = await d.client.getVm(vm.id);
    assert.equal(again.state, 'ready');
    assert.equal(again.boot_count, 1);
    const ws = await d.client.console(vm.id);
    try {
      ws.send('echo "reattached-$((1 + 1))"\r');
      await readUntil(ws, /reattached-2/);
    } finally {
      ws.close();
    }
    assert.equal((await sh(vm.id, 'cat /proc/1/comm')).trim(), 'systemd');
    assert.equal((await ssh(vm.ip!, 'hostname')).trim(), 'web-1.example.test');
  });

  test('disk contents survive stop/start; the disk grows offline while stopped', async () => {
    await ssh(vm.ip!, 'echo persisted-$(hostname) > /root/marker && sync');
    await expectApiError(d.client.resizeVmDisk(vm.id, 3), 409, 'KILN_ERR_INVALID_STATE');
    const stopped = await d.client.stopVm(vm.id);
    assert.equal(stopped.state, 'stopped', stopped.state_reason ?? '');
    // Powered off by systemd (asked by the agent), not killed.
    assert.equal(stopped.state_reason, 'stopped on request');
    assert.match(await d.client.logs(vm.id), /reboot: Power down/);
    assert.equal((await vmmPids(d.stateDir)).length, 0);

    await expectApiError(d.client.resizeVmDisk(vm.id, 1), 400, 'KILN_ERR_VALIDATION');
    const resized = await kiln('--json', 'vm', 'resize', vm.name, '--disk-size', '3');
    assert.equal(resized.code, 0, resized.stderr);
    assert.equal((JSON.parse(resized.stdout) as Vm).classic?.disk.size_bytes, 3 * 1024 ** 3);

    const again = await d.client.startVm(vm.id, { wait: true, timeoutMs: BOOT_MS });
    assert.equal(again.state, 'ready');
    assert.equal(again.boot_count, 2);
    assert.equal((await ssh(vm.ip!, 'cat /root/marker')).trim(), 'persisted-web-1.example.test');
    // Not a first boot: the user-data script did not run again.
    const log = await sh(vm.id, 'cat /root/user-data.log');
    assert.equal(log.split('\n').filter(Boolean).length, 1, log);
    const sizeKib = Number((await sh(vm.id, "df -k --output=size / | tail -1")).trim());
    assert.ok(sizeKib > 2.5 * 1024 * 1024 && sizeKib <= 3 * 1024 * 1024, `root fs ${sizeKib} KiB after growing to 3 GiB`);
  });

  test('`reboot` inside the guest brings the VM back (same disk, a new kernel boot)', async () => {
    const bootId = (await sh(vm.id, 'cat /proc/sys/kernel/random/boot_id')).trim();
    await d.client.exec(vm.id, { cmd: ['systemctl', '--no-block', 'reboot'] }).catch(() => {});
    await until('the VM back from its reboot (a new boot id)', async () => {
      const v = await d.client.getVm(vm.id);
      if (v.state !== 'ready') return false;
      const r = await d.client.exec(vm.id, { cmd: ['cat', '/proc/sys/kernel/random/boot_id'] }).catch(() => null);
      return !!r && r.exit_code === 0 && r.stdout.trim() !== bootId;
    }, BOOT_MS, 1000);
    assert.match(await d.client.logs(vm.id), /reboot: Restarting system/);
    assert.equal((await ssh(vm.ip!, 'cat /root/marker')).trim(), 'persisted-web-1.example.test');
  });

  test('without its agent, stop presses the ACPI power button and systemd still powers off', async () => {
    // The session running this is in the agent's cgroup: it may be cut off as the agent stops.
    await d.client.exec(vm.id, { cmd: ['systemctl', '--no-block', 'stop', 'kiln-agent.service'] }).catch(() => {});
    await until('the agent gone (exec refused)', async () => (await d.client.exec(vm.id, { cmd: ['true'] }).then(() => false, () => true)), 30_000, 500);
    const stopped = await d.client.stopVm(vm.id);
    assert.equal(stopped.state, 'stopped', stopped.state_reason ?? '');
    assert.equal(stopped.state_reason, 'stopped on request');
    assert.match(d.output(), /pressing the ACPI power button/);
    const logs = await d.client.logs(vm.id);
    assert.equal(logs.match(/reboot: Power down/g)?.length, 2, 'this boot ended in a power-off too, not a kill');
  });

  test('bad input: clear 4xx, and no VM record, disk, runtime dir, tap or VMM left behind', async () => {
    const before = { vms: (await d.client.listVms()).length, disks: await listDir(path.join(d.stateDir, 'disks')), pids: (await vmmPids(d.stateDir)).length };
    const cases: [CreateVmBody, number, string][] = [
      [{ classic: { ssh_authorized_keys: ['ssh-ed25519 not-base64!'] } }, 400, 'KILN_ERR_SSH_KEY_INVALID'],
      // A well-formed line whose blob is an RSA key labelled ed25519.
      [{ classic: { ssh_authorized_keys: [`ssh-ed25519 ${Buffer.concat([Buffer.from([0, 0, 0, 7]), Buffer.from('ssh-rsa'), Buffer.alloc(32)]).toString('base64')}`] } }, 400, 'KILN_ERR_SSH_KEY_INVALID'],
      [{ classic: { disk_size_gib: 16384 } }, 422, 'KILN_ERR_RESOURCE_LIMIT'],
      [{ image: 'no-such-base', classic: {} }, 404, 'KILN_ERR_IMAGE_NOT_FOUND'],
      // The default image is squashfs: no writable disk can be cloned from it.
      [{ image: 'default', classic: {} }, 400, 'KILN_ERR_VALIDATION'],
      [{ name: 'classic-1', classic: { ssh_authorized_keys: [pubKey] } }, 409, 'KILN_ERR_NAME_CONFLICT'],
      [{ classic: { hostname: '-bad-' } }, 400, 'KILN_ERR_VALIDATION'],
      [{ classic: { user_data: 'echo no shebang' } }, 400, 'KILN_ERR_VALIDATION'],
      [{ classic: {}, cmd: ['/bin/true'] }, 400, 'KILN_ERR_VALIDATION'],
      [{ classic: {}, network: 'none' }, 400, 'KILN_ERR_VALIDATION'],
      [{ classic: { disk_size_gib: 0 } }, 400, 'KILN_ERR_VALIDATION'],
    ];
    await fs.writeFile(path.join(keyDir, 'bad.pub'), `${pubKey}\nssh-ed25519 AAAAtruncated\n`);
    const cli = await kiln('vm', 'create', '--classic', '--name', 'bad-classic', '--ssh-key', path.join(keyDir, 'bad.pub'));
    assert.notEqual(cli.code, 0);
    assert.match(cli.stderr, /KILN_ERR_SSH_KEY_INVALID|ssh_authorized_keys\[1\]/);
    for (const [body, status, code] of cases) {
      const e = await expectApiError(d.client.createVm({ name: body.name ?? 'bad-classic', ...body }), status, code);
      assert.ok(e.message.length > 10, `${code}: a message that says why (${e.message})`);
    }
    const vms = await d.client.listVms();
    assert.equal(vms.length, before.vms);
    assert.ok(!vms.some((v) => v.name === 'bad-classic'));
    assert.deepEqual(await listDir(path.join(d.stateDir, 'disks')), before.disks);
    assert.deepEqual((await listDir(path.join(d.stateDir, 'vms'))).sort(), vms.map((v) => v.id).sort());
    assert.equal((await vmmPids(d.stateDir)).length, before.pids);
    for (const v of await listDir(path.join(d.stateDir, 'vms'))) assert.ok(vms.some((x) => x.id === v));
    assert.equal(await linkExists(tapName('vm-0000000000')), false);
  });

  test('delete removes the disk, the tap and the VMM', async () => {
    const disk = path.join(d.stateDir, 'disks', `${vm.id}.ext4`);
    assert.ok(await fs.stat(disk));
    await d.client.deleteVm(vm.id);
    await assert.rejects(fs.stat(disk), { code: 'ENOENT' });
    assert.equal(await linkExists(tapName(vm.id)), false);
    assert.equal((await vmmPids(d.stateDir)).length, 0);
    await expectApiError(d.client.getVm(vm.id), 404, 'KILN_ERR_VM_NOT_FOUND');
  });
});

describe('console on a plain VM', { skip }, () => {
  test('streams the workload\'s output live and carries input to kiln-init (a stop line)', async () => {
    const plain = await d.client.createVm({ name: 'plain-console', cmd: ['/bin/sh', '-c', 'i=0; while true; do i=$((i+1)); echo tick-$i; sleep 1; done'] }, { wait: true, timeoutMs: BOOT_MS });
    const ws = await d.client.console(plain.id);
    const closed = new Promise<number>((r) => ws.once('close', (code) => r(code)));
    try {
      await readUntil(ws, /tick-\d+/, 30_000);
      // kiln-init reads the console for host commands: this one stops the workload, the VM powers off.
      ws.send('\n@kiln:stop grace_ms=1000\n');
      await waitForState(d.client, plain.id, ['stopped'], 60_000);
      assert.equal(await closed, 1000, 'the WebSocket closes when the VM stops');
    } finally {
      ws.close();
    }
    await expectApiError(d.client.console(plain.id), 409, 'KILN_ERR_CONSOLE_UNAVAILABLE');
    await expectApiError(d.client.console('no-such-vm'), 404, 'KILN_ERR_VM_NOT_FOUND');
    await d.client.deleteVm(plain.id);
  });
});

async function listDir(dir: string): Promise<string[]> {
  return (await fs.readdir(dir).catch(() => [] as string[])).sort();
}

/** Written by something in the guest (cloud-init style scripts): polled with exec. */
function waitForFile(id: string, file: string, ms = 60_000): Promise<string> {
  return until(`${file} in ${id}`, async () => {
    const r = await d.client.exec(id, { cmd: ['cat', file] });
    return r.exit_code === 0 && r.stdout;
  }, ms, 500);
}
