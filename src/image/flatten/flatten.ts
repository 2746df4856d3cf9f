// Flattens an image's layers (base first) into one directory tree: the union the guest sees.
import { KilnError } from '../../errors.ts';
import { decompressSniffed, openLayerTar } from '../oci/layer-stream.ts';
import type { Readable } from 'node:stream';
import type { LayerCompression } from '../oci/types.ts';
import { DEFAULT_UNPACK_LIMITS, RootWriter, type RootWriterStats, type UnpackLimits } from './root-writer.ts';
import { readTar } from './tar-reader.ts';

export interface FlattenLayer {
  digest: string;
  /** The (compressed) layer blob. */
  path: string;
  compression: LayerCompression;
}

export interface FlattenProgress {
  layer: number;
  layers: number;
  digest: string;
  entries: number;
  bytes: number;
}

/** Applies `layers` in order into `root` (an existing, empty directory). */
export async function flattenLayers(
  layers: readonly FlattenLayer[],
  root: string,
  onProgress?: (p: FlattenProgress) => void,
  limits: UnpackLimits = DEFAULT_UNPACK_LIMITS,
): Promise<RootWriterStats> {
  const w = new RootWriter(root, limits);
  for (const [i, layer] of layers.entries()) {
    w.beginLayer();
    // Compression is sniffed from the blob's magic bytes (registries mislabel layers).
    const src = await openLayerTar(layer);
    try {
      let n = 0;
      for await (const { entry, body } of readTar(src)) {
        await w.apply(entry, body);
        if (onProgress && ++n % 256 === 0) onProgress({ layer: i + 1, layers: layers.length, digest: layer.digest, ...w.stats });
      }
    } catch (e) {
      if (e instanceof KilnError) throw e;
      const err = e as NodeJS.ErrnoException;
      if (err.code === 'ENOSPC' || err.code === 'EDQUOT') {
        throw new KilnError('KILN_ERR_NO_SPACE', `no space left while unpacking layer ${layer.digest}`, { layer: layer.digest }, { cause: e });
      }
      // zlib's and zstd's complaints about a corrupt blob.
      if (err.code?.startsWith('Z_') || (e as { tool?: string }).tool === 'zstd') {
        throw new KilnError('KILN_ERR_IMAGE_INVALID', `layer ${layer.digest}: ${err.message}`, { layer: layer.digest }, { cause: e });
      }
      throw e;
    } finally {
      src.destroy();
    }
    onProgress?.({ layer: i + 1, layers: layers.length, digest: layer.digest, ...w.stats });
  }
  await w.finish();
  return w.stats;
}

/**
 * Unpacks one tar stream (plain, gzip or zstd; an upload) into `root` under the same rules and
 * limits as a layer: paths cannot escape, sizes are checked from each header before anything
 * is written, and every write is awaited, so a refusal leaves no writer behind in `root`.
 */
export async function unpackTar(input: Readable, root: string, limits: UnpackLimits = DEFAULT_UNPACK_LIMITS): Promise<RootWriterStats> {
  const w = new RootWriter(root, limits);
  w.beginLayer();
  const src = await decompressSniffed(input);
  try {
    for await (const { entry, body } of readTar(src)) await w.apply(entry, body);
  } finally {
    src.destroy();
    input.destroy();
  }
  await w.finish();
  return w.stats;
}
