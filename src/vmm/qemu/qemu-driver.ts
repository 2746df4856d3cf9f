// QEMU `-M microvm` backend: one daemonized QEMU per VM, controlled over QMP. QEMU outlives
// kilnd; attach() finds it again by pid and QMP socket.
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { KilnError } from '../../errors.ts';
import { pidAlive } from '../../util/process.ts';
import { qemuDaemonize, qemuVersion } from '../../tools/qemu-system.ts';
import { untimed, type Accelerator, type StepTimer, type VmmDriver, type VmmExit, type VmmInstance, type VmmSnapshot, type VmSpec } from '../driver.ts';
import { kernelCmdline, qemuArgs, qemuPaths } from './qemu-args.ts';
import { QmpClient } from './qmp-client.ts';
import { loadVmState, saveVmState } from './qmp-snapshot.ts';

/** The migration stream's file name in a snapshot directory. */
export const QEMU_STATE_FILE = 'vmstate';

/** Backstop liveness check for a VMM whose QMP connection could not be (re)established. */
const LIVENESS_INTERVAL_MS = 500;

async function readPid(pidFile: string): Promise<number> {
  const text = await fs.readFile(pidFile, 'utf8');
  const pid = Number.parseInt(text.trim(), 10);
  if (!Number.isInteger(pid) || pid <= 0) throw new KilnError('KILN_ERR_VMM_FAILED', `bad pid file ${pidFile}`);
  return pid;
}

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
  /** Its RAM file became a snapshot's memory: running again would change that snapshot. */
  private frozen: string | null = null;

  constructor(
    readonly pid: number,
    private readonly spec: VmSpec,
    private qmp: QmpClient | null,
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
    clearInterval(this.liveness);
    this.qmp?.close();
    const ev = this.shutdownEvent;
    const guest = ev?.guest === true;
    this.resolveExit({
      clean: guest,
      ...(guest && ev?.reason === 'guest-reset' ? { reset: true } : {}),
      reason: ev ? `VMM exited after ${guest ? 'guest' : 'host'} shutdown (${String(ev.reason ?? 'unknown')})` : 'VMM process exited unexpectedly',
    });
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

  async snapshot(dir: string, opts: { resume: boolean }): Promise<VmmSnapshot> {
    const qmp = await this.control();
    const mapped = this.spec.memoryFile?.shared === true && !opts.resume;
    const stateFile = path.join(dir, QEMU_STATE_FILE);
    await saveVmState(qmp, { stateFile, ignoreShared: mapped, resume: opts.resume });
    if (mapped) this.frozen = dir;
    return { stateFile, memory: mapped ? 'mapped' : 'full', memoryFile: mapped ? this.spec.memoryFile!.path : null };
  }

  async kill(): Promise<void> {
    if (!pidAlive(this.pid)) {
      this.checkAlive();
      return this.exited.then(() => undefined);
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

  async start(spec: VmSpec, signal?: AbortSignal): Promise<VmmInstance> {
    return this.spawn(spec, false, signal);
  }

  async restore(spec: VmSpec, snapshot: VmmSnapshot, signal?: AbortSignal, step: StepTimer = untimed): Promise<VmmInstance> {
    const mapped = snapshot.memory === 'mapped';
    if (mapped && (spec.memoryFile?.path !== snapshot.memoryFile || spec.memoryFile.shared)) {
      throw new KilnError('KILN_ERR_INTERNAL', 'a mapped snapshot restores with its memory file mapped private (spec.memoryFile)');
    }
    const instance = await step('vmm.spawn', () => this.spawn(spec, true, signal));
    try {
      await step('vmm.load', async () => loadVmState(await instance.control(), { stateFile: snapshot.stateFile, ignoreShared: mapped }));
    } catch (e) {
      await instance.kill();
      // A stream QEMU rejects makes it exit on its own: the QMP error is only "closed".
      const reason = (await fs.readFile(qemuPaths(spec.runtimeDir).consoleLog, 'utf8').catch(() => '')).slice(-500);
      throw new KilnError('KILN_ERR_SNAPSHOT_FAILED', `restore failed: ${(e as Error).message}`, reason ? { console_tail: reason } : undefined);
    }
    return instance;
  }

  private async spawn(spec: VmSpec, incoming: boolean, signal?: AbortSignal): Promise<QemuInstance> {
    const paths = qemuPaths(spec.runtimeDir);
    for (const f of [paths.qmpSocket, paths.consoleSocket, paths.pidFile]) await fs.rm(f, { force: true });
    const vhostVsock = await fs.access('/dev/vhost-vsock').then(() => true, () => false);
    await qemuDaemonize(qemuArgs(spec, { daemonize: true, vhostVsock, incoming }), signal, spec.netns);
    const pid = await readPid(paths.pidFile);
    let qmp: QmpClient;
    try {
      qmp = await QmpClient.connect(paths.qmpSocket);
    } catch (e) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      throw new KilnError('KILN_ERR_VMM_FAILED', `QEMU started but its QMP socket did not answer: ${(e as Error).message}`);
    }
    return new QemuInstance(pid, spec, qmp);
  }

  async attach(spec: VmSpec, pid: number): Promise<VmmInstance | null> {
    if (!pidAlive(pid)) return null;
    // Guard against pid reuse: the process must be QEMU running this VM's runtime dir.
    if (!(await cmdlineOf(pid)).includes(qemuPaths(spec.runtimeDir).qmpSocket)) return null;
    const qmp = await QmpClient.connect(qemuPaths(spec.runtimeDir).qmpSocket).catch(() => null);
    return new QemuInstance(pid, spec, qmp);
  }

  version(): Promise<string> {
    return qemuVersion();
  }

  kernelCmdline(accelerator: Accelerator, extra: readonly string[]): string {
    return kernelCmdline(accelerator, extra);
  }
}
