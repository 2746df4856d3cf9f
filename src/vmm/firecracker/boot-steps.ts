// Booting a Firecracker VM as an ordered list of named steps over one context. The jailer
// (jailer.ts) and restore-from-snapshot (snapshot.ts) edit this list; nothing forks it.
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import { KilnError } from '../../errors.ts';
import { ensureVmlinux } from '../../guest/extract-vmlinux.ts';
import { writeFileAtomic } from '../../util/atomic.ts';
import { run } from '../../util/process.ts';
import { FirecrackerApiClient, type ApiTransport } from './api-client.ts';
import type { JailerOptions, JailLayout } from './jailer.ts';
import {
  networkInterfacesOf,
  toDrives,
  toMachineConfig,
  toMmdsConfig,
  toNetworkInterface,
  toRateLimiter,
  type FirecrackerVmSpec,
  type RuntimePaths,
} from './spec.ts';
import { viewSpawnArgv } from './path-view.ts';
import { CleanupStack, StepList, runSteps, type Step, type StepEvent } from '../../util/steps.ts';
import { assertSupported, fetchCapabilities, type FirecrackerCapabilities } from './version.ts';
import {
  assertSocketPathFits,
  processGone,
  readCmdline,
  resolveBinary,
  spawnDetached,
  tailFile,
  waitForApiSocket,
  type PidWatch,
  type SpawnedProcess,
} from './vmm-process.ts';

export interface ResolvedDriverOptions {
  binary: string;
  jailer?: JailerOptions;
  transport?: ApiTransport;
  socketTimeoutMs: number;
  apiTimeoutMs: number;
  livenessIntervalMs: number;
  vmlinuxCacheDir?: string;
  env?: NodeJS.ProcessEnv;
}

export interface BootContext {
  readonly spec: FirecrackerVmSpec;
  readonly options: ResolvedDriverOptions;
  readonly signal: AbortSignal;
  readonly paths: RuntimePaths;
  /** Firecracker's --id (and the jailer's). */
  readonly fcId: string;
  readonly cleanup: CleanupStack;
  /** Host paths; the jailer moves them into the jail. */
  apiSocket: string;
  logFile: string;
  metricsFile: string;
  vsockPath?: string;
  /** The ELF kernel to boot, once fc.kernel ran. */
  kernelPath?: string;
  jail?: JailLayout;
  /** The path the VMM sees for a host path (its path view, or jail-relative under the jailer). */
  vmmPath: (hostPath: string) => string;
  /** The VM's path view (path-view.ts), bound on VIEW_MOUNT in the VMM's mount namespace. */
  viewDir?: string;
  /** Size of the console log when this VMM started: its own output follows. */
  consoleOffset?: number;
  /** What was spawned (firecracker, or the jailer). */
  spawned?: SpawnedProcess;
  /** The Firecracker process itself and how its death is noticed. */
  pid?: number;
  vmmGone?: Promise<void>;
  pidWatch?: PidWatch;
  client?: FirecrackerApiClient;
  caps?: FirecrackerCapabilities;
}

export type BootStep = Step<BootContext>;

export function createBootContext(
  init: Pick<BootContext, 'spec' | 'options' | 'signal' | 'paths' | 'fcId'>,
): BootContext {
  return {
    ...init,
    cleanup: new CleanupStack(),
    apiSocket: init.paths.apiSocket,
    logFile: init.paths.logFile,
    metricsFile: init.paths.metricsFile,
    vsockPath: init.spec.vsock ? (init.spec.vsock.udsPath ?? init.paths.vsock) : undefined,
    vmmPath: (p) => p,
  };
}

const lines = (s: string, n: number) => s.trimEnd().split('\n').slice(-n).join('\n');

/** A KilnError saying how the VMM died, with the tail of what it wrote. */
export async function describeVmmExit(ctx: BootContext, during: string): Promise<KilnError> {
  const st = ctx.spawned && ctx.pid === ctx.spawned.pid ? ctx.spawned.status() : undefined;
  const how = st ? (st.signal ? `was killed by ${st.signal}` : `exited with code ${st.code}`) : 'is gone';
  const [stderr, log] = await Promise.all([tailFile(ctx.paths.stderrLog, 2048), tailFile(ctx.logFile, 2048)]);
  const parts = [`Firecracker (pid ${ctx.pid}) ${how} during ${during}`];
  if (stderr.trim()) parts.push(`stderr: ${lines(stderr, 10)}`);
  if (log.trim()) parts.push(`log: ${lines(log, 10)}`);
  return new KilnError('KILN_ERR_VMM_FAILED', parts.join('\n'), {
    step: during,
    exit_code: st?.code ?? null,
    signal: st?.signal ?? null,
  });
}

/**
 * Runs the steps; once a VMM exists, each step is raced against its death so a VMM that
 * dies mid-configuration is reported as such (with its output), not as a broken socket.
 */
export async function runBootSteps(
  list: StepList<BootContext>,
  ctx: BootContext,
  onStep?: (e: StepEvent) => void,
): Promise<void> {
  const guarded = new StepList<BootContext>(
    list.steps.map((s) => ({
      name: s.name,
      run: async (c: BootContext) => {
        const gone = c.vmmGone;
        if (!gone) return s.run(c);
        const running = s.run(c);
        let died = false;
        const death = gone.then(() => {
          died = true;
        });
        try {
          await Promise.race([running, death]);
        } catch (e) {
          // A transport error can beat the exit notification: if the VMM is gone, say so.
          // (An HTTP fault is Firecracker's own answer and is kept as it is.)
          const httpFault = e instanceof KilnError && e.details?.status !== undefined;
          if (!httpFault && c.pid !== undefined && (await processGone(c.pid))) {
            await Promise.race([gone, new Promise((r) => setTimeout(r, 1000))]);
            throw await describeVmmExit(c, s.name);
          }
          throw e;
        }
        if (died) {
          running.catch(() => {});
          throw await describeVmmExit(c, s.name);
        }
      },
    })),
  );
  await runSteps(guarded, ctx, { signal: ctx.signal, onStep });
}

/**
 * SIGKILLs the VMM and waits until it is gone. `child` (when kilnd spawned it) is ref'd
 * meanwhile, even if it had been let go (a detached instance): the wait for its exit event
 * must hold the event loop.
 */
export async function killVmm(pid: number, gone: Promise<void> | undefined, child?: ChildProcess, timeoutMs = 5000): Promise<void> {
  try {
    process.kill(pid, 'SIGKILL');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ESRCH') return;
    throw e;
  }
  child?.ref();
  try {
    await waitGone(pid, gone, timeoutMs);
    // Our child: gone from /proc means reaped or a zombie about to be; its exit event follows.
    if (child && gone) await gone;
  } finally {
    child?.unref();
  }
}

async function waitGone(pid: number, gone: Promise<void> | undefined, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let delay = 2;
  const polled = (async () => {
    // After SIGKILL the kernel tears the process down; poll its /proc entry (bounded).
    while (!(await processGone(pid))) {
      if (Date.now() > deadline) throw new KilnError('KILN_ERR_VMM_FAILED', `pid ${pid} survived SIGKILL for ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 100);
    }
  })();
  polled.catch(() => {});
  await Promise.race(gone ? [gone, polled] : [polled]);
}

const step = (name: string, run: (ctx: BootContext) => Promise<void>): BootStep => ({ name, run });

async function touch(file: string): Promise<void> {
  await (await fs.open(file, 'a')).close();
}

/**
 * A named pipe in place of `file`. Firecracker's metrics go to one (prod-host-setup.md: the
 * guest influences their volume; a pipe holds at most its buffer): kilnd reads it while it
 * runs, and while nobody does Firecracker's non-blocking writes are dropped, not stored.
 */
export async function ensureFifo(file: string): Promise<void> {
  const st = await fs.lstat(file).catch(() => null);
  if (st?.isFIFO()) return;
  await fs.rm(file, { force: true });
  await run('mkfifo', ['-m', '0600', file]);
}

/** The runtime dir: stale sockets removed, console FIFO and log files present. */
export const prepare = step('fc.prepare', async (ctx) => {
  const p = ctx.paths;
  await fs.mkdir(p.dir, { recursive: true, mode: 0o750 });
  assertSocketPathFits(ctx.apiSocket, 'API socket');
  if (ctx.vsockPath) assertSocketPathFits(ctx.vsockPath, 'vsock socket');
  const oldPid = Number((await fs.readFile(p.pidFile, 'utf8').catch(() => '')).trim());
  if (oldPid > 0 && !(await processGone(oldPid))) {
    const argv = (await readCmdline(oldPid)) ?? [];
    if (argv.includes(ctx.apiSocket) || argv.some((a) => a.endsWith(`--id=${ctx.fcId}`))) {
      throw new KilnError('KILN_ERR_INVALID_STATE', `a VMM (pid ${oldPid}) is already running for VM ${ctx.spec.id}`, { pid: oldPid });
    }
  }
  await fs.rm(p.apiSocket, { force: true });
  if (ctx.vsockPath) await fs.rm(ctx.vsockPath, { force: true });
  const st = await fs.lstat(p.consoleIn).catch(() => null);
  if (!st?.isFIFO()) {
    await fs.rm(p.consoleIn, { force: true });
    await run('mkfifo', ['-m', '0600', p.consoleIn]);
  }
  await touch(p.consoleLog);
  ctx.consoleOffset = (await fs.stat(p.consoleLog)).size;
  // Per-boot files: their tails go into error messages, so they start empty.
  await Promise.all([fs.writeFile(p.stderrLog, ''), fs.writeFile(ctx.logFile, ''), ensureFifo(ctx.metricsFile)]);
});

/** Firecracker boots only an ELF vmlinux: a bzImage is extracted (once, cached). */
export const kernel = step('fc.kernel', async (ctx) => {
  ctx.kernelPath = await ensureVmlinux(ctx.spec.kernel.path, ctx.options.vmlinuxCacheDir ?? ctx.paths.dir);
});

/** Where a spawned VMM (Firecracker, or the jailer that becomes it) reads and writes. */
export function vmmStdio(ctx: BootContext) {
  return {
    cwd: ctx.paths.dir,
    env: ctx.options.env,
    stdinPath: ctx.paths.consoleIn,
    stdoutPath: ctx.paths.consoleLog,
    stderrPath: ctx.paths.stderrLog,
  };
}

/**
 * Firecracker's own command line after --api-sock. Its log and metrics are set here, not by
 * PUT /logger and /metrics: until a logger exists Firecracker logs to stdout, which is the
 * guest's serial console log.
 */
export function firecrackerArgs(ctx: BootContext, apiSocket: string): string[] {
  return [
    '--api-sock', apiSocket,
    '--log-path', ctx.vmmPath(ctx.logFile),
    '--level', ctx.spec.logLevel ?? 'Warning',
    '--show-level',
    '--metrics-path', ctx.vmmPath(ctx.metricsFile),
  ];
}

export const spawnFirecracker = step('fc.spawn', async (ctx) => {
  const bin = await resolveBinary(ctx.options.binary, 'firecracker');
  // unshare, sh, nsenter exec in place: same pid, and the cmdline attach() checks is Firecracker's.
  let argv = [bin, ...firecrackerArgs(ctx, ctx.apiSocket), '--id', ctx.fcId];
  if (ctx.viewDir) argv = viewSpawnArgv(ctx.viewDir, argv);
  if (ctx.spec.netns) argv = ['nsenter', `--net=${ctx.spec.netns}`, '--', ...argv];
  const [file, ...args] = argv;
  const spawned = await spawnDetached({ file: await resolveBinary(file!), args, ...vmmStdio(ctx) });
  ctx.spawned = spawned;
  ctx.pid = spawned.pid;
  ctx.vmmGone = spawned.exited.then(() => undefined);
  ctx.cleanup.push('fc.kill', () => killVmm(spawned.pid, ctx.vmmGone, spawned.child));
  await writeFileAtomic(ctx.paths.pidFile, `${spawned.pid}\n`);
  ctx.cleanup.push('fc.pidFile', () => fs.rm(ctx.paths.pidFile, { force: true }));
});

export const waitSocket = step('fc.waitSocket', async (ctx) => {
  ctx.cleanup.push('fc.apiSocket', () => fs.rm(ctx.apiSocket, { force: true }));
  await waitForApiSocket(ctx.apiSocket, {
    exited: ctx.vmmGone ?? new Promise(() => {}),
    onExit: () => describeVmmExit(ctx, 'fc.waitSocket'),
    signal: ctx.signal,
    timeoutMs: ctx.options.socketTimeoutMs,
  });
  ctx.client = new FirecrackerApiClient(ctx.apiSocket, { transport: ctx.options.transport, timeoutMs: ctx.options.apiTimeoutMs });
});

export function api(ctx: BootContext): FirecrackerApiClient {
  if (!ctx.client) throw new KilnError('KILN_ERR_INTERNAL', 'no API client: fc.waitSocket has not run');
  return ctx.client;
}

export function caps(ctx: BootContext): FirecrackerCapabilities {
  if (!ctx.caps) throw new KilnError('KILN_ERR_INTERNAL', 'Firecracker version unknown: fc.version has not run');
  return ctx.caps;
}

export const version = step('fc.version', async (ctx) => {
  ctx.caps = await fetchCapabilities(api(ctx), ctx.signal);
  assertSupported(ctx.caps.version);
});

export const machineConfig = step('fc.machineConfig', async (ctx) => {
  await api(ctx).putMachineConfig(toMachineConfig(ctx.spec), ctx.signal);
});

/**
 * The guest writes the serial console as fast as it likes, and it lands in the console log:
 * from 1.16 Firecracker drops what exceeds this (256 KiB/s after a 1 MiB burst), as
 * prod-host-setup.md recommends. Workload output rides the console too, so it is generous:
 * a bound on the rate, not on the file.
 */
export const SERIAL_RATE_LIMIT = { size: 256 * 1024, refill_time: 1000, one_time_burst: 1024 * 1024 } as const;

export const serial = step('fc.serial', async (ctx) => {
  if (!caps(ctx).serialDevice) return;
  await api(ctx).putSerial({ rate_limiter: { ...SERIAL_RATE_LIMIT } }, ctx.signal);
});

export const bootSource = step('fc.bootSource', async (ctx) => {
  if (!ctx.kernelPath) throw new KilnError('KILN_ERR_INTERNAL', 'no kernel: fc.kernel has not run');
  const k = ctx.spec.kernel;
  await api(ctx).putBootSource(
    {
      kernel_image_path: ctx.vmmPath(ctx.kernelPath),
      boot_args: k.cmdline,
      ...(k.initrd ? { initrd_path: ctx.vmmPath(k.initrd) } : {}),
    },
    ctx.signal,
  );
});

export const drives = step('fc.drives', async (ctx) => {
  for (const d of toDrives(ctx.spec, ctx.vmmPath)) await api(ctx).putDrive(d, ctx.signal);
});

export const networkInterfaces = step('fc.networkInterfaces', async (ctx) => {
  for (const n of networkInterfacesOf(ctx.spec)) await api(ctx).putNetworkInterface(toNetworkInterface(n, caps(ctx).netMtu), ctx.signal);
});

export const vsock = step('fc.vsock', async (ctx) => {
  if (!ctx.spec.vsock || !ctx.vsockPath) return;
  await api(ctx).putVsock({ guest_cid: ctx.spec.vsock.guestCid, uds_path: ctx.vmmPath(ctx.vsockPath) }, ctx.signal);
});

export const entropy = step('fc.entropy', async (ctx) => {
  const e = ctx.spec.entropy;
  if (!e) return;
  const rl = typeof e === 'object' ? e.rateLimiter : undefined;
  await api(ctx).putEntropy(rl ? { rate_limiter: toRateLimiter(rl) } : {}, ctx.signal);
});

export const balloon = step('fc.balloon', async (ctx) => {
  const b = ctx.spec.balloon;
  if (!b) return;
  await api(ctx).putBalloon(
    {
      amount_mib: b.amountMib,
      deflate_on_oom: b.deflateOnOom,
      ...(b.statsPollingIntervalS !== undefined ? { stats_polling_interval_s: b.statsPollingIntervalS } : {}),
    },
    ctx.signal,
  );
});

export const mmds = step('fc.mmds', async (ctx) => {
  const cfg = toMmdsConfig(ctx.spec);
  if (!cfg) return;
  await api(ctx).putMmdsConfig(cfg, ctx.signal);
  if (ctx.spec.mmds?.data) await api(ctx).putMmds(ctx.spec.mmds.data, ctx.signal);
});

export const instanceStart = step('fc.instanceStart', async (ctx) => {
  await api(ctx).action('InstanceStart', ctx.signal);
});

/** Fresh boot, in order. */
export function defaultBootSteps(): StepList<BootContext> {
  return new StepList<BootContext>([
    prepare,
    kernel,
    spawnFirecracker,
    waitSocket,
    version,
    machineConfig,
    serial,
    bootSource,
    drives,
    networkInterfaces,
    vsock,
    entropy,
    balloon,
    mmds,
    instanceStart,
  ]);
}
