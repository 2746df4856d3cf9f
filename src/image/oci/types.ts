// The contract between the pull side (registry client, blob store, importers) and the
// rootfs side (flattening, filesystem builders, image API). Kept small and stable: the
// rootfs code only needs the image config and an ordered list of layer blobs on disk.

/** A parsed image reference, normalised the way Docker does it (docker.io/library/...). */
export interface ImageReference {
  /** Registry host, with port when given: 'docker.io', 'ghcr.io', '127.0.0.1:5000'. */
  registry: string;
  /** Repository path inside the registry: 'library/alpine', 'org/app'. */
  repository: string;
  /** Absent when the reference names only a digest. 'latest' when neither was given. */
  tag?: string;
  /** 'sha256:<64 hex>' when the reference pins a digest. */
  digest?: string;
  /** Fully qualified form: 'docker.io/library/alpine:3.19', 'host:5000/x@sha256:…', 'r/x:tag@sha256:…'. */
  canonical: string;
}

/** The parts of an image config (OCI image-spec config / Docker container config) kiln uses. */
export interface OciImageConfig {
  entrypoint: string[];
  cmd: string[];
  /** 'KEY=value' strings, in image order. */
  env: string[];
  /** '' when the image does not set one (callers default to '/'). */
  workdir: string;
  /** '' when the image does not set one (root); otherwise 'user', 'uid', 'user:group', 'uid:gid'. */
  user: string;
  /** '80/tcp', '53/udp', … */
  exposedPorts: string[];
  labels: Record<string, string>;
  stopSignal?: string;
  os: string;
  architecture: string;
  variant?: string;
  /** rootfs.diff_ids: sha256 of each *uncompressed* layer tar, base first (for verifying flattening). */
  diffIds: string[];
}

export type LayerCompression = 'gzip' | 'zstd' | 'none';

export interface PulledLayer {
  /** Digest of the blob as stored (compressed bytes), 'sha256:<hex>'. */
  digest: string;
  mediaType: string;
  /** Size in bytes of the stored blob. */
  size: number;
  /** Absolute path of the verified blob in the blob store: <stateDir>/blobs/sha256/<hex>. */
  path: string;
  compression: LayerCompression;
}

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export type ImageSource =
  | { kind: 'registry'; registry: string }
  | { kind: 'oci-layout'; path: string }
  | { kind: 'docker-archive'; path: string };

export interface PulledImage {
  ref: ImageReference;
  /** Digest of the single-platform manifest (never of an index), 'sha256:<hex>'. */
  manifestDigest: string;
  /** Digest of the index / manifest list the manifest was picked from, when there was one. */
  indexDigest?: string;
  configDigest: string;
  config: OciImageConfig;
  /** Base layer first: apply in this order. */
  layers: PulledLayer[];
  platform: Platform;
  source: ImageSource;
}

/** Progress of one pull or import. 'download' events repeat per layer as bytes arrive. */
export type PullProgress =
  | { phase: 'resolve'; ref: string; message: string }
  | {
      phase: 'download';
      /** Layer (or config) digest. */
      layer: string;
      bytes: number;
      total: number;
      /** True when the blob was already in the store and nothing was fetched. */
      cached?: boolean;
      /** 1 on the first try; higher after a dropped connection was resumed or retried. */
      attempt?: number;
    }
  | { phase: 'verify'; layer: string }
  | {
      phase: 'done';
      manifestDigest: string;
      /** Layers fetched by this pull vs found in the store already. */
      downloadedLayers: number;
      cachedLayers: number;
      downloadedBytes: number;
    };

export type ProgressListener = (p: PullProgress) => void;

export interface RegistryCredentials {
  username: string;
  password: string;
}

export interface PullOptions {
  /** Blobs live under <stateDir>/blobs/sha256/<hex>; temp files under <stateDir>/blobs/tmp. */
  stateDir: string;
  /** Platform picked from an index / manifest list. Default linux/amd64. */
  platform?: Platform;
  /** Allow plain HTTP (and unverified TLS) to this pull's registry. Loopback registries always may. */
  insecure?: boolean;
  /** Registries ('host' or 'host:port') the daemon config lists as insecure. */
  insecureRegistries?: string[];
  /** Docker config.json ('auths' map) with basic credentials per registry. */
  credentialsFile?: string;
  /** Explicit credentials; win over credentialsFile. */
  credentials?: RegistryCredentials;
  /** Blobs downloaded in parallel (default 3). */
  concurrency?: number;
  /** Attempts per blob after a dropped connection / 5xx (default 5). */
  retries?: number;
  signal?: AbortSignal;
}

export interface ImportOptions {
  stateDir: string;
  /** Which image of a multi-image archive/layout: a tag or full reference. Default: the only one. */
  ref?: string;
  platform?: Platform;
  signal?: AbortSignal;
}

/*
 * Entry points (implemented in this directory):
 *   pullImage(ref: string, opts: PullOptions, onProgress?: ProgressListener): Promise<PulledImage>   — ./pull.ts
 *   importOciLayout(dir: string, opts: ImportOptions, onProgress?: ProgressListener): Promise<PulledImage>   — ./import-oci-layout.ts
 *   importDockerArchive(tarFile: string, opts: ImportOptions, onProgress?: ProgressListener): Promise<PulledImage>   — ./import-docker-archive.ts
 *   openLayerTar(layer: PulledLayer): Promise<Readable>   — ./layer-stream.ts (uncompressed tar stream of a layer;
 *     compression sniffed from the blob's magic bytes, zstd via the zstd CLI)
 *   parseImageReference(ref: string): ImageReference   — ./reference.ts
 *   BlobStore (./blob-store.ts): path(digest), has(digest), list(), remove(digest) — for GC
 * All re-exported from ./index.ts.
 */
