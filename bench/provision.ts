// bench/provision: N sequential VMs, create → ready through kilnd, against the same VMM
// launched directly from a shell script (the baseline), interleaved in one run.
//   npm run bench -- provision [--runs 10] [--backend qemu|firecracker]
// With --backend firecracker it also reports Firecracker's own spec figures: InstanceStart →
// guest init (≤ 125 ms) and VMM memory overhead (≤ 5 MiB). Firecracker needs its binary and
// a host where KVM boots a guest; elsewhere the bench says so and exits 2.
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
import { guestNetArgs, tapName } from '../src/net/network-manager.ts';
import { prepareGuestAssets, type GuestAssets } from '../src/vm/guest-assets.ts';
import { guestConfig, runtimeFiles, vmSpec } from '../src/vm/vm-spec.ts';
import { ensureVmlinux } from '../src/guest/extract-vmlinux.ts';
import { isKilnError } from '../src/errors.ts';
import { decideAccelerator } from '../src/vmm/accel-probe.ts';
import { decideBackend } from '../src/vmm/backend-select.ts';
import type { BackendName, VmSpec } from '../src/vmm/driver.ts';
import { firecrackerKernelCmdline, networkInterfacesOf, toDrives, toMachineConfig, toNetworkInterface } from '../src/vmm/firecracker/spec.ts';
import { kernelCmdline, qemuArgs, qemuPaths } from '../src/vmm/qemu/qemu-args.ts';
import { vmmMemory } from '../src/vmm/vmm-memory.ts';
import { TEST_ASSETS_DIR, startKilnd } from '../test/helpers/kilnd.ts';
import { median, quantile, table } from './stats.ts';

const { values } = parseArgs({
  options: { runs: { type: 'string', default: '10' }, backend: { type: 'string', default: 'qemu' } },
  allowPositionals: true,
});
const RUNS = Number(values.runs);
if (values.backend !== 'qemu' && values.backend !== 'firecracker') {
  console.error(`--backend must be qemu or firecracker, got ${JSON.stringify(values.backend)}`);
  process.exit(2);
}
const BACKEND = values.backend as BackendName;
const FIRECRACKER_BIN = process.env.KILN_FIRECRACKER_BIN ?? 'firecracker';
/** Firecracker's published figures (its SPECIFICATION.md), what a KVM host run is compared against. */
const FC_GUEST_BOOT_MS = 125;
const FC_OVERHEAD_MIB = 5;
const GUEST_PHASES = ['guest.kernel', 'guest.init'];

const shq = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/**
 * The baseline: a shell script makes the VM's tap (as any hand-written launcher must), runs
 * the VMM and waits (inotify, via tail -f) for kiln-init's ready line. QEMU logs the console
 * itself; Firecracker's serial console is its stdout.
 */
async function directBoot(argv: string[], o: { log: string; stdoutToLog: boolean; tap: string | null; bridge: string }): Promise<number> {
  const { log, tap, bridge } = o;
  const script = [
    ...(tap ? [`ip tuntap add dev ${tap} mode tap && ip link set dev ${tap} master ${bridge} && ip link set dev ${tap} up || exit 1`, `trap 'ip link del ${tap}' EXIT`] : []),
    `${argv.map(shq).join(' ')}${o.stdoutToLog ? ` </dev/null >${shq(log)} 2>&1` : ''} &`,
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

/** Firecracker without its API: the same machine, boot source, drives and NIC from a config file. */
async function firecrackerDirectArgv(spec: VmSpec, dir: string, vmlinuxCache: string): Promise<string[]> {
  const config = {
    'boot-source': { kernel_image_path: await ensureVmlinux(spec.kernel.path, vmlinuxCache), boot_args: spec.kernel.cmdline, initrd_path: spec.kernel.initrd },
    drives: toDrives(spec, (p) => p),
    'machine-config': toMachineConfig(spec),
    'network-interfaces': networkInterfacesOf(spec).map((n) => toNetworkInterface(n, false)),
  };
  const file = path.join(dir, 'vm-config.json');
  await fs.writeFile(file, JSON.stringify(config));
  return [FIRECRACKER_BIN, '--no-api', '--config-file', file, '--id', `bench-${path.basename(dir)}`];
}

/** Exits (2) with the reason when Firecracker cannot run here, before anything is started. */
async function assertFirecrackerRuns(assets: GuestAssets): Promise<void> {
  const k = assets.kernel;
  const accel = await decideAccelerator({
    requested: 'auto',
    kernel: k.path,
    initrd: assets.initramfs.path,
    cacheDir: TEST_ASSETS_DIR,
    canProbe: k.format === 'bzImage' || k.pvh === true,
  });
  try {
    await decideBackend({ requested: 'firecracker', firecrackerBinary: FIRECRACKER_BIN, accel });
  } catch (e) {
    if (!isKilnError(e)) throw e;
    console.error(`bench/provision --backend firecracker cannot run on this host: ${e.message}.`);
    console.error('Run it on a host with /dev/kvm that boots guests and the firecracker binary (see docs/backends.md: Firecracker on a KVM host).');
    process.exit(2);
  }
}

async function main(): Promise<void> {
  const fc = BACKEND === 'firecracker';
  if (fc) {
    await assertFirecrackerRuns(await prepareGuestAssets(TEST_ASSETS_DIR, () => {}, { kernelPath: process.env.KILN_KERNEL }));
  }
  const d = await startKilnd({ backend: BACKEND });
  const memory: number[] = [];
  const kiln: { total: number; phases: Record<string, number> }[] = [];
  const direct: number[] = [];
  const scratchDir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-bench-direct-'));
  try {
    const assets = await prepareGuestAssets(TEST_ASSETS_DIR, () => {}, { kernelPath: process.env.KILN_KERNEL });
    // Warm-up boot (page cache, first-boot costs), not counted.
    await d.client.deleteVm((await d.client.createVm({ name: 'warmup' }, { wait: true })).id);
    for (let i = 0; i < RUNS; i++) {
      const t0 = performance.now();
      const vm = await d.client.createVm({ name: `bench-${i}` }, { wait: true });
      const total = performance.now() - t0;
      const phases = Object.fromEntries(vm.timeline.map((p) => [p.phase, p.duration_ms ?? NaN]));
      kiln.push({ total, phases });
      if (vm.pid) memory.push((await vmmMemory(vm.pid, vm.memory_mib)).overheadKib / 1024);

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
        kernelArgs: guestNetArgs(addr),
      };
      const cmdline = { kernelCmdline: fc ? (_: unknown, x: readonly string[]) => firecrackerKernelCmdline(x) : kernelCmdline };
      const spec = vmSpec(rec, img, assets, dir, cmdline, net ?? undefined);
      const tap = { tap: net?.nic.tap ?? null, bridge: d.network.bridge };
      direct.push(
        fc
          ? await directBoot(await firecrackerDirectArgv(spec, dir, path.join(TEST_ASSETS_DIR, 'kernels', 'vmlinux')), { log: path.join(dir, 'console.log'), stdoutToLog: true, ...tap })
          : await directBoot([QEMU_BINARY, ...qemuArgs(spec, { daemonize: false })], { log: qemuPaths(dir).consoleLog, stdoutToLog: false, ...tap }),
      );
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
  const health = `${BACKEND}, ${os.cpus().length} CPUs, ${process.env.KILN_ACCEL ?? 'auto'} accel`;
  console.log(`\nbench/provision: ${RUNS} sequential VMs (default image, 1 vCPU, 256 MiB), ${health}\n`);
  console.log(table(['phase (kiln timeline)', 'median ms', 'p99 ms'], names.map((n) => {
    const xs = kiln.map((k) => k.phases[n] ?? NaN);
    return [n, median(xs), quantile(xs, 0.99)];
  })));
  console.log();
  const kt = kiln.map((k) => k.total);
  console.log(table(['measure', 'median ms', 'p99 ms'], [
    ['kiln: POST /v1/vms?wait=1 → ready', median(kt), quantile(kt, 0.99)],
    [`direct: shell script ${fc ? 'Firecracker' : 'QEMU'} → ready`, median(direct), quantile(direct, 0.99)],
    ['host-side overhead (total − guest boot)', median(overhead), quantile(overhead, 0.99)],
    ['  of which kiln itself (minus VMM launch)', median(kilnOnly), quantile(kilnOnly, 0.99)],
  ]));
  const ratio = median(kt) / median(direct);
  console.log(`\nkiln ÷ direct (medians): ${ratio.toFixed(3)}  (target ≤ 1.05)`);
  console.log(`host-side overhead median: ${median(overhead).toFixed(1)} ms, of which the VMM process launch (paid by the direct baseline too) ${median(kiln.map((k) => k.phases['vmm.spawn'] ?? 0)).toFixed(1)} ms and kiln itself ${median(kilnOnly).toFixed(1)} ms (target ≤ 30 ms)`);
  // vmm.spawn ends when InstanceStart is answered; guest.kernel ends at kiln-init's first line.
  const guestBoot = kiln.map((k) => k.phases['guest.kernel'] ?? NaN);
  console.log(`\nVMM memory overhead (resident, guest RAM excluded): median ${median(memory).toFixed(2)} MiB, max ${Math.max(...memory).toFixed(2)} MiB${fc ? ` (Firecracker spec ≤ ${FC_OVERHEAD_MIB} MiB)` : ''}`);
  if (fc) {
    console.log(`InstanceStart → guest init (kiln-init's first line): median ${median(guestBoot).toFixed(1)} ms, p99 ${quantile(guestBoot, 0.99).toFixed(1)} ms (Firecracker spec ≤ ${FC_GUEST_BOOT_MS} ms)`);
  }
}

await main();
