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

  /** One sandbox: create → first command answered (ms); killed afterwards, not timed. */
  const sandboxStart = async (): Promise<number> => {
    const t0 = performance.now();
    const sbx = await Sandbox.create('base');
    const r = await sbx.commands.run('true');
    const ms = performance.now() - t0;
    if (r.exitCode !== 0) throw new Error(`first command exited ${r.exitCode}`);
    await sbx.kill();
    return ms;
  };

  // Warm-up: builds the base image and its template on a first start, fills the page cache.
  await sandboxStart();
  const load0 = os.loadavg()[0]!;
  const serial: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    await poolFull(d.client);
    serial.push(await sandboxStart());
  }
  const concurrent: number[] = [];
  while (concurrent.length < RUNS) {
    await poolFull(d.client);
    const n = Math.min(CONCURRENCY, RUNS - concurrent.length);
    concurrent.push(...(await Promise.all(Array.from({ length: n }, sandboxStart))));
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

  const row = (name: string, xs: number[], base: number[]) => [name, xs.length, median(xs), quantile(xs, 0.95), median(xs) / median(base)];
  console.log(`sandboxes bench (${health.backend}, ${health.accelerator}; clone pool ${POOL} per template; load average ${load0.toFixed(1)}–${loadMax.toFixed(1)}, ${os.cpus().length} CPUs)`);
  console.log(table(['create → first command answered', 'runs', 'median ms', 'p95 ms', '÷ cold boot'], [
    row('Sandbox.create, one at a time', serial, cold),
    row('cold boot of the same template, one at a time', cold, cold),
    row(`Sandbox.create, ${CONCURRENCY} at once`, concurrent, coldConcurrent),
    row(`cold boot of the same template, ${CONCURRENCY} at once`, coldConcurrent, coldConcurrent),
  ]));
} finally {
  await d.dispose();
}
