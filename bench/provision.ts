// bench/provision: N sequential VMs, create → ready through kilnd, against the same QEMU
// command line launched directly from a shell script (the baseline), interleaved in one run.
//   npm run bench -- provision [--runs 10]
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { encodeConfigDrive } from '../src/guest/config-drive.ts';
import { SqliteStore } from '../src/store/sqlite-store.ts';
import { QEMU_BINARY } from '../src/tools/qemu-system.ts';
import { cloneFile } from '../src/tools/cp.ts';
import { macFor, parseSubnet } from '../src/net/ipv4.ts';
import { tapName } from '../src/net/network-manager.ts';
import { prepareGuestAssets } from '../src/vm/guest-assets.ts';
import { guestConfig, runtimeFiles, vmSpec } from '../src/vm/vm-spec.ts';
import { qemuArgs, qemuPaths } from '../src/vmm/qemu/qemu-args.ts';
import { TEST_ASSETS_DIR, startKilnd } from '../test/helpers/kilnd.ts';
import { median, quantile, table } from './stats.ts';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '10' } }, allowPositionals: true });
const RUNS = Number(values.runs);
const GUEST_PHASES = ['guest.kernel', 'guest.init'];

const shq = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/**
 * The baseline: a shell script makes the VM's tap (as any hand-written launcher must), runs
 * QEMU and waits (inotify, via tail -f) for kiln-init's ready line.
 */
async function directBoot(argv: string[], runtimeDir: string, tap: string | null, bridge: string): Promise<number> {
  const log = qemuPaths(runtimeDir).consoleLog;
  const script = [
    ...(tap ? [`ip tuntap add dev ${tap} mode tap && ip link set dev ${tap} master ${bridge} && ip link set dev ${tap} up || exit 1`, `trap 'ip link del ${tap}' EXIT`] : []),
    `${[QEMU_BINARY, ...argv].map(shq).join(' ')} &`,
    'qemu=$!',
    `while [ ! -e ${shq(log)} ]; do :; done`,
    `tail -n +1 -f ${shq(log)} | grep -q -m1 '^@kiln:ready'`,
    'kill -KILL $qemu; wait $qemu 2>/dev/null; exit 0',
  ].join('\n');
  const t0 = performance.now();
  await new Promise<void>((resolve, reject) => {
    const p = spawn('bash', ['-c', script], { stdio: 'ignore' });
    p.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`direct boot script exited ${code}`))));
  });
  return performance.now() - t0;
}

async function main(): Promise<void> {
  const d = await startKilnd();
  const kiln: { total: number; phases: Record<string, number> }[] = [];
  const direct: number[] = [];
  const scratchDir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-bench-direct-'));
  try {
    const assets = await prepareGuestAssets(TEST_ASSETS_DIR, () => {});
    // Warm-up boot (page cache, first-boot costs), not counted.
    await d.client.deleteVm((await d.client.createVm({ name: 'warmup' }, { wait: true })).id);
    for (let i = 0; i < RUNS; i++) {
      const t0 = performance.now();
      const vm = await d.client.createVm({ name: `bench-${i}` }, { wait: true });
      const total = performance.now() - t0;
      const phases = Object.fromEntries(vm.timeline.map((p) => [p.phase, p.duration_ms ?? NaN]));
      kiln.push({ total, phases });

      // Same spec, same files kiln booted, launched by hand.
      const store = new SqliteStore(path.join(d.stateDir, 'kiln.db'));
      const rec = (await store.getVm(vm.id))!;
      const img = (await store.getImage(rec.imageId))!;
      await store.close();
      await d.client.deleteVm(vm.id);
      const dir = path.join(scratchDir, `d${i}`);
      await fs.mkdir(dir);
      const files = runtimeFiles(dir);
      await cloneFile(assets.scratchTemplate, files.scratch);
      await fs.writeFile(files.config, encodeConfigDrive(guestConfig(rec, img, 5000)));
      const addr = rec.ip ? { ip: rec.ip, ...parseSubnet(d.network.cidr) } : null;
      const net = addr && {
        nic: { tap: tapName(rec.id), mac: macFor(addr.ip) },
        kernelArgs: [`kiln.ip=${addr.ip}/${addr.prefix}`, `kiln.gw=${addr.gateway}`],
      };
      const argv = qemuArgs(vmSpec(rec, img, assets, dir, net ?? undefined), { daemonize: false });
      direct.push(await directBoot(argv, dir, net?.nic.tap ?? null, d.network.bridge));
      await fs.rm(dir, { recursive: true, force: true });
      process.stderr.write(`run ${i + 1}/${RUNS}: kiln ${total.toFixed(0)} ms, direct ${direct.at(-1)!.toFixed(0)} ms\n`);
    }
  } finally {
    await d.dispose();
    await fs.rm(scratchDir, { recursive: true, force: true });
  }

  const names = [...new Set(kiln.flatMap((k) => Object.keys(k.phases)))];
  const guest = kiln.map((k) => GUEST_PHASES.reduce((s, p) => s + (k.phases[p] ?? 0), 0));
  const overhead = kiln.map((k, i) => k.total - guest[i]!);
  const kilnOnly = kiln.map((k, i) => overhead[i]! - (k.phases['vmm.spawn'] ?? 0));
  const health = `${os.cpus().length} CPUs, ${process.env.KILN_ACCEL ?? 'auto'} accel`;
  console.log(`\nbench/provision: ${RUNS} sequential VMs (default image, 1 vCPU, 256 MiB), ${health}\n`);
  console.log(table(['phase (kiln timeline)', 'median ms', 'p99 ms'], names.map((n) => {
    const xs = kiln.map((k) => k.phases[n] ?? NaN);
    return [n, median(xs), quantile(xs, 0.99)];
  })));
  console.log();
  const kt = kiln.map((k) => k.total);
  console.log(table(['measure', 'median ms', 'p99 ms'], [
    ['kiln: POST /v1/vms?wait=1 → ready', median(kt), quantile(kt, 0.99)],
    ['direct: shell script QEMU → ready', median(direct), quantile(direct, 0.99)],
    ['host-side overhead (total − guest boot)', median(overhead), quantile(overhead, 0.99)],
    ['  of which kiln itself (minus VMM launch)', median(kilnOnly), quantile(kilnOnly, 0.99)],
  ]));
  const ratio = median(kt) / median(direct);
  console.log(`\nkiln ÷ direct (medians): ${ratio.toFixed(3)}  (target ≤ 1.05)`);
  console.log(`host-side overhead median: ${median(overhead).toFixed(1)} ms, of which the VMM process launch (paid by the direct baseline too) ${median(kiln.map((k) => k.phases['vmm.spawn'] ?? 0)).toFixed(1)} ms and kiln itself ${median(kilnOnly).toFixed(1)} ms (target ≤ 30 ms)`);
}

await main();
