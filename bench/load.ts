// bench/load: N creates at once through kilnd's API (`?wait=1`), for template clones and cold
// boots, at each concurrency in --n. Per row: creates/s (ready VMs over the wall time), time to
// ready at p50/p95/p99, how many were refused by admission control (KILN_ERR_CAPACITY: the
// expected answer past the host's capacity) or failed otherwise, and kilnd's own peak RSS and
// CPU time over the row. After each row every VM is deleted and the host is checked for
// leftovers (VMM processes, taps). CubeSandbox's published table (96-core bare metal, KVM) is
// compared as a shape, not in absolute terms: each concurrency's mean over the same system's
// concurrency-1 mean, since kiln's absolute figures here are TCG's. N=1 is repeated 5 times.
//   npm run bench -- load [--n 1,10,50] [--kinds clone,boot] [--memory 128]
import fs from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { KilnApiError, type CreateVmBody } from '../src/sdk/client.ts';
import { listLinks } from '../src/tools/ip.ts';
import { startKilnd, vmmPids } from '../test/helpers/kilnd.ts';
import { quantile, table } from './stats.ts';

const { values } = parseArgs({
  options: { n: { type: 'string', default: '1,10,50' }, kinds: { type: 'string', default: 'clone,boot' }, memory: { type: 'string', default: '128' } },
  allowPositionals: true,
});
const LEVELS = values.n.split(',').map(Number);
const KINDS = values.kinds.split(',') as ('clone' | 'boot')[];
const MEMORY = Number(values.memory);
const WAIT = { wait: true, timeoutMs: 300_000 };
const CLK_TCK = 100;
const SINGLE_REPEATS = 5;

/** CubeSandbox's published create latencies: concurrency → mean and p95 (ms). */
const CUBE: Record<number, { avg: number; p95: number }> = { 1: { avg: 48, p95: 57 }, 20: { avg: 98, p95: 176 }, 50: { avg: 276, p95: 508 } };

interface Row {
  kind: string;
  n: number;
  ready: number[];
  refused: number;
  failed: string[];
  wallMs: number;
  rssMib: number;
  cpuMs: number;
}

async function procStat(pid: number): Promise<{ cpuMs: number; rssMib: number }> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8');
  const rssKib = Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0);
  return { cpuMs: ((Number(f[11]) + Number(f[12])) * 1000) / CLK_TCK, rssMib: rssKib / 1024 };
}

const d = await startKilnd({ backend: process.env.KILN_BACKEND ?? 'qemu' });
const kilnd = d.proc.pid!;

async function run(kind: string, n: number, body: CreateVmBody): Promise<Row> {
  let peak = 0;
  const sampler = setInterval(() => void procStat(kilnd).then((s) => (peak = Math.max(peak, s.rssMib)), () => {}), 100);
  const before = await procStat(kilnd);
  const row: Row = { kind, n, ready: [], refused: 0, failed: [], wallMs: 0, rssMib: 0, cpuMs: 0 };
  const ids: string[] = [];
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: n }, async () => {
      const t = performance.now();
      try {
        const vm = await d.client.createVm({ ...body, memory_mib: MEMORY }, WAIT);
        ids.push(vm.id);
        if (vm.state === 'ready') row.ready.push(performance.now() - t);
        else row.failed.push(`${vm.id} ${vm.state}: ${vm.state_reason}`);
      } catch (e) {
        if (e instanceof KilnApiError && e.code === 'KILN_ERR_CAPACITY') row.refused++;
        else row.failed.push(String(e));
      }
    }),
  );
  row.wallMs = performance.now() - t0;
  clearInterval(sampler);
  const after = await procStat(kilnd);
  row.cpuMs = after.cpuMs - before.cpuMs;
  row.rssMib = Math.max(peak, after.rssMib);
  for (const vm of await d.client.listVms()) await d.client.deleteVm(vm.id);
  // Nothing of this row may outlive it: no VMM, no tap on the bridge.
  const vmms = (await vmmPids(d.stateDir)).length;
  const taps = (await listLinks({ master: d.network.bridge })).length;
  if (vmms || taps) throw new Error(`after ${kind} × ${n}: ${vmms} VMM processes and ${taps} taps left behind`);
  return row;
}

try {
  const health = await d.client.health();
  console.error(`load bench: ${health.backend}/${health.accelerator}, capacity ${health.capacity.vcpus.capacity} vCPUs / ${health.capacity.memory_mib.capacity} MiB, ${MEMORY} MiB guests`);
  const rows: Row[] = [];
  let template: string | undefined;
  for (const kind of KINDS) {
    if (kind === 'clone' && !template) {
      const t = await d.client.createTemplate('default', { memoryMib: MEMORY });
      template = t.id;
    }
    const body: CreateVmBody = kind === 'clone' ? { template } : { image: 'default' };
    for (const n of LEVELS) {
      // A single create is one sample: repeat it so the N=1 baseline has a median worth the name.
      const r = await run(kind, n, body);
      for (let i = 1; n === 1 && i < SINGLE_REPEATS; i++) {
        const again = await run(kind, n, body);
        r.ready.push(...again.ready);
        r.refused += again.refused;
        r.failed.push(...again.failed);
        r.wallMs += again.wallMs;
        r.cpuMs += again.cpuMs;
        r.rssMib = Math.max(r.rssMib, again.rssMib);
      }
      rows.push(r);
      console.error(`  ${kind} × ${n}: ${r.ready.length} ready, ${r.refused} refused, ${r.failed.length} failed in ${r.wallMs.toFixed(0)} ms`);
    }
  }
  const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);
  console.log(`\ncreate → ready under concurrency (ms; ${health.backend}/${health.accelerator}, ${MEMORY} MiB guests)`);
  console.log(table(
    ['kind', 'N', 'ready', 'refused', 'failed', 'creates/s', 'mean', 'p50', 'p95', 'p99', 'kilnd RSS MiB', 'kilnd CPU ms'],
    rows.map((r) => [r.kind, String(r.n), String(r.ready.length), String(r.refused), String(r.failed.length), (r.ready.length * 1000) / r.wallMs, mean(r.ready), quantile(r.ready, 0.5), quantile(r.ready, 0.95), quantile(r.ready, 0.99), r.rssMib, r.cpuMs]),
  ));
  console.log('\nshape against CubeSandbox (mean at N over mean at N=1 of the same system; CubeSandbox: KVM, 96 cores)');
  const cubeRows = Object.entries(CUBE).map(([n, c]) => ['CubeSandbox', n, c.avg, c.p95, c.avg / CUBE[1]!.avg]);
  const kilnRows = rows.map((r) => {
    const base = rows.find((x) => x.kind === r.kind && x.n === Math.min(...LEVELS));
    return [`kiln ${r.kind}`, String(r.n), mean(r.ready), quantile(r.ready, 0.95), mean(r.ready) / mean(base!.ready)];
  });
  console.log(table(['system', 'N', 'mean', 'p95', '× own N=1 mean'], [...cubeRows, ...kilnRows]));
  for (const r of rows) for (const f of r.failed) console.log(`FAILED ${r.kind} × ${r.n}: ${f}`);
  if (rows.some((r) => r.failed.length)) process.exitCode = 1;
  if (template) await d.client.deleteTemplate(template);
} finally {
  await d.dispose();
}
