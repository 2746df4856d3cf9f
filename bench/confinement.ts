// What VMM confinement costs per VM, piece by piece (issue 13: ≤ 5 ms per VM in all):
// the per-VM cgroup (create + remove), moving QEMU into it (overlapped with its start), the
// drives as inherited fds, the jail directory, the paused start's extra QMP `cont`, and
// seccomp + -runas + -chroot inside QEMU's own start (a machine without a guest, started
// with and without them, alternately). `npm run bench -- confinement`
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { QEMU_BINARY } from '../src/tools/qemu-system.ts';
import { ensureSystemUser } from '../src/tools/useradd.ts';
import type { VmCgroup } from '../src/vmm/cgroup/cgroup.ts';
import { detectCgroups } from '../src/vmm/cgroup/detect.ts';
import { sandboxArgs } from '../src/vmm/qemu/qemu-args.ts';
import { QmpClient } from '../src/vmm/qemu/qmp-client.ts';
import { median, quantile, table } from './stats.ts';

const RUNS = Number(process.env.BENCH_RUNS ?? 30);
/** BENCH_QEMU=0: only the host-side pieces (no QEMU started; needs no VM lock). */
const WITH_QEMU = process.env.BENCH_QEMU !== '0';
const ms = async (fn: () => Promise<unknown>) => {
  const t = performance.now();
  await fn();
  return performance.now() - t;
};
const exitOf = (argv: string[]) =>
  new Promise<void>((resolve, reject) => {
    const c = spawn(argv[0]!, argv.slice(1), { stdio: 'ignore' });
    c.once('error', reject);
    c.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${argv.join(' ')} exited ${code}`))));
  });

async function qemuUntilQmp(dir: string, extra: string[], cgroup?: VmCgroup): Promise<{ ready: number; cont: number; joinWait: number }> {
  const sock = path.join(dir, 'qmp.sock');
  await fs.rm(sock, { force: true });
  const t = performance.now();
  const child = spawn(QEMU_BINARY, ['-M', 'microvm', '-m', '64M', '-nodefaults', '-display', 'none', '-S', '-qmp', `unix:${sock},server=on,wait=off`, ...extra], { stdio: 'ignore', detached: true });
  // As the driver does: joined while QEMU initialises, awaited once it answers.
  const joined = cgroup ? cgroup.addProcess(child.pid!) : Promise.resolve();
  let qmp: QmpClient | null = null;
  for (let delay = 1; !qmp; delay = Math.min(delay * 2, 20)) {
    qmp = await QmpClient.connect(sock, 10_000).catch(() => null);
    if (!qmp) await new Promise((r) => setTimeout(r, delay));
  }
  const ready = performance.now() - t;
  const joinWait = await ms(() => joined);
  const cont = await ms(() => qmp.execute('cont'));
  qmp.close();
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  return { ready, cont, joinWait };
}

async function main(): Promise<void> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-bench-confine-'));
  const found = await detectCgroups({ parent: `kiln-bench-${process.pid}` });
  if (!found.manager) throw new Error(`no cgroups: ${found.reason}`);
  const cg = found.manager;
  const user = await ensureSystemUser('kiln-vmm');
  const rows: Record<string, number[]> = { 'cgroup create': [], 'cgroup remove': [], 'join cgroup (host-side write, spawn to done)': [], 'join cgroup: wait left after QMP ready': [], 'drives as fds (3 opens)': [], 'jail dir': [], 'paused start: QMP cont': [], 'seccomp + runas + chroot in QEMU start': [] };
  const drives = ['root', 'scratch', 'config'].map((n) => path.join(dir, `${n}.img`));
  for (const f of drives) await fs.writeFile(f, Buffer.alloc(4096));
  const jail = path.join(dir, 'jail');
  await fs.mkdir(jail, { mode: 0o711 });
  try {
    // Warm-up, not counted (page cache, first exec of each binary).
    if (WITH_QEMU) {
      await qemuUntilQmp(dir, []);
      await qemuUntilQmp(dir, sandboxArgs({ seccomp: true, runAs: 'kiln-vmm', chroot: jail }));
    }
    await exitOf(['/bin/sh', '-c', 'exec /bin/true']);
    for (let i = 0; i < RUNS; i++) {
      const name = `b${i}`;
      let made!: Awaited<ReturnType<typeof cg.create>>;
      rows['cgroup create']!.push(await ms(async () => (made = await cg.create(name, { memoryBytes: 640 * 1024 * 1024, cpus: 1, pids: 97 }))));
      if (!WITH_QEMU) {
        // A short-lived process moved in, as the driver moves QEMU (not overlapped here).
        const c = spawn('/bin/sleep', ['1'], { stdio: 'ignore' });
        rows['join cgroup (host-side write, spawn to done)']!.push(await ms(() => made.addProcess(c.pid!)));
        c.kill('SIGKILL');
        await new Promise((r) => c.once('exit', r));
      }
      if (WITH_QEMU) {
        const bare = await qemuUntilQmp(dir, []);
        const confined = await qemuUntilQmp(dir, sandboxArgs({ seccomp: true, runAs: 'kiln-vmm', chroot: jail }), made);
        rows['seccomp + runas + chroot in QEMU start']!.push(confined.ready - bare.ready);
        rows['paused start: QMP cont']!.push(confined.cont);
        rows['join cgroup: wait left after QMP ready']!.push(confined.joinWait);
      }
      rows['cgroup remove']!.push(await ms(() => made.remove()));
      rows['drives as fds (3 opens)']!.push(
        await ms(async () => {
          const hs = [await fs.open(drives[0]!, 'r'), await fs.open(drives[1]!, 'r+'), await fs.open(drives[1]!, 'r'), await fs.open(drives[2]!, 'r')];
          await Promise.all(hs.map((h) => h.close()));
        }),
      );
      rows['jail dir']!.push(await ms(() => fs.mkdir(path.join(dir, `jail-${i}`), { mode: 0o711 })));
    }
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
    for (const p of cg.parentDirs) await fs.rmdir(p).catch(() => {});
  }
  const load = (await fs.readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ');
  console.log(`\nbench/confinement: ${RUNS} runs, cgroup v${cg.version} (${cg.controllers.join(', ')}), user ${user.uid}, load ${load}, ${os.cpus().length} CPUs\n`);
  for (const [k, xs] of Object.entries(rows)) if (!xs.length) delete rows[k];
  // The host-side join write overlaps QEMU's start; only what is left after it counts.
  const total = Object.entries(rows).filter(([k]) => !k.includes('spawn to done')).reduce((sum, [, xs]) => sum + median(xs), 0);
  console.log(table(['piece (per VM)', 'median ms', 'p90 ms'], [...Object.entries(rows).map(([k, xs]) => [k, median(xs).toFixed(2), quantile(xs, 0.9).toFixed(2)]), ['total (sum of medians)', total.toFixed(2), '']]));
  console.log(`\nconfinement per VM: ${total.toFixed(2)} ms (target ≤ 5 ms)`);
}

await main();
