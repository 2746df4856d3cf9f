import fs from 'node:fs/promises';
import { parseEgressFlag } from '../net/egress.ts';
import { Command } from 'commander';
import type { KilnClient, Vm } from '../sdk/client.ts';
import { age, printJson, printTable } from './output.ts';

function printVm(vm: Vm): void {
  printTable(['field', 'value'], [
    ['id', vm.id], ['name', vm.name], ['kind', vm.kind], ['labels', labelText(vm.labels) || null], ['state', vm.state], ['reason', vm.state_reason], ['image', vm.image.name ?? vm.image.id],
    ['vcpus', vm.vcpus], ['memory', `${vm.memory_mib} MiB`], ['network', vm.network === 'none' ? 'none' : `${vm.ip} (${vm.mac})`], ['egress', typeof vm.egress === 'string' ? vm.egress : `${vm.egress.allow.join(', ')}${vm.egress.internet ? ' + internet' : ''}`],
    ['ports', vm.ports.map(portText).join(', ') || null],
    ['agent', vm.agent ? `${vm.agent.channel}, ready by ${vm.agent.readiness}${vm.agent.latency_ms !== null ? ` (+${vm.agent.latency_ms.toFixed(1)} ms)` : ''}` : null],
    ['health', vm.health_reason ? `${vm.health}: ${vm.health_reason}` : vm.health], ['backend', `${vm.backend} (${vm.accelerator})`], ['pid', vm.pid],
    ['boots', vm.boot_count], ['exit code', vm.exit_code], ['created', vm.created_at],
    ...(vm.classic ? [
      ['hostname', vm.classic.hostname],
      ['disk', `${(vm.classic.disk.size_bytes / 1024 ** 3).toFixed(1)} GiB${vm.classic.disk.allocated_bytes !== null ? `, ${(vm.classic.disk.allocated_bytes / 1024 ** 2).toFixed(0)} MiB used` : ''}${vm.classic.disk.strategy ? ` (${vm.classic.disk.strategy}${vm.classic.disk.clone_ms !== null ? ` in ${vm.classic.disk.clone_ms} ms` : ''})` : ''}`],
      ['ssh keys', vm.classic.ssh_authorized_keys], ['user-data', vm.classic.user_data ? 'yes (runs once at first boot)' : 'no'],
    ] as [string, string | number][] : []),
  ]);
  if (vm.timeline.length) {
    printTable(['phase', 'started', 'duration'], vm.timeline.map((p) => [p.phase, p.started_at, p.duration_ms === null ? 'running' : `${p.duration_ms.toFixed(1)} ms`]));
  }
}

const collect = (v: string, prev: string[]) => [...prev, v];

/** `k=v, k2=v2`, without `kiln.kind` (the KIND column says it). */
export function labelText(labels: Record<string, string>): string {
  return Object.entries(labels).filter(([k]) => k !== 'kiln.kind').map(([k, v]) => `${k}=${v}`).join(', ');
}

/** `--label KEY=VALUE` flags → a label map (create). */
export function parseLabelFlags(specs: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const s of specs) {
    const i = s.indexOf('=');
    if (i <= 0) throw new Error(`--label wants KEY=VALUE, got ${JSON.stringify(s)}`);
    out[s.slice(0, i)] = s.slice(i + 1);
  }
  return out;
}
const portText = (p: Vm['ports'][number]) => `${p.host}→${p.guest}/${p.proto}`;

/** Non-empty, non-comment lines of a public key file (authorized_keys style). */
export function keysFromFile(text: string): string[] {
  return text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
}

async function classicOptions(o: { sshKey: string[]; hostname?: string; userData?: string; diskSize?: number }) {
  const keys = (await Promise.all(o.sshKey.map((f) => fs.readFile(f, 'utf8')))).flatMap(keysFromFile);
  return {
    ...(keys.length ? { ssh_authorized_keys: keys } : {}),
    ...(o.hostname ? { hostname: o.hostname } : {}),
    ...(o.userData ? { user_data: await fs.readFile(o.userData, 'utf8') } : {}),
    ...(o.diskSize ? { disk_size_gib: o.diskSize } : {}),
  };
}

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
    .option('--image <image>', 'image id, name or registry reference (pulled on demand); default "default", or "debian" with --classic')
    .option('--classic', 'a classic VM: systemd, sshd, its own disk cloned from the image (default "debian")')
    .option('--ssh-key <file>', 'classic: public key file (one key per line, authorized_keys style) installed for root (repeatable)', collect, [])
    .option('--hostname <name>', 'classic: host name (default: the VM name)')
    .option('--user-data <file>', 'classic: script (starting with #!) run once as root at first boot')
    .option('--disk-size <gib>', 'classic: disk size in GiB (default 4)', Number)
    .option('-v, --volume <SRC:TARGET[:ro]>', 'attach a volume (name) or a host directory (absolute path, read-only) (repeatable)', collect, [])
    .option('--name <name>', 'VM name (default: its id)')
    .option('--vcpus <n>', 'virtual CPUs', Number)
    .option('--memory <mib>', 'memory in MiB', Number)
    .option('--kernel-arg <arg>', 'extra kernel parameter (repeatable)', collect, [])
    .option('-e, --env <K=V>', 'environment variable for the workload (repeatable)', collect, [])
    .option('-p, --publish <host:guest[/proto]>', 'publish a host port to the VM (repeatable)', collect, [])
    .option('--network <mode>', '"bridge" (an address on kiln’s bridge) or "none"')
    .option('--egress <policy>', 'where the guest may connect: "internet" (default: public IPv4 only), "none", or CIDR[,CIDR…] (add "internet" to the list for both)', parseEgressFlag)
    .option('-l, --label <KEY=VALUE>', 'a label on the VM (repeatable; "kiln." and "e2b." keys are kilnd\'s own)', collect, [])
    .option('--no-wait', 'return at once instead of waiting for ready')
    .option('--snapshot <id>', 'restore from a snapshot instead of booting (only --name and -e apply)')
    .option('--template <id|image>', 'clone a template (or the template of an image, built on first use)')
    .argument('[cmd...]', 'command to run instead of the image’s (put it after --)')
    .action(async (cmd: string[], o) => {
      const env = Object.fromEntries((o.env as string[]).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
      const labels = parseLabelFlags(o.label);
      const labelled = Object.keys(labels).length ? { labels } : {};
      const classicFlags = o.sshKey.length || o.hostname || o.userData || o.diskSize;
      if (classicFlags && !o.classic) throw new Error('--ssh-key, --hostname, --user-data and --disk-size are for classic VMs: add --classic');
      if (o.snapshot || o.template) {
        const restored = await client().createVm({
          ...(o.snapshot ? { snapshot: o.snapshot } : { template: o.template }),
          ...(o.name ? { name: o.name } : {}),
          ...(Object.keys(env).length ? { env } : {}),
          ...(o.template && o.vcpus ? { vcpus: o.vcpus } : {}),
          ...(o.template && o.memory ? { memory_mib: o.memory } : {}),
          ...(o.egress ? { egress: o.egress } : {}),
          ...labelled,
        }, { wait: o.wait });
        show(restored);
        return;
      }
      const created = await client().createVm({
        ...(o.image ? { image: o.image } : {}),
        ...(o.classic ? { classic: await classicOptions(o) } : {}),
        ...(o.name ? { name: o.name } : {}),
        ...(o.vcpus ? { vcpus: o.vcpus } : {}),
        ...(o.memory ? { memory_mib: o.memory } : {}),
        ...(o.kernelArg.length ? { kernel_args: o.kernelArg } : {}),
        ...(Object.keys(env).length ? { env } : {}),
        ...(cmd.length ? { cmd } : {}),
        ...(o.network ? { network: o.network } : {}),
        ...(o.egress ? { egress: o.egress } : {}),
        ...(o.publish.length ? { ports: (o.publish as string[]).map(parsePublish) } : {}),
        ...(o.volume.length ? { volumes: (o.volume as string[]).map(parseVolumeFlag) } : {}),
        ...labelled,
      }, { wait: o.wait });
      show(created);
    });

  vm.command('ls').alias('list').description('list VMs (KIND: vm, classic, container, function, sandbox, template)')
    .option('-l, --label <KEY[=VALUE]>', 'only VMs with this label (any value without =VALUE); repeatable, all must match', collect, [])
    .option('--kind <kind>', 'only VMs of this kind (e.g. sandbox)')
    .action(async (o) => {
      const vms = await client().listVms({ ...(o.label.length ? { label: o.label } : {}), ...(o.kind ? { kind: o.kind } : {}) });
      if (json()) return printJson(vms);
      printTable(['ID', 'NAME', 'KIND', 'STATE', 'IMAGE', 'IP', 'PORTS', 'VCPUS', 'MEMORY', 'AGE', 'LABELS'],
        vms.map((v) => [v.id, v.name, v.kind, v.state, v.image.name ?? v.image.id, v.ip ?? '-', v.ports.map(portText).join(', '), v.vcpus, `${v.memory_mib}M`, age(v.created_at), labelText(v.labels)]));
    });

  vm.command('get').alias('inspect').argument('<vm>', 'id or name').description('show a VM and its boot timeline')
    .action(async (id: string) => show(await client().getVm(id)));

  vm.command('stop').argument('<vm>').option('--grace <ms>', 'time the workload gets after SIGTERM', Number)
    .description('stop a VM gracefully').action(async (id: string, o) => show(await client().stopVm(id, { graceMs: o.grace })));
  vm.command('start').argument('<vm>').option('--no-wait', 'return at once').description('start a stopped VM')
    .action(async (id: string, o) => show(await client().startVm(id, { wait: o.wait })));
  vm.command('resize').argument('<vm>').requiredOption('--disk-size <gib>', 'new disk size in GiB (disks only grow)', Number)
    .description('grow a stopped classic VM\'s disk (offline: e2fsck + resize2fs)')
    .action(async (id: string, o) => show(await client().resizeVmDisk(id, o.diskSize)));
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

/** `-v data:/data`, `-v data:/data:ro`, `-v /host/dir:/mnt` (host directories are always read-only). */
function parseVolumeFlag(spec: string): { volume?: string; host_path?: string; target: string; read_only?: boolean } {
  const parts = spec.split(':');
  const ro = parts.length === 3 && parts[2] === 'ro';
  if (parts.length < 2 || parts.length > 3 || (parts.length === 3 && !ro && parts[2] !== 'rw')) {
    throw new Error(`--volume must be SRC:TARGET[:ro|rw], got ${JSON.stringify(spec)}`);
  }
  const [src, target] = parts as [string, string];
  return src.startsWith('/') ? { host_path: src, target } : { volume: src, target, ...(ro ? { read_only: true } : {}) };
}
