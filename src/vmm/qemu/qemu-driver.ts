// QEMU `-M microvm` backend: one QEMU per VM in its own session, confined (confinement.ts:
// seccomp, unprivileged user in an empty chroot, its own cgroup), controlled over QMP. QEMU
// outlives kilnd; attach() finds it again by pid and QMP socket.
import { createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import net from 'node:net';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { KilnError } from '../../errors.ts';
import { pidAlive } from '../../util/process.ts';
import { QEMU_BINARY, spawnQemu, qemuVersion } from '../../tools/qemu-system.ts';
import { removeParentIfEmpty, type CpuPriority, type VmCgroup } from '../cgroup/cgroup.ts';
import { untimed, type Accelerator, type ConfinementReport, type StepTimer, type VmmDriver, type VmmExit, type VmmInstance, type VmmSnapshot, type VmSpec } from '../driver.ts';
import { cgroupLimits, UNCONFINED, type QemuConfinement } from './confinement.ts';
import { kernelCmdline, qemuArgs, qemuPaths, type DriveFds } from './qemu-args.ts';
import { QmpClient } from './qmp-client.ts';
import { loadVmState, saveVmState } from './qmp-snapshot.ts';

/** The migration stream's file name in a snapshot directory. */
export const QEMU_STATE_FILE = 'vmstate';

/** Backstop liveness check for a VMM whose QMP connection could not be (re)established. */
const LIVENESS_INTERVAL_MS = 500;

/** How long QEMU may take from exec to answering on QMP (its whole init). */
const QMP_READY_MS = 60_000;
/** A restore's migration stream: the state file, inherited by QEMU as this fd. */
const INCOMING_FD = 3;
/** The snapshot socket's name in the jail (or runtime dir); QEMU connects to it to save. */
const MIGRATE_SOCKET = 'migrate.sock';

async function cmdlineOf(pid: number): Promise<string> {
  return (await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).replaceAll('\0', ' ');
}

class QemuInstance implements VmmInstance {
  readonly exited: Promise<VmmExit>;
  readonly consoleLogPath: string;
  private resolveExit!: (e: VmmExit) => void;
  private shutdownEvent: Record<string, unknown> | null = null;
  private liveness: NodeJS.Timeout;
  private detached = false;
  private gone = false;
  /** Its RAM file became a snapshot's memory: running again would change that snapshot. */
  private frozen: string | null = null;

  constructor(
    readonly pid: number,
    private readonly spec: VmSpec,
    private qmp: QmpClient | null,
    private readonly confinement: QemuConfinement,
    private readonly cgroup: VmCgroup | null,
  ) {
    this.consoleLogPath = qemuPaths(spec.runtimeDir).consoleLog;
    this.exited = new Promise((r) => (this.resolveExit = r));
    if (qmp) this.watchQmp(qmp);
    this.liveness = setInterval(() => this.checkAlive(), LIVENESS_INTERVAL_MS);
    this.liveness.unref();
  }

  private watchQmp(qmp: QmpClient): void {
    qmp.on('event', (e) => {
      if (e.event === 'SHUTDOWN') this.shutdownEvent = e.data ?? {};
    });
    // QEMU closing its QMP socket is the push signal that it is exiting.
    qmp.on('close', () => this.checkAlive());
  }

  private checkAlive(): void {
    if (this.detached) return;
    if (pidAlive(this.pid)) {
      if (this.qmp?.isClosed) {
        // The socket closed first; the process is on its way out. Re-check soon, not in 500 ms.
        setTimeout(() => this.checkAlive(), 10).unref();
      }
      return;
    }
    if (this.gone) return;
    this.gone = true;
    clearInterval(this.liveness);
    this.qmp?.close();
    const ev = this.shutdownEvent;
    const guest = ev?.guest === true;
    const exit: VmmExit = {
      clean: guest,
      ...(guest && ev?.reason === 'guest-reset' ? { reset: true } : {}),
      reason: ev ? `VMM exited after ${guest ? 'guest' : 'host'} shutdown (${String(ev.reason ?? 'unknown')})` : 'VMM process exited unexpectedly',
    };
    // Its cgroup goes with it, before the exit is reported (a VM stopped has none); one left
    // over because kilnd died first is swept at the next start.
    const removed = this.cgroup ? this.cgroup.remove().catch(() => {}) : Promise.resolve();
    void removed.then(() => this.resolveExit(exit));
  }

  async control(): Promise<QmpClient> {
    if (this.qmp && !this.qmp.isClosed) return this.qmp;
    this.qmp = await QmpClient.connect(qemuPaths(this.spec.runtimeDir).qmpSocket);
    this.watchQmp(this.qmp);
    return this.qmp;
  }

  async writeConsole(data: string | Buffer): Promise<void> {
    // The console chardev accepts one client; connect, write, leave. Guest output meanwhile
    // still reaches the log file, and what the socket delivers to us is discarded.
    const path = qemuPaths(this.spec.runtimeDir).consoleSocket;
    await new Promise<void>((resolve, reject) => {
      const s = net.createConnection(path);
      s.on('error', reject);
      s.on('data', () => {});
      s.once('connect', () => s.end(data, () => resolve()));
    });
  }

  openConsole(): Promise<net.Socket> {
    const path = qemuPaths(this.spec.runtimeDir).consoleSocket;
    return new Promise<net.Socket>((resolve, reject) => {
      const s = net.createConnection(path);
      s.once('error', reject);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(s);
      });
    });
  }

  async powerdown(): Promise<void> {
    await (await this.control()).execute('system_powerdown');
  }

  async pause(): Promise<void> {
    await (await this.control()).execute('stop');
  }

  async resume(): Promise<void> {
    if (this.frozen) throw new KilnError('KILN_ERR_INVALID_STATE', `this VM's memory is now snapshot ${this.frozen}'s; it cannot run again`);
    await (await this.control()).execute('cont');
  }

  async setCpuPriority(priority: CpuPriority): Promise<void> {
    // Unconfined (no cgroup on this host): every VM is at normal anyway.
    await this.cgroup?.setCpuPriority(priority);
  }

  async snapshot(dir: string, opts: { resume: boolean }): Promise<VmmSnapshot> {
    const qmp = await this.control();
    const mapped = this.spec.memoryFile?.shared === true && !opts.resume;
    const stateFile = path.join(dir, QEMU_STATE_FILE);
    await this.receiveMigration(stateFile, (uri) => saveVmState(qmp, { uri, ignoreShared: mapped, resume: opts.resume }));
    if (mapped) this.frozen = dir;
    return { stateFile, memory: mapped ? 'mapped' : 'full', memoryFile: mapped ? this.spec.memoryFile!.path : null };
  }

  /**
   * QEMU streams its state to a Unix socket kilnd listens on, written to `stateFile` by
   * kilnd: a confined QEMU can neither run a helper (`exec:` migration: spawn=deny) nor open
   * a path outside its empty chroot. The socket is in the jail, owned by the VMM user.
   */
  private async receiveMigration(stateFile: string, migrate: (uri: string) => Promise<unknown>): Promise<void> {
    const p = qemuPaths(this.spec.runtimeDir);
    const c = this.confinement;
    const hostDir = c.chroot ? p.jail : this.spec.runtimeDir;
    const sock = path.join(hostDir, MIGRATE_SOCKET);
    await fs.rm(sock, { force: true });
    const server = net.createServer();
    let received: Promise<void> | null = null;
    let onConnected: () => void = () => {};
    const connected = new Promise<void>((r) => (onConnected = r));
    server.on('connection', (conn) => {
      if (received) return conn.destroy(); // one stream only
      received = pipeline(conn, createWriteStream(stateFile, { mode: 0o600 }));
      received.catch(() => {}); // awaited below, unless the migration failed first
      server.close();
      onConnected();
    });
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(sock, resolve));
    try {
      if (c.user) await fs.chown(sock, c.user.uid, c.user.gid);
      await fs.chmod(sock, 0o600);
      try {
        await migrate(`unix:${c.chroot ? `/${MIGRATE_SOCKET}` : sock}`);
      } catch (e) {
        // QEMU only sees its socket close; why it closed is kilnd's write (a full disk, say).
        const writeError = received ? await Promise.race([(received as Promise<void>).then(() => null, (w: Error) => w), sleep(1000).then(() => null)]) : null;
        throw writeError ?? e;
      }
      // QMP's "completed" and the accept of QEMU's connection are two events of one poll: on a
      // loaded host the answer can be read first. The stream is complete by then; its accept
      // follows at once.
      if (!received) await Promise.race([connected, sleep(5000)]);
      if (!received) throw new KilnError('KILN_ERR_SNAPSHOT_FAILED', 'QEMU reported the snapshot complete without connecting to the snapshot socket');
      await received;
    } finally {
      server.close();
      await fs.rm(sock, { force: true });
    }
  }

  async kill(): Promise<void> {
    if (!pidAlive(this.pid)) {
      this.checkAlive();
      return this.exited.then(() => undefined);
    }
    if (this.cgroup) {
      // Every thread of it at once, with nothing it can do about it.
      await this.cgroup.kill();
      this.checkAlive();
      await this.exited;
      return;
    }
    try {
      await (await this.control()).execute('quit', undefined, 2000);
    } catch {
      /* fall through to SIGKILL */
    }
    const done = await Promise.race([this.exited.then(() => true), new Promise((r) => setTimeout(() => r(false), 2000))]);
    if (!done) {
      try {
        process.kill(this.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
      await this.exited;
    }
  }

  detach(): void {
    this.detached = true;
    clearInterval(this.liveness);
    this.qmp?.close();
  }
}

export class QemuDriver implements VmmDriver {
  readonly name = 'qemu' as const;

  constructor(private readonly confinement: QemuConfinement = UNCONFINED) {}

  confinementReport(): ConfinementReport {
    return this.confinement.report;
  }

  async release(): Promise<void> {
    if (this.confinement.cgroups) await removeParentIfEmpty(this.confinement.cgroups);
  }

  async reap(name: string): Promise<number> {
    const cgroup = await this.confinement.cgroups?.open(name);
    if (!cgroup) return 0;
    const n = (await cgroup.pids()).length;
    await cgroup.kill();
    await cgroup.remove();
    return n;
  }

  async start(spec: VmSpec, signal?: AbortSignal): Promise<VmmInstance> {
    return this.spawn(spec, false, signal);
  }

  async restore(spec: VmSpec, snapshot: VmmSnapshot, signal?: AbortSignal, step: StepTimer = untimed): Promise<VmmInstance> {
    const mapped = snapshot.memory === 'mapped';
    if (mapped && (spec.memoryFile?.path !== snapshot.memoryFile || spec.memoryFile.shared)) {
      throw new KilnError('KILN_ERR_INTERNAL', 'a mapped snapshot restores with its memory file mapped private (spec.memoryFile)');
    }
    // The stream is opened here and inherited: a confined QEMU cannot open it by path.
    const stream = await fs.open(snapshot.stateFile, 'r');
    let instance: QemuInstance;
    try {
      instance = await step('vmm.spawn', () => this.spawn(spec, true, signal, stream.fd));
    } finally {
      await stream.close();
    }
    try {
      await step('vmm.load', async () => loadVmState(await instance.control(), { uri: `fd:${INCOMING_FD}`, ignoreShared: mapped }));
    } catch (e) {
      await instance.kill();
      // A stream QEMU rejects makes it exit on its own: the QMP error is only "closed".
      const reason = (await fs.readFile(qemuPaths(spec.runtimeDir).consoleLog, 'utf8').catch(() => '')).slice(-500);
      throw new KilnError('KILN_ERR_SNAPSHOT_FAILED', `restore failed: ${(e as Error).message}`, reason ? { console_tail: reason } : undefined);
    }
    return instance;
  }

  private async spawn(spec: VmSpec, incoming: boolean, signal?: AbortSignal, incomingFd?: number): Promise<QemuInstance> {
    const c = this.confinement;
    const paths = qemuPaths(spec.runtimeDir);
    for (const f of [paths.qmpSocket, paths.consoleSocket]) await fs.rm(f, { force: true });
    const vhostVsock = await fs.access('/dev/vhost-vsock').then(() => true, () => false);
    // Empty and root's: QEMU can read nothing in it, and write nothing but to sockets kilnd makes.
    if (c.chroot) await fs.mkdir(paths.jail, { mode: 0o711 }).catch((e: NodeJS.ErrnoException) => { if (e.code !== 'EEXIST') throw e; });
    let cgroup: VmCgroup | null = null;
    if (c.cgroups) {
      // One left by this VM's previous VMM (its removal still pending, or kilnd crashed).
      const stale = await c.cgroups.open(spec.id);
      if (stale) await stale.kill().then(() => stale.remove());
      cgroup = await c.cgroups.create(spec.id, cgroupLimits(spec, c.memoryOverheadMib));
    }
    // Inherited descriptors, from fd 3 on: the incoming stream first (INCOMING_FD), then drives.
    const fds: number[] = incomingFd === undefined ? [] : [incomingFd];
    const opened: fs.FileHandle[] = [];
    let proc;
    try {
      const driveFds: Record<string, DriveFds> = {};
      for (const [i, d] of spec.drives.entries()) {
        const set: number[] = [];
        for (const flags of d.readOnly ? ['r'] : ['r+', 'r']) {
          const h = await fs.open(d.path, flags);
          opened.push(h);
          set.push(3 + fds.length);
          fds.push(h.fd);
        }
        driveFds[d.id] = { set: i + 1, fds: set };
      }
      const args = qemuArgs(spec, {
        daemonize: false,
        paused: true,
        vhostVsock,
        incoming,
        driveFds,
        confinement: { seccomp: c.seccomp, runAs: c.user?.name ?? null, chroot: c.chroot ? paths.jail : null },
      });
      proc = await spawnQemu(args, { netns: spec.netns, fds, logPath: paths.vmmLog });
    } catch (e) {
      await cgroup?.remove().catch(() => {});
      throw e;
    } finally {
      await Promise.allSettled(opened.map((h) => h.close()));
    }
    const { child, pid } = proc;
    // Into its cgroup while QEMU initialises: a cgroup migration waits for an RCU grace
    // period (~7 ms here when VM starts are spaced out), which this overlaps with QEMU's
    // start instead of adding it before the exec. Awaited before any guest instruction
    // (vCPUs stopped: -S) and before a restore loads guest memory: what the guest does is
    // charged to the cgroup; only QEMU's own init (its heap, the kernel copied into guest
    // RAM) may be charged to kilnd's cgroup.
    const joined = cgroup ? cgroup.addProcess(pid) : Promise.resolve();
    joined.catch(() => {}); // awaited below
    let qmp: QmpClient;
    try {
      qmp = await this.awaitQmp(paths.qmpSocket, proc.exited, paths.vmmLog, signal);
      await joined;
      // Started with -S: no guest instruction ran before QEMU had dropped root (-runas runs
      // at the end of its init, which the QMP greeting shows is done).
      if (!incoming) await qmp.execute('cont');
    } catch (e) {
      if (cgroup) await cgroup.kill().catch(() => {});
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      await proc.exited;
      await cgroup?.remove().catch(() => {});
      throw e;
    }
    // kilnd may now exit with QEMU running (it is in its own session); libuv still reaps it.
    child.unref();
    return new QemuInstance(pid, spec, qmp, c, cgroup);
  }

  /** Connects once QEMU listens, or fails with QEMU's own words when it exits first. */
  private async awaitQmp(socket: string, exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>, log: string, signal?: AbortSignal): Promise<QmpClient> {
    const deadline = Date.now() + QMP_READY_MS;
    let gone: { code: number | null; signal: NodeJS.Signals | null } | null = null;
    void exited.then((x) => (gone = x));
    for (let delay = 1; ; delay = Math.min(delay * 2, 20)) {
      if (gone) {
        const g: { code: number | null; signal: NodeJS.Signals | null } = gone;
        const tail = (await fs.readFile(log, 'utf8').catch(() => '')).trim().split('\n').slice(-5).join('\n');
        throw new KilnError('KILN_ERR_VMM_FAILED', `${QEMU_BINARY} exited during start (${g.signal ? `signal ${g.signal}` : `code ${g.code}`})${tail ? `: ${tail}` : ''}`);
      }
      if (signal?.aborted) throw new KilnError('KILN_ERR_VMM_FAILED', `aborted while QEMU was starting: ${String(signal.reason ?? '')}`);
      if (Date.now() > deadline) throw new KilnError('KILN_ERR_VMM_FAILED', `QEMU did not answer on ${socket} within ${QMP_READY_MS} ms`);
      try {
        return await QmpClient.connect(socket, Math.max(1000, deadline - Date.now()));
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'ENOENT' && code !== 'ECONNREFUSED') throw new KilnError('KILN_ERR_VMM_FAILED', `QEMU started but its QMP socket did not answer: ${(e as Error).message}`);
      }
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  async attach(spec: VmSpec, pid: number): Promise<VmmInstance | null> {
    if (!pidAlive(pid)) return null;
    // Guard against pid reuse: the process must be QEMU running this VM's runtime dir.
    if (!(await cmdlineOf(pid)).includes(qemuPaths(spec.runtimeDir).qmpSocket)) return null;
    const qmp = await QmpClient.connect(qemuPaths(spec.runtimeDir).qmpSocket).catch(() => null);
    return new QemuInstance(pid, spec, qmp, this.confinement, (await this.confinement.cgroups?.open(spec.id)) ?? null);
  }

  version(): Promise<string> {
    return qemuVersion();
  }

  kernelCmdline(accelerator: Accelerator, extra: readonly string[]): string {
    return kernelCmdline(accelerator, extra);
  }
}
