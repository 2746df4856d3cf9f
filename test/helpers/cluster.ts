// The end of every multi-process cluster test (PostgreSQL, nodes in their own network
// namespaces, an API role): the processes stopped in the order that leaves nothing behind,
// then the check that nothing did stay behind.
import assert from 'node:assert/strict';
import { listNetns } from '../../src/tools/ip.ts';
import { vmmPids, type TestDaemon } from './kilnd.ts';
import type { TestNetns } from './netns.ts';

/** The API first (it forwards to the nodes), then the nodes, their namespaces, and the store's pool. */
export async function stopCluster(c: { api?: TestDaemon | null; nodes: readonly TestDaemon[]; spaces: readonly TestNetns[]; store: { close(): Promise<void> } }): Promise<void> {
  await c.api?.dispose();
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
