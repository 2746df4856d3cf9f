// bench/containers: container create → process running, for a cached image, against a plain
// VM boot of the same image with the same command, interleaved in one run through one kilnd.
//   npm run bench -- containers [--runs 20]
//
// "Process running" is the guest agent's hello: kiln-init sends it right after fork() of the
// workload (`boot.workload_ms`), and `?wait=1` returns when kilnd has it; the same event for
// both. Each create is a plain POST (no wait) followed by the `ready` event on /v1/events,
// subscribed before the POST. What a container adds: the reference check, Docker's process merge, its row, tagged
// stdout/stderr and the log capture.
import { parseArgs } from 'node:util';
import { startKilnd } from '../test/helpers/kilnd.ts';
import { median, quantile, table } from './stats.ts';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '20' } }, allowPositionals: true });
const RUNS = Number(values.runs);
const IMAGE = 'default';
const CMD = ['/bin/sh', '-c', 'echo up; while :; do sleep 10; done'];
const HOST_PHASES = ['api.accept', 'rootfs.prepare', 'network.prepare', 'vmm.spawn'];

async function main(): Promise<void> {
  const d = await startKilnd();
  const total: Record<'container' | 'vm', number[]> = { container: [], vm: [] };
  const host: Record<'container' | 'vm', number[]> = { container: [], vm: [] };
  const accept: Record<'container' | 'vm', number[]> = { container: [], vm: [] };
  const c = d.client;
  const hostPart = async (id: string) => (await c.getVm(id)).timeline.filter((p) => HOST_PHASES.includes(p.phase)).reduce((a, p) => a + (p.duration_ms ?? 0), 0);
  try {
    // Warm-up (page cache, first-boot costs), not counted.
    await c.removeContainer((await c.createContainer({ image: IMAGE, cmd: CMD }, { wait: true })).id, { force: true });
    await c.deleteVm((await c.createVm({ image: IMAGE, cmd: CMD, memory_mib: 128 }, { wait: true })).id);
    for (let i = 0; i < RUNS; i++) {
      // Alternate which goes first, so a slow spell of the host hits both alike.
      const order = i % 2 ? (['vm', 'container'] as const) : (['container', 'vm'] as const);
      for (const kind of order) {
        // Subscribed before the POST, so the ready event cannot slip past.
        const ac = new AbortController();
        const events = await c.subscribe({ signal: ac.signal });
        const t0 = performance.now();
        const id = kind === 'container'
          ? (await c.createContainer({ image: IMAGE, cmd: CMD, memory_mib: 128 })).id
          : (await c.createVm({ image: IMAGE, cmd: CMD, memory_mib: 128 })).id;
        accept[kind].push(performance.now() - t0);
        for await (const e of events) {
          if (e.type === 'vm.state' && e.vm === id && e.to === 'ready') break;
          if (e.type === 'vm.state' && e.vm === id && e.to === 'failed') throw new Error(`${kind} ${id} failed: ${JSON.stringify(e)}`);
        }
        total[kind].push(performance.now() - t0);
        ac.abort();
        host[kind].push(await hostPart(id));
        if (kind === 'container') await c.removeContainer(id, { force: true });
        else await c.deleteVm(id);
      }
      process.stderr.write(`run ${i + 1}/${RUNS}: container ${total.container.at(-1)!.toFixed(1)} ms, vm ${total.vm.at(-1)!.toFixed(1)} ms\n`);
    }
  } finally {
    await d.dispose();
  }
  const row = (label: string, xs: number[]) => [label, median(xs), quantile(xs, 0.95)];
  console.log(`\nbench/containers: ${RUNS} runs each, image "${IMAGE}", 128 MiB, create → process running (agent hello)\n`);
  console.log(table(['measure', 'median ms', 'p95 ms'], [
    row('container: create → process running', total.container),
    row('vm: create → ready (same image, same cmd)', total.vm),
    row('container: POST /v1/containers answered', accept.container),
    row('vm: POST /v1/vms answered', accept.vm),
    row('container: host-side boot phases (accept..spawn)', host.container),
    row('vm: host-side boot phases (accept..spawn)', host.vm),
  ]));
  const overhead = median(total.container) - median(total.vm);
  console.log(`\ncontainer overhead, create → process running (difference of medians): ${overhead.toFixed(1)} ms (target ≤ 10 ms)`);
  console.log(`  host side: POST ${(median(accept.container) - median(accept.vm)).toFixed(1)} ms, boot phases ${(median(host.container) - median(host.vm)).toFixed(1)} ms`);
}

await main();
