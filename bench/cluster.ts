// bench/cluster: what a cluster adds to a create, measured on a real PostgreSQL 15 (started
// here in a temp dir) against SQLite.
//   npm run bench -- cluster [--runs 300]
// 1. Placement decision: read the ready nodes' capacity reports from the store and pick the
//    best of K=2 (src/cluster/placement.ts), with 3, 30 and 300 registered nodes.
// 2. Store cost of one create: the store calls kilnd's create path makes for a VM (insert,
//    address lease, state transitions, boot phases, events, reads), replayed on each store.
// 3. With real kilnd processes (`--vms N`, default 6; 0 skips; boots VMs: run under
//    `flock /tmp/kiln-vm.lock`): the API role's overhead per create (POST answered through
//    the API, placement included, vs straight to a node, interleaved), and a burst of N
//    creates through the API with 1 node, then with 3 (answered/s and ready/s). All nodes
//    share this one machine's CPUs, so 3 nodes add no boot capacity here: the burst figures
//    show the control plane, not the scaling of a real cluster.
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { place } from '../src/cluster/placement.ts';
import { COMMITTING_STATES } from '../src/vm/admission.ts';
import { capacity, image, vm } from '../src/store/conformance.ts';
import { PgStore } from '../src/store/pg/pg-store.ts';
import { SqliteStore } from '../src/store/sqlite-store.ts';
import type { Store } from '../src/store/store.ts';
import { randomBytes } from 'node:crypto';
import type { KilnClient } from '../src/sdk/client.ts';
import { startKilnd, type TestDaemon } from '../test/helpers/kilnd.ts';
import { until } from '../test/helpers/until.ts';
import { startPostgres, type TestPostgres } from '../test/helpers/postgres.ts';
import { median, quantile, table } from './stats.ts';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '300' }, vms: { type: 'string', default: '6' } }, allowPositionals: true });
const RUNS = Number(values.runs);
const VMS = Number(values.vms);
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

/**
 * The store reads of an API role's create (VMs and nodes, together) after `idleMs` without a
 * query, `n` times: with pg's default pool (idle connections closed after 10 s: a reconnect
 * each time) and with kiln's (three connections kept).
 */
async function afterIdle(url: string, idleMs: number, n: number): Promise<{ pgDefault: number[]; kiln: number[] }> {
  const pgDefault = await PgStore.open(url, { minConnections: 0 });
  const kiln = await PgStore.open(url);
  const out = { pgDefault: [] as number[], kiln: [] as number[] };
  try {
    const reads = (s: Store) => Promise.all([s.listVms(), s.listNodes()]);
    await Promise.all([reads(pgDefault), reads(kiln)]);
    for (let i = 0; i < n; i++) {
      await new Promise((r) => setTimeout(r, idleMs));
      for (const [s, into] of [[pgDefault, out.pgDefault], [kiln, out.kiln]] as const) {
        const t0 = process.hrtime.bigint();
        await reads(s);
        into.push(ms(t0));
      }
    }
  } finally {
    await pgDefault.close();
    await kiln.close();
  }
  return out;
}

/**
 * The store reads of an API role's create with `n` VMs in the table: before (every VM row and
 * the nodes, summed here) and now (the image and the nodes with their committed sums, computed
 * by the database in one query).
 */
async function readsWith(url: string, n: number): Promise<{ allRows: number[]; aggregate: number[] }> {
  const s = await PgStore.open(url);
  try {
    await s.insertImage(image);
    for (let i = 0; i < 3; i++) await s.registerNode({ id: `node-${i}`, name: `n${i}`, url: `http://10.1.0.${i}:18080`, capacity: capacity() }, Date.now());
    for (let i = 0; i < n; i++) await s.insertVm({ ...vm(`vm-r${i}`, `r${i}`), nodeId: `node-${i % 3}`, state: i % 2 ? 'ready' : 'stopped' });
    const out = { allRows: [] as number[], aggregate: [] as number[] };
    for (let i = 0; i < 50; i++) {
      let t0 = process.hrtime.bigint();
      await Promise.all([s.getImage('default'), s.listVms(), s.listNodes()]);
      out.allRows.push(ms(t0));
      t0 = process.hrtime.bigint();
      await Promise.all([s.getImage('default'), s.listNodesWithCommitted(COMMITTING_STATES)]);
      out.aggregate.push(ms(t0));
    }
    return { allRows: out.allRows.slice(5), aggregate: out.aggregate.slice(5) };
  } finally {
    await s.close();
  }
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
    const pgUrl = await pg.createDatabase();
    const pgStore = await PgStore.open(pgUrl);
    const onPg = await storeCost(pgStore);
    await pgStore.close();
    const idle = await afterIdle(pgUrl, 11_000, 3);
    const rows: (string | number)[][] = [];
    for (const n of [12, 1000]) {
      const r = await readsWith(await pg.createDatabase(), n);
      rows.push([`${n} VMs: image + every VM row + nodes (before)`, median(r.allRows), quantile(r.allRows, 0.95)]);
      rows.push([`${n} VMs: image + nodes with SQL sums (now)`, median(r.aggregate), quantile(r.aggregate, 0.95)]);
    }

    console.log(`\nbench/cluster: ${RUNS} runs each; PostgreSQL 15 on a unix socket, same host (${os.cpus().length} CPUs, load ${os.loadavg()[0]!.toFixed(2)})\n`);
    console.log(table(['placement (listNodes + best of 2)', 'median ms', 'p95 ms', 'place() alone µs'], placementRows));
    console.log('');
    console.log(table(['store calls of one create', 'median ms', 'p95 ms'], [['SQLite', median(onSqlite), quantile(onSqlite, 0.95)], ['PostgreSQL', median(onPg), quantile(onPg, 0.95)]]));
    console.log('');
    console.log(table(['store reads of an API create after 11 s idle (3 runs)', 'median ms', 'max ms'], [
      ['pg default pool (idle connections closed after 10 s)', median(idle.pgDefault), Math.max(...idle.pgDefault)],
      ['kiln pool (3 connections kept)', median(idle.kiln), Math.max(...idle.kiln)],
    ]));
    console.log('');
    console.log(table(['store reads of an API create', 'median ms', 'p95 ms'], rows));
    const extra = median(onPg) - median(onSqlite) + (placementRows[0]![1] as number);
    console.log(`\ncluster overhead per create (PostgreSQL store − SQLite store + placement over 3 nodes): ${extra.toFixed(2)} ms median (target ≤ 5 ms)`);
    if (VMS > 0) await withProcesses(pg);
  } finally {
    await pg.dispose();
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/** The API role's Server-Timing of a create: before placing (`store`: reads only for a snapshot's, template's or volumes' rows), placement, the node's answer. */
type Timing = Partial<Record<'store' | 'place' | 'node' | 'app', number>>;

function serverTiming(h: string | null): Timing {
  const out: Timing = {};
  for (const part of (h ?? '').split(',')) {
    const m = /^\s*(store|place|node|app);dur=([\d.]+)/.exec(part);
    if (m) out[m[1] as keyof Timing] = Number(m[2]);
  }
  return out;
}

/** POST /v1/vms answered (not ready), ms; the VM id and the answer's placement header. */
async function timedCreate(c: KilnClient, name: string): Promise<{ ms: number; id: string; node: string | null; placeMs: number | null; timing: Timing }> {
  const t0 = process.hrtime.bigint();
  const res = await c.request('POST', '/v1/vms', { body: { name, memory_mib: 128 } });
  const took = ms(t0);
  if (res.status !== 201) throw new Error(`create ${name}: ${res.status} ${await res.text()}`);
  const vm = (await res.json()) as { id: string };
  const place = res.headers.get('x-kiln-placement-ms');
  return { ms: took, id: vm.id, node: res.headers.get('x-kiln-node'), placeMs: place === null ? null : Number(place), timing: serverTiming(res.headers.get('server-timing')) };
}

/** Polls until the VM is ready (no event stream in the way of the timed creates). */
const ready = async (c: KilnClient, id: string) => {
  let last = '';
  await until(`VM ${id} ready`, async () => {
    const vm = await c.getVm(id);
    last = `${vm.state}${vm.state_reason ? `: ${vm.state_reason}` : ''}`;
    if (vm.state === 'failed') throw new Error(`VM ${id} failed: ${vm.state_reason}`);
    return vm.state === 'ready' ? true : null;
  }, 600_000, 100).catch((e: Error) => {
    throw new Error(`${e.message} (last seen ${last})`);
  });
};

async function burst(c: KilnClient, tag: string): Promise<{ answeredPerS: number; readyPerS: number }> {
  const t0 = process.hrtime.bigint();
  const made = await Promise.all(Array.from({ length: VMS }, (_, i) => timedCreate(c, `${tag}-${i}`)));
  const answered = ms(t0);
  await Promise.all(made.map((m) => ready(c, m.id)));
  const allReady = ms(t0);
  for (const m of made) await c.deleteVm(m.id);
  return { answeredPerS: (VMS * 1000) / answered, readyPerS: (VMS * 1000) / allReady };
}

async function withProcesses(pg: TestPostgres): Promise<void> {
  const url = await pg.createDatabase();
  const token = randomBytes(24).toString('hex');
  const env = { KILN_API_TOKEN: token, KILN_LOG_LEVEL: 'warn' };
  const node = (name: string) => startKilnd({ serveArgs: ['--store', url, '--role', 'node', '--node-name', name, '--accel', process.env.KILN_ACCEL ?? 'tcg'], env });
  const procs: TestDaemon[] = [];
  try {
    procs.push(await node('n1'));
    const api = await startKilnd({ serveArgs: ['--store', url, '--role', 'api'], env });
    procs.unshift(api);
    const direct = procs[1]!.client;
    // The hop alone: a create the node refuses at validation (no VM is made), through the API
    // (store reads, placement, forward, answer back) vs straight to the node, interleaved.
    const hop: Record<'api' | 'node', number[]> = { api: [], node: [] };
    for (let i = 0; i < 50; i++) {
      for (const [tag, c] of [['api', api.client], ['node', direct]] as const) {
        const t0 = process.hrtime.bigint();
        const status = await c.request('POST', '/v1/vms', { body: { name: `hop-${i}`, not_a_field: 1 } }).then(
          (r) => r.status,
          (e: { status?: number }) => e.status ?? 0,
        );
        hop[tag].push(ms(t0));
        if (status !== 400) throw new Error(`expected the node's 400, got ${status}`);
      }
    }
    const one = await burst(api.client, 'one');
    procs.push(await node('n2'), await node('n3'));
    const three = await burst(api.client, 'three');
    const viaApi: number[] = [];
    const straight: number[] = [];
    const placement: number[] = [];
    const phases: Record<keyof Timing, number[]> = { store: [], place: [], node: [], app: [] };
    // The node's own handling (its Server-Timing `app`) taken out of both creates of a pair: what
    // is left of the straight one is the client ↔ node path, of the other the path through the API.
    const appStraight: number[] = [];
    const appVia: number[] = [];
    const netOverhead: number[] = [];
    // Per create through the API: its answer time less the node's part of that same request
    // (Server-Timing `node`): the API's own share, free of the spread between two creates.
    const ownShare: number[] = [];
    // Each pair: a create through the API, then one straight to the node the API placed it on
    // (the same kilnd process, as warm: nodes started later have run less code, and a
    // comparison against one node only would count that as the API's).
    const byName = new Map([['n1', procs[1]!.client], ['n2', procs[2]!.client], ['n3', procs[3]!.client]]);
    for (let i = 0; i < VMS; i++) {
      let target: KilnClient = direct;
      for (const tag of ['api', 'node'] as const) {
        const c = tag === 'api' ? api.client : target;
        const m = await timedCreate(c, `${tag}-${i}`);
        (tag === 'api' ? viaApi : straight).push(m.ms);
        if (tag === 'api' && m.timing.node !== undefined) ownShare.push(m.ms - m.timing.node);
        if (m.timing.app !== undefined) (tag === 'api' ? appVia : appStraight).push(m.ms - m.timing.app);
        if (tag === 'api') target = byName.get(m.node ?? '') ?? direct;
        if (m.placeMs !== null) placement.push(m.placeMs);
        for (const k of ['store', 'place', 'node', 'app'] as const) if (m.timing[k] !== undefined) phases[k].push(m.timing[k]!);
        await ready(c, m.id);
        await c.deleteVm(m.id);
      }
      if (appVia.length === i + 1 && appStraight.length === i + 1) netOverhead.push(appVia[i]! - appStraight[i]!);
    }
    console.log(`\nwith real kilnd processes (3 nodes + API on this machine, ${VMS} creates each, 128 MiB guests, load ${os.loadavg()[0]!.toFixed(2)})\n`);
    console.log(table(['POST /v1/vms answered', 'median ms', 'p95 ms'], [
      ['straight to a node', median(straight), quantile(straight, 0.95)],
      ['through the API role', median(viaApi), quantile(viaApi, 0.95)],
      ['  API: before placing (body, image id cached, node view in memory)', median(phases.store), quantile(phases.store, 0.95)],
      ['  API: place()', median(phases.place), quantile(phases.place, 0.95)],
      ['  API: node answered (forward → headers)', median(phases.node), quantile(phases.node, 0.95)],
      ['node handler time (its Server-Timing app), both kinds', median(phases.app), quantile(phases.app, 0.95)],
      ['straight: answer − node handler (client ↔ node)', median(appStraight), quantile(appStraight, 0.95)],
      ['through the API: answer − node handler', median(appVia), quantile(appVia, 0.95)],
    ]));
    const paired = viaApi.map((v, i) => v - straight[i]!);
    console.log(`\nAPI → node overhead per create: ${(median(viaApi) - median(straight)).toFixed(2)} ms (difference of the medians; target ≤ 5 ms)`);
    console.log(`  paired (each create through the API − the straight one after it): ${median(paired).toFixed(2)} ms median`);
    console.log(`  with the node's handling taken out of both (paired, Server-Timing app): ${median(netOverhead).toFixed(2)} ms median, p95 ${quantile(netOverhead, 0.95).toFixed(2)} ms`);
    console.log(`  the API's own share of a create through it (answer − the node's part of the same request): ${median(ownShare).toFixed(2)} ms median, p95 ${quantile(ownShare, 0.95).toFixed(2)} ms`);
    console.log(`the hop alone (a create refused by the node at validation, 50 each): ${median(hop.api).toFixed(2)} ms through the API vs ${median(hop.node).toFixed(2)} ms straight: +${(median(hop.api) - median(hop.node)).toFixed(2)} ms\n`);
    console.log(table([`burst of ${VMS} creates through the API`, 'answered/s', 'ready/s'], [['1 node', one.answeredPerS, one.readyPerS], ['3 nodes', three.answeredPerS, three.readyPerS]]));
  } finally {
    for (const p of procs) await p.dispose();
  }
}

await main();
