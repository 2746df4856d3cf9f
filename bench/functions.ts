// bench/functions: for node and python, through kilnd's API as a client sees it:
//   cold invoke, pool miss (the call boots its VM)       — a daemon with KILN_FN_POOL_SIZE=0
//   cold invoke, pool hit (a pooled blank VM gets the code) — a daemon with KILN_FN_POOL_SIZE=1
//   cold invoke, restored clone of the runtime template (no pool) — KILN_FN_POOL_SIZE=0, restore on
//   warm invoke, and its host-side overhead (total minus the handler time the guest measured)
//   invocations/s with 4 warm instances (4 clients in closed loops)
//   npm run bench -- functions [--cold-runs 5] [--warm-runs 200] [--throughput-s 10] [--skip-cold | --restore-only]
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import type { KilnClient } from '../src/sdk/client.ts';
import { startKilnd, type TestDaemon } from '../test/helpers/kilnd.ts';
import { median, quantile, table } from './stats.ts';
import { until } from '../test/helpers/until.ts';

const { values } = parseArgs({
  options: {
    'cold-runs': { type: 'string', default: '5' },
    'warm-runs': { type: 'string', default: '200' },
    'throughput-s': { type: 'string', default: '10' },
    'skip-cold': { type: 'boolean', default: false },
    'restore-only': { type: 'boolean', default: false },
  },
  allowPositionals: true,
});
const COLD_RUNS = Number(values['cold-runs']);
const WARM_RUNS = Number(values['warm-runs']);
const THROUGHPUT_S = Number(values['throughput-s']);
const SKIP_COLD = values['skip-cold'] === true;
/** Only the restored-clone cold rows (the quickest way to measure the restore path). */
const RESTORE_ONLY = values['restore-only'] === true;
const MEMORY_MB = 256;

const CODE = {
  node: (tag: string) => `async function handler(event) { return { hello: "world", tag: "${tag}" }; }`,
  python: (tag: string) => `def handler(event, context):\n    return {"hello": "world", "tag": "${tag}"}\n`,
} as const;
type Runtime = keyof typeof CODE;

interface Sample {
  totalMs: number;
  guestMs: number;
  kilndMs: number;
  cold: boolean;
  source: string | null;
}

async function call(c: KilnClient, name: string): Promise<Sample> {
  const t0 = performance.now();
  const r = await c.invoke(name, { n: 1 });
  const totalMs = performance.now() - t0;
  return { totalMs, guestMs: r.guestMs ?? NaN, kilndMs: r.durationMs, cold: r.cold, source: r.source };
}

/** No instance of the function left (after a PUT, the idle old-version instance is stopped). */
const drained = (c: KilnClient, name: string) => async () => (await c.getFunction(name)).instances.length === 0;

async function coldRuns(d: TestDaemon, runtime: Runtime, pooled: boolean): Promise<Sample[]> {
  const c = d.client;
  const name = `cold-${runtime}-${pooled ? 'hit' : 'miss'}`;
  const out: Sample[] = [];
  for (let i = 0; i < COLD_RUNS; i++) {
    // A new version per run: its first call needs a new instance (the old one is drained).
    i === 0
      ? await c.createFunction({ name, runtime, code: CODE[runtime](`r${i}`), memory_mb: MEMORY_MB, max_instances: 1, idle_timeout: 600 })
      : await c.updateFunction(name, { code: CODE[runtime](`r${i}`) });
    await until('old instances to stop', drained(c, name), 300_000, 100);
    if (pooled) {
      await until('the pool to fill', async () => (await c.listFunctions()).pool.some((p) => p.runtime === runtime && p.memory_mib === MEMORY_MB && p.ready >= 1 && p.filling === 0), 300_000, 100);
    }
    // Quiet host: no refill or drain running while we measure.
    const s = await call(c, name);
    if (!s.cold) throw new Error(`run ${i} was not cold`);
    if (pooled !== (s.source === 'pool')) throw new Error(`run ${i}: expected a pool ${pooled ? 'hit' : 'miss'}, got ${s.source}`);
    out.push(s);
    process.stderr.write(`  ${name} run ${i + 1}/${COLD_RUNS}: ${s.totalMs.toFixed(0)} ms (${s.source})\n`);
  }
  await c.deleteFunction(name);
  return out;
}

/**
 * Cold calls served by restored clones: the first call boots and kilnd builds the runtime's
 * template beside it; once that is ready, each new version's first call gets a clone.
 */
async function restoreRuns(d: TestDaemon, runtime: Runtime): Promise<Sample[]> {
  const c = d.client;
  const name = `cold-${runtime}-restore`;
  await c.createFunction({ name, runtime, code: CODE[runtime]('boot'), memory_mb: MEMORY_MB, max_instances: 1, idle_timeout: 600 });
  await call(c, name);
  await until(`the ${runtime} template`, async () => (await c.listTemplates()).some((t) => t.state === 'ready'), 300_000, 100);
  const out: Sample[] = [];
  for (let i = 0; i < COLD_RUNS; i++) {
    await c.updateFunction(name, { code: CODE[runtime](`r${i}`) });
    await until('old instances to stop', drained(c, name), 300_000, 100);
    const s = await call(c, name);
    if (!s.cold || s.source !== 'restore') throw new Error(`run ${i}: expected a cold restore, got ${s.cold ? 'cold' : 'warm'} ${s.source}`);
    out.push(s);
    process.stderr.write(`  ${name} run ${i + 1}/${COLD_RUNS}: ${s.totalMs.toFixed(0)} ms (restore)\n`);
  }
  await c.deleteFunction(name);
  // The next runtime builds its own template; this one is no longer needed.
  for (const t of await c.listTemplates()) await c.deleteTemplate(t.id).catch(() => {});
  return out;
}

/** No pool refill booting: a boot takes a whole host core under TCG and would skew warm figures. */
const poolQuiet = (c: KilnClient) => async () => (await c.listFunctions()).pool.every((p) => p.filling === 0);

/**
 * The same warm call straight to the instance's shim over the bridge (no kilnd): what the
 * emulated guest's network stack and shim cost by themselves.
 */
async function directRuns(c: KilnClient, name: string, n: number): Promise<number[]> {
  const inst = (await c.getFunction(name)).instances[0]!;
  const vm = await c.getVm(inst.vm!);
  const pool = new Pool(`http://${vm.ip}:7070`, { connections: 1 });
  const out: number[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      const res = await pool.request({ method: 'POST', path: '/invoke', body: JSON.stringify({ id: `d${i}`, event: { n: 1 }, deadline_ms: Date.now() + 10_000 }), headers: { 'content-type': 'application/json' } });
      await res.body.text();
      out.push(performance.now() - t0);
    }
  } finally {
    await pool.close();
  }
  return out;
}

async function warmRuns(d: TestDaemon, runtime: Runtime): Promise<{ samples: Sample[]; direct: number[] }> {
  const c = d.client;
  const name = `warm-${runtime}`;
  await c.createFunction({ name, runtime, code: CODE[runtime]('w'), memory_mb: MEMORY_MB, max_instances: 1 });
  for (let i = 0; i < 20; i++) await call(c, name); // cold start + JIT/caches warm
  await until('the pool refill to finish', poolQuiet(c), 300_000, 100);
  const out: Sample[] = [];
  const direct: number[] = [];
  // Interleaved in blocks, so both see the same host conditions.
  for (let i = 0; i < WARM_RUNS; i += 20) {
    for (let j = 0; j < 20; j++) out.push(await call(c, name));
    direct.push(...(await directRuns(c, name, 20)));
  }
  await c.deleteFunction(name);
  return { samples: out, direct };
}

async function throughput(d: TestDaemon, runtime: Runtime): Promise<number> {
  const c = d.client;
  const name = `tput-${runtime}`;
  await c.createFunction({ name, runtime, code: CODE[runtime]('t'), memory_mb: MEMORY_MB, min_instances: 4, max_instances: 4, concurrency: 1 });
  await until('4 warm instances', async () => (await c.getFunction(name)).instances.filter((i) => i.state === 'ready').length === 4, 300_000, 100);
  await until('the pool refill to finish', poolQuiet(c), 300_000, 100);
  for (let i = 0; i < 20; i++) await Promise.all([0, 1, 2, 3].map(() => call(c, name)));
  let n = 0;
  const end = performance.now() + THROUGHPUT_S * 1000;
  const t0 = performance.now();
  await Promise.all([0, 1, 2, 3].map(async () => {
    while (performance.now() < end) {
      await c.invoke(name, { n });
      n++;
    }
  }));
  const rate = n / ((performance.now() - t0) / 1000);
  await c.deleteFunction(name);
  return rate;
}

const fmt = (xs: number[]) => [median(xs), quantile(xs, 0.99)] as const;

const rows: (string | number)[][] = [];
const checks: string[] = [];
// Boot-only daemons for the pool rows (KILN_FN_RESTORE=0), and one whose instances are
// restored from the runtime's template (its pool off, so every cold call makes one).
const missD = RESTORE_ONLY ? null : await startKilnd({ env: { KILN_FN_POOL_SIZE: '0', KILN_FN_RESTORE: '0' } });
const hitD = RESTORE_ONLY ? null : await startKilnd({ env: { KILN_FN_POOL_SIZE: '1', KILN_FN_RESTORE: '0' } });
const restoreD = SKIP_COLD ? null : await startKilnd({ env: { KILN_FN_POOL_SIZE: '0' } });
try {
  for (const runtime of ['node', 'python'] as const) {
    process.stderr.write(`${runtime}: runtime image (built on first use) …\n`);
    const restored = restoreD ? await restoreRuns(restoreD, runtime) : [];
    if (!missD || !hitD) {
      rows.push([`${runtime} cold, no pool, restored clone of the template`, String(restored.length), ...fmt(restored.map((s) => s.totalMs)).map((x) => x.toFixed(2))]);
      continue;
    }
    const miss = SKIP_COLD ? [] : await coldRuns(missD, runtime, false);
    const hit = SKIP_COLD ? [] : await coldRuns(hitD, runtime, true);
    const { samples: warm, direct } = await warmRuns(hitD, runtime);
    const rate = await throughput(hitD, runtime);
    const overhead = warm.map((s) => s.totalMs - s.guestMs);
    const kilndOverhead = warm.map((s) => s.kilndMs - s.guestMs);
    const [missMed, missP99] = fmt(miss.map((s) => s.totalMs));
    const [hitMed, hitP99] = fmt(hit.map((s) => s.totalMs));
    const ms = (xs: readonly number[]) => xs.map((x) => x.toFixed(2));
    if (!SKIP_COLD) {
      rows.push([`${runtime} cold, pool miss (boot)`, String(miss.length), ...ms([missMed, missP99])]);
      rows.push([`${runtime} cold, pool hit`, String(hit.length), ...ms([hitMed, hitP99])]);
      rows.push([`${runtime} cold, no pool, restored clone of the template`, String(restored.length), ...ms(fmt(restored.map((s) => s.totalMs)))]);
    }
    rows.push([`${runtime} warm`, String(warm.length), ...ms(fmt(warm.map((s) => s.totalMs)))]);
    rows.push([`${runtime} warm: guest handler time`, String(warm.length), ...ms(fmt(warm.map((s) => s.guestMs)))]);
    rows.push([`${runtime} warm: host overhead (total − guest)`, String(warm.length), ...ms(fmt(overhead))]);
    rows.push([`${runtime} warm: kilnd invoke path − guest`, String(warm.length), ...ms(fmt(kilndOverhead))]);
    rows.push([`${runtime} warm, direct to the shim (no kilnd)`, String(direct.length), ...ms(fmt(direct))]);
    rows.push([`${runtime} warm: kiln's share (median total − median direct)`, '-', (median(warm.map((s) => s.totalMs)) - median(direct)).toFixed(2), '']);
    rows.push([`${runtime} invocations/s, 4 warm instances`, '-', rate.toFixed(1), '']);
    if (!SKIP_COLD) checks.push(`${runtime}: pool-hit cold ${hitMed.toFixed(0)} ms vs 0.1 × pool-miss ${(0.1 * missMed).toFixed(0)} ms → ${hitMed <= 0.1 * missMed ? 'MET' : 'NOT MET'}`);
    checks.push(`${runtime}: warm host overhead median ${median(overhead).toFixed(2)} ms vs 5 ms → ${median(overhead) <= 5 ? 'MET' : 'NOT MET'}`);
  }
} finally {
  await missD?.dispose();
  await hitD?.dispose();
  await restoreD?.dispose();
}

console.log(`\nbench/functions — ${MEMORY_MB} MiB instances, 1 vCPU; cold runs ${COLD_RUNS}, warm runs ${WARM_RUNS}, throughput ${THROUGHPUT_S} s; times in ms as the API client sees them\n`);
console.log(table(['measure', 'n', 'median', 'p99'], rows));
console.log('\ntargets:');
for (const c of checks) console.log(`  ${c}`);
