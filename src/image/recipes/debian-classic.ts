// The base image of classic VMs: Debian with systemd as init and OpenSSH, built from Debian's
// archive by a recipe (debootstrap minbase + packages) into ext4, the format a VM's writable
// disk is cloned from. kiln-init hands PID 1 to this image's systemd after writing the VM's
// identity (src/guest/kiln-init/classic.c); the units below finish the job inside.
import fs from 'node:fs/promises';
import path from 'node:path';
import type { DebianRecipe } from './debian-recipe.ts';

/** What `"image": "debian"` (or no image) means for a classic VM. */
export const CLASSIC_BASE_ALIAS = 'debian';

/**
 * kiln-init's agent-only mode: the same static binary kiln-init copies into the disk at every
 * boot. Started once sshd is up, its hello is the VM's readiness ("SSH will answer").
 */
export const AGENT_UNIT = `[Unit]
Description=kiln guest agent (exec, files, readiness push)
After=ssh.service network.target kiln-ssh-hostkeys.service
Wants=ssh.service
DefaultDependencies=yes

[Service]
Type=simple
ExecStart=/usr/lib/kiln/kiln-agent
Restart=always
RestartSec=1
StandardOutput=tty
TTYPath=/dev/console

[Install]
WantedBy=multi-user.target
`;

/**
 * The user-data script runs at most once per instance: kiln-init writes it at first boot and
 * removes the .done marker; the marker is created before the script starts, so a crash midway
 * does not run it twice. Output goes to the journal and the serial console.
 */
export const USER_DATA_UNIT = `[Unit]
Description=kiln user-data script (first boot only)
After=network.target
ConditionPathExists=/var/lib/kiln/user-data
ConditionPathExists=!/var/lib/kiln/user-data.done

[Service]
Type=oneshot
ExecStartPre=/usr/bin/touch /var/lib/kiln/user-data.done
ExecStart=/var/lib/kiln/user-data
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
`;

/** Host keys are per VM: the image has none, each VM makes an ed25519 key on its first boot. */
export const HOSTKEYS_UNIT = `[Unit]
Description=kiln: generate this VM's SSH host key
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key

[Install]
WantedBy=multi-user.target
`;

/**
 * The serial console logs root in: reaching it takes the API (kiln console), whose holder can
 * already run anything as root through exec. No password exists to type.
 */
export const SERIAL_AUTOLOGIN = `[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 - $TERM
`;

export const SSHD_CONFIG = `# kiln: key-only root login, one (per-VM) host key, no DNS lookups on connect.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
`;

async function write(root: string, rel: string, content: string, mode = 0o644): Promise<void> {
  const p = path.join(root, rel);
  await fs.mkdir(path.dirname(p), { recursive: true });
  await fs.writeFile(p, content, { mode });
  await fs.chmod(p, mode);
}

async function enable(root: string, unit: string, target = 'multi-user.target'): Promise<void> {
  const dir = path.join(root, 'etc/systemd/system', `${target}.wants`);
  await fs.mkdir(dir, { recursive: true });
  await fs.rm(path.join(dir, unit), { force: true });
  await fs.symlink(`/etc/systemd/system/${unit}`, path.join(dir, unit));
}

async function mask(root: string, unit: string): Promise<void> {
  const p = path.join(root, 'etc/systemd/system', unit);
  await fs.rm(p, { force: true });
  await fs.symlink('/dev/null', p);
}

export async function customizeClassic(root: string): Promise<void> {
  await write(root, 'etc/systemd/system/kiln-agent.service', AGENT_UNIT);
  await write(root, 'etc/systemd/system/kiln-user-data.service', USER_DATA_UNIT);
  await write(root, 'etc/systemd/system/kiln-ssh-hostkeys.service', HOSTKEYS_UNIT);
  await write(root, 'etc/ssh/sshd_config.d/kiln.conf', SSHD_CONFIG);
  await write(root, 'etc/systemd/system/serial-getty@ttyS0.service.d/kiln-autologin.conf', SERIAL_AUTOLOGIN);
  for (const u of ['kiln-agent.service', 'kiln-user-data.service', 'kiln-ssh-hostkeys.service']) await enable(root, u);
  // Every VM would share the image's host keys and machine id: both are made per VM at first
  // boot (an empty machine-id is systemd's "first boot" signal and gets a fresh id).
  for (const f of await fs.readdir(path.join(root, 'etc/ssh'))) {
    if (f.startsWith('ssh_host_')) await fs.rm(path.join(root, 'etc/ssh', f));
  }
  await fs.writeFile(path.join(root, 'etc/machine-id'), '');
  await fs.rm(path.join(root, 'var/lib/dbus/machine-id'), { force: true });
  // The network is kiln's (static, from the kernel command line, set before systemd starts):
  // nothing in the image may reconfigure it. No virtual consoles either: ttyS0 is the console.
  for (const u of ['systemd-networkd.service', 'systemd-networkd-wait-online.service', 'networking.service', 'getty@tty1.service',
    'systemd-timesyncd.service', 'apt-daily.timer', 'apt-daily-upgrade.timer', 'e2scrub_reap.service']) {
    await mask(root, u);
  }
  await write(root, 'etc/fstab', '# the root is mounted by kiln-init (the VM\'s own disk)\n');
  await write(root, 'etc/hostname', 'localhost\n');
}

export const CLASSIC_RECIPE: DebianRecipe = {
  name: 'kiln-debian-classic',
  suite: 'bookworm',
  variant: 'minbase',
  packages: ['systemd-sysv', 'udev', 'dbus', 'openssh-server', 'iproute2', 'procps', 'iputils-ping', 'less', 'ca-certificates'],
  customize: customizeClassic,
  inputs: [AGENT_UNIT, USER_DATA_UNIT, HOSTKEYS_UNIT, SSHD_CONFIG, SERIAL_AUTOLOGIN, customizeClassic.toString()],
  config: { cmd: ['/sbin/init'], env: {}, workdir: '/', user: '0:0' },
  format: 'ext4',
};
