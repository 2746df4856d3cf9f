// E2B's `base` template as a kiln recipe: Debian with the tools E2B's base image has (bash,
// python3, nodejs, git, curl, sudo) and a `user` account (uid 1000, passwordless sudo), the
// user E2B runs commands as by default. Built from Debian's archive on first use and cached
// like every recipe (src/image/recipes/debian-recipe.ts). inotify-tools and findutils are what
// kilnd's envd translation runs in the guest (src/e2b/envd/guest-fs.ts).
import fs from 'node:fs/promises';
import path from 'node:path';
import type { DebianRecipe } from '../image/recipes/debian-recipe.ts';

export const SANDBOX_USER = { name: 'user', uid: 1000, gid: 1000, home: '/home/user' } as const;

/** The workload of a sandbox VM: nothing but a process that keeps it up (envd is kilnd's). */
export const SANDBOX_WORKLOAD = ['/bin/sleep', 'infinity'];

export const SANDBOX_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

const SUDOERS = `${SANDBOX_USER.name} ALL=(ALL:ALL) NOPASSWD: ALL\n`;

async function append(root: string, rel: string, line: string): Promise<void> {
  await fs.appendFile(path.join(root, rel), line.endsWith('\n') ? line : `${line}\n`);
}

/** Adds the `user` account by editing the account files (no useradd run in the tree needed). */
export async function customizeBase(root: string): Promise<void> {
  const u = SANDBOX_USER;
  await append(root, 'etc/passwd', `${u.name}:x:${u.uid}:${u.gid}:E2B sandbox user:${u.home}:/bin/bash`);
  await append(root, 'etc/group', `${u.name}:x:${u.gid}:`);
  await append(root, 'etc/shadow', `${u.name}:*:19000:0:99999:7:::`);
  // Membership in sudo as well as the sudoers line: both ways tools check for admin rights.
  const group = await fs.readFile(path.join(root, 'etc/group'), 'utf8');
  await fs.writeFile(path.join(root, 'etc/group'), group.replace(/^sudo:x:27:(.*)$/m, (_l, members: string) => `sudo:x:27:${members ? `${members},` : ''}${u.name}`));
  await fs.mkdir(path.join(root, 'etc/sudoers.d'), { recursive: true });
  await fs.writeFile(path.join(root, 'etc/sudoers.d/90-e2b-user'), SUDOERS, { mode: 0o440 });
  const home = path.join(root, u.home.slice(1));
  await fs.mkdir(home, { recursive: true });
  for (const f of ['.bashrc', '.profile', '.bash_logout']) {
    await fs.copyFile(path.join(root, 'etc/skel', f), path.join(home, f)).catch(() => {});
  }
  for (const p of [home, ...(await fs.readdir(home)).map((f) => path.join(home, f))]) await fs.chown(p, u.uid, u.gid);
  await fs.chmod(home, 0o750);
  await fs.writeFile(path.join(root, 'etc/hostname'), 'sandbox\n');
  // A sandbox's host name is its id, set at restore: resolved by nss-myhostname, so sudo and
  // anything else that looks the local name up never waits for DNS (20 s when it is unreachable).
  const nss = path.join(root, 'etc/nsswitch.conf');
  await fs.writeFile(nss, (await fs.readFile(nss, 'utf8')).replace(/^hosts:.*$/m, 'hosts:          files myhostname dns'));
}

export const BASE_RECIPE: DebianRecipe = {
  name: 'kiln-e2b-base',
  suite: 'bookworm',
  variant: 'minbase',
  packages: ['bash', 'python3', 'nodejs', 'git', 'curl', 'ca-certificates', 'sudo', 'procps', 'findutils', 'inotify-tools', 'less', 'libnss-myhostname'],
  customize: customizeBase,
  inputs: [SUDOERS, customizeBase.toString(), JSON.stringify(SANDBOX_USER)],
  config: {
    cmd: SANDBOX_WORKLOAD,
    env: { PATH: SANDBOX_PATH, LANG: 'C.UTF-8' },
    workdir: '/',
    user: '0:0',
  },
};
