import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import { FenceLease } from './fence-lease.ts';
import { decide, watch, LOG_FILE, PID_FILE, type Observation, type WatchdogConfig, type WatchdogHost } from './fence-watchdog.ts';

const C = { fenceAfterMs: 11_000, aliveGraceMs: 2_000 };
const obs = (over: Partial<Observation>): Observation => ({
  now: 100_000, leaseAt: 100_000, stateDirExists: true, current: true, ownerAlive: true, fenced: false, ...over,
});

test('decide: fence past the deadline (later while kilnd lives), exit when replaced, removed, or fenced with kilnd gone', () => {
  assert.equal(decide(obs({ leaseAt: 100_000 - 11_000, ownerAlive: false }), C), 'watch', 'at the deadline, not past it');
  assert.equal(decide(obs({ leaseAt: 100_000 - 11_001, ownerAlive: false }), C), 'fence', 'kilnd gone: at the fence deadline');
  assert.equal(decide(obs({ leaseAt: 100_000 - 11_001, ownerAlive: true }), C), 'watch', 'kilnd alive: its own fence goes first');
  assert.equal(decide(obs({ leaseAt: 100_000 - 13_001, ownerAlive: true }), C), 'fence', 'kilnd alive but silent past the grace: the backstop');
  assert.equal(decide(obs({ leaseAt: 100_000 - 13_001, ownerAlive: true, fenced: true }), C), 'fence', 'kilnd alive: keeps killing what a boot spawns');
  assert.equal(decide(obs({ leaseAt: 100_000 - 11_001, ownerAlive: false, fenced: true }), C), 'exit', 'fenced with nobody to renew the lease: done');
  assert.equal(decide(obs({ leaseAt: 100_000 - 1_000, fenced: true }), C), 'watch', 'a fresh lease re-arms it');
  assert.equal(decide(obs({ current: false, leaseAt: 0 }), C), 'exit', 'replaced by a newer watchdog: never fences');
  assert.equal(decide(obs({ stateDirExists: false, leaseAt: 0 }), C), 'exit', 'state dir removed');
  assert.equal(decide(obs({ leaseAt: null, ownerAlive: false }), C), 'exit', 'lease removed');
});

/** A host whose observations are scripted, one per check; records fences and sleeps. */
function fakeHost(script: Omit<Observation, 'fenced'>[], kills: string[][]): WatchdogHost & { fences: string[]; seen: Observation[] } {
  const h = {
    fences: [] as string[],
    seen: [] as Observation[],
    async observe(fenced: boolean) {
      const next = script.shift();
      if (!next) throw new Error('the watchdog kept going past the script');
      const o = { ...next, fenced };
      h.seen.push(o);
      return o;
    },
    async fence(reason: string, network: boolean) {
      h.fences.push(`${network ? 'network' : 'vmms'}: ${reason}`);
      return kills.shift() ?? [];
    },
    async sleep() {},
    log() {},
  };
  return h;
}

test('watch: kilnd dies → one fence at the deadline, then exit', async () => {
  const base = { now: 0, leaseAt: 0, stateDirExists: true, current: true, ownerAlive: true };
  const host = fakeHost([
    { ...base, now: 5_000 },
    { ...base, now: 10_000, ownerAlive: false },
    { ...base, now: 11_500, ownerAlive: false },
    { ...base, now: 11_750, ownerAlive: false },
  ], [['vm-a', 'vm-b']]);
  await watch({ ...C, pollMs: 250 } as WatchdogConfig, host);
  assert.equal(host.fences.length, 1);
  assert.match(host.fences[0]!, /^network: no accepted heartbeat for 11500 ms .*kilnd gone/, 'kilnd gone: its network taken down too');
  assert.deepEqual(host.seen.map((o) => o.fenced), [false, false, false, true]);
});

test('watch: kilnd alive but silent → fences past the grace, again while stale, re-arms when the lease is fresh, exits when replaced', async () => {
  const base = { now: 0, leaseAt: 0, stateDirExists: true, current: true, ownerAlive: true };
  const host = fakeHost([
    { ...base, now: 12_000 },
    { ...base, now: 13_500 },
    { ...base, now: 13_750 },
    { ...base, now: 14_000, leaseAt: 13_900 },
    { ...base, now: 30_000, leaseAt: 13_900 },
    { ...base, now: 30_250, leaseAt: 13_900, current: false },
  ], [['vm-a'], [], ['vm-c']]);
  await watch({ ...C, pollMs: 250 } as WatchdogConfig, host);
  assert.equal(host.fences.length, 3, 'past the grace, once more while stale, and again after the fresh lease went stale');
  assert.ok(host.fences.every((f) => f.startsWith('vmms: ')), 'kilnd alive: VMMs only, its network is its own');
  assert.deepEqual(host.seen.map((o) => o.fenced), [false, false, true, true, false, true]);
});

test('the watchdog process: started by FenceLease, one per state dir, kills a VMM-like process under the state dir when the lease goes stale', async () => {
  const stateDir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-fence-'));
  const log = pino({ level: 'silent' });
  const vmDir = path.join(stateDir, 'vms', 'vm-0123456789');
  await fs.mkdir(vmDir, { recursive: true });
  // A stand-in VMM: its command line names its VM's runtime dir, as QEMU's does (vmm-sweep.ts).
  const vmm = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)', path.join(vmDir, 'qmp.sock')], { stdio: 'ignore' });
  const vmmGone = new Promise<void>((r) => vmm.once('exit', () => r()));
  const pids: number[] = [];
  let renewing: NodeJS.Timeout | null = null;
  try {
    const lease = new FenceLease(stateDir);
    await lease.renew(Date.now());
    // Renewed every 200 ms (as heartbeats would) until the test stops renewing it.
    renewing = setInterval(() => void lease.renew(Date.now()), 200);
    // A bridge name no host has: its taps and table are simply absent.
    const cfg = { bridge: `kfence${process.pid % 100000}`, fenceAfterMs: 1_500, aliveGraceMs: 500, pollMs: 100 };
    pids.push(await lease.startWatchdog(cfg, log));
    const second = await lease.startWatchdog(cfg, log);
    pids.push(second);
    assert.notEqual(second, pids[0]);
    await assertGone(pids[0]!, 'the first watchdog was replaced');
    assert.equal((await fs.readFile(path.join(stateDir, PID_FILE), 'utf8')).trim(), String(second));
    // Renewed: nothing happens.
    await new Promise((r) => setTimeout(r, 2_500));
    assert.equal(vmm.exitCode ?? vmm.signalCode, null, 'a renewed lease fences nothing');
    clearInterval(renewing);
    renewing = null;
    await lease.renew(Date.now());
    const staleFrom = Date.now();
    // This test process is the watchdog's owner (alive): fence after the deadline plus the grace.
    await Promise.race([vmmGone, new Promise((_, rej) => setTimeout(() => rej(new Error('the stand-in VMM was not killed within 5 s')), 5_000))]);
    const tookMs = Date.now() - staleFrom;
    assert.ok(tookMs >= 2_000 - 250, `not before the deadline and grace (${tookMs} ms)`);
    assert.equal(vmm.signalCode, 'SIGKILL');
    // Logged once its network cleanup (ip, nft) is done too.
    let logged = '';
    for (const deadline = Date.now() + 10_000; Date.now() < deadline && !logged.includes('"killed":["vm-0123456789"]');) {
      await new Promise((r) => setTimeout(r, 50));
      logged = await fs.readFile(path.join(stateDir, LOG_FILE), 'utf8');
    }
    assert.match(logged, /"killed":\["vm-0123456789"\]/);
    assert.match(logged, /"ownerAlive":true/, "fenced as the backstop of a live kilnd");
    // The node removed: the watchdog goes.
    await fs.rm(stateDir, { recursive: true, force: true });
    await assertGone(second, 'the watchdog exits once its state dir is gone');
  } finally {
    if (renewing) clearInterval(renewing);
    vmm.kill('SIGKILL');
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    await fs.rm(stateDir, { recursive: true, force: true });
  }
});

async function assertGone(pid: number, what: string): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (Date.now() < deadline) {
    const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null);
    if (stat === null || stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'Z') return;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.fail(`${what}: pid ${pid} still runs after 5 s`);
}
