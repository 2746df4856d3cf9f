// The default image on a real SQLite store, the host's busybox-static and mksquashfs: a node
// whose copy is gone builds its own again (on a single host too: a file removed behind kiln's
// back), and only for kiln's own image: one a user imported as "default" is never rebuilt as busybox.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { pino } from 'pino';
import type { KilnError } from '../errors.ts';
import { EventBus } from '../events/event-bus.ts';
import { SqliteStore } from '../store/sqlite-store.ts';
import { run } from '../util/process.ts';
import { DEFAULT_IMAGE_NAME, ensureDefaultImage } from './default-image.ts';
import { ImageService } from './image-service.ts';

let tmp: string;
let store: SqliteStore;
let images: ImageService;

before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-default-image-'));
  store = new SqliteStore(path.join(tmp, 'kiln.db'));
  const puller = async () => {
    throw new Error('no registry in this test');
  };
  images = new ImageService(store, new EventBus(store, pino({ level: 'silent' })), { stateDir: tmp, puller });
});
after(async () => {
  await store.close();
  await fs.rm(tmp, { recursive: true, force: true });
});

test("kiln's default image, its file gone, is built again here: a busybox root", async () => {
  const img = await ensureDefaultImage(images);
  const first = (await images.localCopy(img.id))!;
  await fs.rm(first.path);
  const again = await images.ensureLocal(await images.get(img.id));
  const { stdout } = await run('unsquashfs', ['-ls', again.path, 'bin/busybox']);
  assert.match(stdout, /bin\/busybox/);
  assert.ok((await images.localCopy(img.id))?.state === 'ready');
});

test('an image a user imported as "default" is not rebuilt as busybox when its file is gone', async () => {
  await images.delete(DEFAULT_IMAGE_NAME);
  const src = path.join(tmp, 'mine.squashfs');
  await fs.writeFile(src, 'not busybox');
  const mine = await images.importRootfsFile(DEFAULT_IMAGE_NAME, src, 'squashfs', null, { cmd: ['/my/app'] });
  assert.equal((await ensureDefaultImage(images)).id, mine.id, 'the user\'s image is kept');
  await fs.rm((await images.localCopy(mine.id))!.path);
  await assert.rejects(images.ensureLocal(await images.get(mine.id)), (e: KilnError) => e.code === 'KILN_ERR_IMAGE_FETCH_FAILED');
});
