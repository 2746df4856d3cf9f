// The fence watchdog: a small process per cluster node that outlives its kilnd. kilnd fences
// itself when it cannot heartbeat (node-member.ts), but a kilnd that died (SIGKILL, a crash, an
// OOM kill) cannot: its VMMs would run on while the others mark its VMs lost and start its
// restart-policy containers elsewhere. So kilnd starts this process (detached, its own session;
// fence-lease.ts) and renews a lease, a file whose mtime is the time of its last heartbeat the
// store accepted. When the lease is older than the fence deadline, the watchdog does what
// kilnd's own fence does: it kills every VMM under the node's state dir (found as the start-up
// sweep finds them: src/vm/vmm-sweep.ts), removes their taps (and clone namespaces) and kiln's
// nftables table for the node's bridge. With kilnd dead it then exits (a restarted kilnd starts
// a new one); with kilnd alive (hung, or fenced itself and waiting to rejoin) it keeps watching.
//
// While kilnd is alive the watchdog waits one heartbeat longer (still before the others'
// deadline): kilnd's own fence goes first and records what it killed; the watchdog is the
// backstop for a kilnd whose event loop is stuck, and then kills VMMs only: the network is
// kilnd's (its own fence takes it down, its rejoin renders it again), and a watchdog deleting
// the nftables table just as kilnd rejoined would leave running VMs without their rules.
//
// Exactly one per state dir: the watchdog writes its pid file at start and exits when the file
// names another process (a newer kilnd replaced it), or when the state dir or the lease is gone
// (the node was removed). Run: `node bin/kiln-fence-watchdog.js '<json WatchdogConfig>'` (fence-lease.ts does).
import { appendFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { cloneNetnsName, removeCloneNetwork } from '../net/clone-netns.ts';
import { tapName } from '../net/network-manager.ts';
import { tablesFor } from '../net/ruleset.ts';
import * as ip from '../tools/ip.ts';
import { nftDeleteTable } from '../tools/nft.ts';
import { killAndWait, processesUnder } from '../vm/vmm-sweep.ts';

export interface WatchdogConfig {
  stateDir: string;
  /** The node's VM bridge: its taps and the nftables table named after it. */
  bridge: string;
  /** kilnd's pid: while it is the watchdog's parent, kilnd is alive. */
  ownerPid: number;
  /** Fence when the lease is older than this (node-member.ts fenceAfterMs: the same figure). */
  fenceAfterMs: number;
  /** Extra wait while kilnd is alive, so that its own fence goes first. */
  aliveGraceMs: number;
  /** How often the lease is checked. */
  pollMs: number;
}

export const LEASE_FILE = 'fence-lease';
export const PID_FILE = 'fence-watchdog.pid';
export const LOG_FILE = 'fence-watchdog.log';

/** What the watchdog sees at one check. */
export interface Observation {
  now: number;
  /** The lease's mtime (epoch ms), or null when the file is gone. */
  leaseAt: number | null;
  stateDirExists: boolean;
  /** Whether the pid file still names this process. */
  current: boolean;
  ownerAlive: boolean;
  /** Whether this watchdog has fenced since the lease was last fresh. */
  fenced: boolean;
}

export type Step = 'watch' | 'fence' | 'exit';

/** The decision of one check (pure: the unit under test). */
export function decide(o: Observation, c: Pick<WatchdogConfig, 'fenceAfterMs' | 'aliveGraceMs'>): Step {
  // Replaced by a newer watchdog, or the node removed: not this process's business any more.
  if (!o.current || !o.stateDirExists || o.leaseAt === null) return 'exit';
  const deadline = c.fenceAfterMs + (o.ownerAlive ? c.aliveGraceMs : 0);
  if (o.now - o.leaseAt <= deadline) return 'watch';
  // Fenced, and nobody left to renew the lease: done. A restarted kilnd starts a new watchdog.
  if (o.fenced && !o.ownerAlive) return 'exit';
  // Stale: kill (again, while kilnd lives: a boot in flight may have spawned another VMM).
  return 'fence';
}

/** What the watchdog does to the host; fakes in the unit test, fenceHost() for real. */
export interface WatchdogHost {
  observe(fenced: boolean): Promise<Observation>;
  /** Kills the node's VMMs and (`network`) takes its VM network down; the VM ids whose VMM it killed. */
  fence(reason: string, network: boolean): Promise<string[]>;
  sleep(ms: number): Promise<void>;
  log(msg: string, fields?: Record<string, unknown>): void;
}

/** The watchdog's loop: returns when it decides to exit. */
export async function watch(c: WatchdogConfig, host: WatchdogHost): Promise<void> {
  let fenced = false;
  for (;;) {
    const o = await host.observe(fenced);
    const step = decide(o, c);
    if (step === 'exit') {
      host.log('fence watchdog exiting', { fenced, current: o.current, stateDirExists: o.stateDirExists, lease: o.leaseAt !== null, ownerAlive: o.ownerAlive });
      return;
    }
    if (step === 'watch') {
      fenced = false;
    } else {
      const silentMs = o.leaseAt === null ? null : Math.round(o.now - o.leaseAt);
      // The decision's time, before the kills (which take a while): when this node stopped running VMs.
      if (!fenced) host.log('fencing: the lease is past the deadline; killing this node\'s VMMs', { silentMs, ownerAlive: o.ownerAlive, fenceAfterMs: c.fenceAfterMs });
      const killed = await host.fence(`no accepted heartbeat for ${silentMs} ms (fence after ${c.fenceAfterMs} ms, kilnd ${o.ownerAlive ? 'alive' : 'gone'})`, !o.ownerAlive);
      if (!fenced || killed.length) host.log('fenced: killed this node\'s VMMs and took its VM network down', { killed, silentMs, ownerAlive: o.ownerAlive, fenceAfterMs: c.fenceAfterMs });
      fenced = true;
    }
    await host.sleep(c.pollMs);
  }
}

/** This process's parent pid now (process.ppid is read once at start; a reparented process must ask again). */
async function parentPid(): Promise<number> {
  const stat = await fs.readFile('/proc/self/stat', 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
}

/** The real host: the state dir's files, /proc, ip and nft. */
export function realHost(c: WatchdogConfig): WatchdogHost {
  const logFile = path.join(c.stateDir, LOG_FILE);
  return {
    async observe(fenced) {
      const [lease, dir, pid, ppid] = await Promise.all([
        fs.stat(path.join(c.stateDir, LEASE_FILE)).catch(() => null),
        fs.stat(c.stateDir).catch(() => null),
        fs.readFile(path.join(c.stateDir, PID_FILE), 'utf8').catch(() => ''),
        parentPid(),
      ]);
      return { now: Date.now(), leaseAt: lease ? lease.mtimeMs : null, stateDirExists: dir !== null, current: pid.trim() === String(process.pid), ownerAlive: ppid === c.ownerPid, fenced };
    },
    fence: (reason, network) => fenceHost(c, reason, network, (msg, fields) => appendLog(logFile, msg, fields)),
    sleep: (ms) => new Promise((r) => setTimeout(r, ms)),
    log: (msg, fields) => appendLog(logFile, msg, fields),
  };
}

function appendLog(file: string, msg: string, fields: Record<string, unknown> = {}): void {
  // One JSON line per event, like kilnd's own log; appended (kilnd's restarts keep the history),
  // synchronously (the last line before exit is written).
  try {
    appendFileSync(file, `${JSON.stringify({ time: Date.now(), pid: process.pid, msg, ...fields })}\n`);
  } catch {
    // The state dir is gone: the watchdog is about to exit anyway.
  }
}

/**
 * What kilnd's fence does, without kilnd: every VMM under the state dir killed; with `network`,
 * their taps (or clone namespaces) and any other kiln tap on the bridge removed, and kiln's
 * nftables tables for the bridge deleted (their DNAT rules name the dead VMs' addresses).
 */
export async function fenceHost(c: Pick<WatchdogConfig, 'stateDir' | 'bridge'>, reason: string, network: boolean, log: (msg: string, fields?: Record<string, unknown>) => void): Promise<string[]> {
  const found = await processesUnder(path.join(c.stateDir, 'vms'), path.join(c.stateDir, 'jailer'));
  const killed: string[] = [];
  for (const p of found) {
    if (!(await killAndWait(p.pid).catch(() => false))) log('a VMM did not die within 5 s of SIGKILL', { vm: p.vmId, pid: p.pid, reason });
    if (!killed.includes(p.vmId)) killed.push(p.vmId);
  }
  if (!network) return killed;
  for (const id of killed) await removeCloneNetwork(cloneNetnsName(id), tapName(id)).catch((e) => log('removing the VM network failed', { vm: id, err: String(e) }));
  for (const link of await ip.listLinks({ master: c.bridge }).catch(() => [])) {
    if (link.ifname.startsWith('kiln')) await ip.deleteLink(link.ifname).catch((e) => log('removing a tap failed', { tap: link.ifname, err: String(e) }));
  }
  for (const [family, table] of tablesFor(c.bridge)) {
    await nftDeleteTable(family, table).catch((e) => log('removing the nftables table failed', { table, err: String(e) }));
  }
  return killed;
}

/** The process: writes its pid file, watches, exits. */
export async function main(argv: string[]): Promise<void> {
  const c = JSON.parse(argv[0] ?? '') as WatchdogConfig;
  const pidFile = path.join(c.stateDir, PID_FILE);
  // Atomically: a reader sees the old pid or this one, never half a number.
  await fs.writeFile(`${pidFile}.${process.pid}`, `${process.pid}\n`);
  await fs.rename(`${pidFile}.${process.pid}`, pidFile);
  // Replaced (kilnd's SIGTERM): go quietly; the new watchdog watches the same lease.
  process.on('SIGTERM', () => process.exit(0));
  const host = realHost(c);
  host.log('fence watchdog started', { ownerPid: c.ownerPid, fenceAfterMs: c.fenceAfterMs, aliveGraceMs: c.aliveGraceMs });
  await watch(c, host);
  // Our own pid file only: a newer watchdog's stays.
  if ((await fs.readFile(pidFile, 'utf8').catch(() => '')).trim() === String(process.pid)) await fs.rm(pidFile, { force: true });
}
