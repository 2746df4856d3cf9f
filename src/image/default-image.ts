// The tiny busybox image kiln ships so a fresh install has something to boot: built at first
// start from the host's busybox-static, registered as image "default".
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { KilnError } from '../errors.ts';
import { run } from '../util/process.ts';
import type { ImageRecord } from '../store/store.ts';
import { buildRootfs } from './builders/builders.ts';
import type { ImageService } from './image-service.ts';

export const DEFAULT_IMAGE_NAME = 'default';
const BUSYBOX_CANDIDATES = ['/bin/busybox', '/usr/bin/busybox'];

async function findStaticBusybox(): Promise<string> {
  for (const p of BUSYBOX_CANDIDATES) {
    const head = await fs.readFile(p).catch(() => null);
    // A dynamically linked busybox has a PT_INTERP naming the host's loader.
    if (head && !head.subarray(0, 4096).includes('/lib64/ld-linux')) return p;
  }
  throw new KilnError('KILN_ERR_HOST_SETUP', 'a static busybox is needed for the default image: apt-get install busybox-static');
}

export async function buildBusyboxTree(dir: string): Promise<void> {
  const busybox = await findStaticBusybox();
  for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc', 'root', 'tmp', 'proc', 'sys', 'dev', 'run', 'var/tmp']) {
    await fs.mkdir(path.join(dir, d), { recursive: true });
  }
  await fs.chmod(path.join(dir, 'tmp'), 0o1777);
  await fs.copyFile(busybox, path.join(dir, 'bin/busybox'));
  await fs.chmod(path.join(dir, 'bin/busybox'), 0o755);
  const { stdout } = await run(busybox, ['--list-full']);
  for (const applet of stdout.split('\n').filter(Boolean)) {
    if (applet === 'bin/busybox') continue;
    const target = path.relative(path.dirname(applet), 'bin/busybox');
    await fs.symlink(target, path.join(dir, applet)).catch((e) => {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    });
  }
  await fs.writeFile(path.join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n');
  await fs.writeFile(path.join(dir, 'etc/group'), 'root:x:0:\nnogroup:x:65534:\n');
}

/** The default image's command: also how kiln knows an image named "default" is its own. */
const DEFAULT_CMD = ['/bin/sh', '-c', 'echo "kiln default image on $(uname -sr), hostname $(hostname)"; while :; do sleep 3600; done'];

export async function ensureDefaultImage(images: ImageService): Promise<ImageRecord> {
  const img = (await images.list()).find((i) => i.name === DEFAULT_IMAGE_NAME)
    ?? await withBusyboxTree((tree) => images.importDir(DEFAULT_IMAGE_NAME, tree, { cmd: DEFAULT_CMD, env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' } }));
  // In a cluster the image may have been built on another node: if every node holding a copy
  // is lost, this one builds its own from its own busybox rather than fail the boot. Only for
  // kiln's own: a user's image imported as "default" (after deleting kiln's) is not rebuilt as busybox.
  if (img.source === null && JSON.stringify(img.config.cmd) === JSON.stringify(DEFAULT_CMD)) {
    images.addLocalBuilder((i) => i.id !== img.id ? undefined
      : (dest, format) => withBusyboxTree(async (tree) => void (await buildRootfs(tree, dest, format))));
  }
  return img;
}

async function withBusyboxTree<T>(use: (tree: string) => Promise<T>): Promise<T> {
  const tree = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-default-image-'));
  try {
    await buildBusyboxTree(tree);
    return await use(tree);
  } finally {
    await fs.rm(tree, { recursive: true, force: true });
  }
}
