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
import { killVmm, vmmStdio, type BootContext, type BootStep } from './boot-steps.ts';
import { apiIdFor } from './spec.ts';
import type { StepList } from './steps.ts';
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
}

/** Fixed jail-relative names, so that a snapshot taken in one jail restores in another. */
export const JAIL = {
  apiSocket: '/firecracker.socket',
  kernel: '/vmlinux',
  initrd: '/initrd',
  drivesDir: '/drives',
  log: '/firecracker.log',
  metrics: '/firecracker.metrics',
  vsock: '/vsock.sock',
  snapshotState: '/snapshot/vmstate',
  snapshotMemory: '/snapshot/memory',
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

export function jailerArgv(o: { jailer: JailerOptions; execFile: string; id: string; netns?: string; firecrackerArgs: string[] }): string[] {
  const j = o.jailer;
  const argv = ['--id', o.id, '--exec-file', o.execFile, '--uid', String(j.uid), '--gid', String(j.gid)];
  if (j.chrootBaseDir) argv.push('--chroot-base-dir', j.chrootBaseDir);
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

/** Builds the jail and points every path the VMM will be given into it. */
export const jailerPrepare: BootStep = {
  name: 'jailer.prepare',
  async run(ctx) {
    const j = jailerOf(ctx);
    const execFile = await resolveBinary(ctx.options.binary, 'firecracker');
    const jail = jailLayout(j, execFile, ctx.fcId);
    const oldPid = Number((await fs.readFile(jail.hostPath(`/${jail.execName}.pid`), 'utf8').catch(() => '')).trim());
    if (oldPid > 0 && !(await processGone(oldPid))) {
      throw new KilnError('KILN_ERR_INVALID_STATE', `jail ${jail.dir} belongs to a running VMM (pid ${oldPid})`, { pid: oldPid });
    }
    await fs.rm(jail.dir, { recursive: true, force: true });
    await fs.mkdir(jail.root, { recursive: true });
    ctx.cleanup.push('jailer.removeJail', () => fs.rm(jail.dir, { recursive: true, force: true }));
    ctx.jail = jail;

    const mapped = new Map<string, string>();
    // Writable drives are handed to the jailed uid; with a hard link that is the drive's own
    // inode (kiln's writable drives are per VM). Read-only ones must be readable by that uid.
    const place = async (src: string, jailPath: string, writable = false) => {
      await linkIntoJail(src, jail, jailPath, writable ? { chown: { uid: j.uid, gid: j.gid } } : {});
      mapped.set(src, jailPath);
    };
    if (ctx.kernelPath) await place(ctx.kernelPath, JAIL.kernel);
    if (ctx.spec.kernel.initrd && ctx.spec.restore === undefined) await place(ctx.spec.kernel.initrd, JAIL.initrd);
    for (const d of ctx.spec.drives) await place(d.path, `${JAIL.drivesDir}/${apiIdFor(d.id)}`, !d.readOnly);
    const r = ctx.spec.restore;
    if (r) {
      await place(r.snapshotPath, JAIL.snapshotState);
      if (r.memBackend.type === 'File') await place(r.memBackend.path, JAIL.snapshotMemory);
    }
    ctx.vmmPath = (host) => mapped.get(host) ?? jail.toJail(host);

    ctx.apiSocket = jail.hostPath(JAIL.apiSocket);
    assertSocketPathFits(ctx.apiSocket, 'API socket');
    ctx.logFile = jail.hostPath(JAIL.log);
    ctx.metricsFile = jail.hostPath(JAIL.metrics);
    for (const f of [ctx.logFile, ctx.metricsFile]) {
      await fs.writeFile(f, '');
      await fs.chown(f, j.uid, j.gid);
    }
    if (ctx.spec.vsock) {
      ctx.vsockPath = ctx.spec.vsock.udsPath ?? jail.hostPath(JAIL.vsock);
      jail.toJail(ctx.vsockPath);
      assertSocketPathFits(ctx.vsockPath, 'vsock socket');
    }
  },
};

export const jailerSpawn: BootStep = {
  name: 'jailer.spawn',
  async run(ctx) {
    const j = jailerOf(ctx);
    const jail = ctx.jail;
    if (!jail) throw new KilnError('KILN_ERR_INTERNAL', 'jailer.spawn before jailer.prepare');
    const jailer = await resolveBinary(j.binary ?? 'jailer', 'jailer');
    const execFile = await resolveBinary(ctx.options.binary, 'firecracker');
    const spawned = await spawnDetached({
      file: jailer,
      args: jailerArgv({ jailer: j, execFile, id: ctx.fcId, netns: ctx.spec.netns, firecrackerArgs: ['--api-sock', JAIL.apiSocket] }),
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
