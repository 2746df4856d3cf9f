// Images: a root filesystem file every VM of that image boots from, shared, never copied.
// Sources: OCI registries (pulled, flattened and converted once per manifest digest), host
// directories and uploaded tars. Records are content-addressed; a pull in progress is a
// 'pulling' record that nothing can boot, removed again if the pull fails.
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { failpoint } from '../util/failpoints.ts';
import { KilnError, asKilnError } from '../errors.ts';
import type { EventBus } from '../events/event-bus.ts';
import type { ImageConfig, ImageRecord, Store } from '../store/store.ts';
import type { GcResult } from '../api/schemas.ts';
import { tempSibling } from '../util/atomic.ts';
import { KeyedLock } from '../util/keyed-lock.ts';
import { buildRootfs, pickFormat, type ImageFormat } from './builders/builders.ts';
import { STAGING_PREFIX, convertPulled, type ConvertProgress } from './convert.ts';
import { unpackTar } from './flatten/flatten.ts';
import { DEFAULT_UNPACK_LIMITS, type UnpackLimits } from './flatten/root-writer.ts';
import { BlobStore } from './oci/blob-store.ts';
import { parseImageReference } from './oci/reference.ts';
import type { PullOptions, PullProgress, PulledImage } from './oci/types.ts';

export const DEFAULT_IMAGE_CONFIG: ImageConfig = { cmd: ['/bin/sh'], env: {}, workdir: '/', user: '0:0' };

export type Puller = (ref: string, opts: PullOptions, onProgress?: (p: PullProgress) => void) => Promise<PulledImage>;

export interface PullRequest {
  ref: string;
  insecure?: boolean;
  format?: ImageFormat;
}

async function du(p: string): Promise<number> {
  const st = await fs.lstat(p).catch(() => null);
  if (!st) return 0;
  if (!st.isDirectory()) return st.blocks * 512;
  let n = 0;
  for (const c of await fs.readdir(p)) n += await du(path.join(p, c));
  return n;
}

export interface ImageServiceOptions {
  stateDir: string;
  /** What a pulled or uploaded image may unpack to; defaults to DEFAULT_UNPACK_LIMITS. */
  limits?: UnpackLimits;
  puller: Puller;
  insecureRegistries?: string[];
  credentialsFile?: string;
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(file), h);
  return `sha256:${h.digest('hex')}`;
}

/** Progress events are persisted: at most this often per pull, plus every phase change. */
const PROGRESS_INTERVAL_MS = 250;

export class ImageService {
  private readonly inflight = new Map<string, Promise<ImageRecord>>();
  /** Imports under way (directory, rootfs file, uploaded tar): GC must not touch their files. */
  private importing = 0;
  private readonly startLock = new KeyedLock();
  readonly imagesDir: string;

  private get limits(): UnpackLimits {
    return this.opts.limits ?? DEFAULT_UNPACK_LIMITS;
  }

  constructor(
    private readonly store: Store,
    private readonly bus: EventBus,
    private readonly opts: ImageServiceOptions,
  ) {
    this.imagesDir = path.join(opts.stateDir, 'images');
  }

  /**
   * At daemon start: a pull that was running when kilnd stopped left a 'pulling' record and
   * maybe a staging tree, a converted file not yet recorded, and layer blobs no image lists;
   * none of it is an image. Nothing is in flight yet, so the GC's sweep of unrecorded files
   * and blobs removes exactly that.
   */
  async recover(): Promise<void> {
    for (const img of await this.store.listImages()) {
      if (img.state === 'pulling') await this.store.deleteImage(img.id);
    }
    // Publishes what it removed (image.gc).
    await this.gc();
  }

  async get(idOrName: string): Promise<ImageRecord> {
    const img = await this.store.getImage(idOrName);
    if (!img) throw new KilnError('KILN_ERR_IMAGE_NOT_FOUND', `no image ${JSON.stringify(idOrName)}`);
    return img;
  }

  list(): Promise<ImageRecord[]> {
    return this.store.listImages();
  }

  // ---- registry pulls ------------------------------------------------------------------------

  /**
   * Starts (or joins) the pull of `req.ref`. Returns the record at once — 'ready' if this ref
   * was pulled before, else 'pulling' — and the promise of the finished image. Concurrent
   * pulls of one ref share one download and one conversion.
   */
  pull(req: PullRequest): Promise<{ image: ImageRecord; done: Promise<ImageRecord> }> {
    const ref = parseImageReference(req.ref).canonical;
    // The check-then-insert below spans awaits: serialise it per ref so a second caller finds the first's pull.
    return this.startLock.run(ref, () => this.startPull(ref, req));
  }

  private async startPull(ref: string, req: PullRequest): Promise<{ image: ImageRecord; done: Promise<ImageRecord> }> {
    const existing = await this.store.getImage(ref);
    if (existing?.state === 'ready' && (!req.format || req.format === existing.format)) {
      return { image: existing, done: Promise.resolve(existing) };
    }
    const key = `${ref}\0${req.format ?? ''}`;
    const running = this.inflight.get(key);
    if (running && existing) return { image: existing, done: running };
    if (existing?.state === 'ready') {
      throw new KilnError('KILN_ERR_NAME_CONFLICT', `${ref} is already pulled as ${existing.format}; delete it to convert it to ${req.format}`);
    }
    const id = `img-${createHash('sha256').update(ref).digest('hex').slice(0, 12)}`;
    const placeholder: ImageRecord = {
      id, name: ref, digest: '', format: req.format ?? 'squashfs', path: '', sizeBytes: 0, config: DEFAULT_IMAGE_CONFIG,
      createdAt: Date.now(), state: 'pulling', source: ref, manifestDigest: null, layers: [], builder: null,
    };
    await this.store.insertImage(placeholder);
    this.bus.publish('image.pulling', null, { id, ref });
    const done = this.runPull(placeholder, req).finally(() => this.inflight.delete(key));
    this.inflight.set(key, done);
    done.catch(() => {});
    return { image: placeholder, done };
  }

  private async runPull(rec: ImageRecord, req: PullRequest): Promise<ImageRecord> {
    const t0 = performance.now();
    let last = 0;
    let lastPhase = '';
    const progress = (data: { phase: string }) => {
      const now = performance.now();
      if (data.phase === lastPhase && now - last < PROGRESS_INTERVAL_MS) return;
      last = now;
      lastPhase = data.phase;
      this.bus.publish('image.progress', null, { id: rec.id, ref: rec.name, ...data });
    };
    try {
      const pulled = await this.opts.puller(rec.name, {
        stateDir: this.opts.stateDir,
        insecure: req.insecure,
        insecureRegistries: this.opts.insecureRegistries,
        credentialsFile: this.opts.credentialsFile,
      }, progress);
      const pullMs = performance.now() - t0;
      failpoint('image.pull:after');
      const layers = pulled.layers.map((l) => l.digest);
      // Same manifest already converted under another ref (or tag): share its file.
      const twin = (await this.store.listImages()).find(
        (i) => i.state === 'ready' && i.manifestDigest === pulled.manifestDigest && (!req.format || i.format === req.format),
      );
      let patch: Partial<ImageRecord>;
      let convertMs = 0;
      if (twin) {
        patch = { path: twin.path, format: twin.format, sizeBytes: twin.sizeBytes, config: twin.config, builder: twin.builder };
      } else {
        const t1 = performance.now();
        const r = await convertPulled(pulled, this.imagesDir, { format: req.format, onProgress: (p: ConvertProgress) => progress(p), limits: this.limits });
        convertMs = performance.now() - t1;
        // The converted file is in its final place and the record still says pulling.
        failpoint('image.convert:after');
        patch = { path: r.path, format: r.format, sizeBytes: r.sizeBytes, config: r.config, builder: r.builder || null };
      }
      const ready = await this.store.updateImage(rec.id, {
        ...patch, state: 'ready', digest: pulled.manifestDigest, manifestDigest: pulled.manifestDigest, layers: [pulled.configDigest, ...layers],
      });
      this.bus.publish('image.created', null, {
        id: ready.id, name: ready.name, digest: ready.digest, format: ready.format, builder: ready.builder,
        pull_ms: Math.round(pullMs), convert_ms: Math.round(convertMs), shared_with: twin?.id ?? null,
      });
      return ready;
    } catch (e) {
      const err = asKilnError(e);
      await this.store.deleteImage(rec.id);
      this.bus.publish('image.failed', null, { id: rec.id, ref: rec.name, code: err.code, message: err.message });
      throw err;
    }
  }

  /**
   * The image a VM asks for: an existing id/name, else a registry reference, pulled on demand
   * (waits for it). Refuses images that are still pulling for someone else only by waiting.
   */
  async resolveForVm(idOrRef: string): Promise<ImageRecord> {
    const have = await this.store.getImage(idOrRef);
    if (have?.state === 'ready') return have;
    // A bare word ("mytree") names a local image; only something reference-shaped (a path, a
    // tag or a digest: "alpine:3.19", "library/alpine", "ghcr.io/org/app@sha256:…") is pulled.
    // So a typo in a local name is a 404, not an attempt to reach docker.io.
    const notFound = () => new KilnError('KILN_ERR_IMAGE_NOT_FOUND',
      `no image ${JSON.stringify(idOrRef)}; to pull it from a registry, name it fully (e.g. docker.io/library/${idOrRef}:latest)`);
    if (!/[/:@]/.test(idOrRef)) throw notFound();
    let ref: string;
    try {
      ref = parseImageReference(idOrRef).canonical;
    } catch {
      throw notFound();
    }
    const byRef = await this.store.getImage(ref);
    if (byRef?.state === 'ready') return byRef;
    return (await this.pull({ ref })).done;
  }

  // ---- imports -------------------------------------------------------------------------------

  /** Builds an image from a host directory (the caller has checked the path is allowed). */
  async importDir(name: string, dir: string, config: Partial<ImageConfig> = {}, format?: ImageFormat): Promise<ImageRecord> {
    this.importing++;
    try {
      const st = await fs.stat(dir).catch(() => null);
      if (!st?.isDirectory()) throw new KilnError('KILN_ERR_VALIDATION', `${dir} is not a directory`);
      await this.assertNameFree(name);
      await fs.mkdir(this.imagesDir, { recursive: true });
      const fmt = await pickFormat(format);
      const tmp = tempSibling(path.join(this.imagesDir, 'import'));
      try {
        const built = await buildRootfs(dir, tmp, fmt);
        return await this.adopt(name, tmp, fmt, built.builder, config);
      } finally {
        await fs.rm(tmp, { force: true });
      }
    } finally {
      this.importing--;
    }
  }

  /**
   * Registers an already built root filesystem file (e.g. a recipe's cached build). The file
   * is cloned into the image store (a reflink where the filesystem has them), never moved.
   */
  async importRootfsFile(name: string, file: string, format: ImageFormat, builder: string | null, config: Partial<ImageConfig> = {}): Promise<ImageRecord> {
    this.importing++;
    try {
      await this.assertNameFree(name);
      await fs.mkdir(this.imagesDir, { recursive: true });
      const tmp = tempSibling(path.join(this.imagesDir, 'import'));
      try {
        await fs.copyFile(file, tmp, fs.constants.COPYFILE_FICLONE);
        return await this.adopt(name, tmp, format, builder, config);
      } finally {
        await fs.rm(tmp, { force: true });
      }
    } finally {
      this.importing--;
    }
  }

  private async assertNameFree(name: string): Promise<void> {
    if (await this.store.getImage(name)) throw new KilnError('KILN_ERR_NAME_CONFLICT', `an image named ${JSON.stringify(name)} already exists`);
  }

  /** Moves a finished rootfs file (tmp) to its content address and records the image. */
  private async adopt(name: string, tmp: string, fmt: ImageFormat, builder: string | null, config: Partial<ImageConfig>): Promise<ImageRecord> {
    const digest = await sha256File(tmp);
    const id = `img-${digest.slice(7, 19)}`;
    const dest = path.join(this.imagesDir, id, `rootfs.${fmt}`);
    if (!(await fs.stat(dest).catch(() => null))) {
      await fs.mkdir(path.dirname(dest), { recursive: true });
      await fs.rename(tmp, dest);
    }
    const dup = await this.store.getImageByDigest(digest);
    const record: ImageRecord = {
      // Same tree under a new name: a second record pointing at the same file.
      id: dup ? `img-${randomBytes(6).toString('hex')}` : id,
      name,
      digest,
      format: fmt,
      path: dest,
      sizeBytes: (await fs.stat(dest)).size,
      config: { ...DEFAULT_IMAGE_CONFIG, ...config },
      createdAt: Date.now(),
      state: 'ready',
      source: null,
      manifestDigest: null,
      layers: [],
      builder,
    };
    await this.store.insertImage(record);
    this.bus.publish('image.created', null, { id: record.id, name, digest, format: fmt, builder });
    return record;
  }

  /** Builds an image from a tar stream (what `kiln images import DIR` uploads). */
  async importTar(name: string, body: Readable, config: Partial<ImageConfig> = {}): Promise<ImageRecord> {
    this.importing++;
    try {
      await fs.mkdir(this.imagesDir, { recursive: true });
      const tree = await fs.mkdtemp(path.join(this.imagesDir, STAGING_PREFIX));
      try {
        // The same reader, rules and limits as a registry layer (src/image/flatten): the upload's
        // size says nothing of what a compressed tar unpacks to.
        await unpackTar(body, tree, this.limits);
        return await this.importDir(name, tree, config);
      } catch (e) {
        if (e instanceof KilnError) throw e;
        throw new KilnError('KILN_ERR_VALIDATION', `could not unpack the uploaded tar: ${(e as Error).message}`);
      } finally {
        await fs.rm(tree, { recursive: true, force: true });
      }
    } finally {
      this.importing--;
    }
  }

  // ---- deletion and GC -----------------------------------------------------------------------

  /**
   * Removes what no image record refers to: image files and staging trees left by crashes,
   * and registry blobs no image's manifest lists. With `images: true`, first deletes every
   * ready image no VM uses (the default image excepted). Nothing a VM or a running pull uses
   * is touched.
   */
  async gc(opts: { images?: boolean; keep?: string[] } = {}): Promise<GcResult> {
    const res: GcResult = { removed_images: [], removed_files: 0, removed_blobs: 0, freed_bytes: 0, skipped_in_flight: this.inflight.size > 0 || this.importing > 0 };
    if (opts.images) {
      for (const img of await this.store.listImages()) {
        if (img.state !== 'ready' || opts.keep?.includes(img.name)) continue;
        if ((await this.store.countVmsUsingImage(img.id)) > 0) continue;
        const before = await du(path.dirname(img.path));
        await this.delete(img.id).catch(() => {});
        if (!(await this.store.getImage(img.id))) {
          res.removed_images.push(img.id);
          if (!(await fs.stat(img.path).catch(() => null))) res.freed_bytes += before;
        }
      }
    }
    const images = await this.store.listImages();
    const usedDirs = new Set(images.filter((i) => i.path).map((i) => path.basename(path.dirname(i.path))));
    for (const f of await fs.readdir(this.imagesDir).catch(() => [] as string[])) {
      // While a pull or an import runs, anything unrecorded may be its output on the way to
      // its record (a staging tree, a temp file, a finished dir not yet recorded): kept.
      if (usedDirs.has(f) || res.skipped_in_flight) continue;
      const p = path.join(this.imagesDir, f);
      res.freed_bytes += await du(p);
      await fs.rm(p, { recursive: true, force: true });
      res.removed_files++;
    }
    if (!res.skipped_in_flight) {
      const blobs = BlobStore.forStateDir(this.opts.stateDir);
      const used = new Set(images.flatMap((i) => i.layers));
      for (const d of await blobs.list()) {
        if (used.has(d)) continue;
        res.freed_bytes += await du(blobs.path(d));
        await blobs.remove(d).then(() => res.removed_blobs++, () => {});
      }
      await blobs.cleanTemp();
    }
    this.bus.publish('image.gc', null, { ...res });
    return res;
  }

  async delete(idOrName: string): Promise<void> {
    const img = await this.get(idOrName);
    if (img.state === 'pulling') throw new KilnError('KILN_ERR_INVALID_STATE', `image ${img.name} is still being pulled`);
    const users = await this.store.countVmsUsingImage(img.id);
    if (users > 0) throw new KilnError('KILN_ERR_IMAGE_IN_USE', `image ${img.name} is used by ${users} VM(s)`);
    await this.store.deleteImage(img.id);
    const sharers = (await this.store.listImages()).filter((i) => i.path === img.path);
    if (sharers.length === 0 && img.path) await fs.rm(path.dirname(img.path), { recursive: true, force: true });
    this.bus.publish('image.deleted', null, { id: img.id, name: img.name });
  }
}
