// Starts a real kilnd (the CLI's `serve`, as a child process) on a fresh state dir and a free
// loopback port. The guest kernel/initramfs cache is shared between test daemons.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readApiToken } from '../../src/sdk/api-token.ts';
import { KilnApiError, KilnClient } from '../../src/sdk/client.ts';
import { deleteLink, deleteNetns, linkExists, listNetns } from '../../src/tools/ip.ts';
import { cloneNetnsName } from '../../src/net/clone-netns.ts';
import { tapName } from '../../src/net/network-manager.ts';
import { nftDeleteTable } from '../../src/tools/nft.ts';
import { tablesFor } from '../../src/net/ruleset.ts';
import { TEST_ASSETS_DIR } from './assets.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** Start to "kilnd ready", first start (asset builds) included. */
const READY_DEADLINE_MS = 600_000;
export { TEST_ASSETS_DIR };

export interface TestDaemon {
  url: string;
  client: KilnClient;
  stateDir: string;
  /** The API token kilnd wrote into its state dir (what the CLI and SDK read there). */
  token: string;
  /** Headers for a hand-made request (fetch) to this kilnd. */
  authHeaders: Record<string, string>;
  /** This daemon's own bridge and subnet: test daemons never share kiln's default network. */
  network: TestNetwork;
  proc: ChildProcess;
  output: () => string;
  /** SIGTERM and wait (VMs keep running). */
  stop(): Promise<void>;
  /** SIGKILL and wait (VMs keep running). */
  kill(): Promise<void>;
  /** Deletes every VM, stops kilnd, removes its bridge, nftables table and state dir. */
  dispose(): Promise<void>;
}

export interface TestNetwork {
  bridge: string;
  cidr: string;
}

export function testNetwork(): TestNetwork {
  return { bridge: `kt${randomBytes(3).toString('hex')}`, cidr: `10.${randomInt(200, 250)}.${randomInt(0, 256)}.0/24` };
}

/** Removes what a test daemon added to the host (its VMs must be gone). */
export async function removeTestNetwork(n: TestNetwork): Promise<void> {
  if (await linkExists(n.bridge)) await deleteLink(n.bridge);
  for (const [family, table] of tablesFor(n.bridge)) await nftDeleteTable(family, table);
}

/** `backend`: default KILN_BACKEND (so the whole suite runs against one backend), else auto. */
export async function startKilnd(
  opts: {
    stateDir?: string; network?: TestNetwork; env?: Record<string, string>; backend?: string; serveArgs?: string[];
    /** Run kilnd inside this network namespace (`ip netns exec`; test/helpers/netns.ts). */
    netns?: string;
    /** Listen address (default 127.0.0.1:0): inside a namespace, its own address. */
    listen?: string;
  } = {},
): Promise<TestDaemon> {
  const stateDir = opts.stateDir ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-test-')));
  const network = opts.network ?? testNetwork();
  const backend = opts.backend ?? process.env.KILN_BACKEND ?? 'auto';
  const serve = [path.join(ROOT, 'bin/kiln.js'), 'serve', '--state-dir', stateDir, '--listen', opts.listen ?? '127.0.0.1:0', '--backend', backend, ...(opts.serveArgs ?? [])];
  // `ip netns exec` execs the command in place: the child's pid is kilnd's, SIGKILL reaches it.
  const [cmd, argv] = opts.netns ? ['ip', ['netns', 'exec', opts.netns, process.execPath, ...serve]] : [process.execPath, serve];
  const proc = spawn(cmd, argv, {
    env: {
      ...process.env,
      KILN_ASSETS_DIR: TEST_ASSETS_DIR,
      KILN_LOG_LEVEL: process.env.KILN_LOG_LEVEL ?? 'warn',
      KILN_STOP_GRACE_MS: '3000',
      KILN_BRIDGE: network.bridge,
      KILN_CIDR: network.cidr,
      ...opts.env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout!.on('data', (b) => (out += b));
  const url = await new Promise<string>((resolve, reject) => {
    // A first start builds the guest assets (kernel download, kiln-init, default image): minutes,
    // not forever. A kilnd that never says ready is killed and the test fails with its output.
    const deadline = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`kilnd was not ready within ${READY_DEADLINE_MS} ms:\n${out}`));
    }, READY_DEADLINE_MS);
    proc.stderr!.on('data', (b: Buffer) => {
      out += b;
      const m = /kilnd ready on (http:\/\/\S+)/.exec(out);
      if (m) {
        clearTimeout(deadline);
        resolve(m[1]!);
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(deadline);
      reject(new Error(`kilnd exited (${code}) before it was ready:\n${out}`));
    });
  });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const token = readApiToken(stateDir) ?? '';
  if (!token && !serve.includes('--no-auth')) throw new Error(`kilnd is ready but wrote no token into ${stateDir}:\n${out}`);
  const client = new KilnClient({ url, token });
  const stop = async () => {
    if (proc.exitCode === null) proc.kill('SIGTERM');
    await exited;
  };
  return {
    url,
    client,
    stateDir,
    token,
    authHeaders: token ? { authorization: `Bearer ${token}` } : {},
    network,
    proc,
    output: () => out,
    stop,
    async kill() {
      if (proc.exitCode === null) proc.kill('SIGKILL');
      await exited;
    },
    async dispose() {
      if (proc.exitCode === null) {
        for (const vm of await client.listVms().catch(() => [])) await client.deleteVm(vm.id).catch(() => {});
      }
      await stop();
      // A cluster node's fence watchdog outlives kilnd by design; the test's is stopped here.
      await killFenceWatchdog(stateDir);
      for (const pid of await qemuPids(stateDir)) process.kill(pid, 'SIGKILL');
      // VMs the API does not list or could not delete (a clone pool's, which a kilnd leaves for
      // its next start to sweep; those of a kilnd the test killed): their clone namespaces and
      // taps (persistent taps outlive their VMM and, once the bridge is gone, their master).
      const namespaces = new Set(await listNetns().catch(() => []));
      for (const id of await fs.readdir(path.join(stateDir, 'vms')).catch(() => [])) {
        if (namespaces.has(cloneNetnsName(id))) await deleteNetns(cloneNetnsName(id)).catch(() => {});
        if (await linkExists(tapName(id)).catch(() => false)) await deleteLink(tapName(id)).catch(() => {});
      }
      await removeTestNetwork(network);
      await fs.rm(stateDir, { recursive: true, force: true });
    },
  };
}

/** Waits (event-driven, via the SDK's SSE stream) until `pred` holds for the VM's state. */
export async function waitForState(client: KilnClient, id: string, states: string[], timeoutMs = 180_000) {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), timeoutMs);
  try {
    // Subscribed (not just a lazy generator) before the first read: a transition between the
    // two would otherwise be missed and the wait would run into its timeout.
    const events = await client.subscribe({ vm: id, signal: ac.signal });
    const first = await client.getVm(id);
    if (states.includes(first.state)) return first;
    for await (const e of events) {
      if (e.type === 'vm.state' && states.includes(String(e.to))) return client.getVm(id);
    }
    throw new Error(`VM ${id} did not reach ${states.join('|')} within ${timeoutMs} ms (now ${(await client.getVm(id)).state})`);
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
}

/**
 * Waits until the VM's console output matches `re`: follows the log stream and checks the
 * whole log too, so output written before the call (or by a VM that already stopped) counts.
 * Returns the whole console log at the moment of the match, each line once.
 */
export async function waitForLog(client: KilnClient, id: string, re: RegExp, timeoutMs = 60_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let whole = '';
  while (Date.now() < deadline) {
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), Math.max(1, deadline - Date.now()));
    try {
      const it = client.followLogs(id, ac.signal)[Symbol.asyncIterator]();
      const first = it.next();
      first.catch(() => {});
      whole = await client.logs(id).catch(() => whole);
      if (re.test(whole)) return whole;
      // The stream and the snapshot overlap: match on the stream, answer with a fresh snapshot.
      let followed = '';
      for (let r = await first; !r.done; r = await it.next()) {
        followed += r.value;
        if (re.test(followed) || re.test(whole + followed)) return await client.logs(id).catch(() => whole + followed);
      }
    } catch (e) {
      // No console yet (the VM is still being created): retry below.
      if (!(e instanceof KilnApiError && e.code === 'KILN_ERR_INVALID_STATE') && !ac.signal.aborted) throw e;
    } finally {
      clearTimeout(timer);
      ac.abort();
    }
    whole = await client.logs(id).catch(() => whole);
    if (re.test(whole)) return whole;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`console of ${id} never matched ${re}; got:\n${whole.slice(-2000)}`);
}

/** The fence watchdog of a cluster node's state dir (src/cluster/fence-watchdog.ts), if one runs: its pid. */
export async function fenceWatchdogPid(stateDir: string): Promise<number | null> {
  const pid = Number((await fs.readFile(path.join(stateDir, 'fence-watchdog.pid'), 'utf8').catch(() => '')).trim());
  if (!(pid > 0)) return null;
  const cmd = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  return cmd.includes('kiln-fence-watchdog') && cmd.includes(stateDir) ? pid : null;
}

/** SIGKILLs the state dir's fence watchdog, if one runs, and waits (bounded) until it is gone. */
export async function killFenceWatchdog(stateDir: string): Promise<void> {
  const pid = await fenceWatchdogPid(stateDir);
  if (pid === null) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline && (await fs.readFile(`/proc/${pid}/stat`, 'utf8').then((s) => s.slice(s.lastIndexOf(')') + 2, s.lastIndexOf(')') + 3) !== 'Z', () => false))) {
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Live VMM processes (QEMU or Firecracker) whose command line names `stateDir`. */
export async function vmmPids(stateDir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const p of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    const cmd = await fs.readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '');
    const stat = await fs.readFile(`/proc/${p}/stat`, 'utf8').catch(() => '');
    const zombie = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'Z';
    const vmm = cmd.startsWith('qemu-system') || path.basename(cmd.split('\0')[0]!) === path.basename(process.env.KILN_FIRECRACKER_BIN ?? 'firecracker');
    if (!zombie && vmm && cmd.includes(stateDir)) pids.push(Number(p));
  }
  return pids;
}

/** Kept for tests written before Firecracker: same as vmmPids. */
export const qemuPids = vmmPids;
