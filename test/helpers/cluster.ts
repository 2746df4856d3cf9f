// The pieces every multi-process cluster test shares (PostgreSQL, nodes in their own network
// namespaces, an API role): their environment, a node's start, and the end: the processes
// stopped in the order that leaves nothing behind, then the check that nothing did.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { DEFAULT_DEBIAN_MIRROR } from '../../src/config.ts';
import { EventBus } from '../../src/events/event-bus.ts';
import { ImageService } from '../../src/image/image-service.ts';
import { RecipeBuilder, type DebianRecipe } from '../../src/image/recipes/debian-recipe.ts';
import { SqliteStore } from '../../src/store/sqlite-store.ts';
import { listNetns } from '../../src/tools/ip.ts';
import { TEST_ASSETS_DIR } from './assets.ts';
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

/**
 * Builds recipes' images into the shared assets cache from this (the root) namespace, where
 * Debian's archive is reachable: nodes in their own namespaces (no route out) then find them
 * built instead of running debootstrap. Keyed like kilnd's (the same mirror setting).
 */
export async function prebuildRecipes(recipes: readonly DebianRecipe[]): Promise<void> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-recipes-'));
  const store = new SqliteStore(path.join(dir, 'kiln.db'));
  try {
    const log = pino({ level: 'silent' });
    const images = new ImageService(store, new EventBus(store, log), {
      stateDir: dir,
      puller: async () => {
        throw new Error('recipes pull nothing');
      },
    });
    const builder = new RecipeBuilder({ images, assetsDir: TEST_ASSETS_DIR, mirror: process.env.KILN_DEBIAN_MIRROR ?? DEFAULT_DEBIAN_MIRROR, log });
    for (const r of recipes) await builder.ensure(r);
  } finally {
    await store.close();
    await fs.rm(dir, { recursive: true, force: true });
  }
}
