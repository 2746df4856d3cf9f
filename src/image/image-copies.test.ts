// Two ImageServices standing for two cluster nodes: one SQLite store (the shared catalogue),
// separate state dirs (no shared disk), node A's real image file route (routes/images.ts) on a
// loopback port as its node URL. Node B fetches what it lacks from A, once for concurrent
// callers, verified; a tampered copy is refused and leaves nothing; with no peer the error
// says so; A's deletion makes B's GC remove B's copy.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { registerImageRoutes } from '../api/routes/images.ts';
import type { Daemon } from '../daemon.ts';
import type { KilnError } from '../errors.ts';
import { EventBus } from '../events/event-bus.ts';
import { capacity } from '../store/conformance.ts';
import { SqliteStore } from '../store/sqlite-store.ts';
import { FETCH_PREFIX } from './image-fetch.ts';
import { ImageService } from './image-service.ts';

const TOKEN = 'cluster-token';
let tmp: string;
let store: SqliteStore;
let a: ImageService;
let b: ImageService;
let server: FastifyInstance;
let requests = 0;

const noPuller = async () => {
  throw new Error('no registry in this test');
};

before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-copies-'));
  store = new SqliteStore(path.join(tmp, 'kiln.db'));
  const bus = new EventBus(store, pino({ level: 'silent' }));
  const svc = (node: string) => new ImageService(store, bus, { stateDir: path.join(tmp, node), puller: noPuller, nodeId: node, peerToken: () => TOKEN, fetchIdleMs: 2000 });
  a = svc('node-a');
  b = svc('node-b');
  server = Fastify();
  // What the node's request guard does for every route: the cluster token or nothing.
  server.addHook('onRequest', async (req, reply) => {
    requests++;
    if (req.headers.authorization !== `Bearer ${TOKEN}`) return reply.code(401).send({ code: 'KILN_ERR_UNAUTHORIZED' });
  });
  registerImageRoutes(server, { images: a } as unknown as Daemon);
  await server.listen({ host: '127.0.0.1', port: 0 });
  const port = (server.server.address() as AddressInfo).port;
  await store.registerNode({ id: 'node-a', name: 'a', url: `http://127.0.0.1:${port}`, capacity: capacity({ images: [] }) }, Date.now());
  await store.registerNode({ id: 'node-b', name: 'b', url: 'http://127.0.0.1:1', capacity: capacity({ images: [] }) }, Date.now());
});
after(async () => {
  await server.close();
  await store.close();
  await fs.rm(tmp, { recursive: true, force: true });
});

async function imageOnA(name: string): Promise<string> {
  const file = path.join(tmp, `${name}.src`);
  await fs.writeFile(file, randomBytes(3 << 20));
  return (await a.importRootfsFile(name, file, 'squashfs', null)).id;
}

const leftovers = async (svc: ImageService) => fs.readdir(svc.imagesDir).catch(() => [] as string[]);

test('B fetches an image it lacks from A, once for concurrent callers, into its own state dir, verified', async () => {
  const id = await imageOnA('one');
  const held = await a.localCopy(id);
  assert.ok(held?.path.startsWith(a.imagesDir));
  assert.equal(await b.localCopy(id), null);
  assert.equal((await b.get(id)).path, '', "B never answers with A's path");
  const before = requests;
  const img = await b.get(id);
  const [x, y, z] = await Promise.all([b.ensureLocal(img), b.ensureLocal(img), b.ensureLocal(img)]);
  assert.equal(requests - before, 1, 'one transfer for three callers');
  assert.equal(x.path, y.path);
  assert.equal(y.path, z.path);
  assert.ok(x.path.startsWith(b.imagesDir + path.sep), x.path);
  assert.deepEqual(await fs.readFile(x.path), await fs.readFile(held!.path));
  const copy = (await b.localCopy(id))!;
  assert.equal(copy.sha256, held!.sha256);
  assert.deepEqual(await b.localImageIds(), [id]);
  assert.equal((await b.ensureLocal(img)).path, x.path, 'a second boot uses the copy');
  assert.equal(requests - before, 1);
  assert.deepEqual((await leftovers(b)).filter((e) => e.startsWith(FETCH_PREFIX)), []);
});

test('a copy tampered with on A is refused with KILN_ERR_DIGEST_MISMATCH and leaves nothing on B', async () => {
  const id = await imageOnA('bad');
  const held = (await a.localCopy(id))!;
  const fh = await fs.open(held.path, 'r+');
  await fh.write(Buffer.from('tampered'), 0, 8, 1000);
  await fh.close();
  const before = await leftovers(b);
  await assert.rejects(b.ensureLocal(await b.get(id)), (e: KilnError) => e.code === 'KILN_ERR_DIGEST_MISMATCH' && /recorded/.test(e.message));
  assert.deepEqual(await leftovers(b), before, 'no file, no temporary');
  assert.deepEqual(await store.listImageCopies({ imageId: id, nodeId: 'node-b' }), [], 'no copy row, not even the fetching one');
});

test('with no ready peer holding it, an imported image cannot be fetched: KILN_ERR_IMAGE_FETCH_FAILED', async () => {
  const id = await imageOnA('alone');
  await withALost(async () => {
    await assert.rejects(b.ensureLocal(await b.get(id)), (e: KilnError) => e.code === 'KILN_ERR_IMAGE_FETCH_FAILED' && /no ready node holds one/.test(e.message));
  });
});

/** Runs `body` while A counts as lost (no ready peer for B), then makes A ready again. */
async function withALost(body: () => Promise<void>): Promise<void> {
  await store.markNodesLost(Date.now() + 60_000, Date.now());
  try {
    await body();
  } finally {
    await store.registerNode({ id: 'node-a', name: 'a', url: (await store.getNode('node-a'))!.url, capacity: capacity({ images: [] }) }, Date.now());
  }
}

test('with no ready peer holding it, an image this node can build itself (a recipe\'s) is built here: its own copy, its own hash', async () => {
  const id = await imageOnA('recipe-made');
  const built = randomBytes(1 << 20);
  let builds = 0;
  b.addLocalBuilder((img) => img.id !== id ? undefined : async (dest, format) => {
    builds++;
    assert.equal(format, 'squashfs');
    assert.ok(path.basename(dest).startsWith(FETCH_PREFIX), `built under a temporary name: ${dest}`);
    await fs.writeFile(dest, built);
  });
  const seqBefore = (await store.listEvents({})).at(-1)?.seq ?? 0;
  await withALost(async () => {
    const img = await b.get(id);
    const [x, y] = await Promise.all([b.ensureLocal(img), b.ensureLocal(img)]);
    assert.equal(builds, 1, 'one build for two callers');
    assert.equal(x.path, y.path);
    assert.ok(x.path.startsWith(b.imagesDir + path.sep), x.path);
    assert.deepEqual(await fs.readFile(x.path), built);
  });
  const copy = (await b.localCopy(id))!;
  assert.equal(copy.sha256, `sha256:${createHash('sha256').update(built).digest('hex')}`, "B's copy is recorded with the hash of what B built");
  assert.notEqual(copy.sha256, (await a.localCopy(id))!.sha256, "not A's file: a rebuild need not be byte-identical");
  const fetched = (await store.listEvents({ afterSeq: seqBefore })).filter((e) => e.type === 'image.fetched');
  assert.deepEqual(fetched.map((e) => (e.data as { from: string }).from), ['local build']);
  assert.deepEqual((await leftovers(b)).filter((e) => e.startsWith(FETCH_PREFIX)), []);
});

test('a local build that fails: KILN_ERR_IMAGE_FETCH_FAILED saying so, and nothing is kept', async () => {
  const id = await imageOnA('recipe-broken');
  b.addLocalBuilder((img) => img.id !== id ? undefined : async (dest) => {
    await fs.writeFile(dest, 'half a build');
    throw new Error('debootstrap: the mirror is unreachable');
  });
  await withALost(async () => {
    await assert.rejects(b.ensureLocal(await b.get(id)),
      (e: KilnError) => e.code === 'KILN_ERR_IMAGE_FETCH_FAILED' && /local build: .*mirror is unreachable/.test(e.message));
  });
  assert.deepEqual((await leftovers(b)).filter((e) => e.startsWith(FETCH_PREFIX) || e === id), [], 'no temporary, no file');
  assert.deepEqual(await store.listImageCopies({ imageId: id, nodeId: 'node-b' }), []);
});

test("an image deleted through A: its copy rows go, and B's GC removes B's file", async () => {
  const id = await imageOnA('gone');
  const got = await b.ensureLocal(await b.get(id));
  await a.delete(id);
  assert.deepEqual(await store.listImageCopies({ imageId: id }), []);
  assert.ok(await fs.stat(got.path), 'still there until B collects');
  const res = await b.gc();
  assert.ok(res.removed_files >= 1);
  assert.equal(await fs.stat(got.path).catch(() => null), null);
  assert.ok(await b.localCopy((await b.list()).find((i) => i.name === 'one')!.id), "B's other copies stay");
});

test('recover() forgets a fetch a crash interrupted and removes its temporary file', async () => {
  const id = await imageOnA('cut');
  const dest = path.join(b.imagesDir, id, 'rootfs.squashfs');
  await store.putImageCopy({ imageId: id, nodeId: 'node-b', path: dest, sizeBytes: 0, sha256: '', state: 'fetching', updatedAt: Date.now() });
  const temp = path.join(b.imagesDir, `${FETCH_PREFIX}${id}-1-abc`);
  await fs.writeFile(temp, 'partial');
  await b.recover();
  assert.deepEqual(await store.listImageCopies({ imageId: id, nodeId: 'node-b' }), []);
  assert.equal(await fs.stat(temp).catch(() => null), null);
  assert.ok((await b.ensureLocal(await b.get(id))).path, 'and fetches it afresh when asked');
});

test("recover() removes this node's interrupted pull, not another node's pull under way", async () => {
  const pulling = (id: string) => ({
    id, name: `reg.example/${id}:1`, digest: '', format: 'squashfs' as const, path: '', sizeBytes: 0, config: { cmd: ['/bin/sh'], env: {}, workdir: '/', user: '0:0' },
    createdAt: Date.now(), state: 'pulling' as const, source: `reg.example/${id}:1`, manifestDigest: null, layers: [], builder: null,
  });
  const mark = (imageId: string, nodeId: string) => store.putImageCopy({ imageId, nodeId, path: '', sizeBytes: 0, sha256: '', state: 'fetching', updatedAt: Date.now() });
  await store.insertImage(pulling('img-mine'));
  await mark('img-mine', 'node-b');
  await store.insertImage(pulling('img-theirs'));
  await mark('img-theirs', 'node-a');
  await b.recover();
  assert.equal(await store.getImage('img-mine'), null);
  assert.equal((await store.getImage('img-theirs'))?.state, 'pulling');
  await store.deleteImage('img-theirs');
});
