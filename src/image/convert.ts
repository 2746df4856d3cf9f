// Pulled layers → the one read-only root filesystem file every VM of the image shares.
// Built in a staging dir next to the image store and renamed into place, so a failure
// (disk full, corrupt layer) leaves neither a half image nor temp files behind.
import fs from 'node:fs/promises';
import path from 'node:path';
import type { ImageConfig } from '../store/store.ts';
import { tempSibling } from '../util/atomic.ts';
import { buildRootfs, pickFormat, type ImageFormat } from './builders/builders.ts';
import { flattenLayers, type FlattenProgress } from './flatten/flatten.ts';
import type { UnpackLimits } from './flatten/root-writer.ts';
import { imageConfigFromOci } from './image-config.ts';
import type { PulledImage } from './oci/types.ts';

export const STAGING_PREFIX = '.staging-';

export interface ConvertResult {
  path: string;
  format: ImageFormat;
  builder: string;
  sizeBytes: number;
  config: ImageConfig;
  /** True when an identical build (same manifest, same format) already existed. */
  reused: boolean;
}

export type ConvertProgress = ({ phase: 'flatten' } & FlattenProgress) | { phase: 'build'; format: ImageFormat };

/** Where a manifest's root filesystem of `format` lives: content-addressed, shared by every ref. */
export function rootfsPath(imagesDir: string, manifestDigest: string, format: ImageFormat): string {
  return path.join(imagesDir, `${manifestDigest.replace(':', '-')}-${format}`, `rootfs.${format}`);
}

export async function convertPulled(
  pulled: PulledImage,
  imagesDir: string,
  opts: { format?: ImageFormat; onProgress?: (p: ConvertProgress) => void; limits?: UnpackLimits } = {},
): Promise<ConvertResult> {
  const format = await pickFormat(opts.format);
  const dest = rootfsPath(imagesDir, pulled.manifestDigest, format);
  await fs.mkdir(imagesDir, { recursive: true });
  const staging = await fs.mkdtemp(path.join(imagesDir, STAGING_PREFIX));
  const tmp = tempSibling(dest);
  try {
    const root = path.join(staging, 'root');
    await fs.mkdir(root, { mode: 0o755 });
    const stats = await flattenLayers(pulled.layers, root, (p) => opts.onProgress?.({ phase: 'flatten', ...p }), opts.limits);
    const config = await imageConfigFromOci(root, pulled.config);
    const existing = await fs.stat(dest).catch(() => null);
    if (existing) return { path: dest, format, builder: '', sizeBytes: existing.size, config, reused: true };
    opts.onProgress?.({ phase: 'build', format });
    await fs.mkdir(path.dirname(dest), { recursive: true });
    const built = await buildRootfs(root, tmp, format, stats);
    await fs.rename(tmp, dest);
    return { path: dest, format, builder: built.builder, sizeBytes: built.sizeBytes, config, reused: false };
  } finally {
    await fs.rm(tmp, { force: true });
    await fs.rm(staging, { recursive: true, force: true });
    // An empty per-manifest dir left by a failed build is a half image in all but name.
    await fs.rmdir(path.dirname(dest)).catch(() => {});
  }
}
