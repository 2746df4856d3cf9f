// bench/cluster: what a cluster adds to a create, measured on a real PostgreSQL 15 (started
// here in a temp dir) against SQLite.
//   npm run bench -- cluster [--runs 300]
// 1. Placement decision: read the ready nodes' capacity reports from the store and pick the
//    best of K=2 (src/cluster/placement.ts), with 3, 30 and 300 registered nodes.
// 2. Store cost of one create: the store calls kilnd's create path makes for a VM (insert,
//    address lease, state transitions, boot phases, events, reads), replayed on each store.
// Not measured (not built yet): API → node proxying and creates/s with 1 vs 3 nodes.
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { place } from '../src/cluster/placement.ts';
import { capacity, image, vm } from '../src/store/conformance.ts';
import { PgStore } from '../src/store/pg/pg-store.ts';
import { SqliteStore } from '../src/store/sqlite-store.ts';
import type { Store } from '../src/store/store.ts';
import { startPostgres } from '../test/helpers/postgres.ts';
import { median, quantile, table } from './stats.ts';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '300' } }, allowPositionals: true });
const RUNS = Number(values.runs);
const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;

/** The store calls of one VM create in kilnd (src/vm/vm-manager.ts), in order. */
async function createOps(s: Store, i: number): Promise<void> {
  const id = `vm-b${i}`;
  await s.getImage('default');
  await s.listVms(); // admission: committed capacity
  await s.insertVm({ ...vm(id), nodeId: 'node-a' });
  await s.assignIp(id, (taken) => {
    for (let h = 2; h < 65000; h++) {
      const a = `10.${100 + (h >> 16)}.${(h >> 8) & 255}.${h & 255}`;
      if (!taken.has(a)) return a;
    }
    return null;
  });
  await s.appendEvent({ ts: Date.now(), type: 'vm.created', vmId: id, data: {} });
  for (const [from, to] of [['creating', 'booting'], ['booting', 'ready']] as const) {
    await s.transitionVm(id, [from], { state: to });
    await s.appendEvent({ ts: Date.now(), type: 'vm.state', vmId: id, data: { from, to } });
  }
  for (const phase of ['vm.admit', 'net.tap', 'vmm.spawn', 'guest.kernel', 'guest.init', 'agent.ready']) {
    await s.recordPhase({ vmId: id, boot: 1, name: phase, startedAt: i, endedAt: i + 1 });
  }
  await s.updateVm(id, { pid: 1000 + i, agent: { channel: 'tcp', readiness: 'push', version: '1', latencyMs: 1, clockErrorMs: 0.1 } });
  await s.getVm(id);
}

async function storeCost(s: Store): Promise<number[]> {
  await s.insertImage(image);
  const out: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const t0 = process.hrtime.bigint();
    await createOps(s, i);
    out.push(ms(t0));
    // Keep the table at a steady size (a host's worth of VMs), as deletes would.
    if (i >= 50) await s.deleteVm(`vm-b${i - 50}`);
  }
  return out.slice(Math.min(20, RUNS >> 2)); // warm-up (prepared statements, caches) not counted
}

async function main(): Promise<void> {
  const pg = await startPostgres();
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-bench-'));
  try {
    const placementRows: (string | number)[][] = [];
    for (const n of [3, 30, 300]) {
      const store = await PgStore.open(await pg.createDatabase());
      for (let i = 0; i < n; i++) {
        await store.registerNode({ id: `node-${i}`, name: `n${i}`, url: `http://10.1.${i >> 8}.${i & 255}:18080`, capacity: capacity({ committedVcpus: i % 8, images: ['img-1'] }) }, Date.now());
      }
      const t: number[] = [];
      const pure: number[] = [];
      for (let i = 0; i < RUNS; i++) {
        const t0 = process.hrtime.bigint();
        const nodes = await store.listNodes();
        const t1 = process.hrtime.bigint();
        if (!place(nodes, { vcpus: 1, memoryMib: 256, imageId: 'img-1' }, { k: 2 })) throw new Error('no node chosen');
        pure.push(Number(process.hrtime.bigint() - t1) / 1e6);
        t.push(ms(t0));
      }
      placementRows.push([`${n} nodes`, median(t), quantile(t, 0.95), median(pure) * 1000]);
      await store.close();
    }
    const sqlite = new SqliteStore(path.join(dir, 'kiln.db'));
    const onSqlite = await storeCost(sqlite);
    await sqlite.close();
    const pgStore = await PgStore.open(await pg.createDatabase());
    const onPg = await storeCost(pgStore);
    await pgStore.close();

    console.log(`\nbench/cluster: ${RUNS} runs each; PostgreSQL 15 on a unix socket, same host (${os.cpus().length} CPUs, load ${os.loadavg()[0]!.toFixed(2)})\n`);
    console.log(table(['placement (listNodes + best of 2)', 'median ms', 'p95 ms', 'place() alone µs'], placementRows));
    console.log('');
    console.log(table(['store calls of one create', 'median ms', 'p95 ms'], [['SQLite', median(onSqlite), quantile(onSqlite, 0.95)], ['PostgreSQL', median(onPg), quantile(onPg, 0.95)]]));
    const extra = median(onPg) - median(onSqlite) + (placementRows[0]![1] as number);
    console.log(`\ncluster overhead per create (PostgreSQL store − SQLite store + placement over 3 nodes): ${extra.toFixed(2)} ms median (target ≤ 5 ms)`);
    console.log('not measured: API → node proxying, creates/s with 1 vs 3 nodes (the API role is not built yet)');
  } finally {
    await pg.dispose();
    await fs.rm(dir, { recursive: true, force: true });
  }
}

await main();
