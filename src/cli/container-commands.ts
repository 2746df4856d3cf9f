// Docker-shaped container commands: run, ps, logs, stop, start, rm, exec (kiln exec works on
// containers as on VMs), stats, pause, unpause, inspect.
import { Command, Option } from 'commander';
import type { Container, ContainerLogItem, KilnClient } from '../sdk/client.ts';
import { parsePublish } from './vm-commands.ts';
import { age, bytes, printJson, printTable } from './output.ts';

const collect = (v: string, prev: string[]) => [...prev, v];

/** Docker's -v: SRC:DST[:ro|rw]; an absolute SRC is a host directory (kiln attaches those read-only, so :ro is required). */
export function parseContainerVolume(spec: string): { volume?: string; host_path?: string; target: string; read_only: boolean } {
  const parts = spec.split(':');
  if (parts.length < 2 || parts.length > 3 || (parts.length === 3 && parts[2] !== 'ro' && parts[2] !== 'rw') || !parts[0] || !parts[1]) {
    throw new Error(`-v wants SRC:DST[:ro|rw], got ${JSON.stringify(spec)}`);
  }
  const [src, target] = parts as [string, string];
  const readOnly = parts[2] === 'ro';
  return src.startsWith('/') ? { host_path: src, target, read_only: readOnly } : { volume: src, target, read_only: readOnly };
}

export function parseEnvFlag(kv: string): [string, string] {
  const i = kv.indexOf('=');
  // Docker's `-e NAME` passes the caller's value through.
  if (i < 0) return [kv, process.env[kv] ?? ''];
  return [kv.slice(0, i), kv.slice(i + 1)];
}

const stateText = (c: Container) => (c.state === 'exited' ? `exited (${c.exit_code ?? '?'})` : c.state);
const portsText = (c: Container) => c.ports.map((p) => `${p.host}->${p.guest}/${p.proto}`).join(', ');
const shorten = (s: string, n: number) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);

/** Writes pieces of output to stdout/stderr; resolves with the end item, if the stream had one. */
async function pipeLogs(items: AsyncIterable<ContainerLogItem>, timestamps: boolean): Promise<Extract<ContainerLogItem, { end: unknown }>['end'] | null> {
  const atLineStart = { stdout: true, stderr: true };
  for await (const item of items) {
    if ('end' in item) return item.end;
    const out = item.stream === 'stderr' ? process.stderr : process.stdout;
    const prefix = timestamps && atLineStart[item.stream] ? `${item.ts} ` : '';
    out.write(prefix + item.text + (item.partial ? '' : '\n'));
    atLineStart[item.stream] = !item.partial;
  }
  return null;
}

export function containerCommands(client: () => KilnClient, json: () => boolean): Command[] {
  const show = (c: Container) => (json() ? printJson(c) : console.log(c.id));

  const run = new Command('run')
    .description('create and start a container from an image; without -d, stream its output and exit with its exit code')
    .argument('<image>', 'image id, name or registry reference (pulled if absent)')
    .argument('[cmd...]', 'command (replaces the image’s cmd; put options for it after --)')
    .option('-d, --detach', 'print the container id and return once it started')
    .option('--rm', 'remove the container when it exits')
    .option('--name <name>', 'container name')
    .option('-e, --env <K=V>', 'environment variable (repeatable)', collect, [])
    .option('-p, --publish <host:guest[/proto]>', 'publish a host port (repeatable)', collect, [])
    .option('-v, --volume <SRC:DST[:ro]>', 'named volume, or host directory with :ro (repeatable)', collect, [])
    .option('--entrypoint <cmd>', 'replace the image’s entrypoint (resets its cmd; "" clears it)')
    .option('-w, --workdir <dir>', 'working directory')
    .option('-u, --user <user>', 'name|uid[:group|gid] from the image’s /etc/passwd and /etc/group')
    .option('--restart <policy>', 'no | on-failure[:N] | always', 'no')
    .option('--cpus <n>', 'virtual CPUs', Number)
    .option('-m, --memory <mib>', 'memory in MiB (default 128)', Number)
    // As docker: everything after the image is the command, options included.
    .passThroughOptions()
    .action(async (image: string, cmd: string[], o) => {
      if (o.rm && o.restart !== 'no') throw new Error(`--rm and --restart ${o.restart} conflict: a container cannot be both removed and restarted on exit`);
      const c = client();
      const created = await c.createContainer({
        image,
        ...(o.name ? { name: o.name } : {}),
        ...(cmd.length ? { cmd } : {}),
        ...(o.entrypoint !== undefined ? { entrypoint: o.entrypoint === '' ? [] : [o.entrypoint] } : {}),
        ...(o.env.length ? { env: Object.fromEntries((o.env as string[]).map(parseEnvFlag)) } : {}),
        ...(o.workdir ? { workdir: o.workdir } : {}),
        ...(o.user ? { user: o.user } : {}),
        ...(o.publish.length ? { ports: (o.publish as string[]).map(parsePublish) } : {}),
        ...(o.volume.length ? { volumes: (o.volume as string[]).map(parseContainerVolume) } : {}),
        ...(o.restart !== 'no' ? { restart: o.restart } : {}),
        // Attached, the CLI removes it after reading its end: a container that exits before the
        // log stream is opened must not be gone (with its output) by then.
        ...(o.rm && o.detach ? { auto_remove: true } : {}),
        ...(o.cpus ? { vcpus: o.cpus } : {}),
        ...(o.memory ? { memory_mib: o.memory } : {}),
      }, { wait: Boolean(o.detach) });
      if (o.detach) return show(created);
      // Attached: ^C stops the container (SIGTERM, then SIGKILL after the grace), like docker run.
      process.once('SIGINT', () => void c.stopContainer(created.id).catch(() => {}));
      const end = await pipeLogs(c.containerLogStream(created.id, { follow: true }), false);
      let code = end?.exit_code ?? 125;
      if (end?.state === 'failed') {
        const why = await c.getContainer(created.id).then((x) => x.state_reason, () => null);
        process.stderr.write(`kiln: container ${created.name} failed${why ? `: ${why}` : ''}\n`);
        code = 125;
      }
      if (o.rm) await c.removeContainer(created.id, { force: true }).catch(() => {});
      process.exit(code);
    });

  const ps = new Command('ps').description('list containers').option('-a, --all', 'also exited and failed ones').action(async (o) => {
    const list = await client().listContainers({ all: Boolean(o.all) });
    if (json()) return printJson(list);
    printTable(['CONTAINER ID', 'NAME', 'IMAGE', 'COMMAND', 'STATE', 'RESTARTS', 'IP', 'PORTS', 'CREATED'],
      list.map((c) => [c.id, c.name, shorten(c.image, 40), shorten(JSON.stringify(c.command.join(' ')), 30), stateText(c), c.restart_count, c.ip ?? '-', portsText(c), age(c.created_at)]));
  });

  const logs = new Command('logs').description('a container’s stdout and stderr')
    .argument('<container>')
    .option('-f, --follow', 'keep streaming until the container exits')
    .option('-t, --timestamps', 'prefix each line with when kilnd received it (RFC 3339)')
    .option('--tail <n>', 'only the last N pieces of output', Number)
    .action(async (id: string, o) => {
      const c = client();
      if (!o.follow) {
        process.stdout.write(await c.containerLogs(id, { timestamps: o.timestamps, tail: o.tail }));
        return;
      }
      await pipeLogs(c.containerLogStream(id, { follow: true, tail: o.tail }), Boolean(o.timestamps));
    });

  const stop = new Command('stop').description('stop containers: SIGTERM, then SIGKILL after the grace period')
    .argument('<container...>')
    .addOption(new Option('-t, --time <secs>', 'seconds to wait after SIGTERM before SIGKILL').argParser(Number))
    .action(async (ids: string[], o) => {
      for (const id of ids) show(await client().stopContainer(id, o.time === undefined ? {} : { graceMs: Math.round(o.time * 1000) }));
    });

  const start = new Command('start').description('start stopped containers').argument('<container...>').action(async (ids: string[]) => {
    for (const id of ids) show(await client().startContainer(id));
  });

  const rm = new Command('rm').description('remove containers').argument('<container...>').option('-f, --force', 'kill and remove running ones')
    .action(async (ids: string[], o) => {
      for (const id of ids) {
        await client().removeContainer(id, { force: Boolean(o.force) });
        console.log(id);
      }
    });

  const pause = new Command('pause').description('freeze containers').argument('<container...>').action(async (ids: string[]) => {
    for (const id of ids) show(await client().pauseContainer(id));
  });
  const unpause = new Command('unpause').description('continue paused containers').argument('<container...>').action(async (ids: string[]) => {
    for (const id of ids) show(await client().resumeContainer(id));
  });

  const stats = new Command('stats').description('CPU and memory of containers (one sample of --interval ms each)')
    .argument('<container...>')
    .option('--interval <ms>', 'time between the two samples', Number)
    .action(async (ids: string[], o) => {
      const all = await Promise.all(ids.map((id) => client().containerStats(id, { intervalMs: o.interval })));
      if (json()) return printJson(all);
      printTable(['CONTAINER ID', 'NAME', 'CPU %', 'GUEST CPU %', 'MEM USAGE / LIMIT', 'MEM %', 'PROCESS RSS'],
        all.map((s) => [s.id, s.name, `${s.cpu_percent.toFixed(2)}%`, `${s.guest_cpu_percent.toFixed(2)}%`,
          `${bytes(s.memory_usage_bytes)} / ${bytes(s.memory_limit_bytes)}`,
          `${s.memory_limit_bytes ? ((s.memory_usage_bytes / s.memory_limit_bytes) * 100).toFixed(2) : '0.00'}%`, bytes(s.workload_rss_bytes)]));
    });

  const inspect = new Command('inspect').description('a container as JSON').argument('<container>')
    .action(async (id: string) => printJson(await client().getContainer(id)));

  return [run, ps, logs, stop, start, rm, pause, unpause, stats, inspect];
}
