// ImageService on a real SQLite store and a temp state dir: an uploaded tar is held to the
// unpack limits by its entries' declared sizes, and GC leaves an import's files alone while it runs.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { pino } from 'pino';
import { EventBus } from '../events/event-bus.ts';
import { SqliteStore } from '../store/sqlite-store.ts';
import { makeTar } from './flatten/testing/tar-writer.ts';
import { ImageService } from './image-service.ts';

let tmp: string;
let store: SqliteStore;
let images: ImageService;

before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-images-'));
  store = new SqliteStore(path.join(tmp, 'kiln.db'));
  const puller = async () => {
    throw new Error('no registry in this test');
  };
  images = new ImageService(store, new EventBus(store, pino({ level: 'silent' })), {
    stateDir: tmp, puller, limits: { maxLayerBytes: 1 << 20, maxImageBytes: 1 << 20, maxEntries: 50 },
  });
});
after(async () => {
  await store.close();
  await fs.rm(tmp, { recursive: true, force: true });
});

const staging = async () => (await fs.readdir(path.join(tmp, 'images')).catch(() => [] as string[])).filter((f) => f.startsWith('.staging-'));

test('an uploaded tar that unpacks past the image limit is refused, gzip or not, and leaves nothing', async () => {
  // 8 MiB of zeros in a gzip of a few KB: within any upload limit, past the unpack limit.
  const bomb = gzipSync(makeTar([{ path: 'bin/sh', body: 'x' }, { path: 'zeros', body: Buffer.alloc(8 << 20) }]));
  assert.ok(bomb.length < 64 * 1024);
  await assert.rejects(images.importTar('bomb', Readable.from([bomb])), (e: Error & { code?: string }) =>
    e.code === 'KILN_ERR_IMAGE_INVALID' && /unpacks to more than 1048576 bytes/.test(e.message));
  const many = makeTar(Array.from({ length: 80 }, (_, i) => ({ path: `f${i}`, body: '' })));
  await assert.rejects(images.importTar('many', Readable.from([many])), /more than 50 entries/);
  assert.deepEqual(await staging(), []);
  assert.equal((await store.listImages()).length, 0);
});

test('GC during an import keeps the import\'s staging tree; the import completes', async () => {
  // A body that stalls half-way: the import sits with its staging tree on disk.
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const tarball = makeTar([{ path: 'bin/sh', body: 'x' }, { path: 'etc/hostname', body: 'kiln\n' }]);
  const body = Readable.from((async function* () {
    yield tarball.subarray(0, 512);
    await gate;
    yield tarball.subarray(512);
  })());
  const importing = images.importTar('slow', body);
  const deadline = Date.now() + 5000;
  while ((await staging()).length === 0) {
    assert.ok(Date.now() < deadline, 'the import made its staging tree within 5 s');
    await new Promise((r) => setTimeout(r, 10));
  }
  const gc = await images.gc();
  assert.equal(gc.skipped_in_flight, true);
  assert.equal((await staging()).length, 1, 'GC left the staging tree of the import in flight');
  release();
  const img = await importing;
  assert.equal(img.state, 'ready');
  assert.ok(await fs.stat(img.path));
  // Once nothing is in flight, GC has nothing of the import's to take: it is recorded.
  const after = await images.gc();
  assert.equal(after.skipped_in_flight, false);
  assert.ok(await fs.stat(img.path));
});
