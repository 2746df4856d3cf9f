// Builds the test images kiln's image tests pull (and the rootfs tests boot): real OCI images
// made with umoci from directory changes, pushed with skopeo into a test registry. umoci
// writes genuine whiteouts for deleted files and an opaque marker for --opaque inserts, and
// keeps owners, modes, hard links and user xattrs (we run as root).
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { buildBusyboxTree } from '../../src/image/default-image.ts';
import { skopeoCopy } from '../../src/tools/skopeo.ts';
import { zstdCompress } from '../../src/tools/zstd.ts';
import { umociConfig, umociInit, umociInsert, umociNew, umociRepack, umociUnpack, type UmociConfig } from '../../src/tools/umoci.ts';
import { run } from '../../src/util/process.ts';

/** Changes one layer makes, applied to the unpacked rootfs (deletions become whiteouts). */
export type LayerChange = (rootfs: string) => Promise<void>;

/** An OCI layout on disk that images are built into. */
export class OciLayoutBuilder {
  private constructor(readonly dir: string, private readonly work: string) {}

  static async create(dir?: string): Promise<OciLayoutBuilder> {
    const root = dir ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-oci-build-')));
    const layout = path.join(root, 'layout');
    await umociInit(layout);
    return new OciLayoutBuilder(layout, root);
  }

  ref(tag: string): string {
    return `${this.dir}:${tag}`;
  }

  /**
   * Builds `tag` as `from` (or an empty image) plus one layer per change, in order, then
   * sets the config. Each change sees the tree as all earlier layers left it.
   */
  async build(tag: string, opts: { from?: string; layers: LayerChange[]; config?: UmociConfig }): Promise<void> {
    if (opts.from) {
      await umociConfig(this.ref(opts.from), {}, tag);
    } else {
      await umociNew(this.ref(tag));
    }
    for (const change of opts.layers) {
      // A fresh bundle per layer: a second repack of the same bundle diffs against the first
      // unpack, which would merge layers and lose the whiteouts of files they add then delete.
      const bundle = path.join(this.work, `bundle-${tag}`);
      await fs.rm(bundle, { recursive: true, force: true });
      try {
        await umociUnpack(this.ref(tag), bundle);
        await change(path.join(bundle, 'rootfs'));
        await umociRepack(this.ref(tag), bundle);
      } finally {
        await fs.rm(bundle, { recursive: true, force: true });
      }
    }
    if (opts.config) await umociConfig(this.ref(tag), opts.config);
  }

  /** A layer holding `sourceDir` at `target` that hides everything lower layers had there. */
  async insertOpaque(tag: string, sourceDir: string, target: string): Promise<void> {
    await umociInsert(this.ref(tag), sourceDir, target, { opaque: true });
  }

  /**
   * Copies `tag` to `newTag` with every layer re-compressed as zstd (OCI +zstd media type).
   * skopeo 1.9 cannot force a re-compression of already-gzipped layers, so it is done here.
   */
  async recompressZstd(tag: string, newTag: string): Promise<void> {
    const blob = (d: string) => path.join(this.dir, 'blobs', 'sha256', d.slice(7));
    const putBlob = async (data: Buffer) => {
      const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
      await fs.writeFile(blob(digest), data);
      return { digest, size: data.length };
    };
    const indexFile = path.join(this.dir, 'index.json');
    const index = JSON.parse(await fs.readFile(indexFile, 'utf8')) as { manifests: { digest: string; annotations?: Record<string, string> }[] };
    const entry = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag);
    if (!entry) throw new Error(`no tag ${tag} in ${this.dir}`);
    const manifest = JSON.parse(await fs.readFile(blob(entry.digest), 'utf8')) as { layers: { mediaType: string; digest: string; size: number }[] };
    for (const l of manifest.layers) {
      const tarBytes = gunzipSync(await fs.readFile(blob(l.digest)));
      const z = await putBlob(await zstdCompress(tarBytes));
      Object.assign(l, { mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd', digest: z.digest, size: z.size });
    }
    const m = await putBlob(Buffer.from(JSON.stringify(manifest)));
    index.manifests.push({ ...entry, digest: m.digest, size: m.size, annotations: { 'org.opencontainers.image.ref.name': newTag } } as typeof entry);
    await fs.writeFile(indexFile, JSON.stringify(index));
  }

  /** Same layers, config claiming another architecture (for manifest-list tests). */
  async retagForArch(tag: string, newTag: string, architecture: string): Promise<void> {
    await umociConfig(this.ref(tag), { architecture }, newTag);
  }

  async push(tag: string, dest: string, o: { format?: 'oci' | 'v2s2'; creds?: { username: string; password: string } } = {}): Promise<void> {
    await skopeoCopy(`oci:${this.ref(tag)}`, `docker://${dest}`, {
      insecure: true,
      format: o.format,
      destCreds: o.creds,
    });
  }

  /** Writes `tag` as a `docker save`-format tarball. */
  async saveDockerArchive(tag: string, file: string, name: string): Promise<void> {
    await skopeoCopy(`oci:${this.ref(tag)}`, `docker-archive:${file}:${name}`);
  }

  async remove(): Promise<void> {
    await fs.rm(this.work, { recursive: true, force: true });
  }
}

export interface RegistryManifestInfo {
  digest: string;
  mediaType: string;
  size: number;
  body: Buffer;
}

/** GETs a manifest from a (plain HTTP, anonymous or basic) registry as the tests need it. */
export async function getManifestInfo(registryUrl: string, repo: string, ref: string, authorization?: string): Promise<RegistryManifestInfo> {
  const res = await fetch(`${registryUrl}/v2/${repo}/manifests/${ref}`, {
    headers: {
      accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json',
      ...(authorization ? { authorization } : {}),
    },
  });
  if (!res.ok) throw new Error(`GET manifest ${repo}:${ref}: HTTP ${res.status} ${await res.text()}`);
  const body = Buffer.from(await res.arrayBuffer());
  return {
    digest: `sha256:${createHash('sha256').update(body).digest('hex')}`,
    mediaType: (res.headers.get('content-type') ?? '').split(';')[0]!,
    size: body.length,
    body,
  };
}

/** PUTs a manifest list / OCI index naming already-pushed manifests with their platforms. */
export async function putIndex(
  registryUrl: string,
  repo: string,
  tag: string,
  kind: 'oci' | 'docker',
  entries: { info: RegistryManifestInfo; os: string; architecture: string; variant?: string }[],
): Promise<string> {
  const mediaType = kind === 'oci' ? 'application/vnd.oci.image.index.v1+json' : 'application/vnd.docker.distribution.manifest.list.v2+json';
  const body = JSON.stringify({
    schemaVersion: 2,
    mediaType,
    manifests: entries.map((e) => ({
      mediaType: e.info.mediaType,
      digest: e.info.digest,
      size: e.info.size,
      platform: { os: e.os, architecture: e.architecture, ...(e.variant ? { variant: e.variant } : {}) },
    })),
  });
  const res = await fetch(`${registryUrl}/v2/${repo}/manifests/${tag}`, { method: 'PUT', headers: { 'content-type': mediaType }, body });
  if (res.status !== 201) throw new Error(`PUT index ${repo}:${tag}: HTTP ${res.status} ${await res.text()}`);
  return `sha256:${createHash('sha256').update(body).digest('hex')}`;
}

/**
 * What the flattened 'features' image must look like; the rootfs tests check it from inside a
 * guest. Paths are absolute in the image.
 */
export const FEATURES_EXPECTED = {
  /** Present in layer 2, deleted (whiteout) in layer 3. */
  absent: ['/etc/deleted-me', '/opt/replaced/old.txt', '/opt/replaced/sub/old-deep.txt'],
  files: {
    '/etc/kiln-test': { content: 'layer2\n', mode: 0o644, uid: 0, gid: 0 },
    '/opt/replaced/new.txt': { content: 'opaque\n', mode: 0o644, uid: 0, gid: 0 },
    '/data/owned': { content: 'owned by 1234:5678\n', mode: 0o640, uid: 1234, gid: 5678 },
    '/usr/local/bin/suid-tool': { content: '#!/bin/sh\necho suid\n', mode: 0o4755, uid: 0, gid: 0 },
    '/data/hard-a': { content: 'hard link\n', mode: 0o644, uid: 0, gid: 0 },
    '/data/xattr-file': { content: 'xattr\n', mode: 0o644, uid: 0, gid: 0 },
  } as Record<string, { content: string; mode: number; uid: number; gid: number }>,
  /** Pairs of paths that must be the same inode. */
  hardLinks: [['/data/hard-a', '/data/hard-b']] as [string, string][],
  symlinks: { '/data/link-to-owned': 'owned', '/usr/local/bin/kiln-sh': '/bin/busybox' } as Record<string, string>,
  xattrs: { '/data/xattr-file': { 'user.kiln': 'xattr-value' } } as Record<string, Record<string, string>>,
  dirs: { '/data': { mode: 0o755, uid: 0, gid: 0 }, '/opt/replaced': { mode: 0o755, uid: 0, gid: 0 } } as Record<string, { mode: number; uid: number; gid: number }>,
  /** The only entries of the opaque directory (old ones from lower layers are hidden). */
  opaqueDir: { path: '/opt/replaced', entries: ['new.txt'] },
  config: {
    entrypoint: ['/bin/sh', '-c'],
    cmd: ['cat /etc/kiln-test'],
    env: ['PATH=/usr/local/bin:/usr/bin:/bin', 'KILN_TEST=1'],
    workdir: '/data',
    user: '0:0',
  },
};

async function write(root: string, rel: string, content: string, mode = 0o644, uid = 0, gid = 0): Promise<void> {
  const p = path.join(root, rel);
  await fs.mkdir(path.dirname(p), { recursive: true });
  await fs.writeFile(p, content);
  await fs.chown(p, uid, gid);
  // chmod after chown: chown clears setuid bits.
  await fs.chmod(p, mode);
}

const baseLayer: LayerChange = async (rootfs) => {
  await buildBusyboxTree(rootfs);
};

const featuresLayer2: LayerChange = async (rootfs) => {
  await write(rootfs, 'etc/deleted-me', 'gone in layer 3\n');
  await write(rootfs, 'etc/kiln-test', 'layer2\n');
  await write(rootfs, 'opt/replaced/old.txt', 'hidden by the opaque layer\n');
  await write(rootfs, 'opt/replaced/sub/old-deep.txt', 'hidden too\n');
};

const featuresLayer3: LayerChange = async (rootfs) => {
  await fs.rm(path.join(rootfs, 'etc/deleted-me'));
  await fs.mkdir(path.join(rootfs, 'data'), { mode: 0o755 });
  await write(rootfs, 'data/owned', 'owned by 1234:5678\n', 0o640, 1234, 5678);
  await write(rootfs, 'usr/local/bin/suid-tool', '#!/bin/sh\necho suid\n', 0o4755);
  await write(rootfs, 'data/hard-a', 'hard link\n');
  await fs.link(path.join(rootfs, 'data/hard-a'), path.join(rootfs, 'data/hard-b'));
  await fs.symlink('owned', path.join(rootfs, 'data/link-to-owned'));
  await fs.symlink('/bin/busybox', path.join(rootfs, 'usr/local/bin/kiln-sh'));
  await write(rootfs, 'data/xattr-file', 'xattr\n');
  await run('setfattr', ['-n', 'user.kiln', '-v', 'xattr-value', path.join(rootfs, 'data/xattr-file')]);
};

export interface PushedTestImages {
  /** Busybox base: one layer. */
  base: string;
  /** base + 3 layers: files, whiteout/links/owners/setuid/xattr, opaque dir. */
  features: string;
  /** base + one other layer: shares the base layer with 'features'. */
  second: string;
  /** 'features' with zstd layers (OCI manifest). */
  featuresZstd: string;
  /** OCI index: linux/arm64 (first) and linux/amd64 ('features'). */
  multiOci: string;
  /** Docker manifest list: linux/arm64/v8 (first) and linux/amd64 (Docker schema 2). */
  multiDocker: string;
  /** Manifest digest of 'features' as pushed (OCI, gzip). */
  featuresDigest: string;
  /** Manifest digest of 'features' in the Docker manifest list. */
  featuresDockerDigest: string;
  builder: OciLayoutBuilder;
}

/** Builds the standard test images into a layout (once) and pushes them to `registryHost`. */
export async function buildTestImages(builder: OciLayoutBuilder): Promise<void> {
  await builder.build('base', { layers: [baseLayer], config: { cmd: ['/bin/sh'], env: ['PATH=/usr/sbin:/usr/bin:/sbin:/bin'] } });
  await builder.build('features', {
    from: 'base',
    layers: [featuresLayer2, featuresLayer3],
    config: { ...FEATURES_EXPECTED.config, exposedPorts: ['8080/tcp'], labels: { 'org.kiln.test': 'features' } },
  });
  const opaque = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-opaque-'));
  try {
    await write(opaque, 'new.txt', 'opaque\n');
    await fs.chmod(opaque, 0o755);
    await builder.insertOpaque('features', opaque, '/opt/replaced');
  } finally {
    await fs.rm(opaque, { recursive: true, force: true });
  }
  await builder.build('second', {
    from: 'base',
    layers: [async (rootfs) => write(rootfs, 'etc/second', 'second image\n')],
    config: { cmd: ['cat', '/etc/second'] },
  });
  await builder.retagForArch('features', 'features-arm64', 'arm64');
  await builder.recompressZstd('features', 'features-zstd');
}

export async function pushTestImages(builder: OciLayoutBuilder, registryUrl: string, host: string, repoPrefix = 'kiln-test'): Promise<PushedTestImages> {
  const r = (name: string) => `${host}/${repoPrefix}/${name}`;
  const p = `${repoPrefix}`;
  await builder.push('base', `${r('base')}:v1`);
  await builder.push('features', `${r('features')}:v1`);
  await builder.push('second', `${r('second')}:v1`);
  await builder.push('features-zstd', `${r('features-zstd')}:v1`, { format: 'oci' });
  await builder.push('features', `${r('multi')}:amd64`);
  await builder.push('features-arm64', `${r('multi')}:arm64`);
  const amd = await getManifestInfo(registryUrl, `${p}/multi`, 'amd64');
  const arm = await getManifestInfo(registryUrl, `${p}/multi`, 'arm64');
  await putIndex(registryUrl, `${p}/multi`, 'v1', 'oci', [
    { info: arm, os: 'linux', architecture: 'arm64' },
    { info: amd, os: 'linux', architecture: 'amd64' },
  ]);
  await builder.push('features', `${r('multi-docker')}:amd64`, { format: 'v2s2' });
  await builder.push('features-arm64', `${r('multi-docker')}:arm64`, { format: 'v2s2' });
  const damd = await getManifestInfo(registryUrl, `${p}/multi-docker`, 'amd64');
  const darm = await getManifestInfo(registryUrl, `${p}/multi-docker`, 'arm64');
  await putIndex(registryUrl, `${p}/multi-docker`, 'v1', 'docker', [
    { info: darm, os: 'linux', architecture: 'arm64', variant: 'v8' },
    { info: damd, os: 'linux', architecture: 'amd64' },
  ]);
  const features = await getManifestInfo(registryUrl, `${p}/features`, 'v1');
  return {
    base: `${r('base')}:v1`,
    features: `${r('features')}:v1`,
    second: `${r('second')}:v1`,
    featuresZstd: `${r('features-zstd')}:v1`,
    multiOci: `${r('multi')}:v1`,
    multiDocker: `${r('multi-docker')}:v1`,
    featuresDigest: features.digest,
    featuresDockerDigest: damd.digest,
    builder,
  };
}

/**
 * Checks a flattened tree (on the host) against FEATURES_EXPECTED; returns the mismatches
 * (empty when the tree is right). The rootfs tests run it on their flattened output.
 */
export async function checkFeaturesTree(root: string): Promise<string[]> {
  const problems: string[] = [];
  const at = (p: string) => path.join(root, p);
  for (const p of FEATURES_EXPECTED.absent) {
    const st = await fs.lstat(at(p)).catch(() => null);
    if (st) problems.push(`${p} exists but was deleted by a whiteout`);
  }
  for (const [p, want] of Object.entries(FEATURES_EXPECTED.files)) {
    const st = await fs.lstat(at(p)).catch(() => null);
    if (!st?.isFile()) {
      problems.push(`${p} is missing or not a regular file`);
      continue;
    }
    const content = await fs.readFile(at(p), 'utf8');
    if (content !== want.content) problems.push(`${p} content ${JSON.stringify(content)} != ${JSON.stringify(want.content)}`);
    if ((st.mode & 0o7777) !== want.mode) problems.push(`${p} mode ${(st.mode & 0o7777).toString(8)} != ${want.mode.toString(8)}`);
    if (st.uid !== want.uid || st.gid !== want.gid) problems.push(`${p} owner ${st.uid}:${st.gid} != ${want.uid}:${want.gid}`);
  }
  for (const [p, want] of Object.entries(FEATURES_EXPECTED.dirs)) {
    const st = await fs.lstat(at(p)).catch(() => null);
    if (!st?.isDirectory()) problems.push(`${p} is not a directory`);
    else {
      if ((st.mode & 0o7777) !== want.mode) problems.push(`${p} mode ${(st.mode & 0o7777).toString(8)} != ${want.mode.toString(8)}`);
      if (st.uid !== want.uid || st.gid !== want.gid) problems.push(`${p} owner ${st.uid}:${st.gid} != ${want.uid}:${want.gid}`);
    }
  }
  for (const [a, b] of FEATURES_EXPECTED.hardLinks) {
    const [sa, sb] = await Promise.all([fs.lstat(at(a)).catch(() => null), fs.lstat(at(b)).catch(() => null)]);
    if (!sa || !sb || sa.ino !== sb.ino) problems.push(`${a} and ${b} are not the same inode`);
  }
  for (const [p, target] of Object.entries(FEATURES_EXPECTED.symlinks)) {
    const t = await fs.readlink(at(p)).catch(() => null);
    if (t !== target) problems.push(`${p} -> ${t} != ${target}`);
  }
  for (const [p, attrs] of Object.entries(FEATURES_EXPECTED.xattrs)) {
    for (const [name, value] of Object.entries(attrs)) {
      const got = await run('getfattr', ['--only-values', '-n', name, at(p)]).then((r) => r.stdout, () => null);
      if (got !== value) problems.push(`${p} xattr ${name}=${JSON.stringify(got)} != ${JSON.stringify(value)}`);
    }
  }
  const entries = (await fs.readdir(at(FEATURES_EXPECTED.opaqueDir.path)).catch(() => [])).sort();
  if (JSON.stringify(entries) !== JSON.stringify(FEATURES_EXPECTED.opaqueDir.entries)) {
    problems.push(`${FEATURES_EXPECTED.opaqueDir.path} holds ${JSON.stringify(entries)}, want only ${JSON.stringify(FEATURES_EXPECTED.opaqueDir.entries)}`);
  }
  if (!(await fs.lstat(at('/bin/busybox')).catch(() => null))?.isFile()) problems.push('/bin/busybox (base layer) is missing');
  return problems;
}
