// A running Firecracker VM as kilnd sees it: the VmmInstance contract plus what only
// Firecracker offers (snapshots, MMDS, balloon, rate-limiter updates, hybrid vsock).
import type { ChildProcess } from 'node:child_process';
import { open as openCb, constants as FS } from 'node:fs';
import fs from 'node:fs/promises';
import net from 'node:net';
import { promisify } from 'node:util';
import { KilnError } from '../../errors.ts';
import path from 'node:path';
import type { VmmExit, VmmInstance, VmmSnapshot } from '../driver.ts';

/** File names of a snapshot's state and memory in the directory snapshot() is given. */
export const FIRECRACKER_STATE_FILE = 'vmstate';
export const FIRECRACKER_MEMORY_FILE = 'memory';
import type { FirecrackerApiClient } from './api-client.ts';
import type * as T from './api-types.ts';
import { killVmm } from './boot-steps.ts';
import { JAIL, removeJail, type JailerOptions, type JailLayout } from './jailer.ts';
import { createSnapshot, type CreateSnapshotOptions } from './snapshot.ts';
import { apiIdFor, toRateLimiter, type RateLimiterSpec } from './spec.ts';
import type { FirecrackerCapabilities } from './version.ts';
import type { PidWatch, VmmExitStatus } from './vmm-process.ts';
import { readFrom, tailFile } from './vmm-process.ts';
import { connectVsock, listenVsock, type VsockConnection } from './vsock.ts';

const openFd = promisify(openCb);

/** How much console output is searched for kiln-init's markers when the VMM's start offset is unknown. */
const MARKER_WINDOW = 64 * 1024;

/**
 * Whether kiln-init powered the guest off: its `@kiln:poweroff` marker is the last of its
 * boot/poweroff markers in this VMM's console output. Firecracker exits 0 on every guest reset
 * (kiln-init's shutdown, but also a kernel panic with panic=1 or a triple fault), so its exit
 * code cannot tell. kiln-init starts any workload line that begins with "@kiln:" with a space,
 * so a line that begins with the marker is kiln-init's own.
 */
export async function guestPoweredOff(consoleLog: string, since?: number): Promise<boolean> {
  const text = since === undefined ? await tailFile(consoleLog, MARKER_WINDOW) : await readFrom(consoleLog, since, MARKER_WINDOW);
  let last: string | undefined;
  for (const m of text.matchAll(/^@kiln:(boot|poweroff)(?=[\s]|$)/gm)) last = m[1];
  return last === 'poweroff';
}

export interface FirecrackerInstanceInit {
  pid: number;
  client: FirecrackerApiClient;
  caps?: FirecrackerCapabilities;
  consoleLogPath: string;
  consoleInPath: string;
  logPath: string;
  /** Firecracker's metrics pipe (ensureFifo in boot-steps.ts). */
  metricsPath?: string;
  /** Size of the console log when this VMM started (unknown after attach()). */
  consoleOffset?: number;
  vsockPath?: string;
  jail?: JailLayout;
  /** With `jail`: removed, with the jailer's cgroup dirs, once the VMM is gone. */
  jailer?: JailerOptions;
  fcId: string;
  vmmPath: (host: string) => string;
  /** Set when kilnd spawned the VMM itself: its exit status is then known. */
  child?: { process: ChildProcess; exited: Promise<VmmExitStatus> };
  /** Set otherwise: liveness watch of a process kilnd is not the parent of. */
  watch?: PidWatch;
}

async function moveFile(from: string, to: string): Promise<void> {
  try {
    await fs.rename(from, to);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
    await fs.copyFile(from, to);
    await fs.rm(from, { force: true });
  }
}

export class FirecrackerInstance implements VmmInstance {
  readonly pid: number;
  readonly exited: Promise<VmmExit>;
  readonly consoleLogPath: string;
  readonly api: FirecrackerApiClient;
  readonly capabilities: FirecrackerCapabilities | undefined;
  /** Host path of the hybrid vsock socket, when the VM has one. */
  readonly vsockPath: string | undefined;
  /** Firecracker's own log. */
  readonly logPath: string;
  readonly jail: JailLayout | undefined;
  readonly #consoleIn: string;
  readonly #consoleOffset: number | undefined;
  readonly #vmmPath: (host: string) => string;
  readonly #watch: PidWatch | undefined;
  readonly #child: ChildProcess | undefined;
  #metrics: net.Socket | undefined;
  #lastMetrics: string | undefined;
  #gone = false;
  #killing = false;
  #detached = false;

  constructor(init: FirecrackerInstanceInit) {
    this.pid = init.pid;
    this.api = init.client;
    this.capabilities = init.caps;
    this.consoleLogPath = init.consoleLogPath;
    this.#consoleIn = init.consoleInPath;
    this.#consoleOffset = init.consoleOffset;
    if (init.metricsPath) this.#readMetrics(init.metricsPath);
    this.logPath = init.logPath;
    this.vsockPath = init.vsockPath;
    this.jail = init.jail;
    this.#vmmPath = init.vmmPath;
    this.#watch = init.watch;
    // The instance holds kilnd's event loop while it watches the VMM (so `exited` can fire);
    // detach() lets go.
    this.#child = init.child?.process;
    this.#child?.ref();
    const done = init.child
      ? init.child.exited.then((st) => this.#fromStatus(st))
      : (init.watch?.gone ?? new Promise<void>(() => {})).then(() => this.#fromWatch());
    const jail = init.jail;
    const jailer = init.jailer;
    this.exited = done
      .catch((e: unknown): VmmExit => ({ reason: `VMM gone (${(e as Error).message})`, clean: false }))
      .then(async (exit) => {
        this.#gone = true;
        this.#watch?.stop();
        this.#metrics?.destroy();
        if (jail && jailer) {
          await removeJail(jailer, jail, init.fcId).catch((e: Error) => {
            exit = { ...exit, reason: `${exit.reason} (removing the jail failed: ${e.message})` };
          });
        }
        this.#child?.unref();
        return exit;
      });
  }

  async #fromStatus(st: VmmExitStatus): Promise<VmmExit> {
    if (this.#killing) return { reason: 'killed by kiln', clean: false };
    if (st.signal) return { reason: `Firecracker was killed by ${st.signal}`, clean: false };
    if (st.code !== 0) return { reason: `Firecracker exited with code ${st.code}`, clean: false };
    return this.#fromConsole();
  }

  async #fromConsole(): Promise<VmmExit> {
    if (await guestPoweredOff(this.consoleLogPath, this.#consoleOffset)) return { reason: 'guest powered off (kiln-init)', clean: true };
    return { reason: 'the guest reset without kiln-init powering it off (a kernel panic, or kiln-init died)', clean: false };
  }

  /**
   * Not our child: the exit code is unknown (Firecracker logs it at Info, below kiln's log
   * level), and not needed: kiln-init's marker says whether the guest powered off.
   */
  async #fromWatch(): Promise<VmmExit> {
    if (this.#killing) return { reason: 'killed by kiln', clean: false };
    if (await guestPoweredOff(this.consoleLogPath, this.#consoleOffset)) return { reason: 'guest powered off (kiln-init)', clean: true };
    const codes = [...(await tailFile(this.logPath, 8192)).matchAll(/exit_code=(\d+)/g)];
    const code = codes.length ? Number(codes[codes.length - 1]![1]) : undefined;
    return { reason: `Firecracker is gone without kiln-init powering the guest off (exit code ${code ?? 'unknown'})`, clean: false };
  }

  /**
   * Drains the metrics pipe, keeping only the last line: bounded memory here, nothing stored
   * on disk. Never holds kilnd's event loop.
   */
  #readMetrics(file: string): void {
    openFd(file, FS.O_RDONLY | FS.O_NONBLOCK).then(
      (fd) => {
        const s = new net.Socket({ fd, readable: true, writable: false });
        s.unref();
        if (this.#gone || this.#detached) return void s.destroy();
        this.#metrics = s;
        let partial = '';
        s.setEncoding('utf8');
        s.on('data', (chunk: string) => {
          partial += chunk;
          const nl = partial.lastIndexOf('\n');
          if (nl >= 0) {
            this.#lastMetrics = partial.slice(partial.lastIndexOf('\n', nl - 1) + 1, nl);
            partial = partial.slice(nl + 1);
          }
          if (partial.length > 1 << 20) partial = '';
        });
        s.on('error', () => {});
      },
      () => {},
    );
  }

  /** The latest metrics line Firecracker wrote (once a minute, and on flushMetrics()), parsed. */
  lastMetrics(): Record<string, unknown> | null {
    try {
      return this.#lastMetrics ? (JSON.parse(this.#lastMetrics) as Record<string, unknown>) : null;
    } catch {
      return null;
    }
  }

  #assertLive(what: string): void {
    if (this.#gone) throw new KilnError('KILN_ERR_INVALID_STATE', `cannot ${what}: the VMM (pid ${this.pid}) is gone`);
  }

  async writeConsole(data: string | Buffer): Promise<void> {
    this.#assertLive('write to the console');
    let fd: number;
    try {
      // Non-blocking open fails with ENXIO when nobody holds the FIFO for reading.
      fd = await openFd(this.#consoleIn, FS.O_WRONLY | FS.O_NONBLOCK);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new KilnError('KILN_ERR_VMM_FAILED', `console input ${this.#consoleIn} has no reader (${code}): is the VMM running?`, undefined, {
        cause: e,
      });
    }
    const pipe = new net.Socket({ fd, readable: false, writable: true });
    await new Promise<void>((resolve, reject) => {
      pipe.once('error', (e) => reject(new KilnError('KILN_ERR_VMM_FAILED', `writing to the console failed: ${e.message}`, undefined, { cause: e })));
      pipe.end(data, () => resolve());
    });
    pipe.destroy();
  }

  async pause(): Promise<void> {
    this.#assertLive('pause');
    await this.api.patchVm('Paused');
  }

  async resume(): Promise<void> {
    this.#assertLive('resume');
    await this.api.patchVm('Resumed');
  }

  /** Asks the guest to shut down (Ctrl+Alt+Del on the i8042 keyboard controller; x86_64). */
  async shutdown(): Promise<void> {
    this.#assertLive('shut down');
    await this.api.action('SendCtrlAltDel');
  }

  async kill(): Promise<void> {
    if (this.#gone) return;
    this.#killing = true;
    await killVmm(this.pid, this.exited.then(() => undefined), this.#detached ? this.#child : undefined);
    if (this.#watch) await this.#watch.check();
    await this.exited;
  }

  detach(): void {
    if (this.#detached) return;
    this.#detached = true;
    this.#watch?.stop();
    this.#metrics?.destroy();
    this.#child?.unref();
  }

  /** The backend-neutral snapshot (VmmInstance): a Full snapshot, state and memory files in `dir`. */
  async snapshot(dir: string, opts: { resume: boolean }): Promise<VmmSnapshot> {
    const stateFile = path.join(dir, FIRECRACKER_STATE_FILE);
    const memoryFile = path.join(dir, FIRECRACKER_MEMORY_FILE);
    if (this.jail) {
      // The jailed VMM writes only inside its jail: there, then moved out.
      const out = (n: string) => this.jail!.hostPath(path.posix.join(JAIL.snapshotOutDir, n));
      await this.createSnapshot({ snapshotPath: out(FIRECRACKER_STATE_FILE), memFilePath: out(FIRECRACKER_MEMORY_FILE), resume: opts.resume });
      await moveFile(out(FIRECRACKER_STATE_FILE), stateFile);
      await moveFile(out(FIRECRACKER_MEMORY_FILE), memoryFile);
    } else {
      await this.createSnapshot({ snapshotPath: stateFile, memFilePath: memoryFile, resume: opts.resume });
    }
    // The path the VMM had (its view's or its jail's), as the snapshot records it.
    return { stateFile, memory: 'full', memoryFile, ...(this.vsockPath ? { vsockPath: this.#vmmPath(this.vsockPath) } : {}) };
  }

  /** Pauses the guest and snapshots it; `resume` continues it afterwards. */
  async createSnapshot(o: CreateSnapshotOptions): Promise<void> {
    this.#assertLive('snapshot');
    await createSnapshot(this.api, o, this.#vmmPath);
  }

  async flushMetrics(): Promise<void> {
    await this.api.action('FlushMetrics');
  }

  async putMmds(data: Record<string, unknown>): Promise<void> {
    await this.api.putMmds(data);
  }

  async patchMmds(patch: Record<string, unknown>): Promise<void> {
    await this.api.patchMmds(patch);
  }

  async setBalloon(amountMib: number): Promise<void> {
    await this.api.patchBalloon({ amount_mib: amountMib });
  }

  async setBalloonStatsInterval(seconds: number): Promise<void> {
    await this.api.patchBalloonStatsInterval({ stats_polling_interval_s: seconds });
  }

  balloonStats(): Promise<T.BalloonStats> {
    return this.api.getBalloonStats();
  }

  /** Post-boot: a new rate limiter and/or backing file for a drive. */
  async updateDrive(driveId: string, o: { path?: string; rateLimiter?: RateLimiterSpec }): Promise<void> {
    const body: T.PartialDrive = { drive_id: apiIdFor(driveId) };
    if (o.path) body.path_on_host = this.#vmmPath(o.path);
    if (o.rateLimiter) body.rate_limiter = toRateLimiter(o.rateLimiter);
    await this.api.patchDrive(body);
  }

  async updateNetworkRateLimiters(ifaceId: string, o: { rx?: RateLimiterSpec; tx?: RateLimiterSpec }): Promise<void> {
    const body: T.PartialNetworkInterface = { iface_id: apiIdFor(ifaceId) };
    if (o.rx) body.rx_rate_limiter = toRateLimiter(o.rx);
    if (o.tx) body.tx_rate_limiter = toRateLimiter(o.tx);
    await this.api.patchNetworkInterface(body);
  }

  #vsock(): string {
    if (!this.vsockPath) throw new KilnError('KILN_ERR_INVALID_STATE', 'this VM has no vsock device');
    return this.vsockPath;
  }

  /** Host → guest connection to a port the guest listens on. */
  connectVsock(port: number, opts?: { signal?: AbortSignal; timeoutMs?: number }): Promise<VsockConnection> {
    return connectVsock(this.#vsock(), port, opts);
  }

  /** Accepts guest → host connections to `port`. */
  listenVsock(port: number, onConnection: (socket: net.Socket) => void): Promise<net.Server> {
    return listenVsock(this.#vsock(), port, onConnection);
  }
}
