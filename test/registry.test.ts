// Pulls from a real registry (Debian's docker-registry on loopback) through kiln's OCI client:
// anonymous, token and basic auth, manifest lists, zstd, corrupted blobs, missing manifests,
// dropped connections, shared base layers, and imports from OCI layouts and docker-save tars.
// No VMs: the rootfs tests boot what these pull.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as tar from 'tar';
import { KilnError } from '../src/errors.ts';
import { run } from '../src/util/process.ts';
import { BlobStore, importDockerArchive, importOciLayout, openLayerTar, pullImage, type PullProgress, type PulledImage } from '../src/image/oci/index.ts';
import { startRegistry, startRegistryProxy, type TestRegistry } from './helpers/registry.ts';
import { umociUnpack } from '../src/tools/umoci.ts';
import { FEATURES_EXPECTED, OciLayoutBuilder, checkFeaturesTree, buildTestImages, pushTestImages, type PushedTestImages } from './helpers/test-images.ts';

let registry: TestRegistry;
let images: PushedTestImages;
let builder: OciLayoutBuilder;
const scratch: string[] = [];

async function stateDir(): Promise<string> {
  const d = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-pull-'));
  scratch.push(d);
  return d;
}

async function sha256File(p: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(p)) h.update(c as Buffer);
  return `sha256:${h.digest('hex')}`;
}

/** The tmp dir of a store holds nothing (no partial downloads left behind). */
async function tmpEntries(dir: string): Promise<string[]> {
  return fs.readdir(path.join(dir, 'blobs', 'tmp')).catch(() => []);
}

function expectCode(code: string) {
  return (e: unknown) => {
    assert.ok(e instanceof KilnError, `expected KilnError ${code}, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    return true;
  };
}

async function tarEntries(stream: NodeJS.ReadableStream): Promise<{ path: string; type: string }[]> {
  const out: { path: string; type: string }[] = [];
  // Not strict: umoci's insert layers end with a short trailer, which real extractors accept.
  const parser = new tar.Parser({ strict: false });
  parser.on('entry', (e: tar.ReadEntry) => {
    out.push({ path: e.path, type: e.type });
    e.resume();
  });
  await new Promise<void>((resolve, reject) => {
    parser.on('end', () => resolve());
    parser.on('error', reject);
    stream.on('error', reject);
    stream.pipe(parser as unknown as NodeJS.WritableStream);
  });
  return out;
}

before(async () => {
  registry = await startRegistry();
  builder = await OciLayoutBuilder.create();
  await buildTestImages(builder);
  images = await pushTestImages(builder, registry.url, registry.host);
});

after(async () => {
  await builder?.remove();
  await registry?.stop();
  for (const d of scratch) await fs.rm(d, { recursive: true, force: true });
});

async function checkFeatures(img: PulledImage, compression: 'gzip' | 'zstd'): Promise<void> {
  assert.equal(img.layers.length, 4);
  const c = img.config;
  assert.deepEqual(
    { entrypoint: c.entrypoint, cmd: c.cmd, env: c.env, workdir: c.workdir, user: c.user },
    FEATURES_EXPECTED.config,
  );
  assert.deepEqual(c.exposedPorts, ['8080/tcp']);
  assert.equal(c.labels['org.kiln.test'], 'features');
  assert.deepEqual(img.platform, { os: 'linux', architecture: 'amd64' });
  for (const [i, l] of img.layers.entries()) {
    assert.equal(l.compression, compression);
    assert.equal(await sha256File(l.path), l.digest, 'stored blob hashes to its digest');
    assert.equal((await fs.stat(l.path)).size, l.size);
    // The uncompressed stream is exactly the layer the config's diff_id names.
    const h = createHash('sha256');
    for await (const chunk of await openLayerTar(l)) h.update(chunk as Buffer);
    assert.equal(`sha256:${h.digest('hex')}`, c.diffIds[i], `layer ${i} diff_id`);
  }
  const layer3 = await tarEntries(await openLayerTar(img.layers[2]!));
  assert.ok(layer3.some((e) => e.path === 'etc/.wh.deleted-me'), 'whiteout in layer 3');
  assert.ok(layer3.some((e) => e.path === 'data/hard-b' && e.type === 'Link'), 'hard link in layer 3');
  const layer4 = await tarEntries(await openLayerTar(img.layers[3]!));
  assert.ok(layer4.some((e) => e.path === 'opt/replaced/.wh..wh..opq'), 'opaque marker in layer 4');
}

describe('pull from a real registry', () => {
  test('anonymous pull: manifest, config and verified gzip layers in the blob store', async () => {
    const dir = await stateDir();
    const events: PullProgress[] = [];
    const img = await pullImage(images.features, { stateDir: dir }, (p) => events.push(p));
    assert.equal(img.ref.canonical, images.features);
    assert.equal(img.manifestDigest, images.featuresDigest);
    assert.equal(img.indexDigest, undefined);
    assert.deepEqual(img.source, { kind: 'registry', registry: registry.host });
    await checkFeatures(img, 'gzip');
    for (const l of img.layers) assert.equal(l.path, path.join(dir, 'blobs', 'sha256', l.digest.slice(7)));
    // Manifest and config are kept too, by digest.
    const store = BlobStore.forStateDir(dir);
    assert.ok(await store.has(img.manifestDigest));
    assert.ok(await store.has(img.configDigest));
    assert.deepEqual(await tmpEntries(dir), []);
    // Progress: resolve first, bytes per layer up to the full size, done last.
    assert.equal(events[0]!.phase, 'resolve');
    const done = events.at(-1)!;
    assert.ok(done.phase === 'done' && done.downloadedLayers === 4 && done.cachedLayers === 0);
    for (const l of img.layers) {
      const last = events.filter((e) => e.phase === 'download' && e.layer === l.digest).at(-1);
      assert.ok(last && last.phase === 'download' && last.bytes === l.size && last.total === l.size, `progress for ${l.digest}`);
    }
    // Pulling again fetches nothing.
    const again: PullProgress[] = [];
    await pullImage(images.features, { stateDir: dir }, (p) => again.push(p));
    const done2 = again.at(-1)!;
    assert.ok(done2.phase === 'done' && done2.downloadedLayers === 0 && done2.cachedLayers === 4 && done2.downloadedBytes === 0);
  });

  test('zstd-compressed layers (OCI manifest)', async () => {
    const img = await pullImage(images.featuresZstd, { stateDir: await stateDir() });
    await checkFeatures(img, 'zstd');
    assert.ok(img.layers.every((l) => l.mediaType === 'application/vnd.oci.image.layer.v1.tar+zstd'));
  });

  test('OCI index and Docker manifest list: linux/amd64 is picked, other platforms on request', async () => {
    const dir = await stateDir();
    const oci = await pullImage(images.multiOci, { stateDir: dir });
    assert.equal(oci.manifestDigest, images.featuresDigest);
    assert.match(oci.indexDigest ?? '', /^sha256:/);
    const docker = await pullImage(images.multiDocker, { stateDir: dir });
    assert.equal(docker.manifestDigest, images.featuresDockerDigest);
    assert.equal(docker.layers[0]!.mediaType, 'application/vnd.docker.image.rootfs.diff.tar.gzip');
    const arm = await pullImage(images.multiOci, { stateDir: dir, platform: { os: 'linux', architecture: 'arm64' } });
    assert.equal(arm.platform.architecture, 'arm64');
    assert.notEqual(arm.manifestDigest, images.featuresDigest);
    await assert.rejects(pullImage(images.multiOci, { stateDir: dir, platform: { os: 'linux', architecture: 's390x' } }), (e: unknown) => {
      expectCode('KILN_ERR_IMAGE_UNSUPPORTED')(e);
      assert.match((e as Error).message, /no manifest for linux\/s390x \(it has: linux\/arm64, linux\/amd64\)/);
      return true;
    });
    // A single-platform image for another architecture is refused too.
    await assert.rejects(pullImage(`${registry.host}/kiln-test/multi:arm64`, { stateDir: dir }), expectCode('KILN_ERR_IMAGE_UNSUPPORTED'));
  });

  test('missing tag, repository or digest: KILN_ERR_MANIFEST_NOT_FOUND, nothing stored', async () => {
    const dir = await stateDir();
    await assert.rejects(pullImage(`${registry.host}/kiln-test/features:nope`, { stateDir: dir }), expectCode('KILN_ERR_MANIFEST_NOT_FOUND'));
    await assert.rejects(pullImage(`${registry.host}/kiln-test/no-such-repo:v1`, { stateDir: dir }), (e: unknown) => {
      expectCode('KILN_ERR_MANIFEST_NOT_FOUND')(e);
      assert.match((e as Error).message, /kiln-test\/no-such-repo:v1 not found/);
      return true;
    });
    await assert.rejects(pullImage(`${registry.host}/kiln-test/features@sha256:${'0'.repeat(64)}`, { stateDir: dir }), expectCode('KILN_ERR_MANIFEST_NOT_FOUND'));
    assert.deepEqual(await BlobStore.forStateDir(dir).list(), []);
    assert.deepEqual(await tmpEntries(dir), []);
  });

  test('pull by digest verifies the manifest', async () => {
    const img = await pullImage(`${registry.host}/kiln-test/features@${images.featuresDigest}`, { stateDir: await stateDir() });
    assert.equal(img.manifestDigest, images.featuresDigest);
    assert.equal(img.ref.tag, undefined);
  });

  test('a corrupted blob: KILN_ERR_DIGEST_MISMATCH, no blob and no temp file; a retry after the fix succeeds', async () => {
    const dir = await stateDir();
    const ref = await pullImage(images.second, { stateDir: await stateDir() });
    const victim = ref.layers.at(-1)!; // the layer only 'second' has
    const data = registry.blobDataPath(victim.digest);
    const good = await fs.readFile(data);
    const bad = Buffer.from(good);
    bad[bad.length >> 1] = bad[bad.length >> 1]! ^ 0xff;
    await fs.writeFile(data, bad);
    try {
      await assert.rejects(pullImage(images.second, { stateDir: dir }), (e: unknown) => {
        expectCode('KILN_ERR_DIGEST_MISMATCH')(e);
        assert.match((e as Error).message, new RegExp(victim.digest));
        return true;
      });
      const store = BlobStore.forStateDir(dir);
      assert.equal(await store.has(victim.digest), false);
      assert.deepEqual(await tmpEntries(dir), []);
    } finally {
      await fs.writeFile(data, good);
    }
    const img = await pullImage(images.second, { stateDir: dir });
    assert.equal(await sha256File(img.layers.at(-1)!.path), victim.digest);
    assert.deepEqual(await tmpEntries(dir), []);
  });

  test('a connection dropped mid-blob is resumed with a Range request', async () => {
    const dir = await stateDir();
    const base = (await pullImage(images.base, { stateDir: await stateDir() })).layers[0]!;
    assert.ok(base.size > 600_000, 'the base layer is big enough to cut');
    const proxy = await startRegistryProxy(registry.url, { dropBlob: { afterBytes: 300_000, times: 2, digest: base.digest } });
    try {
      const events: PullProgress[] = [];
      const img = await pullImage(`${proxy.host}/kiln-test/base:v1`, { stateDir: dir }, (p) => events.push(p));
      assert.equal(await sha256File(img.layers[0]!.path), base.digest);
      const gets = proxy.blobGets().filter((r) => r.path.endsWith(base.digest));
      assert.equal(gets.length, 3, JSON.stringify(gets));
      assert.equal(gets[0]!.range, undefined);
      assert.equal(gets[0]!.cutAfter, 300_000);
      // Later attempts continue where the partial file ends instead of starting over.
      const resumedAt = Number(/^bytes=(\d+)-$/.exec(gets[1]!.range ?? '')?.[1]);
      assert.ok(resumedAt > 0 && resumedAt <= 300_000, `second GET resumes (${gets[1]!.range})`);
      assert.ok(Number(/^bytes=(\d+)-$/.exec(gets[2]!.range ?? '')?.[1]) > resumedAt, `third GET resumes further (${gets[2]!.range})`);
      assert.ok(events.some((e) => e.phase === 'download' && e.layer === base.digest && e.attempt === 3));
      assert.deepEqual(await tmpEntries(dir), []);
    } finally {
      await proxy.stop();
    }
  });

  test('a registry that keeps dropping the connection: clear error, nothing half-made; a retry then succeeds', async () => {
    const dir = await stateDir();
    const proxy = await startRegistryProxy(registry.url, { dropBlob: { afterBytes: 100_000, times: 1000 } });
    try {
      await assert.rejects(pullImage(`${proxy.host}/kiln-test/base:v1`, { stateDir: dir, retries: 3 }), (e: unknown) => {
        expectCode('KILN_ERR_REGISTRY_UNREACHABLE')(e);
        assert.match((e as Error).message, /after 3 attempts/);
        return true;
      });
      const store = BlobStore.forStateDir(dir);
      const manifestOnly = await store.list();
      // Only whole, verified blobs (the manifest and config) may exist; no layer, no temp file.
      for (const d of manifestOnly) assert.equal(await sha256File(store.path(d)), d);
      assert.ok(manifestOnly.length <= 2);
      assert.deepEqual(await tmpEntries(dir), []);
      proxy.setDropBlob(undefined);
      const img = await pullImage(`${proxy.host}/kiln-test/base:v1`, { stateDir: dir });
      assert.equal(await sha256File(img.layers[0]!.path), img.layers[0]!.digest);
    } finally {
      await proxy.stop();
    }
  });

  test('disk full while downloading: KILN_ERR_RESOURCE_LIMIT, no partial blob; a retry with space succeeds', async () => {
    const dir = await stateDir();
    // The suite runs as root, like kilnd: a small tmpfs is a disk that fills up.
    await run('mount', ['-t', 'tmpfs', '-o', 'size=640k', 'kiln-test-full', dir]);
    try {
      await assert.rejects(pullImage(images.base, { stateDir: dir }), (e: unknown) => {
        expectCode('KILN_ERR_RESOURCE_LIMIT')(e);
        assert.match((e as Error).message, /no space left/);
        return true;
      });
      const store = BlobStore.forStateDir(dir);
      for (const d of await store.list()) assert.equal(await sha256File(store.path(d)), d, 'only whole blobs');
      assert.deepEqual(await tmpEntries(dir), []);
      await run('mount', ['-o', 'remount,size=16m', dir]);
      const img = await pullImage(images.base, { stateDir: dir });
      assert.equal(await sha256File(img.layers[0]!.path), img.layers[0]!.digest);
    } finally {
      await run('umount', [dir]);
    }
  });

  test('a registry answering 503 for a moment is retried; one that keeps failing gives KILN_ERR_REGISTRY_ERROR', async () => {
    const flaky = await startRegistryProxy(registry.url, { failManifests: { times: 1, status: 503 } });
    const broken = await startRegistryProxy(registry.url, { failManifests: { times: 1000, status: 500 } });
    try {
      const img = await pullImage(`${flaky.host}/kiln-test/second:v1`, { stateDir: await stateDir() });
      assert.equal(img.layers.length, 2);
      assert.deepEqual(flaky.requests.filter((r) => r.path.includes('/manifests/')).map((r) => r.status), [503, 200]);
      await assert.rejects(pullImage(`${broken.host}/kiln-test/second:v1`, { stateDir: await stateDir() }), (e: unknown) => {
        expectCode('KILN_ERR_REGISTRY_ERROR')(e);
        assert.match((e as Error).message, /HTTP 500.*injected by the test proxy/);
        return true;
      });
      assert.equal(broken.requests.filter((r) => r.path.includes('/manifests/')).length, 3);
    } finally {
      await flaky.stop();
      await broken.stop();
    }
  });

  test('HTTPS registry (self-signed, loopback so unverified TLS is allowed): pulled over TLS', async () => {
    const tlsRegistry = await startRegistry({ tls: true });
    try {
      await builder.push('second', `${tlsRegistry.host}/kiln-test/second:v1`);
      const img = await pullImage(`${tlsRegistry.host}/kiln-test/second:v1`, { stateDir: await stateDir() });
      assert.equal(img.layers.length, 2);
      assert.equal(await sha256File(img.layers[1]!.path), img.layers[1]!.digest);
    } finally {
      await tlsRegistry.stop();
    }
  });

  test('an unreachable registry fails with KILN_ERR_REGISTRY_UNREACHABLE', async () => {
    const proxy = await startRegistryProxy(registry.url);
    const host = proxy.host;
    await proxy.stop();
    await assert.rejects(pullImage(`${host}/kiln-test/base:v1`, { stateDir: await stateDir() }), expectCode('KILN_ERR_REGISTRY_UNREACHABLE'));
  });

  test('a second image sharing base layers downloads only its new layers', async () => {
    const dir = await stateDir();
    const proxy = await startRegistryProxy(registry.url);
    try {
      const features = await pullImage(`${proxy.host}/kiln-test/features:v1`, { stateDir: dir });
      const first = proxy.blobGets().map((r) => r.path.split('/').at(-1));
      assert.deepEqual(first.sort(), [features.configDigest, ...features.layers.map((l) => l.digest)].sort());
      const before = proxy.blobGets().length;
      const events: PullProgress[] = [];
      const second = await pullImage(`${proxy.host}/kiln-test/second:v1`, { stateDir: dir }, (p) => events.push(p));
      assert.equal(second.layers[0]!.digest, features.layers[0]!.digest, 'the images share the base layer');
      const fetched = proxy.blobGets().slice(before).map((r) => r.path.split('/').at(-1));
      assert.deepEqual(fetched.sort(), [second.configDigest, second.layers[1]!.digest].sort());
      const done = events.at(-1)!;
      assert.ok(done.phase === 'done' && done.downloadedLayers === 1 && done.cachedLayers === 1);
      assert.ok(events.some((e) => e.phase === 'download' && e.layer === features.layers[0]!.digest && e.cached));
    } finally {
      await proxy.stop();
    }
  });

  test('concurrent pulls of the same image download each blob once', async () => {
    const dir = await stateDir();
    const proxy = await startRegistryProxy(registry.url);
    try {
      const ref = `${proxy.host}/kiln-test/features:v1`;
      const [a, b] = await Promise.all([pullImage(ref, { stateDir: dir }), pullImage(ref, { stateDir: dir })]);
      assert.equal(a.manifestDigest, b.manifestDigest);
      const gets = proxy.blobGets().map((r) => r.path.split('/').at(-1)!);
      assert.equal(new Set(gets).size, gets.length, `each blob fetched once: ${gets.join(' ')}`);
      assert.equal(gets.length, 5);
    } finally {
      await proxy.stop();
    }
  });
});

describe('registry authentication', () => {
  let tokenRegistry: TestRegistry;
  const creds = { username: 'alice', password: 'wonderland' };
  // Read by the token service on every request: tests flip public access on and off.
  const tokenAuth = { users: { alice: 'wonderland' }, anonymousPull: false };
  let credsDir: string;

  before(async () => {
    tokenRegistry = await startRegistry({ tokenAuth });
    await builder.push('features', `${tokenRegistry.host}/private/features:v1`, { creds });
    credsDir = await stateDir();
  });
  after(async () => {
    await tokenRegistry?.stop();
  });

  async function credentialsFile(entries: Record<string, { username: string; password: string }>): Promise<string> {
    const file = path.join(credsDir, `config-${Object.keys(entries).length}-${Math.random().toString(36).slice(2)}.json`);
    const auths = Object.fromEntries(Object.entries(entries).map(([k, c]) => [k, { auth: Buffer.from(`${c.username}:${c.password}`).toString('base64') }]));
    await fs.writeFile(file, JSON.stringify({ auths }));
    return file;
  }

  test('token auth: challenge → token service with credentials from config.json → pull; tokens are reused', async () => {
    const ref = `${tokenRegistry.host}/private/features:v1`;
    const file = await credentialsFile({ [`http://${tokenRegistry.host}/v2/`]: creds });
    const log = tokenRegistry.token!.requests;
    const before = log.length;
    const img = await pullImage(ref, { stateDir: await stateDir(), credentialsFile: file });
    await checkFeatures(img, 'gzip');
    const mine = log.slice(before);
    assert.ok(mine.length >= 1);
    assert.deepEqual(mine[0], { user: 'alice', scope: 'repository:private/features:pull', granted: ['private/features:pull'] });
    // A second pull (new client, same process) reuses the cached token for that scope.
    const n = log.length;
    await pullImage(ref, { stateDir: await stateDir(), credentialsFile: file });
    assert.equal(log.length, n, 'no new token request');
  });

  test('token auth: anonymous and wrong credentials are refused with KILN_ERR_REGISTRY_AUTH', async () => {
    const ref = `${tokenRegistry.host}/private/features:v1`;
    await assert.rejects(pullImage(ref, { stateDir: await stateDir() }), (e: unknown) => {
      expectCode('KILN_ERR_REGISTRY_AUTH')(e);
      assert.match((e as Error).message, /no credentials configured/);
      return true;
    });
    await assert.rejects(pullImage(ref, { stateDir: await stateDir(), credentials: { username: 'alice', password: 'nope' } }), (e: unknown) => {
      expectCode('KILN_ERR_REGISTRY_AUTH')(e);
      assert.match((e as Error).message, /refused the credentials of "alice"/);
      return true;
    });
  });

  test('token auth, public repository: an anonymous token is enough (the Docker Hub flow)', async () => {
    tokenAuth.anonymousPull = true;
    try {
      const log = tokenRegistry.token!.requests;
      const before = log.length;
      const img = await pullImage(`${tokenRegistry.host}/private/features:v1`, { stateDir: await stateDir() });
      assert.equal(img.layers.length, 4);
      assert.deepEqual(log.slice(before), [{ user: null, scope: 'repository:private/features:pull', granted: ['private/features:pull'] }]);
    } finally {
      tokenAuth.anonymousPull = false;
    }
  });

  test('basic auth (registry behind an authenticating proxy) with credentials from config.json', async () => {
    const proxy = await startRegistryProxy(registry.url, { basicAuth: { bob: 'builder' } });
    try {
      const ref = `${proxy.host}/kiln-test/second:v1`;
      await assert.rejects(pullImage(ref, { stateDir: await stateDir() }), (e: unknown) => {
        expectCode('KILN_ERR_REGISTRY_AUTH')(e);
        assert.match((e as Error).message, /requires a username and password/);
        return true;
      });
      const wrong = await credentialsFile({ [proxy.host]: { username: 'bob', password: 'x' } });
      await assert.rejects(pullImage(ref, { stateDir: await stateDir(), credentialsFile: wrong }), expectCode('KILN_ERR_REGISTRY_AUTH'));
      const file = await credentialsFile({ [proxy.host]: { username: 'bob', password: 'builder' }, 'other.example': creds });
      const img = await pullImage(ref, { stateDir: await stateDir(), credentialsFile: file });
      assert.equal(img.layers.length, 2);
      // After the first challenge the credentials go with every request: one 401 per pull, not per blob.
      assert.ok(proxy.requests.filter((r) => r.status === 401).length <= 4);
    } finally {
      await proxy.stop();
    }
  });
});

test('the features fixture is what FEATURES_EXPECTED says (checked on umoci\'s own unpack)', async () => {
  const bundle = path.join(await stateDir(), 'bundle');
  await umociUnpack(builder.ref('features'), bundle);
  assert.deepEqual(await checkFeaturesTree(path.join(bundle, 'rootfs')), []);
  // And the checker does catch a wrong tree.
  await fs.writeFile(path.join(bundle, 'rootfs/etc/deleted-me'), 'back');
  await fs.chmod(path.join(bundle, 'rootfs/usr/local/bin/suid-tool'), 0o755);
  assert.equal((await checkFeaturesTree(path.join(bundle, 'rootfs'))).length, 2);
});

describe('imports', () => {
  test('OCI layout directory (gzip and zstd), by tag', async () => {
    const dir = await stateDir();
    const img = await importOciLayout(builder.dir, { stateDir: dir, ref: 'features' });
    await checkFeatures(img, 'gzip');
    assert.equal(img.ref.tag, 'features');
    assert.deepEqual(img.source, { kind: 'oci-layout', path: builder.dir });
    const z = await importOciLayout(builder.dir, { stateDir: dir, ref: 'features-zstd' });
    await checkFeatures(z, 'zstd');
    await assert.rejects(importOciLayout(builder.dir, { stateDir: dir }), expectCode('KILN_ERR_VALIDATION'));
    await assert.rejects(importOciLayout(builder.dir, { stateDir: dir, ref: 'nope' }), expectCode('KILN_ERR_MANIFEST_NOT_FOUND'));
    assert.deepEqual(await tmpEntries(dir), []);
  });

  test('OCI layout with a corrupted blob is refused and stores nothing', async () => {
    const dir = await stateDir();
    const copy = path.join(await stateDir(), 'layout');
    await fs.cp(builder.dir, copy, { recursive: true });
    const img = await importOciLayout(copy, { stateDir: await stateDir(), ref: 'second' });
    const victim = path.join(copy, 'blobs', 'sha256', img.layers[1]!.digest.slice(7));
    const bytes = await fs.readFile(victim);
    bytes[10] = bytes[10]! ^ 0xff;
    await fs.writeFile(victim, bytes);
    await assert.rejects(importOciLayout(copy, { stateDir: dir, ref: 'second' }), expectCode('KILN_ERR_DIGEST_MISMATCH'));
    assert.equal(await BlobStore.forStateDir(dir).has(img.layers[1]!.digest), false);
    assert.deepEqual(await tmpEntries(dir), []);
  });

  test('docker save tarballs in the Docker 25+ layout (OCI blobs inside) and with symlinked layers', async () => {
    const dir = await stateDir();
    const ref = await importOciLayout(builder.dir, { stateDir: await stateDir(), ref: 'features' });
    const blob = (d: string) => path.join(builder.dir, 'blobs', 'sha256', d.slice(7));
    // Docker 25+: manifest.json points into an OCI blobs/ tree (here with gzip layers).
    const modern = path.join(await stateDir(), 'modern');
    await fs.mkdir(path.join(modern, 'blobs', 'sha256'), { recursive: true });
    for (const d of [ref.configDigest, ...ref.layers.map((l) => l.digest)]) await fs.copyFile(blob(d), path.join(modern, 'blobs', 'sha256', d.slice(7)));
    await fs.writeFile(path.join(modern, 'manifest.json'), JSON.stringify([
      { Config: `blobs/sha256/${ref.configDigest.slice(7)}`, RepoTags: ['kiln-test/modern:v1'], Layers: ref.layers.map((l) => `blobs/sha256/${l.digest.slice(7)}`) },
    ]));
    const modernTar = path.join(await stateDir(), 'modern.tar');
    await tar.c({ file: modernTar, cwd: modern }, ['.']);
    const m = await importDockerArchive(modernTar, { stateDir: dir });
    assert.equal(m.ref.canonical, 'docker.io/kiln-test/modern:v1');
    assert.deepEqual(m.layers.map((l) => l.digest), ref.layers.map((l) => l.digest));
    assert.ok(m.layers.every((l) => l.compression === 'gzip'));
    assert.equal(m.configDigest, ref.configDigest);

    // Legacy layout where a layer directory symlinks another image's layer.tar.
    const legacy = path.join(await stateDir(), 'legacy');
    const tars: string[] = [];
    for (const [i, l] of ref.layers.entries()) {
      await fs.mkdir(path.join(legacy, `l${i}`), { recursive: true });
      const raw = path.join(legacy, `l${i}`, 'layer.tar');
      const chunks: Buffer[] = [];
      for await (const c of await openLayerTar(l)) chunks.push(c as Buffer);
      await fs.writeFile(raw, Buffer.concat(chunks));
      tars.push(`l${i}/layer.tar`);
    }
    await fs.mkdir(path.join(legacy, 'alias'));
    await fs.symlink('../l0/layer.tar', path.join(legacy, 'alias', 'layer.tar'));
    await fs.copyFile(blob(ref.configDigest), path.join(legacy, 'config.json'));
    await fs.writeFile(path.join(legacy, 'manifest.json'), JSON.stringify([{ Config: 'config.json', RepoTags: null, Layers: ['alias/layer.tar', ...tars.slice(1)] }]));
    const legacyTar = path.join(await stateDir(), 'legacy.tar');
    await tar.c({ file: legacyTar, cwd: legacy }, ['.']);
    const g = await importDockerArchive(legacyTar, { stateDir: dir });
    assert.deepEqual(g.layers.map((l) => l.digest), ref.config.diffIds);
    assert.match(g.ref.canonical, /^localhost\/import@sha256:/);
    // An archive whose layer is not what the config says is refused.
    await fs.writeFile(path.join(legacy, 'l1', 'layer.tar'), Buffer.alloc(1024));
    await tar.c({ file: legacyTar, cwd: legacy }, ['.']);
    await assert.rejects(importDockerArchive(legacyTar, { stateDir: await stateDir() }), expectCode('KILN_ERR_DIGEST_MISMATCH'));
  });

  test('docker save tarball', async () => {
    const dir = await stateDir();
    const file = path.join(await stateDir(), 'features.tar');
    await builder.saveDockerArchive('features', file, 'kiln-test/features:v1');
    const img = await importDockerArchive(file, { stateDir: dir });
    assert.equal(img.ref.canonical, 'docker.io/kiln-test/features:v1');
    assert.equal(img.layers.length, 4);
    assert.deepEqual(img.layers.map((l) => l.digest), img.config.diffIds, 'uncompressed layers are their diff_ids');
    assert.ok(img.layers.every((l) => l.compression === 'none'));
    assert.deepEqual(img.config.cmd, FEATURES_EXPECTED.config.cmd);
    const layer3 = await tarEntries(await openLayerTar(img.layers[2]!));
    assert.ok(layer3.some((e) => e.path === 'etc/.wh.deleted-me'));
    const store = BlobStore.forStateDir(dir);
    assert.ok(await store.has(img.manifestDigest));
    assert.ok(await store.has(img.configDigest));
    const again = await importDockerArchive(file, { stateDir: dir, ref: 'kiln-test/features:v1' });
    assert.equal(again.manifestDigest, img.manifestDigest);
    await assert.rejects(importDockerArchive(file, { stateDir: dir, ref: 'other:v1' }), expectCode('KILN_ERR_MANIFEST_NOT_FOUND'));
    await assert.rejects(importDockerArchive(path.join(dir, 'missing.tar'), { stateDir: dir }), expectCode('KILN_ERR_VALIDATION'));
    assert.deepEqual(await tmpEntries(dir), []);
  });
});

