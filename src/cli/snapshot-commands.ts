import { Command } from 'commander';
import type { KilnClient, Snapshot, Template } from '../sdk/client.ts';
import { age, bytes, printJson, printTable } from './output.ts';

export function snapshotCommands(client: () => KilnClient, json: () => boolean): Command {
  const snap = new Command('snapshot').alias('snapshots').description('snapshot VMs; restore with `kiln vm create --snapshot`');
  const head = ['ID', 'VM', 'MEMORY', 'SIZE', 'CLONES', 'TEMPLATE', 'AGE'];
  const row = (s: Snapshot) => [s.id, s.source_vm ?? '-', s.memory, bytes(s.size_bytes), String(s.clones.length), s.template ?? '-', age(s.created_at)];
  const show = (s: Snapshot) => (json() ? printJson(s) : printTable(head, [row(s)]));

  snap.command('create').argument('<vm>').option('--no-resume', 'leave the VM paused afterwards').description('snapshot a ready or paused VM')
    .action(async (vm: string, o) => show(await client().createSnapshot(vm, { resume: o.resume })));
  snap.command('ls').alias('list').description('list snapshots').action(async () => {
    const list = await client().listSnapshots();
    if (json()) printJson(list);
    else printTable(head, list.map(row));
  });
  snap.command('get').argument('<snapshot>').description('show a snapshot').action(async (id: string) => {
    const s = await client().getSnapshot(id);
    if (json()) return printJson(s);
    printTable(head, [row(s)]);
    printTable(['file', 'size', 'sha256'], s.files.map((f) => [f.name, bytes(f.size), f.sha256 ?? '(size only)']));
  });
  snap.command('rm').alias('delete').argument('<snapshot...>').description('delete snapshots (refused while clones run)').action(async (ids: string[]) => {
    for (const id of ids) {
      await client().deleteSnapshot(id);
      if (!json()) process.stdout.write(`${id}\n`);
    }
  });
  return snap;
}

export function templateCommands(client: () => KilnClient, json: () => boolean): Command {
  const tpl = new Command('templates').alias('template').description('golden snapshots per image; clone with `kiln vm create --template`');
  const head = ['ID', 'IMAGE', 'VCPUS', 'MEMORY', 'STATE', 'SNAPSHOT', 'AGE'];
  const row = (t: Template) => [t.id, t.image, String(t.vcpus), `${t.memory_mib} MiB`, t.state_reason ? `${t.state}: ${t.state_reason}` : t.state, t.snapshot ?? '-', age(t.created_at)];
  const show = (t: Template) => (json() ? printJson(t) : printTable(head, [row(t)]));

  tpl.command('create').argument('<image>').option('--vcpus <n>', 'virtual CPUs', Number).option('--memory <mib>', 'memory in MiB', Number)
    .description('get or build the template of an image (boots it once)')
    .action(async (image: string, o) => show(await client().createTemplate(image, { vcpus: o.vcpus, memoryMib: o.memory })));
  tpl.command('ls').alias('list').description('list templates').action(async () => {
    const list = await client().listTemplates();
    if (json()) printJson(list);
    else printTable(head, list.map(row));
  });
  tpl.command('get').argument('<template>').description('show a template').action(async (id: string) => show(await client().getTemplate(id)));
  tpl.command('rm').alias('delete').argument('<template...>').description('delete templates (refused while clones run)').action(async (ids: string[]) => {
    for (const id of ids) {
      await client().deleteTemplate(id);
      if (!json()) process.stdout.write(`${id}\n`);
    }
  });
  return tpl;
}
