// Images: a directory tree becomes one read-only squashfs that every VM of that image boots
// from, shared, never copied. Content-addressed: importing the same tree twice stores it once.
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar';
import { KilnError } from '../errors.ts';
import type { EventBus } from '../events/event-bus.ts';
import type { ImageConfig, ImageRecord, Store } from '../store/store.ts';
import { mksquashfs } from '../tools/mksquashfs.ts';
import { exists, tempSibling } from '../util/atomic.ts';

export const DEFAULT_IMAGE_CONFIG: ImageConfig = { cmd: ['/bin/sh'], env: {}, workdir: '/', user: '0:0' };

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(file), h);
  return `sha256:${h.digest('hex')}`;
}

export class ImageService {
  constructor(
    private readonly store: Store,
    private readonly bus: EventBus,
    private readonly imagesDir: string,
  ) {}

  async get(idOrName: string): Promise<ImageRecord> {
    const img = await this.store.getImage(idOrName);
    if (!img) throw new KilnError('KILN_ERR_IMAGE_NOT_FOUND', `no image ${JSON.stringify(idOrName)}`);
    return img;
  }

  list(): Promise<ImageRecord[]> {
    return this.store.listImages();
  }

  /** Builds an image from a host directory (the caller has checked the path is allowed). */
  async importDir(name: string, dir: string, config: Partial<ImageConfig> = {}): Promise<ImageRecord> {
    const st = await fs.stat(dir).catch(() => null);
    if (!st?.isDirectory()) throw new KilnError('KILN_ERR_VALIDATION', `${dir} is not a directory`);
    const existing = await this.store.getImage(name);
    if (existing) throw new KilnError('KILN_ERR_NAME_CONFLICT', `an image named ${JSON.stringify(name)} already exists`);
    await fs.mkdir(this.imagesDir, { recursive: true });
    const tmp = tempSibling(path.join(this.imagesDir, 'import'));
    try {
      await mksquashfs(dir, tmp);
      const digest = await sha256File(tmp);
      const id = `img-${digest.slice(7, 19)}`;
      const dest = path.join(this.imagesDir, id, 'rootfs.squashfs');
      if (!(await exists(dest))) {
        await fs.mkdir(path.dirname(dest), { recursive: true });
        await fs.rename(tmp, dest);
      }
      const dup = await this.store.getImageByDigest(digest);
      const record: ImageRecord = {
        // Same tree under a new name: a second record pointing at the same file.
        id: dup ? `img-${randomBytes(6).toString('hex')}` : id,
        name,
        digest,
        format: 'squashfs',
        path: dest,
        sizeBytes: (await fs.stat(dest)).size,
        config: { ...DEFAULT_IMAGE_CONFIG, ...config },
        createdAt: Date.now(),
      };
      await this.store.insertImage(record);
      this.bus.publish('image.created', null, { id: record.id, name, digest });
      return record;
    } finally {
      await fs.rm(tmp, { force: true });
    }
  }

  /** Builds an image from a tar stream (what `kiln images import DIR` uploads). */
  async importTar(name: string, body: Readable, config: Partial<ImageConfig> = {}): Promise<ImageRecord> {
    await fs.mkdir(this.imagesDir, { recursive: true });
    const tree = tempSibling(path.join(this.imagesDir, 'upload'));
    await fs.mkdir(tree, { mode: 0o755 });
    try {
      // As root, tar keeps owners and modes; entries escaping the tree are refused by node-tar.
      await pipeline(body, tar.x({ cwd: tree, preserveOwner: true, strict: true }));
      return await this.importDir(name, tree, config);
    } catch (e) {
      if (e instanceof KilnError) throw e;
      throw new KilnError('KILN_ERR_VALIDATION', `could not unpack the uploaded tar: ${(e as Error).message}`);
    } finally {
      await fs.rm(tree, { recursive: true, force: true });
    }
  }

  async delete(idOrName: string): Promise<void> {
    const img = await this.get(idOrName);
    const users = await this.store.countVmsUsingImage(img.id);
    if (users > 0) throw new KilnError('KILN_ERR_IMAGE_IN_USE', `image ${img.name} is used by ${users} VM(s)`);
    await this.store.deleteImage(img.id);
    const sharers = (await this.store.listImages()).filter((i) => i.path === img.path);
    if (sharers.length === 0) await fs.rm(path.dirname(img.path), { recursive: true, force: true });
    this.bus.publish('image.deleted', null, { id: img.id, name: img.name });
  }
}
