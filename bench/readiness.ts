// bench/readiness: how long after the guest is ready does the host know? Same image, N boots
// per method, interleaved in one run: the agent's push (guest connects and says hello),
// host-side neighbour-table detection (guest's gratuitous ARP seen by `ip monitor`), and
// exponential backoff polling of the agent's port (50 ms, doubling, cap 2 s).
//   npm run bench -- readiness [--runs 20]
//
// "Guest ready" is the instant the agent was ready, in the guest's CLOCK_BOOTTIME; kilnd maps
// it onto its own clock with a `time` round trip after readiness (error ≤ RTT/2, reported).
import { parseArgs } from 'node:util';
import type { KilnClient, Vm } from '../src/sdk/client.ts';
import { startKilnd } from '../test/helpers/kilnd.ts';
import { median, quantile, table } from './stats.ts';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '20' } }, allowPositionals: true });
const RUNS = Number(values.runs);
const MODES = ['push', 'neighbour', 'poll'] as const;

/** kilnd measures the latency just after ready (it must not delay ready): wait for it, bounded. */
async function withLatency(client: KilnClient, id: string): Promise<Vm> {
  for (let i = 0; i < 100; i++) {
    const vm = await client.getVm(id);
    if (vm.agent?.latency_ms !== null && vm.agent?.latency_ms !== undefined) return vm;
    await new Promise((r) => setTimeout(r, 50));
  }
  return client.getVm(id);
}

async function main(): Promise<void> {
  const d = await startKilnd();
  const latency: Record<string, number[]> = { push: [], neighbour: [], poll: [] };
  const clockError: number[] = [];
  try {
    // Warm-up boot (page cache, first-boot costs), not counted.
    await d.client.deleteVm((await d.client.createVm({ name: 'warmup' }, { wait: true })).id);
    for (let i = 0; i < RUNS; i++) {
      for (const mode of MODES) {
        const created = await d.client.createVm({ name: `ready-${mode}-${i}`, readiness: mode }, { wait: true });
        const vm = await withLatency(d.client, created.id);
        const r = vm.agent;
        if (!r || r.readiness !== mode || r.latency_ms === null) throw new Error(`VM ${vm.id}: no ${mode} readiness measurement: ${JSON.stringify(r)}`);
        latency[mode]!.push(r.latency_ms);
        if (r.clock_error_ms !== null) clockError.push(r.clock_error_ms);
        await d.client.deleteVm(vm.id);
      }
      process.stderr.write(`round ${i + 1}/${RUNS}: ${MODES.map((m) => `${m} ${latency[m]!.at(-1)!.toFixed(2)} ms`).join(', ')}\n`);
    }
  } finally {
    await d.dispose();
  }
  console.log(`\nbench/readiness: ${RUNS} boots per method, guest ready → host knows\n`);
  console.log(table(['method', 'median ms', 'p95 ms', 'p99 ms'], MODES.map((m) => [m, median(latency[m]!), quantile(latency[m]!, 0.95), quantile(latency[m]!, 0.99)])));
  const push = median(latency.push!);
  const poll = median(latency.poll!);
  console.log(`\npush median ${push.toFixed(2)} ms (target ≤ 5 ms); backoff polling ÷ push: ${(poll / push).toFixed(1)}× (target ≥ 10×)`);
  console.log(`clock mapping error (half the time round trip): median ${median(clockError).toFixed(3)} ms`);
}

await main();
