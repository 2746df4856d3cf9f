// The pieces every multi-process cluster test shares (PostgreSQL, nodes in their own network
// namespaces, an API role): their environment, a node's start, and the end: the processes
// stopped in the order that leaves nothing behind, then the check that nothing did.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { listNetns } from '../../src/tools/ip.ts';
import { startKilnd, vmmPids, type TestDaemon } from './kilnd.ts';
import type { TestNetns } from './netns.ts';
import { FENCE_TIMING } from './postgres.ts';

/** The API first (it forwards to the nodes), then the nodes, their namespaces, and the store's pool. */
export async function stopCluster(c: { api?: TestDaemon | null; apis?: readonly (TestDaemon | null)[]; nodes: readonly TestDaemon[]; spaces: readonly TestNetns[]; store: { close(): Promise<void> } }): Promise<void> {
  for (const a of [c.api, ...(c.apis ?? [])]) await a?.dispose();
  for (const d of c.nodes) await d.dispose();
  for (const s of c.spaces) await s.dispose();
  await c.store.close();
}

/** No namespace the test made and no VMM of any node's state dir is left. */
export async function assertClusterGone(spaces: readonly TestNetns[], stateDirs: readonly string[]): Promise<void> {
  const left = await listNetns();
  assert.deepEqual(spaces.filter((s) => left.includes(s.name)).map((s) => s.name), [], 'namespaces removed');
  for (const dir of stateDirs) assert.deepEqual(await vmmPids(dir), [], `no VMM of ${dir}`);
}

/**
 * What every process of a test cluster shares: one API token, the fencing tests' heartbeat
 * timing (FENCE_TIMING), and function instances that boot on the call (no pool beside the test).
 */
export function clusterEnv(extra: Record<string, string> = {}): Record<string, string> {
  return {
    KILN_API_TOKEN: randomBytes(24).toString('hex'),
    KILN_NODE_HEARTBEAT_MS: String(FENCE_TIMING.heartbeatMs), KILN_NODE_LOST_AFTER_MS: String(FENCE_TIMING.lostAfterMs),
    KILN_FN_POOL_SIZE: '0', KILN_FN_RESTORE: '0',
    ...extra,
  };
}

/**
 * A node (`kiln serve --role node` on `storeUrl`) inside its own namespace, listening on the
 * namespace's address; `from` restarts a node on its state dir and network.
 */
export function startClusterNode(
  storeUrl: string, name: string, ns: TestNetns, env: Record<string, string>,
  o: { args?: string[]; from?: TestDaemon; backend?: string } = {},
): Promise<TestDaemon> {
  return startKilnd({
    serveArgs: ['--store', storeUrl, '--role', 'node', '--node-name', name, '--accel', process.env.KILN_ACCEL ?? 'tcg', ...(o.args ?? [])],
    env, netns: ns.name, listen: `${ns.nsIp}:0`,
    ...(o.backend ? { backend: o.backend } : {}),
    ...(o.from ? { stateDir: o.from.stateDir, network: o.from.network } : {}),
  });
}
