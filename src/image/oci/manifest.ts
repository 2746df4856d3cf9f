// Manifest and config documents: media types kiln accepts, validation of what registries and
// archives hand us, platform selection from an index / manifest list, and config extraction.
import { KilnError } from '../../errors.ts';
import { isDigest } from './reference.ts';
import type { LayerCompression, OciImageConfig, Platform } from './types.ts';

export const MEDIA = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerSchema1: 'application/vnd.docker.distribution.manifest.v1+json',
  dockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
} as const;

/** Accept header for manifest requests: schema2 and OCI only, so registries never down-convert to schema1. */
export const MANIFEST_ACCEPT = [MEDIA.ociIndex, MEDIA.dockerList, MEDIA.ociManifest, MEDIA.dockerManifest].join(', ');

const LAYER_TYPES: Record<string, LayerCompression> = {
  'application/vnd.oci.image.layer.v1.tar': 'none',
  'application/vnd.oci.image.layer.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.v1.tar+zstd': 'zstd',
  'application/vnd.oci.image.layer.nondistributable.v1.tar': 'none',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip': 'gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd': 'zstd',
  'application/vnd.docker.image.rootfs.diff.tar.gzip': 'gzip',
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip': 'gzip',
  // What `docker save` tarballs and some tools record for uncompressed layers.
  'application/vnd.docker.image.rootfs.diff.tar': 'none',
};

export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
export const MAX_CONFIG_BYTES = 16 * 1024 * 1024;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: Platform & { 'os.version'?: string; 'os.features'?: string[]; features?: string[] };
  annotations?: Record<string, string>;
  urls?: string[];
}

export interface ImageManifest {
  kind: 'manifest';
  mediaType: string;
  config: Descriptor;
  layers: Descriptor[];
}

export interface ImageIndex {
  kind: 'index';
  mediaType: string;
  manifests: Descriptor[];
}

function bad(what: string, reason: string): KilnError {
  return new KilnError('KILN_ERR_REGISTRY_ERROR', `malformed ${what}: ${reason}`, { reason });
}

function unsupported(message: string, details: Record<string, unknown>): KilnError {
  return new KilnError('KILN_ERR_IMAGE_UNSUPPORTED', message, details);
}

function descriptor(d: unknown, what: string): Descriptor {
  const o = d as Partial<Descriptor> | null;
  if (!o || typeof o !== 'object') throw bad(what, 'descriptor is not an object');
  if (typeof o.digest !== 'string' || !isDigest(o.digest)) {
    if (typeof o.digest === 'string' && /^[a-z0-9]+:/.test(o.digest) && !o.digest.startsWith('sha256:')) {
      throw unsupported(`${what} uses digest algorithm ${o.digest.split(':')[0]}; kiln verifies sha256 only`, { digest: o.digest });
    }
    throw bad(what, `descriptor digest ${JSON.stringify(o.digest)} is not sha256:<64 hex>`);
  }
  if (typeof o.size !== 'number' || !Number.isSafeInteger(o.size) || o.size < 0) throw bad(what, `descriptor ${o.digest} has no valid size`);
  return { ...o, mediaType: typeof o.mediaType === 'string' ? o.mediaType : '', digest: o.digest, size: o.size } as Descriptor;
}

/**
 * Parses a manifest or index. `contentType` is what the registry (or the parent descriptor)
 * said; the document's own mediaType field wins when present, and a document without either
 * is told apart by its shape, as the OCI spec allows.
 */
export function parseManifest(body: Buffer, contentType?: string): ImageManifest | ImageIndex {
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(body.toString('utf8')) as Record<string, unknown>;
  } catch (e) {
    throw bad('manifest', `not JSON: ${(e as Error).message}`);
  }
  if (!doc || typeof doc !== 'object') throw bad('manifest', 'not a JSON object');
  const ct = (contentType ?? '').split(';')[0]!.trim();
  const mediaType =
    typeof doc.mediaType === 'string' ? doc.mediaType : ct && ct !== 'application/json' && ct !== 'text/plain' ? ct : Array.isArray(doc.manifests) ? MEDIA.ociIndex : MEDIA.ociManifest;
  if (doc.schemaVersion === 1 || mediaType === MEDIA.dockerSchema1 || mediaType === MEDIA.dockerSchema1Signed) {
    throw unsupported('Docker schema 1 manifests are not supported (deprecated since 2017); re-push the image with a current client', { mediaType });
  }
  if (doc.schemaVersion !== 2) throw bad('manifest', `schemaVersion ${JSON.stringify(doc.schemaVersion)}`);
  if (mediaType === MEDIA.ociIndex || mediaType === MEDIA.dockerList) {
    if (!Array.isArray(doc.manifests)) throw bad('index', 'no manifests array');
    return { kind: 'index', mediaType, manifests: doc.manifests.map((m) => descriptor(m, 'index entry')) };
  }
  if (mediaType === MEDIA.ociManifest || mediaType === MEDIA.dockerManifest) {
    if (!Array.isArray(doc.layers)) throw bad('manifest', 'no layers array');
    const config = descriptor(doc.config, 'config descriptor');
    if (config.mediaType && config.mediaType !== MEDIA.ociConfig && config.mediaType !== MEDIA.dockerConfig) {
      throw unsupported(`the manifest is not a container image (config media type ${config.mediaType}), e.g. a Helm chart or other OCI artifact`, { mediaType: config.mediaType });
    }
    const layers = doc.layers.map((l) => descriptor(l, 'layer descriptor'));
    for (const l of layers) layerCompression(l.mediaType);
    return { kind: 'manifest', mediaType, config, layers };
  }
  throw unsupported(`unsupported manifest media type ${mediaType}`, { mediaType });
}

export function layerCompression(mediaType: string): LayerCompression {
  const c = LAYER_TYPES[mediaType];
  if (!c) throw unsupported(`unsupported layer media type ${mediaType}`, { mediaType });
  return c;
}

export function platformString(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}

// Variants a CPU can run, most specific first (amd64 has none in practice; arm64 is v8).
function variantMatches(want: Platform, have: Descriptor['platform']): boolean {
  if (!want.variant) return true;
  const hv = have?.variant ?? (have?.architecture === 'arm64' ? 'v8' : undefined);
  return hv === undefined || hv === want.variant;
}

/** Picks the manifest for `want` from an index (the first match, as containerd does). */
export function selectPlatform(index: ImageIndex, want: Platform): Descriptor {
  const candidates = index.manifests.filter(
    (m) => (m.mediaType === '' || m.mediaType === MEDIA.ociManifest || m.mediaType === MEDIA.dockerManifest || m.mediaType === MEDIA.ociIndex || m.mediaType === MEDIA.dockerList),
  );
  const matches = candidates.filter((m) => m.platform && m.platform.os === want.os && m.platform.architecture === want.architecture && variantMatches(want, m.platform));
  // Without a wanted variant, prefer the baseline build (no variant) over e.g. amd64/v3, which
  // older CPUs cannot run; otherwise the first match, as containerd does.
  const match = want.variant ? matches[0] : (matches.find((m) => !m.platform?.variant) ?? matches[0]);
  if (match) return match;
  const available = index.manifests.map((m) => (m.platform ? platformString(m.platform) : 'unknown'));
  throw new KilnError('KILN_ERR_IMAGE_UNSUPPORTED', `the image has no manifest for ${platformString(want)} (it has: ${available.join(', ') || 'none'})`, {
    wanted: platformString(want),
    available,
  });
}

interface RawConfig {
  architecture?: string;
  os?: string;
  variant?: string;
  config?: {
    Entrypoint?: string[] | null;
    Cmd?: string[] | null;
    Env?: string[] | null;
    WorkingDir?: string;
    User?: string;
    ExposedPorts?: Record<string, unknown> | null;
    Labels?: Record<string, string> | null;
    StopSignal?: string;
  } | null;
  rootfs?: { type?: string; diff_ids?: string[] };
}

export function parseImageConfig(body: Buffer): OciImageConfig {
  let raw: RawConfig;
  try {
    raw = JSON.parse(body.toString('utf8')) as RawConfig;
  } catch (e) {
    throw bad('image config', `not JSON: ${(e as Error).message}`);
  }
  if (!raw || typeof raw !== 'object') throw bad('image config', 'not a JSON object');
  const c = raw.config ?? {};
  const strings = (v: unknown, field: string): string[] => {
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v) || v.some((s) => typeof s !== 'string')) throw bad('image config', `${field} is not a list of strings`);
    return v as string[];
  };
  const diffIds = strings(raw.rootfs?.diff_ids, 'rootfs.diff_ids');
  return {
    entrypoint: strings(c.Entrypoint, 'Entrypoint'),
    cmd: strings(c.Cmd, 'Cmd'),
    env: strings(c.Env, 'Env'),
    workdir: typeof c.WorkingDir === 'string' ? c.WorkingDir : '',
    user: typeof c.User === 'string' ? c.User : '',
    exposedPorts: Object.keys(c.ExposedPorts ?? {}).sort(),
    labels: { ...(c.Labels ?? {}) },
    ...(c.StopSignal ? { stopSignal: c.StopSignal } : {}),
    os: raw.os ?? '',
    architecture: raw.architecture ?? '',
    ...(raw.variant ? { variant: raw.variant } : {}),
    diffIds,
  };
}

/** The platform an image is for, from its config; fields a config leaves empty are the wanted ones. */
export function imagePlatform(config: Pick<OciImageConfig, 'os' | 'architecture' | 'variant'>, want: Platform): Platform {
  return { os: config.os || want.os, architecture: config.architecture || want.architecture, ...(config.variant ? { variant: config.variant } : {}) };
}
