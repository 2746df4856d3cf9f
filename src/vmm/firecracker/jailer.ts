// Running Firecracker under its jailer (firecracker-docs/jailer.md): the argv for the
// documented flags, the jail layout `<chroot_base>/<exec_file_name>/<id>/root`, the files
// the VM needs hard-linked (or copied) into it, and every path rewritten to be jail-relative.
// withJailer() edits the boot step list: it adds `jailer.prepare` after `fc.kernel` (or
// `fc.prepare` when restoring), replaces `fc.spawn` with `jailer.spawn` and adds
// `jailer.pid` after `fc.waitSocket`.
import { constants as FS } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { KilnError } from '../../errors.ts';
import { writeFileAtomic } from '../../util/atomic.ts';
import { ensureFifo, firecrackerArgs, killVmm, vmmStdio, type BootContext, type BootStep } from './boot-steps.ts';
import { apiIdFor, networkInterfacesOf } from './spec.ts';
import { run as runTool } from '../../util/process.ts';
import type { StepList } from '../../util/steps.ts';
import { assertSocketPathFits, processGone, readProcStat, resolveBinary, spawnDetached, watchPid } from './vmm-process.ts';

export interface JailerOptions {
  /** The jailer binary (default 'jailer', looked up on PATH). */
  binary?: string;
  uid: number;
  gid: number;
  /** Default /srv/jailer. */
  chrootBaseDir?: string;
  /** Default 2. */
  cgroupVersion?: 1 | 2;
  /** `--cgroup <file>=<value>` each, e.g. { 'cpu.max': '100000 100000' }. */
  cgroups?: Record<string, string>;
  parentCgroup?: string;
  /** `--resource-limit <resource>=<value>` each. */
  resourceLimits?: { fsize?: number; 'no-file'?: number };
  /** Network namespace path for every VM; FirecrackerVmSpec.netns overrides it. */
  netns?: string;
  /**
   * The jailer then redirects stdio to /dev/null: the serial console is lost. Off by default;
   * kilnd already starts the jailer in its own session.
   */
  daemonize?: boolean;
  /** Firecracker becomes pid 1 of a new pid namespace (its host pid is read from the jail). */
  newPidNs?: boolean;
  /**
   * Where cgroup hierarchies are mounted (default: every cgroup and cgroup2 mount in
   * /proc/self/mounts): the jailer's `<base>/<parent_cgroup>/<id>` dirs are removed from each
   * when the VM goes.
   */
  cgroupBases?: string[];
}

/** Fixed jail-relative names, so that a snapshot taken in one jail restores in another. */
export const JAIL = {
  apiSocket: '/firecracker.socket',
  kernel: '/vmlinux',
  initrd: '/initrd',
  drivesDir: '/drives',
  log: '/firecracker.log',
  metrics: '/firecracker.metrics',
  /** The vsock socket's directory: the host's socket directory is a link to it (guest-initiated listeners live there too). */
  vsockDir: '/vsock',
  vsock: '/vsock/vsock.sock',
  /** A restore's snapshot (hard links to the files it is given). */
  snapshotState: '/snapshot/vmstate',
  snapshotMemory: '/snapshot/memory',
  /** Where snapshot() has Firecracker write; the files are moved out of the jail afterwards. */
  snapshotOutDir: '/snapshot-out',
} as const;

export interface JailLayout {
  /** `<chroot_base>/<exec_file_name>/<id>`: everything the jailer creates for this VM. */
  dir: string;
  /** `<dir>/root`: what Firecracker sees as `/`. */
  root: string;
  execName: string;
  /** Host path of a jail-relative path. */
  hostPath(jailPath: string): string;
  /** Jail-relative path of a host path inside the root (throws otherwise). */
  toJail(hostPath: string): string;
}

/**
 * The jailer names the jail after the exec file it was given and builds it under the chroot
 * base as the kernel resolves them: both with symlinks resolved, or kiln would look for the
 * jail (its API socket, pid file) where the jailer did not build it.
 */
export async function resolveJail(opts: Pick<JailerOptions, 'chrootBaseDir'>, binary: string, id: string): Promise<{ execFile: string; jail: JailLayout }> {
  const execFile = await fs.realpath(await resolveBinary(binary, 'firecracker'));
  if (!path.basename(execFile).includes('firecracker')) {
    throw new KilnError('KILN_ERR_HOST_SETUP', `the jailer runs only an exec file whose name contains "firecracker"; ${binary} resolves to ${execFile}`, { binary: execFile });
  }
  const base = opts.chrootBaseDir ?? '/srv/jailer';
  await fs.mkdir(base, { recursive: true, mode: 0o755 });
  return { execFile, jail: jailLayout({ chrootBaseDir: await fs.realpath(base) }, execFile, id) };
}

export function jailLayout(opts: Pick<JailerOptions, 'chrootBaseDir'>, execFile: string, id: string): JailLayout {
  const execName = path.basename(execFile);
  const dir = path.join(opts.chrootBaseDir ?? '/srv/jailer', execName, id);
  const root = path.join(dir, 'root');
  return {
    dir,
    root,
    execName,
    hostPath: (j) => path.join(root, j),
    toJail: (h) => {
      const rel = path.relative(root, path.resolve(h));
      if (rel.startsWith('..') || path.isAbsolute(rel)) {
        throw new KilnError('KILN_ERR_VALIDATION', `${h} is outside the jail ${root}; Firecracker under the jailer cannot reach it`);
      }
      return `/${rel}`;
    },
  };
}

export function jailerArgv(o: { jailer: JailerOptions; execFile: string; id: string; netns?: string; firecrackerArgs: string[]; chrootBaseDir?: string }): string[] {
  const j = o.jailer;
  const argv = ['--id', o.id, '--exec-file', o.execFile, '--uid', String(j.uid), '--gid', String(j.gid)];
  const base = o.chrootBaseDir ?? j.chrootBaseDir;
  if (base) argv.push('--chroot-base-dir', base);
  argv.push('--cgroup-version', String(j.cgroupVersion ?? 2));
  for (const [file, value] of Object.entries(j.cgroups ?? {})) argv.push('--cgroup', `${file}=${value}`);
  if (j.parentCgroup) argv.push('--parent-cgroup', j.parentCgroup);
  for (const [res, value] of Object.entries(j.resourceLimits ?? {})) {
    if (value !== undefined) argv.push('--resource-limit', `${res}=${value}`);
  }
  const netns = o.netns ?? j.netns;
  if (netns) argv.push('--netns', netns);
  if (j.daemonize) argv.push('--daemonize');
  if (j.newPidNs) argv.push('--new-pid-ns');
  argv.push('--', ...o.firecrackerArgs);
  return argv;
}

/**
 * Makes `src` available in the jail at `jailPath`: a hard link (no copy, same inode) or, across
 * filesystems, a reflink/copy. `chown` hands it to the jailed uid (needed for writable files).
 */
export async function linkIntoJail(
  src: string,
  jail: JailLayout,
  jailPath: string,
  opts: { chown?: { uid: number; gid: number }; link?: (src: string, dst: string) => Promise<void> } = {},
): Promise<'link' | 'copy'> {
  const dst = jail.hostPath(jailPath);
  await fs.mkdir(path.dirname(dst), { recursive: true });
  await fs.rm(dst, { force: true });
  let how: 'link' | 'copy' = 'link';
  try {
    await (opts.link ?? fs.link)(src, dst);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'EXDEV' && code !== 'EPERM') throw e;
    await fs.copyFile(src, dst, FS.COPYFILE_FICLONE);
    how = 'copy';
  }
  if (opts.chown) await fs.chown(dst, opts.chown.uid, opts.chown.gid);
  return how;
}

function jailerOf(ctx: BootContext): JailerOptions {
  const j = ctx.options.jailer;
  if (!j) throw new KilnError('KILN_ERR_INTERNAL', 'jailer steps in a boot without jailer options');
  return j;
}

const forks = (j: JailerOptions) => Boolean(j.newPidNs || j.daemonize);

/** True when `uid`/`gid` may read a file with this stat (owner, group or other read bit). */
export function readableBy(st: { uid: number; gid: number; mode: number }, uid: number, gid: number): boolean {
  if (uid === 0) return true;
  if (st.uid === uid) return (st.mode & 0o400) !== 0;
  if (st.gid === gid) return (st.mode & 0o040) !== 0;
  return (st.mode & 0o004) !== 0;
}

/**
 * Makes the host directory of the vsock socket a link to the jail's vsock directory: kilnd
 * connects to `<dir>/<name>` and listens on `<dir>/<name>_<port>` as before, and both are
 * inside the jail, where the jailed Firecracker binds and dials them.
 */
async function linkVsockDir(hostDir: string, jailDir: string, runtimeDir: string): Promise<void> {
  if (path.resolve(hostDir) === path.resolve(runtimeDir)) {
    throw new KilnError('KILN_ERR_VALIDATION', `under the jailer the vsock socket needs a directory of its own, not the VM's runtime dir ${runtimeDir}`);
  }
  const st = await fs.lstat(hostDir).catch(() => null);
  if (st?.isSymbolicLink()) await fs.unlink(hostDir);
  // A directory left by an unjailed boot: only an empty one (sockets are gone with their VMM).
  else if (st?.isDirectory()) await fs.rmdir(hostDir);
  else if (st) throw new KilnError('KILN_ERR_INVALID_STATE', `${hostDir} is in the way of the vsock socket's directory`);
  await fs.mkdir(path.dirname(hostDir), { recursive: true });
  await fs.symlink(jailDir, hostDir);
}

/** The jailer's cgroup dirs for this VM: `<base>/<parent_cgroup or exec_file_name>/<id>` in each hierarchy. */
export async function jailCgroupDirs(j: JailerOptions, execName: string, id: string): Promise<string[]> {
  const bases = j.cgroupBases ?? (await cgroupMounts());
  return bases.map((b) => path.join(b, j.parentCgroup ?? execName, id));
}

async function cgroupMounts(): Promise<string[]> {
  const raw = await fs.readFile('/proc/self/mounts', 'utf8').catch(() => '');
  return raw
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f[2] === 'cgroup' || f[2] === 'cgroup2')
    .map((f) => f[1]!.replace(/\\040/g, ' '));
}

/**
 * The jailed Firecracker opens its taps as the jail's uid: without CAP_NET_ADMIN TUNSETIFF
 * needs the tap to be that uid's or group's (`ip tuntap add … user <uid> group <gid>`, which
 * kiln's network layer does when the jailer is on). A tap made otherwise is named here, before
 * anything is spawned, rather than as Firecracker's "Open tap device failed".
 */
export async function assertTapsOpenable(taps: string[], j: Pick<JailerOptions, 'uid' | 'gid'>, netns?: string): Promise<void> {
  for (const tap of taps) {
    const argv = ['ip', '-d', '-j', 'link', 'show', 'dev', tap];
    const r = await (netns ? runTool('nsenter', [`--net=${netns}`, '--', ...argv]) : runTool(argv[0]!, argv.slice(1))).catch(() => null);
    if (!r) continue; // No such tap: Firecracker's own error says so.
    const info = (JSON.parse(r.stdout || '[]') as { linkinfo?: { info_data?: { user?: string | number; group?: string | number } } }[])[0]?.linkinfo?.info_data ?? {};
    const is = async (who: string | number | undefined, id: number, db: 'passwd' | 'group') =>
      who !== undefined && (String(who) === String(id) || String(who) === (await runTool('getent', [db, String(id)]).then((g) => g.stdout.split(':')[0], () => undefined)));
    if ((await is(info.user, j.uid, 'passwd')) || (await is(info.group, j.gid, 'group'))) continue;
    throw new KilnError(
      'KILN_ERR_HOST_SETUP',
      `tap ${tap} is owned by ${info.user ?? 'root only'}${info.group !== undefined ? `:${info.group}` : ''}, so the jailed Firecracker (uid ${j.uid}) cannot open it: make it with \`ip tuntap add dev ${tap} mode tap user ${j.uid} group ${j.gid}\``,
      { tap, uid: j.uid },
    );
  }
}

/** Removes what the jailer made for a VM: its jail and its (empty, once the VMM is gone) cgroup dirs. */
export async function removeJail(j: JailerOptions, jail: JailLayout, id: string): Promise<void> {
  await fs.rm(jail.dir, { recursive: true, force: true });
  for (const dir of await jailCgroupDirs(j, jail.execName, id)) {
    try {
      await fs.rmdir(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
}

/** Builds the jail and points every path the VMM will be given into it. */
export const jailerPrepare: BootStep = {
  name: 'jailer.prepare',
  async run(ctx) {
    const j = jailerOf(ctx);
    const { jail } = await resolveJail(j, ctx.options.binary, ctx.fcId);
    const oldPid = Number((await fs.readFile(jail.hostPath(`/${jail.execName}.pid`), 'utf8').catch(() => '')).trim());
    if (oldPid > 0 && !(await processGone(oldPid))) {
      throw new KilnError('KILN_ERR_INVALID_STATE', `jail ${jail.dir} belongs to a running VMM (pid ${oldPid})`, { pid: oldPid });
    }
    await removeJail(j, jail, ctx.fcId);
    await fs.mkdir(jail.root, { recursive: true });
    ctx.cleanup.push('jailer.removeJail', () => removeJail(j, jail, ctx.fcId));
    ctx.jail = jail;
    const owner = { uid: j.uid, gid: j.gid };
    const ownedDir = async (jailPath: string) => {
      const d = jail.hostPath(jailPath);
      await fs.mkdir(d, { recursive: true, mode: 0o700 });
      await fs.chown(d, j.uid, j.gid);
      return d;
    };

    const mapped = new Map<string, string>();
    // Writable files are handed to the jailed uid; with a hard link that is the file's own
    // inode (kiln's writable drives are per VM). Read-only ones must be readable by that uid:
    // the jailed Firecracker opens them after dropping privileges.
    const place = async (src: string, jailPath: string, o: { writable?: boolean; chown?: boolean } = {}) => {
      await linkIntoJail(src, jail, jailPath, o.writable || o.chown ? { chown: owner } : {});
      if (!o.writable && !o.chown && !readableBy(await fs.stat(jail.hostPath(jailPath)), j.uid, j.gid)) {
        throw new KilnError('KILN_ERR_HOST_SETUP', `${src} is not readable by the jail's uid ${j.uid} (gid ${j.gid}): make it world-readable or owned by that group`, {
          path: src,
          uid: j.uid,
        });
      }
      mapped.set(src, jailPath);
    };
    if (ctx.kernelPath) await place(ctx.kernelPath, JAIL.kernel);
    if (ctx.spec.kernel.initrd && ctx.spec.restore === undefined) await place(ctx.spec.kernel.initrd, JAIL.initrd);
    await ownedDir(JAIL.drivesDir);
    for (const d of ctx.spec.drives) await place(d.path, `${JAIL.drivesDir}/${apiIdFor(d.id)}`, { writable: !d.readOnly });
    const r = ctx.spec.restore;
    if (r) {
      // Snapshot files are the jailed uid's (a template's were written by it).
      await ownedDir(path.dirname(JAIL.snapshotState));
      await place(r.snapshotPath, JAIL.snapshotState, { chown: true });
      if (r.memBackend.type === 'File') await place(r.memBackend.path, JAIL.snapshotMemory, { chown: true });
    }
    await ownedDir(JAIL.snapshotOutDir);

    ctx.apiSocket = jail.hostPath(JAIL.apiSocket);
    assertSocketPathFits(ctx.apiSocket, 'API socket');
    ctx.logFile = jail.hostPath(JAIL.log);
    ctx.metricsFile = jail.hostPath(JAIL.metrics);
    await fs.writeFile(ctx.logFile, '');
    await ensureFifo(ctx.metricsFile);
    for (const f of [ctx.logFile, ctx.metricsFile]) await fs.chown(f, j.uid, j.gid);
    if (ctx.vsockPath) {
      const base = path.basename(ctx.vsockPath);
      const jailDir = await ownedDir(JAIL.vsockDir);
      await linkVsockDir(path.dirname(ctx.vsockPath), jailDir, ctx.paths.dir);
      mapped.set(ctx.vsockPath, path.posix.join(JAIL.vsockDir, base));
      assertSocketPathFits(path.join(jailDir, base), 'vsock socket');
    }
    ctx.vmmPath = (host) => mapped.get(host) ?? jail.toJail(host);
    await assertTapsOpenable(networkInterfacesOf(ctx.spec).map((n) => n.hostDevName), j, ctx.spec.netns ?? j.netns);
  },
};

export const jailerSpawn: BootStep = {
  name: 'jailer.spawn',
  async run(ctx) {
    const j = jailerOf(ctx);
    const jail = ctx.jail;
    if (!jail) throw new KilnError('KILN_ERR_INTERNAL', 'jailer.spawn before jailer.prepare');
    const jailer = await resolveBinary(j.binary ?? 'jailer', 'jailer');
    const { execFile } = await resolveJail(j, ctx.options.binary, ctx.fcId);
    const spawned = await spawnDetached({
      file: jailer,
      args: jailerArgv({
        jailer: j,
        execFile,
        id: ctx.fcId,
        netns: ctx.spec.netns,
        firecrackerArgs: firecrackerArgs(ctx, JAIL.apiSocket),
        chrootBaseDir: path.dirname(path.dirname(jail.dir)),
      }),
      ...vmmStdio(ctx),
    });
    ctx.spawned = spawned;
    ctx.pid = spawned.pid;
    // Without forking the jailer execs Firecracker in place: its exit is the VMM's. When it
    // forks (new pid namespace, daemonize) a clean jailer exit is expected and the VMM's
    // own pid comes from the jail (jailer.pid).
    ctx.vmmGone = forks(j)
      ? spawned.exited.then((st) => (st.code === 0 ? new Promise<void>(() => {}) : undefined))
      : spawned.exited.then(() => undefined);
    ctx.cleanup.push('jailer.kill', async () => {
      if (ctx.pid !== undefined) await killVmm(ctx.pid, ctx.vmmGone, ctx.pid === spawned.pid ? spawned.child : undefined);
      if (ctx.pid !== spawned.pid && !spawned.status()) await killVmm(spawned.pid, spawned.exited.then(() => undefined), spawned.child);
    });
    await writeFileAtomic(ctx.paths.pidFile, `${spawned.pid}\n`);
    ctx.cleanup.push('fc.pidFile', () => fs.rm(ctx.paths.pidFile, { force: true }));
  },
};

/** Reads the Firecracker pid the jailer wrote (`<root>/<exec_file_name>.pid`). */
export const jailerPid: BootStep = {
  name: 'jailer.pid',
  async run(ctx) {
    const jail = ctx.jail!;
    const raw = await fs.readFile(jail.hostPath(`/${jail.execName}.pid`), 'utf8').catch(() => '');
    const pid = Number(raw.trim());
    if (!(pid > 0) || pid === ctx.spawned?.pid) return;
    const st = await readProcStat(pid);
    ctx.pid = pid;
    ctx.pidWatch = watchPid(pid, { startTime: st?.startTime, socketPath: ctx.apiSocket, intervalMs: ctx.options.livenessIntervalMs });
    ctx.vmmGone = ctx.pidWatch.gone;
    ctx.cleanup.push('jailer.unwatch', () => ctx.pidWatch?.stop());
    await writeFileAtomic(ctx.paths.pidFile, `${pid}\n`);
  },
};

/** Runs the VMM under the jailer. Fails loudly when an anchor step is missing. */
export function withJailer(list: StepList<BootContext>): StepList<BootContext> {
  list.insertAfter(list.has('fc.kernel') ? 'fc.kernel' : 'fc.prepare', jailerPrepare);
  list.replace('fc.spawn', jailerSpawn);
  list.insertAfter('fc.waitSocket', jailerPid);
  return list;
}
