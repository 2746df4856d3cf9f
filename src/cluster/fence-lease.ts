// kilnd's side of the fence watchdog (fence-watchdog.ts): the lease it renews at every heartbeat
// the store accepted (a file in the state dir whose mtime is that heartbeat's time), and the
// start of the watchdog process, replacing one a previous kilnd left (one per state dir).
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import { openSync, closeSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { killAndWait, signalAndWait } from '../vm/vmm-sweep.ts';
import { LEASE_FILE, LOG_FILE, PID_FILE, type WatchdogConfig } from './fence-watchdog.ts';

const WATCHDOG_BIN = fileURLToPath(new URL('../../bin/kiln-fence-watchdog.js', import.meta.url));
/** A watchdog loads its TypeScript (tsx) before it writes its pid file: seconds on a busy host. */
const START_DEADLINE_MS = 30_000;

export class FenceLease {
  readonly file: string;

  constructor(private readonly stateDir: string) {
    this.file = path.join(stateDir, LEASE_FILE);
  }

  /** Stamps the lease with `at` (the accepted heartbeat's time, as the store recorded it). */
  async renew(at: number): Promise<void> {
    const s = at / 1000;
    try {
      await fs.utimes(this.file, s, s);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      await fs.writeFile(this.file, '');
      await fs.utimes(this.file, s, s);
    }
  }

  /**
   * Starts this node's watchdog (detached: it outlives kilnd), after stopping the one a previous
   * kilnd started, if it still runs. Resolves once the new one has written its pid file.
   */
  async startWatchdog(c: Omit<WatchdogConfig, 'stateDir' | 'ownerPid'>, log: Logger): Promise<number> {
    const pidFile = path.join(this.stateDir, PID_FILE);
    const old = Number((await fs.readFile(pidFile, 'utf8').catch(() => '')).trim());
    if (old > 0 && (await isWatchdogOf(old, this.stateDir))) {
      log.info({ pid: old }, 'replacing the fence watchdog a previous kilnd started');
      await stop(old);
    }
    const cfg: WatchdogConfig = { ...c, stateDir: this.stateDir, ownerPid: process.pid };
    const out = openSync(path.join(this.stateDir, LOG_FILE), 'a');
    let child;
    try {
      child = spawn(process.execPath, [WATCHDOG_BIN, JSON.stringify(cfg)], { detached: true, stdio: ['ignore', out, out], cwd: '/' });
    } finally {
      closeSync(out);
    }
    child.unref();
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const deadline = Date.now() + START_DEADLINE_MS;
    for (;;) {
      if ((await fs.readFile(pidFile, 'utf8').catch(() => '')).trim() === String(child.pid)) return child.pid!;
      if (child.exitCode !== null || Date.now() > deadline) {
        if (child.exitCode === null) child.kill('SIGKILL');
        throw new Error(`the fence watchdog did not start (exit ${await Promise.race([exited, Promise.resolve(child.exitCode)])}); see ${path.join(this.stateDir, LOG_FILE)}`);
      }
      await new Promise((r) => setTimeout(r, 25));
    }
  }
}

/** Whether `pid` is a fence watchdog of this state dir (not a process that reused the pid). */
async function isWatchdogOf(pid: number, stateDir: string): Promise<boolean> {
  const cmd = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  return cmd.includes('kiln-fence-watchdog') && cmd.includes(JSON.stringify(stateDir).slice(1, -1));
}

/** SIGTERM (it exits at once), then SIGKILL after a second; bounded either way. */
async function stop(pid: number): Promise<void> {
  const gone = await signalAndWait(pid, 'SIGTERM', 1000).catch(() => true);
  if (!gone) await killAndWait(pid, 2000);
}
