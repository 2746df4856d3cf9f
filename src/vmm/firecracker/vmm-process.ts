// The VMM process: spawned detached (own session) with the serial console wired to files
// in the runtime dir, so it survives kilnd; its API socket awaited without sleeping; its
// death detected whether or not kilnd is its parent.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import { constants as FS, watch } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { KilnError } from '../../errors.ts';
import { findBinary } from '../../util/find-binary.ts';

export interface VmmExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface SpawnedProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Resolves when the spawned process exits. */
  readonly exited: Promise<VmmExitStatus>;
  /** The exit status once known, synchronously. */
  status(): VmmExitStatus | undefined;
}

export interface SpawnDetachedOptions {
  file: string;
  args: string[];
  cwd: string;
  env?: NodeJS.ProcessEnv;
  /** Opened O_RDWR and given as stdin (a FIFO: writers come and go, the reader never sees EOF). */
  stdinPath: string;
  /** Appended to: the serial console (Firecracker's stdout). */
  stdoutPath: string;
  stderrPath: string;
}

/** Finds an executable the way execvp would; a missing binary is a host-setup error. */
export async function resolveBinary(name: string, what = name): Promise<string> {
  const found = await findBinary(name);
  if (found) return found;
  throw new KilnError('KILN_ERR_HOST_SETUP', `${what} binary "${name}" not found${name.includes('/') ? '' : ' on PATH'} or not executable`, {
    binary: name,
  });
}

export async function spawnDetached(o: SpawnDetachedOptions): Promise<SpawnedProcess> {
  const stdin = await fs.open(o.stdinPath, FS.O_RDWR);
  const stdout = await fs.open(o.stdoutPath, 'a');
  const stderr = await fs.open(o.stderrPath, 'a');
  try {
    const child = spawn(o.file, o.args, {
      cwd: o.cwd,
      env: o.env ?? process.env,
      detached: true,
      stdio: [stdin.fd, stdout.fd, stderr.fd],
    });
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', (e: NodeJS.ErrnoException) =>
        reject(new KilnError('KILN_ERR_HOST_SETUP', `cannot start ${o.file}: ${e.code ?? e.message}`, { binary: o.file }, { cause: e })),
      );
    });
    let status: VmmExitStatus | undefined;
    const exited = new Promise<VmmExitStatus>((resolve) => {
      child.once('exit', (code, signal) => {
        status = { code, signal };
        resolve(status);
      });
    });
    // Still ref'd: kilnd waits on this process while it boots. Whoever takes it over (the
    // instance, until detach()) decides when to let go.
    return { child, pid: child.pid!, exited, status: () => status };
  } finally {
    await Promise.allSettled([stdin.close(), stdout.close(), stderr.close()]);
  }
}

/** The last `bytes` of a file as text ('' when it does not exist). */
export async function tailFile(file: string, bytes = 4096): Promise<string> {
  let h: fs.FileHandle | undefined;
  try {
    h = await fs.open(file, 'r');
    const { size } = await h.stat();
    const len = Math.min(size, bytes);
    const buf = Buffer.alloc(len);
    await h.read(buf, 0, len, size - len);
    return buf.toString('utf8');
  } catch {
    return '';
  } finally {
    await h?.close();
  }
}

/** Up to `max` bytes of a file from `offset` on (the last `max` when there is more), as text. */
export async function readFrom(file: string, offset: number, max: number): Promise<string> {
  let h: fs.FileHandle | undefined;
  try {
    h = await fs.open(file, 'r');
    const { size } = await h.stat();
    const start = Math.max(Math.min(offset, size), size - max);
    const buf = Buffer.alloc(size - start);
    await h.read(buf, 0, buf.length, start);
    return buf.toString('utf8');
  } catch {
    return '';
  } finally {
    await h?.close();
  }
}

export async function readCmdline(pid: number): Promise<string[] | null> {
  try {
    const raw = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8');
    return raw.split('\0').filter((a, i, all) => a !== '' || i < all.length - 1);
  } catch {
    return null;
  }
}

export interface ProcStat {
  state: string;
  ppid: number;
  pgrp: number;
  /** Clock ticks since boot: with the pid, identifies one process across pid reuse. */
  startTime: number;
}

export async function readProcStat(pid: number): Promise<ProcStat | null> {
  let raw: string;
  try {
    raw = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // "pid (comm) state ppid pgrp ..." — comm may contain spaces and parentheses.
  const f = raw.slice(raw.lastIndexOf(')') + 2).split(' ');
  return { state: f[0] ?? '?', ppid: Number(f[1]), pgrp: Number(f[2]), startTime: Number(f[19]) };
}

/** True when the process is gone, a zombie, or a different process now holds the pid. */
export async function processGone(pid: number, startTime?: number): Promise<boolean> {
  const st = await readProcStat(pid);
  if (!st) return true;
  if (st.state === 'Z' || st.state === 'X') return true;
  return startTime !== undefined && st.startTime !== startTime;
}

export interface PidWatch {
  /** Resolves once the process is gone. */
  readonly gone: Promise<void>;
  /** Checks now (e.g. after a kill); resolves true when gone. */
  check(): Promise<boolean>;
  /** Stops watching; `gone` then never resolves. */
  stop(): void;
}

/**
 * Watches a process kilnd did not spawn (no pidfd in Node): a 1 s liveness check, plus an
 * idle connection to the VMM's API socket whose closing triggers an immediate check. Holds
 * the event loop until stop() or the process is gone.
 */
export function watchPid(pid: number, opts: { startTime?: number; intervalMs?: number; socketPath?: string } = {}): PidWatch {
  let stopped = false;
  let resolveGone!: () => void;
  const gone = new Promise<void>((r) => (resolveGone = r));
  let canary: net.Socket | undefined;
  const stop = () => {
    stopped = true;
    clearInterval(timer);
    canary?.destroy();
    canary = undefined;
  };
  const check = async (): Promise<boolean> => {
    if (stopped) return false;
    if (await processGone(pid, opts.startTime)) {
      if (!stopped) {
        stop();
        resolveGone();
      }
      return true;
    }
    return false;
  };
  const timer = setInterval(() => {
    void check().then((isGone) => {
      if (!isGone && !canary) openCanary();
    });
  }, opts.intervalMs ?? 1000);
  // Ref'd: the watch holds the event loop until stop() (the instance's detach()) or death.
  const openCanary = () => {
    if (!opts.socketPath || stopped) return;
    const s = net.createConnection(opts.socketPath);
    s.unref();
    s.on('error', () => {});
    s.on('close', () => {
      if (canary === s) canary = undefined;
      void check();
    });
    canary = s;
  };
  openCanary();
  void check();
  return { gone, check, stop };
}

/**
 * Waits for `socketPath` to exist as a socket that accepts connections: fs.watch on its
 * directory plus an immediate check, raced against the process exiting, the signal and a
 * deadline. The only retry is for the instant between bind() and listen() (ECONNREFUSED).
 */
export function waitForApiSocket(
  socketPath: string,
  o: { exited: Promise<unknown>; onExit: () => Promise<Error>; signal?: AbortSignal; timeoutMs: number },
): Promise<void> {
  const dir = path.dirname(socketPath);
  const base = path.basename(socketPath);
  return new Promise<void>((resolve, reject) => {
    let done = false;
    let probing = false;
    let retry: NodeJS.Timeout | undefined;
    const finish = (err?: Error) => {
      if (done) return;
      done = true;
      watcher?.close();
      clearTimeout(deadline);
      clearTimeout(retry);
      o.signal?.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve();
    };
    const probe = (delay: number) => {
      const s = net.createConnection(socketPath);
      s.once('connect', () => {
        s.destroy();
        finish();
      });
      s.once('error', (e: NodeJS.ErrnoException) => {
        s.destroy();
        if (done) return;
        if (e.code === 'ECONNREFUSED' || e.code === 'ENOENT') {
          retry = setTimeout(() => probe(Math.min(delay * 2, 50)), delay);
        } else finish(new KilnError('KILN_ERR_VMM_FAILED', `cannot connect to the API socket ${socketPath}: ${e.code ?? e.message}`));
      });
    };
    const check = () => {
      if (done || probing) return;
      fs.stat(socketPath).then(
        (st) => {
          if (st.isSocket() && !probing && !done) {
            probing = true;
            probe(1);
          }
        },
        () => {},
      );
    };
    const onAbort = () =>
      finish(new KilnError('KILN_ERR_VMM_FAILED', `aborted while waiting for the API socket ${socketPath}: ${String(o.signal?.reason ?? '')}`));
    let watcher: ReturnType<typeof watch> | undefined;
    try {
      watcher = watch(dir, (_evt, name) => {
        if (!name || name === base) check();
      });
      watcher.on('error', (e) => finish(new KilnError('KILN_ERR_VMM_FAILED', `watching ${dir} failed: ${e.message}`)));
    } catch (e) {
      finish(new KilnError('KILN_ERR_VMM_FAILED', `cannot watch ${dir}: ${(e as Error).message}`));
      return;
    }
    const deadline = setTimeout(
      () => finish(new KilnError('KILN_ERR_VMM_FAILED', `the VMM did not create its API socket ${socketPath} within ${o.timeoutMs} ms`)),
      o.timeoutMs,
    );
    if (o.signal?.aborted) onAbort();
    o.signal?.addEventListener('abort', onAbort, { once: true });
    o.exited.then(
      () => {
        if (!done) o.onExit().then(finish, finish);
      },
      () => {},
    );
    check();
  });
}

/** Unix socket paths are limited to 107 bytes (sun_path); fail early with the path named. */
export function assertSocketPathFits(p: string, what: string): void {
  if (Buffer.byteLength(p) > 107) {
    throw new KilnError('KILN_ERR_HOST_SETUP', `${what} path is ${Buffer.byteLength(p)} bytes, over the 107-byte Unix socket limit: ${p}`);
  }
}
