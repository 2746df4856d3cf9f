// pullImage: reference → manifest (through an index when there is one) → config → layers,
// every blob verified into the shared blob store, layers fetched concurrently (bounded).
import { setTimeout as sleep } from 'node:timers/promises';
import { KilnError, isKilnError } from '../../errors.ts';
import { readCredentialsFile } from './auth.ts';
import { BlobStore, DigestMismatchError } from './blob-store.ts';
import { MAX_CONFIG_BYTES, imagePlatform, layerCompression, parseImageConfig, parseManifest, platformString, selectPlatform, type Descriptor, type ImageManifest } from './manifest.ts';
import { manifestReference, parseImageReference } from './reference.ts';
import { RegistryClient } from './registry-client.ts';
import type { Platform, ProgressListener, PulledImage, PulledLayer, PullOptions } from './types.ts';

export const DEFAULT_PLATFORM: Platform = { os: 'linux', architecture: 'amd64' };
const MAX_INDEX_DEPTH = 2;

/** Runs `fn` over `items` with at most `limit` in flight; the first failure stops new starts. */
export async function mapBounded<T, R>(items: T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (!failed && next < items.length) {
      const i = next++;
      try {
        out[i] = await fn(items[i]!, i);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  };
  const results = await Promise.allSettled(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  const rejected = results.find((r) => r.status === 'rejected');
  if (rejected) throw (rejected as PromiseRejectedResult).reason;
  return out;
}

/** Retries manifest requests the registry failed transiently (5xx, dropped connection). */
async function withRetries<T>(fn: () => Promise<T>, attempts: number, signal?: AbortSignal): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await fn();
    } catch (e) {
      if (!(isKilnError(e) && e.details?.retryable === true) || i >= attempts) throw e;
      await sleep(Math.min(5000, 250 * 2 ** (i - 1)), undefined, { signal });
    }
  }
}

function checkPlatform(config: { os: string; architecture: string; variant?: string }, want: Platform, manifestDigest: string): void {
  // A single-platform image (no index) must still be for the platform we run.
  if (config.os && config.architecture && (config.os !== want.os || config.architecture !== want.architecture)) {
    throw new KilnError('KILN_ERR_IMAGE_UNSUPPORTED', `the image is for ${platformString(config)}, kiln needs ${platformString(want)}`, {
      wanted: platformString(want),
      available: [platformString(config)],
      manifestDigest,
    });
  }
}

export async function pullImage(refString: string, opts: PullOptions, onProgress?: ProgressListener): Promise<PulledImage> {
  const ref = parseImageReference(refString);
  const want = opts.platform ?? DEFAULT_PLATFORM;
  const store = BlobStore.forStateDir(opts.stateDir);
  const insecure = opts.insecure === true || (opts.insecureRegistries ?? []).includes(ref.registry);
  const credentials = opts.credentials ?? (opts.credentialsFile ? await readCredentialsFile(opts.credentialsFile, ref.registry) : undefined);
  const client = new RegistryClient({ registry: ref.registry, insecure, credentials, signal: opts.signal });
  const emit = onProgress ?? (() => {});

  emit({ phase: 'resolve', ref: ref.canonical, message: `resolving ${ref.canonical}` });
  const manifestAttempts = Math.min(3, opts.retries ?? 3);
  let fetched = await withRetries(() => client.getManifest(ref.repository, manifestReference(ref)), manifestAttempts, opts.signal);
  let doc = parseManifest(fetched.body, fetched.contentType);
  let indexDigest: string | undefined;
  for (let depth = 0; doc.kind === 'index'; depth++) {
    if (depth >= MAX_INDEX_DEPTH) throw new KilnError('KILN_ERR_IMAGE_UNSUPPORTED', 'indexes nested deeper than 2 levels', { ref: ref.canonical });
    indexDigest ??= fetched.digest;
    const pick = selectPlatform(doc, want);
    emit({ phase: 'resolve', ref: ref.canonical, message: `index ${fetched.digest}: ${platformString(want)} is ${pick.digest}` });
    fetched = await withRetries(() => client.getManifest(ref.repository, pick.digest), manifestAttempts, opts.signal);
    if (fetched.digest !== pick.digest) throw new DigestMismatchError(pick.digest, fetched.digest, 'manifest');
    doc = parseManifest(fetched.body, fetched.contentType || pick.mediaType);
  }
  const manifest: ImageManifest = doc;
  const manifestDigest = fetched.digest;
  // Manifests go into the blob store too: the image can be re-read (and GC'd) by digest alone.
  await store.putBuffer(fetched.body, manifestDigest);

  const fetchBlob = (d: Descriptor, kind: 'config' | 'layer') =>
    store.ensure(d.digest, {
      size: d.size,
      retries: opts.retries,
      signal: opts.signal,
      fetch: (offset) => client.openBlob(ref.repository, d.digest, offset),
      onBytes: (bytes, total, attempt) => emit({ phase: 'download', layer: d.digest, bytes, total, attempt }),
    }).then((r) => {
      if (kind === 'layer') emit({ phase: 'verify', layer: d.digest });
      return r;
    });

  if (manifest.config.size > MAX_CONFIG_BYTES) throw new KilnError('KILN_ERR_REGISTRY_ERROR', `image config is ${manifest.config.size} bytes; refusing more than ${MAX_CONFIG_BYTES}`);
  const cfgResult = await fetchBlob(manifest.config, 'config');
  const config = parseImageConfig(await store.readSmall(manifest.config.digest));
  if (!indexDigest) checkPlatform(config, want, manifestDigest);
  if (config.diffIds.length !== manifest.layers.length) {
    throw new KilnError('KILN_ERR_REGISTRY_ERROR', `image config lists ${config.diffIds.length} diff_ids for ${manifest.layers.length} layers`, { manifestDigest });
  }

  let downloadedLayers = 0;
  let cachedLayers = 0;
  let downloadedBytes = cfgResult.bytesFetched;
  const layers = await mapBounded(manifest.layers, opts.concurrency ?? 3, async (d): Promise<PulledLayer> => {
    const compression = layerCompression(d.mediaType);
    if (await store.has(d.digest)) {
      cachedLayers++;
      emit({ phase: 'download', layer: d.digest, bytes: d.size, total: d.size, cached: true });
    } else {
      const r = await fetchBlob(d, 'layer');
      if (r.downloaded) downloadedLayers++;
      else cachedLayers++;
      downloadedBytes += r.bytesFetched;
    }
    return { digest: d.digest, mediaType: d.mediaType, size: d.size, path: store.path(d.digest), compression };
  });

  emit({ phase: 'done', manifestDigest, downloadedLayers, cachedLayers, downloadedBytes });
  return {
    ref,
    manifestDigest,
    ...(indexDigest ? { indexDigest } : {}),
    configDigest: manifest.config.digest,
    config,
    layers,
    platform: imagePlatform(config, want),
    source: { kind: 'registry', registry: ref.registry },
  };
}
