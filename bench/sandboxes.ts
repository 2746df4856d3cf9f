// bench/sandboxes: E2B's sandbox start as the `e2b` SDK sees it, against kilnd's E2B server:
// Sandbox.create('base') → the first commands.run answered, median and p95 over --runs one at
// a time and over --runs in rounds of --concurrency at once; against the same template's cold
// boot through kiln's API (create with ?wait=1, then the first exec answered), one at a time
// and --concurrency at once. With --pool N, kilnd keeps N clones of each template ready
// (KILN_CLONE_POOL_SIZE, src/snapshot/clone-pool.ts) and every run or round starts from a full
// pool: the refill is background work, not the create's.
//   npm run bench -- sandboxes [--runs 20] [--concurrency 10] [--cold-runs 5] [--pool 0]
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { startKilnd } from '../test/helpers/kilnd.ts';
import { poolFull } from './pool.ts';
import { median, quantile, table } from './stats.ts';

const { values } = parseArgs({
  options: { runs: { type: 'string', default: '20' }, concurrency: { type: 'string', default: '10' }, 'cold-runs': { type: 'string', default: '5' }, pool: { type: 'string', default: '0' } },
  allowPositionals: true,
});
const RUNS = Number(values.runs);
const CONCURRENCY = Number(values.concurrency);
const COLD_RUNS = Number(values['cold-runs']);
const POOL = Number(values.pool);

const d = await startKilnd({ backend: process.env.KILN_BACKEND ?? 'qemu', serveArgs: ['--e2b-listen', '127.0.0.1:0'], env: { KILN_CLONE_POOL_SIZE: String(POOL) } });

try {
  const url = /kiln e2b server on (http:\/\/\S+)/.exec(d.output())![1]!;
  process.env.E2B_API_URL = url;
  process.env.E2B_SANDBOX_URL = url;
  process.env.E2B_API_KEY = (await fs.readFile(path.join(d.stateDir, 'e2b-api-key'), 'utf8')).trim();
  const { Sandbox } = await import('e2b');
  const health = await d.client.health();

  /** Where one start's time went: Sandbox.create answered, then the first command; the VM's own phases. */
  interface Split {
    create: number;
    run: number;
    phases: Record<string, number>;
  }
  const splits: Record<'serial' | 'concurrent', Split[]> = { serial: [], concurrent: [] };

  /** One sandbox: create → first command answered (ms); its VM's timeline read and the sandbox killed afterwards, not timed. */
  const sandboxStart = async (into?: Split[]): Promise<number> => {
    const t0 = performance.now();
    const sbx = await Sandbox.create('base');
    const t1 = performance.now();
    const r = await sbx.commands.run('true');
    const ms = performance.now() - t0;
    if (r.exitCode !== 0) throw new Error(`first command exited ${r.exitCode}`);
    const vm = await d.client.getVm(sbx.sandboxId);
    into?.push({ create: t1 - t0, run: ms - (t1 - t0), phases: Object.fromEntries(vm.timeline.map((p) => [p.phase, p.duration_ms ?? NaN])) });
    await sbx.kill();
    return ms;
  };

  // Warm-up: builds the base image and its template on a first start, fills the page cache.
  await sandboxStart();
  const load0 = os.loadavg()[0]!;
  const serial: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    await poolFull(d.client);
    serial.push(await sandboxStart(splits.serial));
  }
  const concurrent: number[] = [];
  while (concurrent.length < RUNS) {
    await poolFull(d.client);
    const n = Math.min(CONCURRENCY, RUNS - concurrent.length);
    concurrent.push(...(await Promise.all(Array.from({ length: n }, () => sandboxStart(splits.concurrent)))));
  }
  const loadMax = Math.max(load0, os.loadavg()[0]!);

  // The same template booted cold: its image, its size, the same first command.
  const image = (await d.client.listImages()).find((i) => i.name.startsWith('kiln-e2b-base-'));
  if (!image) throw new Error('the base image is not registered');
  const coldStart = async (): Promise<number> => {
    const t0 = performance.now();
    const vm = await d.client.createVm({ image: image.name, vcpus: 1, memory_mib: 512 }, { wait: true, timeoutMs: 300_000 });
    const r = await d.client.exec(vm.id, { cmd: ['/bin/bash', '-l', '-c', 'true'], user: '1000:1000', cwd: '/home/user' });
    const ms = performance.now() - t0;
    if (r.exit_code !== 0) throw new Error(`cold boot's first exec exited ${r.exit_code}`);
    await d.client.deleteVm(vm.id);
    return ms;
  };
  const cold: number[] = [];
  for (let i = 0; i < COLD_RUNS; i++) cold.push(await coldStart());
  // The concurrent rows' fair comparison: as many cold boots at once.
  const coldConcurrent = await Promise.all(Array.from({ length: CONCURRENCY }, coldStart));

  const row = (name: string, xs: number[], base: number[]) => [name, String(xs.length), median(xs), quantile(xs, 0.95), `${(median(xs) / median(base)).toFixed(3)}×`];
  console.log(`sandboxes bench (${health.backend}, ${health.accelerator}; clone pool ${POOL} per template; load average ${load0.toFixed(1)}–${loadMax.toFixed(1)}, ${os.cpus().length} CPUs)`);
  console.log(table(['create → first command answered', 'runs', 'median ms', 'p95 ms', '÷ cold boot'], [
    row('Sandbox.create, one at a time', serial, cold),
    row('cold boot of the same template, one at a time', cold, cold),
    row(`Sandbox.create, ${CONCURRENCY} at once`, concurrent, coldConcurrent),
    row(`cold boot of the same template, ${CONCURRENCY} at once`, coldConcurrent, coldConcurrent),
  ]));
  // Where a sandbox start's time goes: the create (its VM's phases are part of it) and the first command.
  const phaseNames = [...new Set([...splits.serial, ...splits.concurrent].flatMap((x) => Object.keys(x.phases)))];
  const parts: [string, (x: Split) => number | undefined][] = [
    ['Sandbox.create answered', (x) => x.create],
    ...phaseNames.map((n) => [`  its VM's phase ${n}`, (x: Split) => x.phases[n]] as [string, (x: Split) => number | undefined]),
    ['then the first commands.run answered', (x) => x.run],
  ];
  const of = (xs: Split[], f: (x: Split) => number | undefined) => xs.map(f).filter((v): v is number => v !== undefined && Number.isFinite(v));
  console.log(table(['where the time goes (ms)', 'one at a time: median', 'p95', `${CONCURRENCY} at once: median`, 'p95'],
    parts.map(([name, f]) => [name, median(of(splits.serial, f)), quantile(of(splits.serial, f), 0.95), median(of(splits.concurrent, f)), quantile(of(splits.concurrent, f), 0.95)])));
} finally {
  await d.dispose();
}
