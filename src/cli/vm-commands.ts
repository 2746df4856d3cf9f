import { Command } from 'commander';
import type { KilnClient, Vm } from '../sdk/client.ts';
import { age, printJson, printTable } from './output.ts';

function printVm(vm: Vm): void {
  printTable(['field', 'value'], [
    ['id', vm.id], ['name', vm.name], ['state', vm.state], ['reason', vm.state_reason], ['image', vm.image.name ?? vm.image.id],
    ['vcpus', vm.vcpus], ['memory', `${vm.memory_mib} MiB`], ['network', vm.network === 'none' ? 'none' : `${vm.ip} (${vm.mac})`],
    ['ports', vm.ports.map(portText).join(', ') || null], ['backend', `${vm.backend} (${vm.accelerator})`], ['pid', vm.pid],
    ['boots', vm.boot_count], ['exit code', vm.exit_code], ['created', vm.created_at],
  ]);
  if (vm.timeline.length) {
    printTable(['phase', 'started', 'duration'], vm.timeline.map((p) => [p.phase, p.started_at, p.duration_ms === null ? 'running' : `${p.duration_ms.toFixed(1)} ms`]));
  }
}

const collect = (v: string, prev: string[]) => [...prev, v];
const portText = (p: Vm['ports'][number]) => `${p.host}→${p.guest}/${p.proto}`;

/** `-p HOST:GUEST[/tcp|udp]`, as docker writes it. */
export function parsePublish(spec: string): { host: number; guest: number; proto: 'tcp' | 'udp' } {
  const m = /^(\d{1,5}):(\d{1,5})(?:\/(tcp|udp))?$/.exec(spec);
  if (!m) throw new Error(`-p wants HOST:GUEST[/tcp|udp], got ${JSON.stringify(spec)}`);
  return { host: Number(m[1]), guest: Number(m[2]), proto: (m[3] as 'tcp' | 'udp' | undefined) ?? 'tcp' };
}

export function vmCommands(client: () => KilnClient, json: () => boolean): Command {
  const vm = new Command('vm').description('create and control microVMs');
  const show = (v: Vm) => (json() ? printJson(v) : printVm(v));

  vm.command('create')
    .description('create and boot a VM; waits until it is ready unless --no-wait')
    .option('--image <image>', 'image id or name', 'default')
    .option('--name <name>', 'VM name (default: its id)')
    .option('--vcpus <n>', 'virtual CPUs', Number)
    .option('--memory <mib>', 'memory in MiB', Number)
    .option('--kernel-arg <arg>', 'extra kernel parameter (repeatable)', collect, [])
    .option('-e, --env <K=V>', 'environment variable for the workload (repeatable)', collect, [])
    .option('-p, --publish <host:guest[/proto]>', 'publish a host port to the VM (repeatable)', collect, [])
    .option('--network <mode>', '"bridge" (an address on kiln’s bridge) or "none"')
    .option('--no-wait', 'return at once instead of waiting for ready')
    .argument('[cmd...]', 'command to run instead of the image’s (put it after --)')
    .action(async (cmd: string[], o) => {
      const env = Object.fromEntries((o.env as string[]).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
      const created = await client().createVm({
        image: o.image,
        ...(o.name ? { name: o.name } : {}),
        ...(o.vcpus ? { vcpus: o.vcpus } : {}),
        ...(o.memory ? { memory_mib: o.memory } : {}),
        ...(o.kernelArg.length ? { kernel_args: o.kernelArg } : {}),
        ...(Object.keys(env).length ? { env } : {}),
        ...(cmd.length ? { cmd } : {}),
        ...(o.network ? { network: o.network } : {}),
        ...(o.publish.length ? { ports: (o.publish as string[]).map(parsePublish) } : {}),
      }, { wait: o.wait });
      show(created);
    });

  vm.command('ls').alias('list').description('list VMs').action(async () => {
    const vms = await client().listVms();
    if (json()) return printJson(vms);
    printTable(['ID', 'NAME', 'STATE', 'IMAGE', 'IP', 'PORTS', 'VCPUS', 'MEMORY', 'AGE'],
      vms.map((v) => [v.id, v.name, v.state, v.image.name ?? v.image.id, v.ip ?? '-', v.ports.map(portText).join(', '), v.vcpus, `${v.memory_mib}M`, age(v.created_at)]));
  });

  vm.command('get').alias('inspect').argument('<vm>', 'id or name').description('show a VM and its boot timeline')
    .action(async (id: string) => show(await client().getVm(id)));

  vm.command('stop').argument('<vm>').option('--grace <ms>', 'time the workload gets after SIGTERM', Number)
    .description('stop a VM gracefully').action(async (id: string, o) => show(await client().stopVm(id, { graceMs: o.grace })));
  vm.command('start').argument('<vm>').option('--no-wait', 'return at once').description('start a stopped VM')
    .action(async (id: string, o) => show(await client().startVm(id, { wait: o.wait })));
  vm.command('pause').argument('<vm>').description('pause a VM’s vCPUs').action(async (id: string) => show(await client().pauseVm(id)));
  vm.command('resume').argument('<vm>').description('resume a paused VM').action(async (id: string) => show(await client().resumeVm(id)));
  vm.command('rm').alias('delete').argument('<vm...>').description('delete VMs (stops them at once)').action(async (ids: string[]) => {
    for (const id of ids) {
      await client().deleteVm(id);
      if (!json()) process.stdout.write(`${id}\n`);
    }
  });
  vm.command('logs').argument('<vm>').option('-f, --follow', 'keep streaming new output').description('serial console output')
    .action(async (id: string, o) => {
      if (!o.follow) return void process.stdout.write(await client().logs(id));
      const ac = new AbortController();
      process.once('SIGINT', () => ac.abort());
      for await (const chunk of client().followLogs(id, ac.signal)) process.stdout.write(chunk);
    });
  return vm;
}
