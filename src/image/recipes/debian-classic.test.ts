import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { recipeKey } from './debian-recipe.ts';
import { CLASSIC_RECIPE, customizeClassic } from './debian-classic.ts';

test('customize: kiln units enabled, per-VM secrets removed, network left to kiln', async () => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-classic-root-'));
  try {
    await fs.mkdir(path.join(root, 'etc/ssh'), { recursive: true });
    for (const f of ['ssh_host_rsa_key', 'ssh_host_rsa_key.pub', 'ssh_host_ed25519_key', 'sshd_config']) await fs.writeFile(path.join(root, 'etc/ssh', f), 'x');
    await fs.writeFile(path.join(root, 'etc/machine-id'), '0123456789abcdef0123456789abcdef\n');
    await customizeClassic(root);
    assert.deepEqual(await fs.readdir(path.join(root, 'etc/ssh')), ['sshd_config', 'sshd_config.d'], 'host keys are made per VM');
    assert.equal(await fs.readFile(path.join(root, 'etc/machine-id'), 'utf8'), '', 'empty: systemd makes one at first boot');
    const wants = path.join(root, 'etc/systemd/system/multi-user.target.wants');
    for (const u of ['kiln-agent.service', 'kiln-user-data.service', 'kiln-ssh-hostkeys.service']) {
      assert.equal(await fs.readlink(path.join(wants, u)), `/etc/systemd/system/${u}`);
      await fs.access(path.join(root, 'etc/systemd/system', u));
    }
    for (const u of ['systemd-networkd.service', 'networking.service', 'getty@tty1.service']) {
      assert.equal(await fs.readlink(path.join(root, 'etc/systemd/system', u)), '/dev/null', `${u} masked`);
    }
    const agent = await fs.readFile(path.join(root, 'etc/systemd/system/kiln-agent.service'), 'utf8');
    assert.match(agent, /After=.*ssh\.service/, 'ready means sshd was started');
    assert.match(agent, /ExecStart=\/usr\/lib\/kiln\/kiln-agent/);
    const ud = await fs.readFile(path.join(root, 'etc/systemd/system/kiln-user-data.service'), 'utf8');
    assert.match(ud, /ConditionPathExists=!\/var\/lib\/kiln\/user-data\.done/);
    assert.ok(ud.indexOf('ExecStartPre=/usr/bin/touch /var/lib/kiln/user-data.done') < ud.indexOf('ExecStart=/var/lib/kiln/user-data'), 'at most once');
    // Idempotent: a second run (a rebuilt recipe over a cached tree) changes nothing and does not throw.
    await customizeClassic(root);
  } finally {
    await fs.rm(root, { recursive: true, force: true });
  }
});

test('the recipe is an ext4 image (disks are cloned from it) and its key follows its content', () => {
  assert.equal(CLASSIC_RECIPE.format, 'ext4');
  assert.ok(CLASSIC_RECIPE.packages.includes('systemd-sysv') && CLASSIC_RECIPE.packages.includes('openssh-server'));
  assert.ok(!CLASSIC_RECIPE.packages.some((p) => /dhc|ifupdown|network-manager/.test(p)), 'no DHCP client: the address is kiln\'s');
  const k = recipeKey(CLASSIC_RECIPE, 'http://m');
  assert.notEqual(recipeKey({ ...CLASSIC_RECIPE, inputs: [...CLASSIC_RECIPE.inputs!, 'x'] }, 'http://m'), k);
});
