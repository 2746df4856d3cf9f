// Import a `docker save` tarball (also `skopeo copy … docker-archive:`), in the legacy layout
// (<id>/layer.tar, possibly symlinked between images) and the Docker 25+ layout (an OCI
// layout inside the tar, manifest.json pointing into blobs/sha256/). Read in one streaming
// pass: big entries go straight into the blob store, small ones stay in memory.
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import path from 'node:path';
import * as tar from 'tar';
import { KilnError } from '../../errors.ts';
import { BlobStore, DigestMismatchError } from './blob-store.ts';
import { MEDIA, imagePlatform, parseImageConfig, platformString } from './manifest.ts';
import { localReference } from './import-oci-layout.ts';
import { sniffCompression } from './layer-stream.ts';
import { DEFAULT_PLATFORM } from './pull.ts';
import { parseImageReference } from './reference.ts';
import type { ImportOptions, LayerCompression, ProgressListener, PulledImage, PulledLayer } from './types.ts';
import { createHash } from 'node:crypto';

const IN_MEMORY_LIMIT = 1024 * 1024;

interface ArchiveManifestEntry {
  Config: string;
  RepoTags?: string[] | null;
  Layers: string[];
}

type Stored = { kind: 'memory'; data: Buffer } | { kind: 'blob'; digest: string; size: number };

function invalid(file: string, reason: string): KilnError {
  return new KilnError('KILN_ERR_VALIDATION', `${file} is not a usable docker-save archive: ${reason}`, { path: file, reason });
}

function clean(p: string): string {
  return path.posix.normalize(p.replace(/^\.\//, '')).replace(/^\/+/, '');
}

const LAYER_MEDIA: Record<LayerCompression, string> = {
  none: 'application/vnd.oci.image.layer.v1.tar',
  gzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  zstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
};

export async function importDockerArchive(file: string, opts: ImportOptions, onProgress?: ProgressListener): Promise<PulledImage> {
  const emit = onProgress ?? (() => {});
  const want = opts.platform ?? DEFAULT_PLATFORM;
  const store = BlobStore.forStateDir(opts.stateDir);
  const files = new Map<string, Stored>();
  const links = new Map<string, string>();
  const pending: Promise<void>[] = [];

  emit({ phase: 'resolve', ref: opts.ref ?? file, message: `reading ${file}` });
  try {
    await new Promise<void>((resolve, reject) => {
      // Parser, not tar.t(): list() resumes every entry, which would drop the bytes an async
      // consumer (the blob store) has not read yet.
      const parser = new tar.Parser({ strict: true });
      const input = createReadStream(file);
      parser.on('entry', (entry: tar.ReadEntry) => {
        const name = clean(entry.path);
        if (entry.type === 'SymbolicLink' || entry.type === 'Link') {
          const target = entry.type === 'Link' ? clean(entry.linkpath ?? '') : clean(path.posix.join(path.posix.dirname(name), entry.linkpath ?? ''));
          links.set(name, target);
          entry.resume();
          return;
        }
        if (entry.type !== 'File' && entry.type !== 'OldFile' && entry.type !== 'ContiguousFile') {
          entry.resume();
          return;
        }
        if ((entry.size ?? 0) <= IN_MEMORY_LIMIT) {
          const chunks: Buffer[] = [];
          entry.on('data', (c: Buffer) => chunks.push(c));
          pending.push(new Promise((resolve) => entry.on('end', () => {
            files.set(name, { kind: 'memory', data: Buffer.concat(chunks) });
            resolve();
          })));
          return;
        }
        emit({ phase: 'download', layer: name, bytes: 0, total: entry.size ?? 0 });
        pending.push(store.putStream(Readable.from(entry)).then(
          (r) => {
            files.set(name, { kind: 'blob', digest: r.digest, size: r.size });
            emit({ phase: 'download', layer: r.digest, bytes: r.size, total: r.size });
          },
          (e: unknown) => {
            // The parser waits for this entry to drain; without this it would wait forever.
            input.destroy();
            reject(e);
          },
        ));
      });
      parser.on('error', reject);
      parser.on('abort', reject);
      parser.on('end', () => resolve());
      input.on('error', reject);
      input.pipe(parser as unknown as NodeJS.WritableStream);
    });
    await Promise.all(pending);
  } catch (e) {
    await Promise.allSettled(pending);
    if (e instanceof KilnError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw invalid(file, 'no such file');
    throw invalid(file, (e as Error).message);
  }

  const lookup = (name: string): Stored | undefined => {
    let n = clean(name);
    for (let hops = 0; hops < 16; hops++) {
      const f = files.get(n);
      if (f) return f;
      const next = links.get(n);
      if (!next) return undefined;
      n = next;
    }
    return undefined;
  };
  const bytesOf = async (name: string): Promise<Buffer> => {
    const f = lookup(name);
    if (!f) throw invalid(file, `${name} is missing`);
    return f.kind === 'memory' ? f.data : store.readSmall(f.digest);
  };

  let entries: ArchiveManifestEntry[];
  try {
    entries = JSON.parse((await bytesOf('manifest.json')).toString('utf8')) as ArchiveManifestEntry[];
  } catch (e) {
    if (e instanceof KilnError) throw e;
    throw invalid(file, 'manifest.json is not JSON');
  }
  if (!Array.isArray(entries) || entries.length === 0) throw invalid(file, 'manifest.json lists no images');
  let entry: ArchiveManifestEntry | undefined;
  let name: string | undefined;
  if (opts.ref) {
    const want = (() => {
      try {
        return parseImageReference(opts.ref!).canonical;
      } catch {
        return opts.ref!;
      }
    })();
    for (const e of entries) {
      for (const t of e.RepoTags ?? []) {
        let c = t;
        try {
          c = parseImageReference(t).canonical;
        } catch {
          // keep the raw tag
        }
        if (c === want || t === opts.ref) {
          entry = e;
          name = t;
        }
      }
    }
    if (!entry) throw new KilnError('KILN_ERR_MANIFEST_NOT_FOUND', `no image tagged ${JSON.stringify(opts.ref)} in ${file}`, { path: file, ref: opts.ref });
  } else {
    if (entries.length > 1) throw new KilnError('KILN_ERR_VALIDATION', `${file} holds ${entries.length} images; name one (${entries.flatMap((e) => e.RepoTags ?? []).join(', ')})`, { path: file });
    entry = entries[0]!;
    name = entry.RepoTags?.[0];
  }
  if (typeof entry.Config !== 'string' || !Array.isArray(entry.Layers)) throw invalid(file, 'manifest.json entry lacks Config or Layers');

  const configBytes = await bytesOf(entry.Config);
  const configDigest = (await store.putBuffer(configBytes)).digest;
  const config = parseImageConfig(configBytes);
  if (config.os && (config.os !== want.os || config.architecture !== want.architecture)) {
    throw new KilnError('KILN_ERR_IMAGE_UNSUPPORTED', `the image is for ${platformString(config)}, kiln needs ${platformString(want)}`, { path: file });
  }
  if (config.diffIds.length !== entry.Layers.length) throw invalid(file, `config lists ${config.diffIds.length} diff_ids for ${entry.Layers.length} layers`);

  const layers: PulledLayer[] = [];
  for (const [i, layerName] of entry.Layers.entries()) {
    const f = lookup(layerName);
    if (!f) throw invalid(file, `layer ${layerName} is missing`);
    const stored = f.kind === 'blob' ? f : await store.putBuffer(f.data);
    const blobPath = store.path(stored.digest);
    const compression = await sniffCompression(blobPath);
    // An uncompressed layer's digest is its diff_id: check it against the config.
    if (compression === 'none' && stored.digest !== config.diffIds[i]) {
      throw new DigestMismatchError(config.diffIds[i]!, stored.digest, `layer ${layerName} (diff_id)`, { path: file });
    }
    emit({ phase: 'verify', layer: stored.digest });
    layers.push({ digest: stored.digest, mediaType: LAYER_MEDIA[compression], size: stored.size, path: blobPath, compression });
  }

  // docker save has no registry manifest; write the equivalent OCI manifest so the image has
  // a manifest digest like any other.
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: MEDIA.ociManifest,
    config: { mediaType: MEDIA.ociConfig, digest: configDigest, size: configBytes.length },
    layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
  }));
  const manifestDigest = `sha256:${createHash('sha256').update(manifest).digest('hex')}`;
  await store.putBuffer(manifest, manifestDigest);
  emit({ phase: 'done', manifestDigest, downloadedLayers: layers.length, cachedLayers: 0, downloadedBytes: 0 });
  return {
    ref: localReference(name, manifestDigest),
    manifestDigest,
    configDigest,
    config,
    layers,
    platform: imagePlatform(config, want),
    source: { kind: 'docker-archive', path: path.resolve(file) },
  };
}
