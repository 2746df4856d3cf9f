// bench/restore: the same image, create → ready through kilnd's API (`?wait=1`), three ways:
// a cold boot, a restore of a migrate-file snapshot (all guest RAM in the QMP migration
// stream), and a clone of a template (device state only; RAM mapped private from the
// template's memory file, paged in lazily). Median and p95 over --runs, then the host memory
// of 10 concurrent clones per restore mechanism: the sum of each VMM's PSS
// (/proc/<pid>/smaps_rollup), which splits pages shared between clones among them. Then the
// clone pool (KILN_CLONE_POOL_SIZE, src/snapshot/clone-pool.ts): a single create taken from a
// full pool, median and p95 with its phases, and concurrent creates (10, 50) with and without
// the pool: all ready, per-create p50/p99, refused, and where the time goes per phase.
//   npm run bench -- restore [--runs 20] [--pool 10]
import fs from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import type { CreateVmBody, Vm } from '../src/sdk/client.ts';
import { startKilnd } from '../test/helpers/kilnd.ts';
import { poolFull } from './pool.ts';
import { median, quantile, table } from './stats.ts';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '20' }, clones: { type: 'string', default: '10' }, pool: { type: 'string', default: '10' } }, allowPositionals: true });
const RUNS = Number(values.runs);
const CLONES = Number(values.clones);
const POOL = Number(values.pool);
const BURSTS = [10, 50];
const WAIT = { wait: true, timeoutMs: 300_000 };

let d = await startKilnd({ backend: process.env.KILN_BACKEND ?? 'qemu' });

/** Per mechanism: each timeline phase's durations over the measured runs (ms). */
const phases = new Map<string, Map<string, number[]>>();

async function timed(body: CreateVmBody, record?: Map<string, number[]>): Promise<number> {
  const t0 = performance.now();
  const vm = await d.client.createVm(body, WAIT);
  const ms = performance.now() - t0;
  if (vm.state !== 'ready') throw new Error(`VM ${vm.id} is ${vm.state}`);
  if (record) for (const p of (await d.client.getVm(vm.id)).timeline) if (p.duration_ms !== null) (record.get(p.phase) ?? record.set(p.phase, []).get(p.phase)!).push(p.duration_ms);
  await d.client.deleteVm(vm.id);
  return ms;
}

async function series(body: CreateVmBody, name: string): Promise<number[]> {
  await timed(body); // warm-up: page cache, first-use checksum verification
  const record = new Map<string, number[]>();
  phases.set(name, record);
  const out: number[] = [];
  for (let i = 0; i < RUNS; i++) out.push(await timed(body, record));
  return out;
}

interface Burst {
  n: number;
  wallMs: number;
  perVm: number[];
  refused: number;
  failed: number;
  /** Why, per failure (a VM not ready, or the create's error). */
  reasons: string[];
  phases: Map<string, number[]>;
}

/** `n` creates at once; each timed to ready; 429s counted as refused. Deletes what it made. */
async function burst(body: CreateVmBody, n: number): Promise<Burst> {
  const t0 = performance.now();
  const out: Burst = { n, wallMs: 0, perVm: [], refused: 0, failed: 0, reasons: [], phases: new Map() };
  const made: Vm[] = [];
  await Promise.all(Array.from({ length: n }, async () => {
    const t = performance.now();
    try {
      const vm = await d.client.createVm(body, WAIT);
      made.push(vm);
      if (vm.state !== 'ready') {
        out.reasons.push(`${vm.id} ${vm.state}: ${vm.state_reason}`);
        return void out.failed++;
      }
      out.perVm.push(performance.now() - t);
    } catch (e) {
      if ((e as { code?: string }).code === 'KILN_ERR_CAPACITY') out.refused++;
      else {
        out.failed++;
        out.reasons.push(String(e));
      }
    }
  }));
  out.wallMs = performance.now() - t0;
  for (const vm of made) {
    for (const p of (await d.client.getVm(vm.id)).timeline) if (p.duration_ms !== null) (out.phases.get(p.phase) ?? out.phases.set(p.phase, []).get(p.phase)!).push(p.duration_ms);
  }
  for (const vm of made) await d.client.deleteVm(vm.id).catch(() => {});
  return out;
}


async function pssKib(pid: number): Promise<{ pss: number; rss: number }> {
  const text = await fs.readFile(`/proc/${pid}/smaps_rollup`, 'utf8');
  const kib = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0);
  return { pss: kib('Pss'), rss: kib('Rss') };
}

/** N clones at once, all ready; then the VMMs' memory, summed. */
async function cloneMemory(body: CreateVmBody): Promise<{ pssMib: number; rssMib: number; wallMs: number }> {
  const t0 = performance.now();
  const vms: Vm[] = await Promise.all(Array.from({ length: CLONES }, () => d.client.createVm(body, WAIT)));
  const wallMs = performance.now() - t0;
  try {
    // Let the guests settle (agent latency measurement, first workload steps) before sampling.
    await new Promise((r) => setTimeout(r, 2000));
    let pss = 0;
    let rss = 0;
    for (const vm of vms) {
      const m = await pssKib((await d.client.getVm(vm.id)).pid!);
      pss += m.pss;
      rss += m.rss;
    }
    return { pssMib: pss / 1024, rssMib: rss / 1024, wallMs };
  } finally {
    await Promise.all(vms.map((vm) => d.client.deleteVm(vm.id)));
  }
}

try {
  const image = 'default';
  const health = await d.client.health();
  console.error(`restore bench: ${RUNS} runs each, ${CLONES} concurrent clones for memory (${health.backend}, ${health.accelerator})`);
  const cold = await series({ image }, 'cold boot');

  const origin = await d.client.createVm({ image, name: 'bench-origin' }, WAIT);
  let t0 = performance.now();
  const full = await d.client.createSnapshot(origin.id, { resume: false });
  const fullSnapMs = performance.now() - t0;
  await d.client.deleteVm(origin.id);
  const fileRestore = await series({ snapshot: full.id }, 'migrate-file');

  t0 = performance.now();
  const tpl = await d.client.createTemplate(image);
  const tplMs = performance.now() - t0;
  const tplSnap = await d.client.getSnapshot(tpl.snapshot!);
  const mapped = await series({ template: tpl.id }, 'mapped');

  const memFull = await cloneMemory({ snapshot: full.id });
  const memMapped = await cloneMemory({ template: tpl.id });

  const coldMed = median(cold);
  const row = (name: string, xs: number[]) => [name, median(xs), quantile(xs, 0.95), Math.min(...xs), median(xs) / coldMed];
  console.log(`\ncreate → ready through the API (ms), ${RUNS} runs each`);
  console.log(table(['mechanism', 'median', 'p95', 'min', '× cold'], [
    row('cold boot', cold),
    row('restore: migrate-file', fileRestore),
    row('restore: mapped-private memory (template)', mapped),
  ]));
  // The restores' timelines, phase by phase (the cold boot's are bench/provision's subject).
  const restorePhases = [...new Set([...phases.get('migrate-file')!.keys(), ...phases.get('mapped')!.keys()])];
  const cell = (mech: string, ph: string) => {
    const xs = phases.get(mech)!.get(ph);
    return xs?.length ? median(xs) : '-';
  };
  console.log(`\nrestore timeline phases, median ms (in order; rootfs.prepare and network.prepare run in parallel)`);
  console.log(table(['phase', 'migrate-file', 'mapped'], restorePhases.map((ph) => [ph, cell('migrate-file', ph), cell('mapped', ph)])));
  const stateSize = (s: typeof full) => s.files.find((f) => f.name === 'vmstate')!.size / 2 ** 20;
  console.log(`\nsnapshot: migrate-file ${fullSnapMs.toFixed(0)} ms, state ${stateSize(full).toFixed(1)} MiB; template build (cold boot + snapshot) ${tplMs.toFixed(0)} ms, state ${stateSize(tplSnap).toFixed(2)} MiB + memory file`);
  console.log(`\n${CLONES} concurrent clones, all ready: VMM memory (sum over the QEMU processes)`);
  console.log(table(['mechanism', 'PSS MiB', 'RSS MiB', 'PSS/clone', 'all ready ms'], [
    ['restore: migrate-file', memFull.pssMib, memFull.rssMib, memFull.pssMib / CLONES, memFull.wallMs],
    ['restore: mapped-private memory', memMapped.pssMib, memMapped.rssMib, memMapped.pssMib / CLONES, memMapped.wallMs],
  ]));
  console.log(`\ntarget: restore → ready ≤ 0.15 × cold boot (${(0.15 * coldMed).toFixed(0)} ms): mapped ${median(mapped) <= 0.15 * coldMed ? 'met' : 'NOT met'} (${(median(mapped) / coldMed).toFixed(2)}×)`);

  // Concurrent clones without a pool, then a kilnd with one.
  const bursts: [string, Burst][] = [];
  for (const n of BURSTS) bursts.push(['template clone', await burst({ template: tpl.id }, n)]);
  await d.client.deleteTemplate(tpl.id);
  await d.client.deleteSnapshot(full.id);
  await d.dispose();
  d = await startKilnd({ backend: process.env.KILN_BACKEND ?? 'qemu', env: { KILN_CLONE_POOL_SIZE: String(POOL) } });
  const ptpl = await d.client.createTemplate(image);
  const psnap = ptpl.snapshot!;
  const pooledRecord = new Map<string, number[]>();
  phases.set('pooled', pooledRecord);
  const pooled: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    await poolFull(d.client, psnap);
    pooled.push(await timed({ template: ptpl.id }, pooledRecord));
  }
  for (const n of BURSTS) {
    await poolFull(d.client, psnap);
    bursts.push([`pooled (${POOL} per snapshot)`, await burst({ template: ptpl.id }, n)]);
  }
  const pool = (await d.client.health()).pools.clones;

  console.log(`\nclone pool: a create taken from a full pool (${POOL} per snapshot), create → ready (ms), ${RUNS} runs`);
  console.log(table(['mechanism', 'median', 'p95', 'min', '× cold'], [row('template clone', mapped), row('template clone from the pool', pooled)]));
  console.log(`\npooled create timeline phases, median ms`);
  console.log(table(['phase', 'median', 'p95'], [...pooledRecord.entries()].map(([ph, xs]) => [ph, median(xs), quantile(xs, 0.95)])));
  console.log(`\nconcurrent creates (each to ready; refused: 429 KILN_ERR_CAPACITY)`);
  console.log(table(['mechanism', 'N', 'all ready ms', 'p50 ms', 'p99 ms', 'ready', 'refused', 'failed', 'creates/s'], bursts.map(([name, b]) => [
    name, String(b.n), b.wallMs, median(b.perVm), quantile(b.perVm, 0.99), String(b.perVm.length), String(b.refused), String(b.failed), (b.perVm.length / b.wallMs) * 1000,
  ])));
  const allPhases = [...new Set(bursts.flatMap(([, b]) => [...b.phases.keys()]))];
  console.log(`\nwhere the time goes under concurrency: phase p50 / p99 ms`);
  console.log(table(['phase', ...bursts.map(([name, b]) => `${name.split(' (')[0]} ×${b.n}`)], allPhases.map((ph) => [
    ph, ...bursts.map(([, b]) => {
      const xs = b.phases.get(ph);
      return xs?.length ? `${median(xs).toFixed(0)} / ${quantile(xs, 0.99).toFixed(0)}` : '-';
    }),
  ])));
  for (const [name, b] of bursts) for (const r of b.reasons) console.log(`FAILED ${name} ×${b.n}: ${r}`);
  console.log(`\npool counters: ${JSON.stringify({ hits: pool.hits, misses: pool.misses, refills: pool.refills, refill_failures: pool.refill_failures })}`);
  const ten = bursts.find(([name, b]) => name.startsWith('pooled') && b.n === 10)?.[1];
  console.log(`target: single pooled create ≤ 100 ms median: ${median(pooled) <= 100 ? 'met' : 'NOT met'} (${median(pooled).toFixed(0)} ms, ${(median(pooled) / coldMed).toFixed(3)}× cold; ≤ 0.03×: ${median(pooled) <= 0.03 * coldMed ? 'met' : 'NOT met'})`);
  if (ten) console.log(`target: 10 concurrent pooled creates all ready ≤ 1 s: ${ten.wallMs <= 1000 && ten.perVm.length === 10 ? 'met' : 'NOT met'} (${ten.wallMs.toFixed(0)} ms, ${ten.perVm.length} ready)`);
  await d.client.deleteTemplate(ptpl.id);
} finally {
  await d.dispose();
}
