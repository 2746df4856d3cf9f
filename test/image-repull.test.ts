// The second way a cluster node gets an image file it lacks (docs/cluster.md, image files on
// every node): no ready peer holds a copy, so it pulls the image again from its registry,
// pinned to the manifest digest the catalogue recorded — not to the tag, which may have moved
// since. Two ImageServices stand for two nodes (one SQLite catalogue, separate state dirs,
// the real puller), in front of Debian's docker-registry through a proxy that logs requests.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { pino } from 'pino';
import type { KilnError } from '../src/errors.ts';
import { EventBus } from '../src/events/event-bus.ts';
import { ImageService } from '../src/image/image-service.ts';
import { pullImage } from '../src/image/oci/index.ts';
import { capacity } from '../src/store/conformance.ts';
import { SqliteStore } from '../src/store/sqlite-store.ts';
import { run } from '../src/util/process.ts';
import { startRegistry, startRegistryProxy, type RegistryProxy, type TestRegistry } from './helpers/registry.ts';
import { OciLayoutBuilder, buildTestImages, getManifestInfo } from './helpers/test-images.ts';

let tmp: string;
let registry: TestRegistry;
let proxy: RegistryProxy;
let builder: OciLayoutBuilder;
let store: SqliteStore;
let a: ImageService;
let b: ImageService;

before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-repull-'));
  registry = await startRegistry();
  proxy = await startRegistryProxy(registry.url);
  builder = await OciLayoutBuilder.create();
  await buildTestImages(builder);
  store = new SqliteStore(path.join(tmp, 'kiln.db'));
  const bus = new EventBus(store, pino({ level: 'silent' }));
  // Both nodes have the cluster's token, so B looks for a peer first; A never serves files here.
  const svc = (node: string) => new ImageService(store, bus, { stateDir: path.join(tmp, node), puller: pullImage, nodeId: node, peerToken: () => 'token', fetchIdleMs: 2000 });
  a = svc('node-a');
  b = svc('node-b');
  for (const n of ['node-a', 'node-b']) {
    await store.registerNode({ id: n, name: n, url: 'http://127.0.0.1:1', capacity: capacity({ images: [] }) }, Date.now());
  }
});

after(async () => {
  await store?.close();
  await proxy?.stop();
  await registry?.stop();
  await builder?.remove();
  await fs.rm(tmp, { recursive: true, force: true });
});

/** A file inside a squashfs image, read on the host. */
async function catInImage(image: string, file: string): Promise<string | null> {
  const r = await run('unsquashfs', ['-cat', image, file]).catch(() => null);
  return r ? r.stdout : null;
}

test('with no ready peer, B pulls the image again by its recorded digest, even after its tag moved', async () => {
  const ref = `${proxy.host}/kiln-test/second:v1`;
  await builder.push('second', `${registry.host}/kiln-test/second:v1`);
  const pushed = await getManifestInfo(registry.url, 'kiln-test/second', 'v1');
  const { done } = await a.pull({ ref });
  const img = await done;
  assert.equal(img.manifestDigest, pushed.digest);
  assert.equal(await catInImage((await a.localCopy(img.id))!.path, 'etc/second'), 'second image\n');

  // The tag now names another image (base has no /etc/second), and A goes away.
  await builder.push('base', `${registry.host}/kiln-test/second:v1`);
  assert.notEqual((await getManifestInfo(registry.url, 'kiln-test/second', 'v1')).digest, pushed.digest, 'the tag moved');
  await store.markNodesLost(Date.now() + 60_000, Date.now());
  const seen = proxy.requests.length;
  const seqBefore = (await store.listEvents({})).at(-1)?.seq ?? 0;

  const got = await b.ensureLocal(await b.get(img.id));
  assert.ok(got.path.startsWith(b.imagesDir + path.sep), got.path);
  assert.equal(await catInImage(got.path, 'etc/second'), 'second image\n', 'the image as first pulled, not what the tag names now');
  const manifests = proxy.requests.slice(seen).filter((r) => r.method === 'GET' && r.path.includes('/manifests/'));
  assert.ok(manifests.length > 0, 'B went to the registry');
  assert.ok(manifests.every((r) => r.path.endsWith(`/manifests/${pushed.digest}`)), `by digest only: ${manifests.map((r) => r.path)}`);
  assert.equal((await b.localCopy(img.id))?.path, got.path, "recorded as B's copy");
  const fetched = (await store.listEvents({ afterSeq: seqBefore })).filter((e) => e.type === 'image.fetched');
  assert.deepEqual(fetched.map((e) => (e.data as { from: string }).from), ['registry']);
});

test('with no ready peer and the registry gone, the boot fails with KILN_ERR_IMAGE_FETCH_FAILED naming the registry, and B keeps nothing', async () => {
  const ref = `${proxy.host}/kiln-test/only-once:v1`;
  await builder.push('second', `${registry.host}/kiln-test/only-once:v1`);
  for (const n of ['node-a', 'node-b']) {
    await store.registerNode({ id: n, name: n, url: 'http://127.0.0.1:1', capacity: capacity({ images: [] }) }, Date.now());
  }
  const img = await (await a.pull({ ref })).done;
  await store.markNodesLost(Date.now() + 60_000, Date.now());
  // Gone from the registry: the manifest a pinned pull asks for answers 404.
  const res = await fetch(`${registry.url}/v2/kiln-test/only-once/manifests/${img.manifestDigest}`, { method: 'DELETE' });
  assert.equal(res.status, 202, `DELETE manifest: ${res.status}`);
  const before = await fs.readdir(b.imagesDir).catch(() => [] as string[]);
  await assert.rejects(b.ensureLocal(await b.get(img.id)), (e: KilnError) =>
    e.code === 'KILN_ERR_IMAGE_FETCH_FAILED' && /registry /.test(e.message) && Array.isArray((e.details as { tried?: unknown }).tried));
  assert.deepEqual(await fs.readdir(b.imagesDir).catch(() => [] as string[]), before, 'no file and no temporary left');
  assert.deepEqual(await store.listImageCopies({ imageId: img.id, nodeId: 'node-b' }), []);
});
