// Import from an OCI image layout directory (oci-layout + index.json + blobs/sha256/…), e.g. the
// output of `skopeo copy … oci:DIR:TAG`, `umoci`, or `buildah push oci:`. Every blob is
// re-verified as it is copied into the blob store.
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { KilnError } from '../../errors.ts';
import { BlobStore } from './blob-store.ts';
import { imagePlatform, layerCompression, parseImageConfig, parseManifest, platformString, selectPlatform, type Descriptor, type ImageIndex, type ImageManifest } from './manifest.ts';
import { DEFAULT_PLATFORM } from './pull.ts';
import { isDigest, parseImageReference } from './reference.ts';
import type { ImageReference, ImportOptions, ProgressListener, PulledImage, PulledLayer } from './types.ts';

const REF_NAME = 'org.opencontainers.image.ref.name';
const CONTAINERD_NAME = 'io.containerd.image.name';

function invalid(dir: string, reason: string): KilnError {
  return new KilnError('KILN_ERR_VALIDATION', `${dir} is not a usable OCI image layout: ${reason}`, { path: dir, reason });
}

/** A reference for an image that came from a file, not a registry. */
export function localReference(name: string | undefined, manifestDigest: string): ImageReference {
  if (name) {
    try {
      const r = parseImageReference(name);
      if (name.includes('/') || name.includes(':')) return r;
    } catch {
      // a ref.name annotation may be any string; fall through to a tag-only local name
    }
    if (/^[\w][\w.-]{0,127}$/.test(name)) return parseImageReference(`localhost/import:${name}`);
  }
  return parseImageReference(`localhost/import@${manifestDigest}`);
}

function matchesName(d: Descriptor, want: string): boolean {
  const a = d.annotations ?? {};
  if (a[REF_NAME] === want || a[CONTAINERD_NAME] === want) return true;
  try {
    const canonical = parseImageReference(want).canonical;
    if (a[CONTAINERD_NAME] && parseImageReference(a[CONTAINERD_NAME]).canonical === canonical) return true;
    if (a[REF_NAME] && (a[REF_NAME].includes('/') || a[REF_NAME].includes(':')) && parseImageReference(a[REF_NAME]).canonical === canonical) return true;
    // '…/name:tag' also matches a layout that recorded only the tag.
    if (a[REF_NAME] && parseImageReference(want).tag === a[REF_NAME]) return true;
  } catch {
    // not a reference: only exact annotation matches count
  }
  return false;
}

export async function importOciLayout(dir: string, opts: ImportOptions, onProgress?: ProgressListener): Promise<PulledImage> {
  const emit = onProgress ?? (() => {});
  const want = opts.platform ?? DEFAULT_PLATFORM;
  const store = BlobStore.forStateDir(opts.stateDir);
  const layoutFile = await fs.readFile(path.join(dir, 'oci-layout'), 'utf8').catch(() => null);
  if (layoutFile === null) throw invalid(dir, 'no oci-layout file');
  let version: unknown;
  try {
    version = (JSON.parse(layoutFile) as { imageLayoutVersion?: unknown }).imageLayoutVersion;
  } catch {
    throw invalid(dir, 'oci-layout is not JSON');
  }
  if (version !== '1.0.0') throw invalid(dir, `imageLayoutVersion ${JSON.stringify(version)} (want 1.0.0)`);

  const blobPath = (digest: string) => {
    if (!isDigest(digest)) throw invalid(dir, `unsupported digest ${digest}`);
    return path.join(dir, 'blobs', 'sha256', digest.slice(7));
  };
  /** Copies a blob into the store, verifying digest and size. */
  const adopt = async (d: Descriptor) => {
    if (await store.has(d.digest)) {
      emit({ phase: 'download', layer: d.digest, bytes: d.size, total: d.size, cached: true });
      return false;
    }
    const st = await fs.stat(blobPath(d.digest)).catch(() => null);
    if (!st) throw invalid(dir, `blob ${d.digest} is missing`);
    emit({ phase: 'download', layer: d.digest, bytes: 0, total: d.size });
    await store.putStream(createReadStream(blobPath(d.digest)), { digest: d.digest, size: d.size });
    emit({ phase: 'download', layer: d.digest, bytes: d.size, total: d.size });
    emit({ phase: 'verify', layer: d.digest });
    return true;
  };
  const readDoc = async (d: Descriptor) => {
    await adopt(d);
    return parseManifest(await store.readSmall(d.digest), d.mediaType);
  };

  const indexBody = await fs.readFile(path.join(dir, 'index.json')).catch(() => null);
  if (!indexBody) throw invalid(dir, 'no index.json');
  const top = parseManifest(indexBody, 'application/vnd.oci.image.index.v1+json');
  if (top.kind !== 'index') throw invalid(dir, 'index.json is not an index');

  let candidates = top.manifests;
  if (opts.ref) {
    candidates = candidates.filter((d) => matchesName(d, opts.ref!));
    if (candidates.length === 0) {
      const names = top.manifests.map((d) => d.annotations?.[REF_NAME]).filter(Boolean);
      throw new KilnError('KILN_ERR_MANIFEST_NOT_FOUND', `no image named ${JSON.stringify(opts.ref)} in ${dir} (it has: ${names.join(', ') || 'no named images'})`, { path: dir, ref: opts.ref });
    }
  }
  let chosen: Descriptor;
  if (candidates.length === 1) chosen = candidates[0]!;
  else {
    // Several entries: a multi-platform set written flat into index.json, or several images.
    const withPlatform = candidates.filter((d) => d.platform);
    if (withPlatform.length !== candidates.length) {
      const names = candidates.map((d) => d.annotations?.[REF_NAME] ?? d.digest);
      throw new KilnError('KILN_ERR_VALIDATION', `${dir} holds ${candidates.length} images; name one (${names.join(', ')})`, { path: dir });
    }
    chosen = selectPlatform({ kind: 'index', mediaType: top.mediaType, manifests: candidates }, want);
  }
  const name = opts.ref ?? chosen.annotations?.[CONTAINERD_NAME] ?? chosen.annotations?.[REF_NAME];

  emit({ phase: 'resolve', ref: name ?? dir, message: `importing ${chosen.digest} from ${dir}` });
  let doc: ImageManifest | ImageIndex = await readDoc(chosen);
  let manifestDigest = chosen.digest;
  let indexDigest: string | undefined;
  for (let depth = 0; doc.kind === 'index'; depth++) {
    if (depth >= 2) throw new KilnError('KILN_ERR_IMAGE_UNSUPPORTED', 'indexes nested deeper than 2 levels', { path: dir });
    indexDigest ??= manifestDigest;
    const pick = selectPlatform(doc, want);
    manifestDigest = pick.digest;
    doc = await readDoc(pick);
  }
  const manifest = doc;
  let downloaded = 0;
  let cached = 0;
  await adopt(manifest.config);
  const config = parseImageConfig(await store.readSmall(manifest.config.digest));
  if (!indexDigest && config.os && (config.os !== want.os || config.architecture !== want.architecture)) {
    throw new KilnError('KILN_ERR_IMAGE_UNSUPPORTED', `the image is for ${platformString(config)}, kiln needs ${platformString(want)}`, { path: dir });
  }
  const layers: PulledLayer[] = [];
  for (const d of manifest.layers) {
    const compression = layerCompression(d.mediaType);
    if (await adopt(d)) downloaded++;
    else cached++;
    layers.push({ digest: d.digest, mediaType: d.mediaType, size: d.size, path: store.path(d.digest), compression });
  }
  emit({ phase: 'done', manifestDigest, downloadedLayers: downloaded, cachedLayers: cached, downloadedBytes: 0 });
  return {
    ref: localReference(name, manifestDigest),
    manifestDigest,
    ...(indexDigest ? { indexDigest } : {}),
    configDigest: manifest.config.digest,
    config,
    layers,
    platform: imagePlatform(config, want),
    source: { kind: 'oci-layout', path: path.resolve(dir) },
  };
}
