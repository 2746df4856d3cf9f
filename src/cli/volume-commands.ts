import { Command } from 'commander';
import type { KilnClient, Volume } from '../sdk/client.ts';
import { age, bytes, printJson, printTable } from './output.ts';

export function volumeCommands(client: () => KilnClient, json: () => boolean): Command {
  const volumes = new Command('volumes').alias('volume').description('manage persistent volumes');
  const row = (v: Volume) => [v.id, v.name, `${v.size_mib} MiB`, bytes(v.allocated_bytes), v.attached_to.join(',') || '-', age(v.created_at)];
  const head = ['ID', 'NAME', 'SIZE', 'ALLOCATED', 'ATTACHED TO', 'AGE'];

  volumes.command('create').argument('<name>').requiredOption('--size <mib>', 'size in MiB').description('create a sparse ext4 volume')
    .action(async (name: string, o) => {
      const v = await client().createVolume(name, Number(o.size));
      if (json()) printJson(v);
      else printTable(head, [row(v)]);
    });
  volumes.command('ls').alias('list').description('list volumes').action(async () => {
    const list = await client().listVolumes();
    if (json()) printJson(list);
    else printTable(head, list.map(row));
  });
  volumes.command('get').argument('<volume>').description('show a volume').action(async (id: string) => {
    const v = await client().getVolume(id);
    if (json()) printJson(v);
    else printTable(head, [row(v)]);
  });
  volumes.command('rm').alias('delete').argument('<volume...>').description('delete volumes no VM has attached').action(async (ids: string[]) => {
    for (const id of ids) {
      await client().deleteVolume(id);
      if (!json()) process.stdout.write(`${id}\n`);
    }
  });
  return volumes;
}
