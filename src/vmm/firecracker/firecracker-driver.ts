// kiln's Firecracker backend. start() runs the boot step list (boot-steps.ts), edited for
// the jailer (jailer.ts) and for restore-from-snapshot (snapshot.ts); a failure unwinds
// everything the steps created. attach() re-adopts a VMM started by an earlier kilnd after
// checking its command line, so a reused pid is never mistaken for the VM.
import { describeFailures } from '../../util/cleanup-stack.ts';
import path from 'node:path';
import { KilnError, asKilnError } from '../../errors.ts';
import { pidAlive, run } from '../../util/process.ts';
import { untimed, type Accelerator, type StepTimer, type VmmDriver, type VmmSnapshot, type VmSpec } from '../driver.ts';
import { FirecrackerApiClient, type ApiTransport } from './api-client.ts';
import { createBootContext, defaultBootSteps, runBootSteps, type BootContext, type ResolvedDriverOptions } from './boot-steps.ts';
import { FirecrackerInstance } from './instance.ts';
import { JAIL, resolveJail, withJailer, type JailerOptions } from './jailer.ts';
import { viewVsockPath, withPathView } from './path-view.ts';
import { withSnapshotRestore } from './snapshot.ts';
import { firecrackerKernelCmdline, instanceIdFor, runtimePaths, validateSpec, type FirecrackerVmSpec } from './spec.ts';
import type { StepEvent, StepList } from '../../util/steps.ts';
import { fetchCapabilities } from './version.ts';
import { readCmdline, readProcStat, resolveBinary, watchPid } from './vmm-process.ts';

export type { FirecrackerVmSpec } from './spec.ts';
export type { JailerOptions } from './jailer.ts';
export type { FirecrackerInstance } from './instance.ts';

export interface FirecrackerDriverOptions {
  /** Firecracker binary (default 'firecracker', looked up on PATH). */
  binary?: string;
  /** Run every VMM under the jailer. */
  jailer?: JailerOptions;
  /** How API requests reach the socket (default HTTP over the Unix socket). */
  transport?: ApiTransport;
  /** Limit for the API socket to appear (default 10 s). */
  socketTimeoutMs?: number;
  /** Per API request (default 10 s; snapshot calls get longer). */
  apiTimeoutMs?: number;
  /** Whole start(), every step included (default 60 s). */
  startTimeoutMs?: number;
  /** Liveness check period for VMMs kilnd is not the parent of (default 1000 ms). */
  livenessIntervalMs?: number;
  /** Where vmlinux files extracted from bzImages are kept (default: the VM's runtime dir). */
  vmlinuxCacheDir?: string;
  env?: NodeJS.ProcessEnv;
  /** Timeline hook: every boot step with its duration. */
  onStep?: (e: StepEvent & { vmId: string }) => void;
  /** Last word on the step list (add, remove, wrap steps). */
  editSteps?: (steps: StepList<BootContext>, spec: FirecrackerVmSpec) => void;
}

function hasArg(argv: string[], flag: string, value: string): boolean {
  return argv.some((a, i) => (a === flag && argv[i + 1] === value) || a === `${flag}=${value}`);
}

export class FirecrackerDriver implements VmmDriver {
  readonly name = 'firecracker' as const;
  /**
   * A classic VM's systemd reboots and powers off by itself. On x86 Firecracker has no ACPI
   * power-off (after `poweroff` the vCPUs halt and the VMM runs on) and exits 0 on a reset
   * without saying it was one, so neither verb could be told from the other or from a crash.
   */
  readonly classicUnsupported =
    'Firecracker cannot tell a guest reboot from a power-off or a crash (it exits 0 on every reset, and has no ACPI power-off on x86); run classic VMs with KILN_BACKEND=qemu';
  readonly #o: ResolvedDriverOptions;
  readonly #startTimeoutMs: number;
  readonly #onStep: FirecrackerDriverOptions['onStep'];
  readonly #editSteps: FirecrackerDriverOptions['editSteps'];

  constructor(opts: FirecrackerDriverOptions = {}) {
    this.#o = {
      binary: opts.binary ?? 'firecracker',
      jailer: opts.jailer,
      transport: opts.transport,
      socketTimeoutMs: opts.socketTimeoutMs ?? 10_000,
      apiTimeoutMs: opts.apiTimeoutMs ?? 10_000,
      livenessIntervalMs: opts.livenessIntervalMs ?? 1000,
      vmlinuxCacheDir: opts.vmlinuxCacheDir,
      env: opts.env,
    };
    this.#startTimeoutMs = opts.startTimeoutMs ?? 60_000;
    this.#onStep = opts.onStep;
    this.#editSteps = opts.editSteps;
  }

  /** The steps start() will run for `spec`, in order. */
  bootSteps(spec: FirecrackerVmSpec): StepList<BootContext> {
    const list = defaultBootSteps();
    if (spec.restore) withSnapshotRestore(list);
    // A stable path view for every VMM: the jail's fixed layout, or a private mount namespace.
    if (this.#o.jailer) withJailer(list);
    else withPathView(list);
    this.#editSteps?.(list, spec);
    return list;
  }

  async start(vmSpec: VmSpec, signal?: AbortSignal): Promise<FirecrackerInstance> {
    const spec = { ...(vmSpec as FirecrackerVmSpec), ...(vmSpec.netns ? { netns: netnsPath(vmSpec.netns) } : {}) };
    validateSpec(spec);
    const deadline = AbortSignal.timeout(this.#startTimeoutMs);
    const ctx = createBootContext({
      spec,
      options: this.#o,
      signal: signal ? AbortSignal.any([signal, deadline]) : deadline,
      paths: runtimePaths(spec.runtimeDir),
      fcId: instanceIdFor(spec.id),
    });
    try {
      await runBootSteps(this.bootSteps(spec), ctx, (e) => this.#onStep?.({ ...e, vmId: spec.id }));
    } catch (e) {
      const failures = await ctx.cleanup.run();
      const err = asKilnError(e, 'KILN_ERR_VMM_FAILED');
      if (!failures.length) throw err;
      const also = describeFailures(failures);
      throw new KilnError(err.code, `${err.message} (cleanup also failed: ${also})`, { ...err.details, cleanup_failures: also }, { cause: e });
    }
    ctx.cleanup.release();
    const child = ctx.spawned && ctx.spawned.pid === ctx.pid ? ctx.spawned : undefined;
    // A jailer that is not the VMM itself is not watched: it must not hold kilnd's loop.
    if (!child) ctx.spawned?.child.unref();
    return new FirecrackerInstance({
      pid: ctx.pid!,
      client: ctx.client!,
      caps: ctx.caps,
      consoleLogPath: ctx.paths.consoleLog,
      consoleInPath: ctx.paths.consoleIn,
      logPath: ctx.logFile,
      metricsPath: ctx.metricsFile,
      consoleOffset: ctx.consoleOffset,
      vsockPath: ctx.vsockPath,
      jail: ctx.jail,
      jailer: this.#o.jailer,
      fcId: ctx.fcId,
      vmmPath: ctx.vmmPath,
      child: child ? { process: child.child, exited: child.exited } : undefined,
      watch: child ? undefined : ctx.pidWatch,
    });
  }

  /**
   * The backend-neutral restore: PUT /snapshot/load with the File backend (the memory file
   * mapped private: lazy, copy-on-write), not resumed (VmmDriver.restore's contract).
   */
  async restore(vmSpec: VmSpec, snapshot: VmmSnapshot, signal?: AbortSignal, step: StepTimer = untimed): Promise<FirecrackerInstance> {
    if (!snapshot.memoryFile) throw new KilnError('KILN_ERR_SNAPSHOT_INCOMPATIBLE', 'a Firecracker restore needs the snapshot\'s memory file');
    const spec: FirecrackerVmSpec = {
      ...(vmSpec as FirecrackerVmSpec),
      // VmSpec names an `ip netns` namespace; Firecracker's spec (nsenter, jailer) takes its path.
      ...(vmSpec.netns ? { netns: netnsPath(vmSpec.netns) } : {}),
      restore: { snapshotPath: snapshot.stateFile, memBackend: { type: 'File', path: snapshot.memoryFile }, resume: false, sourceVsockPath: snapshot.vsockPath },
    };
    // One step: the process, its API configuration and /snapshot/load are one sequence here.
    return step('vmm.restore', () => this.start(spec, signal));
  }

  async attach(vmSpec: VmSpec, pid: number): Promise<FirecrackerInstance | null> {
    const spec = vmSpec as FirecrackerVmSpec;
    if (!Number.isInteger(pid) || pid <= 0 || !pidAlive(pid)) return null;
    const st = await readProcStat(pid);
    const argv = await readCmdline(pid);
    if (!st || st.state === 'Z' || !argv?.length) return null;
    const paths = runtimePaths(spec.runtimeDir);
    const fcId = instanceIdFor(spec.id);
    let apiSocket = paths.apiSocket;
    let logPath = paths.logFile;
    let metricsPath = paths.metricsFile;
    const vsockPath = spec.vsock ? (spec.vsock.udsPath ?? paths.vsock) : undefined;
    let jail;
    // The VMM-side path of the vsock socket (what its snapshots record).
    let vmmPath = (p: string) => (p === vsockPath ? viewVsockPath(path.basename(p)) : p);
    if (this.#o.jailer) {
      // Jailed: the command line is the jail's ("/firecracker --id=<id> ... --api-sock /firecracker.socket").
      jail = (await resolveJail(this.#o.jailer, this.#o.binary, fcId).catch(() => null))?.jail;
      if (!jail || !hasArg(argv, '--id', fcId) || path.basename(argv[0]!) !== jail.execName) return null;
      apiSocket = jail.hostPath(JAIL.apiSocket);
      logPath = jail.hostPath(JAIL.log);
      metricsPath = jail.hostPath(JAIL.metrics);
      const j = jail;
      vmmPath = (p) => (p === vsockPath ? path.posix.join(JAIL.vsockDir, path.basename(p)) : j.toJail(p));
    } else if (!hasArg(argv, '--api-sock', apiSocket) || !hasArg(argv, '--id', fcId)) {
      return null;
    }
    const client = new FirecrackerApiClient(apiSocket, { transport: this.#o.transport, timeoutMs: this.#o.apiTimeoutMs });
    const caps = await fetchCapabilities(client).catch(() => undefined);
    const watch = watchPid(pid, { startTime: st.startTime, socketPath: apiSocket, intervalMs: this.#o.livenessIntervalMs });
    return new FirecrackerInstance({
      pid,
      client,
      caps,
      consoleLogPath: paths.consoleLog,
      consoleInPath: paths.consoleIn,
      logPath,
      metricsPath,
      vsockPath,
      jail,
      jailer: this.#o.jailer,
      fcId,
      vmmPath,
      watch,
    });
  }

  /** The accelerator is always KVM under Firecracker (validateSpec refuses anything else). */
  kernelCmdline(_accelerator: Accelerator, extra: readonly string[]): string {
    return firecrackerKernelCmdline(extra);
  }

  /** `firecracker --version`, first line (e.g. "Firecracker v1.13.1"). */
  async version(): Promise<string> {
    const bin = await resolveBinary(this.#o.binary, 'firecracker');
    const { stdout } = await run(bin, ['--version'], { timeoutMs: 10_000, env: this.#o.env });
    const line = stdout.split('\n').find((l) => l.trim());
    if (!line) throw new KilnError('KILN_ERR_VMM_FAILED', `${bin} --version printed nothing`);
    return line.trim();
  }
}

/** `ip netns` names live under /run/netns; a path is kept as it is. */
export function netnsPath(netns: string): string {
  return netns.startsWith('/') ? netns : `/run/netns/${netns}`;
}
