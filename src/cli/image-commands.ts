import { Command } from 'commander';
import path from 'node:path';
import * as tar from 'tar';
import type { Image, KilnClient } from '../sdk/client.ts';
import { age, bytes, printJson, printTable } from './output.ts';
import { pullWithProgress } from './pull-progress.ts';

export function imageCommands(client: () => KilnClient, json: () => boolean): Command {
  const images = new Command('images').alias('image').description('manage images');
  const show = (img: Image) => (json() ? printJson(img) : printTable(['ID', 'NAME', 'FORMAT', 'SIZE', 'DIGEST'], [[img.id, img.name, img.format, bytes(img.size_bytes), img.digest.slice(0, 19)]]));

  images.command('ls').alias('list').description('list images').action(async () => {
    const list = await client().listImages();
    if (json()) return printJson(list);
    printTable(['ID', 'NAME', 'STATE', 'FORMAT', 'SIZE', 'COMMAND', 'AGE'], list.map((i) => [
      i.id, i.name, i.state, i.format, bytes(i.size_bytes), JSON.stringify([...(i.config.entrypoint ?? []), ...i.config.cmd]).slice(0, 48), age(i.created_at),
    ]));
  });

  images.command('get').argument('<image>').description('show an image').action(async (id: string) => {
    const img = await client().getImage(id);
    if (json()) printJson(img);
    else printTable(['field', 'value'], [
      ['id', img.id], ['name', img.name], ['state', img.state], ['source', img.source], ['digest', img.digest], ['format', img.format],
      ['builder', img.builder], ['size', bytes(img.size_bytes)], ['layers', String(img.layers.length)],
      ['entrypoint', JSON.stringify(img.config.entrypoint ?? [])], ['cmd', JSON.stringify(img.config.cmd)], ['workdir', img.config.workdir], ['user', img.config.user],
    ]);
  });

  images.command('pull')
    .argument('<ref>', 'registry reference, e.g. docker.io/library/alpine:3.19')
    .option('--insecure', 'allow plain HTTP to this registry (loopback registries always may)')
    .option('--format <format>', 'squashfs (default) | erofs | ext4')
    .option('--no-wait', 'return at once; the pull continues in kilnd')
    .description('pull and convert an image, with progress bars')
    .action(async (ref: string, o) => {
      const body = { ref, ...(o.insecure ? { insecure: true } : {}), ...(o.format ? { format: o.format } : {}) };
      // Progress goes to stderr, so it does not disturb --json output on stdout.
      show(o.wait ? await pullWithProgress(client(), body, false) : await client().pullImage(body));
    });

  images.command('gc')
    .option('--all', 'also delete every image no VM uses (except "default")')
    .description('remove image files, staging trees and layer blobs nothing refers to')
    .action(async (o) => {
      const r = await client().gcImages({ images: Boolean(o.all) });
      if (json()) return printJson(r);
      process.stdout.write(`removed ${r.removed_images.length} images, ${r.removed_files} files, ${r.removed_blobs} blobs; freed ${bytes(r.freed_bytes)}${r.skipped_in_flight ? ' (pulls running: their blobs were kept)' : ''}\n`);
    });

  images.command('import')
    .argument('<dir>', 'directory holding the root filesystem')
    .requiredOption('--name <name>', 'image name')
    .option('--cmd <json>', 'default command, as a JSON array')
    .option('--server-path', 'let kilnd read DIR itself (must be under an allowed root) instead of uploading it')
    .description('import a directory as an image (uploaded as a tar stream)')
    .action(async (dir: string, o) => {
      const cmd = o.cmd ? (JSON.parse(o.cmd) as string[]) : undefined;
      const abs = path.resolve(dir);
      const img = o.serverPath
        ? await client().importImagePath({ name: o.name, path: abs, ...(cmd ? { cmd } : {}) })
        : await client().uploadImage(o.name, tar.c({ cwd: abs, portable: false }, ['.']) as never, cmd ? { cmd } : {});
      show(img);
    });

  images.command('rm').alias('delete').argument('<image...>').description('delete images not used by any VM').action(async (ids: string[]) => {
    for (const id of ids) {
      await client().deleteImage(id);
      if (!json()) process.stdout.write(`${id}\n`);
    }
  });
  return images;
}
