// Images: a root filesystem file every VM of that image boots from, shared, never copied.
// Sources: OCI registries (pulled, flattened and converted once per manifest digest), host
// directories and uploaded tars. Records are content-addressed; a pull in progress is a
// 'pulling' record that nothing can boot, removed again if the pull fails.
//
// The image rows are a catalogue (cluster-wide on PostgreSQL); the files are this node's own,
// each recorded as an image copy under the node's id with its sha256. A record's `path` is
// where the node that made it put it: never read here. A node booting an image it has no
// copy of fetches one from a peer that has (image-fetch.ts), pulls it again, or — for an image
// kiln builds itself (the default image, a recipe's) — builds its own (addLocalBuilder).
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { failpoint } from '../util/failpoints.ts';
import { KilnError, asKilnError } from '../errors.ts';
import type { EventBus } from '../events/event-bus.ts';
import type { ImageConfig, ImageCopy, ImageRecord, NodeRecord, Store } from '../store/store.ts';
import type { GcResult } from '../api/schemas.ts';
import { fsyncFile, tempSibling } from '../util/atomic.ts';
import { KeyedLock } from '../util/keyed-lock.ts';
import { buildRootfs, pickFormat, type ImageFormat } from './builders/builders.ts';
import { STAGING_PREFIX, convertPulled, type ConvertProgress } from './convert.ts';
import { FETCH_PREFIX, fetchImageFile } from './image-fetch.ts';
import { unpackTar } from './flatten/flatten.ts';
import { DEFAULT_UNPACK_LIMITS, type UnpackLimits } from './flatten/root-writer.ts';
import { BlobStore } from './oci/blob-store.ts';
import { parseImageReference } from './oci/reference.ts';
import type { PullOptions, PullProgress, PulledImage } from './oci/types.ts';

export const DEFAULT_IMAGE_CONFIG: ImageConfig = { cmd: ['/bin/sh'], env: {}, workdir: '/', user: '0:0' };

export type Puller = (ref: string, opts: PullOptions, onProgress?: (p: PullProgress) => void) => Promise<PulledImage>;

/**
 * Writes a root filesystem file of `format` at `dest` (a temporary name the caller renames):
 * how a node makes its own copy of an image kiln builds itself, when no peer has one.
 */
export type LocalBuild = (dest: string, format: ImageFormat) => Promise<void>;

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
  /** The id its copies are recorded under: the cluster node's, or LOCAL_NODE on a single host. */
  nodeId?: string;
  /**
   * In a cluster: the token peers accept (the cluster's API token), for fetching image files
   * from them. Absent on a single host: an image without a copy here is pulled again or refused.
   */
  peerToken?: () => string | null;
  /** How long a fetch from a peer may stall (no byte received) before it is abandoned. */
  fetchIdleMs?: number;
}

/** The node id of a single host's copies (it has no cluster node id). */
export const LOCAL_NODE = 'local';

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(file), h);
  return `sha256:${h.digest('hex')}`;
}

/** Progress events are persisted: at most this often per pull, plus every phase change. */
const PROGRESS_INTERVAL_MS = 250;

export class ImageService {
  private readonly inflight = new Map<string, Promise<ImageRecord>>();
  /** Fetches of image files under way, by image id: concurrent boots wait on one. */
  private readonly fetches = new Map<string, Promise<ImageRecord>>();
  private fetching = 0;
  readonly nodeId: string;
  /** Imports under way (directory, rootfs file, uploaded tar): GC must not touch their files. */
  private importing = 0;
  private readonly startLock = new KeyedLock();
  /** Asked in turn how this node builds its own copy of an image (default-image.ts, RecipeBuilder). */
  private readonly localBuilders: ((img: ImageRecord) => LocalBuild | undefined)[] = [];
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
    this.nodeId = opts.nodeId ?? LOCAL_NODE;
  }

  /**
   * At daemon start: a pull that was running when kilnd stopped left a 'pulling' record and
   * maybe a staging tree, a converted file not yet recorded, and layer blobs no image lists;
   * none of it is an image. Nothing is in flight yet, so the GC's sweep of unrecorded files
   * and blobs removes exactly that.
   */
  async recover(): Promise<void> {
    const images = await this.store.listImages();
    for (const img of images) {
      if (img.state !== 'pulling') continue;
      // This node's pull, cut by its stop (or one from before pulls were marked): not another
      // cluster node's, which is still under way.
      const marks = await this.store.listImageCopies({ imageId: img.id });
      if (marks.length === 0 || marks.some((c) => c.nodeId === this.nodeId)) await this.store.deleteImage(img.id);
    }
    // This node's copies: a fetch that a crash interrupted (still 'fetching'), or a file
    // removed behind kiln's back, is no copy. The GC below removes the files.
    const mine = new Map<string, ImageCopy>();
    for (const c of await this.store.listImageCopies({ nodeId: this.nodeId })) {
      if (c.state === 'ready' && (await fs.stat(c.path).catch(() => null))?.isFile()) mine.set(c.imageId, c);
      else await this.store.deleteImageCopy(c.imageId, this.nodeId);
    }
    // Files made before copies were recorded (a store from an older kiln): an image whose
    // path lies in this node's images dir and exists there is this node's copy.
    for (const img of images) {
      if (img.state !== 'ready' || mine.has(img.id) || !this.isOwnPath(img.path)) continue;
      if ((await fs.stat(img.path).catch(() => null))?.isFile()) await this.recordCopy(img.id, img.path);
    }
    // Publishes what it removed (image.gc).
    await this.gc();
  }

  private isOwnPath(p: string): boolean {
    return !!p && p.startsWith(this.imagesDir + path.sep);
  }

  /** Records `file` (complete, in its final place) as this node's copy of the image. */
  private async recordCopy(imageId: string, file: string, sha256?: string): Promise<ImageCopy> {
    const copy: ImageCopy = {
      imageId, nodeId: this.nodeId, path: file, sizeBytes: (await fs.stat(file)).size,
      sha256: sha256 ?? (await sha256File(file)), state: 'ready', updatedAt: Date.now(),
    };
    await this.store.putImageCopy(copy);
    return copy;
  }

  /** This node's complete copy of the image, or null (a copy whose file is gone is forgotten). */
  async localCopy(imageId: string): Promise<ImageCopy | null> {
    const [c] = await this.store.listImageCopies({ imageId, nodeId: this.nodeId });
    if (!c || c.state !== 'ready') return null;
    if ((await fs.stat(c.path).catch(() => null))?.isFile()) return c;
    await this.store.deleteImageCopy(imageId, this.nodeId);
    return null;
  }

  /** The image with `path` set to this node's copy, or '' when it has none (see ensureLocal). */
  async get(idOrName: string): Promise<ImageRecord> {
    const img = await this.store.getImage(idOrName);
    if (!img) throw new KilnError('KILN_ERR_IMAGE_NOT_FOUND', `no image ${JSON.stringify(idOrName)}`);
    if (img.state !== 'ready') return img;
    return { ...img, path: (await this.localCopy(img.id))?.path ?? '' };
  }

  /** Ids of the ready images this node holds a copy of (the heartbeat's report, placement's locality). */
  async localImageIds(): Promise<string[]> {
    return (await this.store.listImageCopies({ nodeId: this.nodeId })).filter((c) => c.state === 'ready').map((c) => c.imageId);
  }

  /**
   * The image with `path` on this node's disk: its copy, else one fetched now from a peer node
   * that has one (verified against the sha256 that node recorded), else — for an image pulled
   * from a registry — pulled again by its manifest digest. Concurrent callers share one fetch.
   */
  async ensureLocal(img: ImageRecord): Promise<ImageRecord> {
    if (img.state !== 'ready') throw new KilnError('KILN_ERR_INVALID_STATE', `image ${img.name} is still being pulled`);
    const have = await this.localCopy(img.id);
    if (have) return { ...img, path: have.path };
    let running = this.fetches.get(img.id);
    if (!running) {
      running = this.fetchCopy(img).finally(() => this.fetches.delete(img.id));
      this.fetches.set(img.id, running);
    }
    return running;
  }

  /**
   * Registers a source of local builds: given an image, how this node builds it itself, or
   * undefined when it is not one of the builder's (each checks the image is kiln's own, not a
   * user's under the same name). The last resort of ensureLocal when no ready peer holds a
   * copy, e.g. in a cluster whose only holders were lost.
   */
  addLocalBuilder(builder: (img: ImageRecord) => LocalBuild | undefined): void {
    this.localBuilders.push(builder);
  }

  private localBuildOf(img: ImageRecord): LocalBuild | undefined {
    for (const b of this.localBuilders) {
      const found = b(img);
      if (found) return found;
    }
    return undefined;
  }

  /** Where this node keeps a copy it fetched: its own directory per image id. */
  private copyPath(img: ImageRecord): string {
    return path.join(this.imagesDir, img.id, `rootfs.${img.format}`);
  }

  private async fetchCopy(img: ImageRecord): Promise<ImageRecord> {
    this.fetching++;
    try {
      // A fetch that finished between the caller's check and this one.
      const again = await this.localCopy(img.id);
      if (again) return { ...img, path: again.path };
      const dest = this.copyPath(img);
      const t0 = performance.now();
      const tried: string[] = [];
      let mismatch: KilnError | null = null;
      const token = this.opts.peerToken?.();
      if (this.opts.peerToken) {
        const nodes = new Map<string, NodeRecord>((await this.store.listNodes()).filter((n) => n.state === 'ready' && n.id !== this.nodeId).map((n) => [n.id, n]));
        // Freshest heartbeat first: the likeliest to answer.
        const sources = (await this.store.listImageCopies({ imageId: img.id }))
          .filter((c) => c.state === 'ready' && nodes.has(c.nodeId))
          .sort((a, b) => nodes.get(b.nodeId)!.heartbeatAt - nodes.get(a.nodeId)!.heartbeatAt);
        if (sources.length) {
          await this.store.putImageCopy({ imageId: img.id, nodeId: this.nodeId, path: dest, sizeBytes: 0, sha256: '', state: 'fetching', updatedAt: Date.now() });
        }
        for (const src of sources) {
          const node = nodes.get(src.nodeId)!;
          try {
            const got = await fetchImageFile({
              url: node.url, token: token ?? null, imageId: img.id, sha256: src.sha256, sizeBytes: src.sizeBytes,
              imagesDir: this.imagesDir, dest, ...(this.opts.fetchIdleMs ? { idleMs: this.opts.fetchIdleMs } : {}),
            });
            await this.recordCopy(img.id, dest, got.sha256);
            this.bus.publish('image.fetched', null, { id: img.id, name: img.name, from: node.name, bytes: got.sizeBytes, ms: Math.round(performance.now() - t0) });
            return { ...img, path: dest };
          } catch (e) {
            const err = asKilnError(e);
            if (err.code === 'KILN_ERR_DIGEST_MISMATCH') mismatch = err;
            tried.push(`${node.name}: ${err.code}: ${err.message}`);
          }
        }
      }
      if (img.source && img.manifestDigest) {
        try {
          const copy = await this.pullCopy(img);
          this.bus.publish('image.fetched', null, { id: img.id, name: img.name, from: 'registry', bytes: copy.sizeBytes, ms: Math.round(performance.now() - t0) });
          return { ...img, path: copy.path };
        } catch (e) {
          const err = asKilnError(e);
          tried.push(`registry ${img.source}: ${err.code}: ${err.message}`);
        }
      }
      const build = this.localBuildOf(img);
      if (build) {
        try {
          const copy = await this.buildCopy(img, dest, build);
          this.bus.publish('image.fetched', null, { id: img.id, name: img.name, from: 'local build', bytes: copy.sizeBytes, ms: Math.round(performance.now() - t0) });
          return { ...img, path: copy.path };
        } catch (e) {
          const err = asKilnError(e);
          tried.push(`local build: ${err.code}: ${err.message}`);
        }
      }
      if ((await this.store.listImageCopies({ imageId: img.id, nodeId: this.nodeId }))[0]?.state === 'fetching') {
        await this.store.deleteImageCopy(img.id, this.nodeId);
      }
      this.bus.publish('image.fetch_failed', null, { id: img.id, name: img.name, tried });
      // A copy that arrived but did not verify is the finding that matters: reported as such.
      if (mismatch) throw new KilnError('KILN_ERR_DIGEST_MISMATCH', mismatch.message, { ...mismatch.details, tried });
      throw new KilnError('KILN_ERR_IMAGE_FETCH_FAILED', tried.length
        ? `this node has no copy of image ${img.name} and could not get one: ${tried.join('; ')}`
        : `this node has no copy of image ${img.name}, no ready node holds one${img.source ? '' : ', and it was not pulled from a registry'}`, { image: img.id, tried });
    } finally {
      this.fetching--;
    }
  }

  /**
   * This node's own build of an image it knows how to make: written under a fetch's temporary
   * name (a crash leaves only that, which recover() removes), renamed into place, recorded
   * with the sha256 of what was built. A rebuild need not be byte-identical to the holder's
   * file (timestamps differ): each copy is verified against its own node's record.
   */
  private async buildCopy(img: ImageRecord, dest: string, build: LocalBuild): Promise<ImageCopy> {
    await fs.mkdir(this.imagesDir, { recursive: true });
    const tmp = path.join(this.imagesDir, `${FETCH_PREFIX}${img.id}-build-${process.pid}-${randomBytes(4).toString('hex')}`);
    try {
      await build(tmp, img.format);
      // On disk before it is recorded: a copy recorded ready is never a torn file after a power loss.
      await fsyncFile(tmp);
      await fs.mkdir(path.dirname(dest), { recursive: true });
      await fs.rename(tmp, dest);
      return await this.recordCopy(img.id, dest);
    } finally {
      await fs.rm(tmp, { force: true });
    }
  }

  /** A registry image pulled again, pinned to its manifest digest, converted here, recorded as this node's copy. */
  private async pullCopy(img: ImageRecord): Promise<ImageCopy> {
    const ref = parseImageReference(img.source!);
    const pinned = `${ref.registry}/${ref.repository}@${img.manifestDigest}`;
    const pulled = await this.opts.puller(pinned, {
      stateDir: this.opts.stateDir, insecureRegistries: this.opts.insecureRegistries, credentialsFile: this.opts.credentialsFile,
    });
    if (pulled.manifestDigest !== img.manifestDigest) {
      throw new KilnError('KILN_ERR_DIGEST_MISMATCH', `${pinned} resolved to ${pulled.manifestDigest}`);
    }
    const r = await convertPulled(pulled, this.imagesDir, { format: img.format, limits: this.limits });
    return this.recordCopy(img.id, r.path);
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
    // Marks the pull as this node's (a start-up removes only its own interrupted pulls).
    await this.store.putImageCopy({ imageId: id, nodeId: this.nodeId, path: '', sizeBytes: 0, sha256: '', state: 'fetching', updatedAt: Date.now() });
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
      // Same manifest already converted under another ref (or tag), and on this node: share its file.
      let twin: ImageRecord | undefined;
      let twinCopy: ImageCopy | null = null;
      for (const i of await this.store.listImages()) {
        if (i.state !== 'ready' || i.manifestDigest !== pulled.manifestDigest || (req.format && i.format !== req.format)) continue;
        twinCopy = await this.localCopy(i.id);
        if (twinCopy) {
          twin = i;
          break;
        }
      }
      let patch: Partial<ImageRecord>;
      let convertMs = 0;
      if (twin && twinCopy) {
        patch = { path: twinCopy.path, format: twin.format, sizeBytes: twin.sizeBytes, config: twin.config, builder: twin.builder };
      } else {
        const t1 = performance.now();
        const r = await convertPulled(pulled, this.imagesDir, { format: req.format, onProgress: (p: ConvertProgress) => progress(p), limits: this.limits });
        convertMs = performance.now() - t1;
        // The converted file is in its final place and the record still says pulling.
        failpoint('image.convert:after');
        patch = { path: r.path, format: r.format, sizeBytes: r.sizeBytes, config: r.config, builder: r.builder || null };
      }
      // The copy first: a ready image always has the copy of the node that made it.
      await this.recordCopy(rec.id, patch.path!, twinCopy?.sha256);
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
    await this.recordCopy(record.id, dest, digest);
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
    const res: GcResult = { removed_images: [], removed_files: 0, removed_blobs: 0, freed_bytes: 0, skipped_in_flight: this.inflight.size > 0 || this.importing > 0 || this.fetching > 0 };
    if (opts.images) {
      for (const img of await this.store.listImages()) {
        if (img.state !== 'ready' || opts.keep?.includes(img.name)) continue;
        if ((await this.store.countVmsUsingImage(img.id)) > 0) continue;
        const file = (await this.localCopy(img.id))?.path;
        const before = file ? await du(path.dirname(file)) : 0;
        await this.delete(img.id).catch(() => {});
        if (!(await this.store.getImage(img.id))) {
          res.removed_images.push(img.id);
          if (file && !(await fs.stat(file).catch(() => null))) res.freed_bytes += before;
        }
      }
    }
    const images = await this.store.listImages();
    // What is kept is this node's copies (a cluster's other nodes' paths mean nothing here);
    // another node's deletion of an image took its copy rows, so its file goes here.
    const usedDirs = new Set((await this.store.listImageCopies({ nodeId: this.nodeId }))
      .filter((c) => this.isOwnPath(c.path)).map((c) => path.relative(this.imagesDir, c.path).split(path.sep)[0]!));
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
    const [own] = await this.store.listImageCopies({ imageId: img.id, nodeId: this.nodeId });
    // Its copies' rows go with it; the other nodes' files are theirs to remove (their GC
    // removes what no copy of theirs is recorded for).
    await this.store.deleteImage(img.id);
    const sharers = (await this.store.listImageCopies({ nodeId: this.nodeId })).filter((c) => c.path === own?.path);
    if (own && sharers.length === 0 && this.isOwnPath(own.path)) await fs.rm(path.dirname(own.path), { recursive: true, force: true });
    this.bus.publish('image.deleted', null, { id: img.id, name: img.name });
  }
}
