// A layer blob as the uncompressed tar the rootfs side flattens. The compression recorded in
// the manifest is cross-checked against the blob's magic bytes: registries and archives do
// mislabel layers (e.g. uncompressed tars under a +gzip media type).
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { zstdDecompressStream } from '../../tools/zstd.ts';
import type { LayerCompression, PulledLayer } from './types.ts';

export async function sniffCompression(file: string): Promise<LayerCompression> {
  const fh = await fs.open(file, 'r');
  try {
    const head = Buffer.alloc(4);
    const { bytesRead } = await fh.read(head, 0, 4, 0);
    if (bytesRead >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
    if (bytesRead === 4 && head.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
    return 'none';
  } finally {
    await fh.close();
  }
}

export function decompressStream(raw: Readable, compression: LayerCompression): Readable {
  if (compression === 'gzip') {
    const gunzip = createGunzip();
    raw.on('error', (e) => gunzip.destroy(e));
    return raw.pipe(gunzip);
  }
  if (compression === 'zstd') return zstdDecompressStream(raw);
  return raw;
}

/** The uncompressed tar stream of a layer in the blob store. */
export async function openLayerTar(layer: Pick<PulledLayer, 'path' | 'compression'>): Promise<Readable> {
  const actual = await sniffCompression(layer.path);
  return decompressStream(createReadStream(layer.path), actual === 'none' ? 'none' : actual);
}

/**
 * A tar stream whose compression is only known from its first bytes (an upload): gzip, zstd
 * or plain, told apart by their magic numbers like a layer blob.
 */
export async function decompressSniffed(input: Readable): Promise<Readable> {
  const it = input[Symbol.asyncIterator]();
  let head = Buffer.alloc(0);
  const rest: Buffer[] = [];
  while (head.length < 4) {
    const r = await it.next();
    if (r.done) break;
    head = Buffer.concat([head, r.value as Buffer]);
  }
  rest.push(head);
  const compression: LayerCompression =
    head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b ? 'gzip' : head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528 ? 'zstd' : 'none';
  const whole = Readable.from((async function* () {
    yield* rest;
    for (let r = await it.next(); !r.done; r = await it.next()) yield r.value as Buffer;
  })());
  return decompressStream(whole, compression);
}
