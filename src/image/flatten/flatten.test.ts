import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { getXattrs, setXattr } from '../../tools/setfattr.ts';
import { run } from '../../util/process.ts';
import { flattenLayers, type FlattenLayer } from './flatten.ts';
import { makeTar } from './testing/tar-writer.ts';

let tmp: string;
before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-flatten-'));
});
after(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

async function layerFile(name: string, tar: Buffer, compression: FlattenLayer['compression']): Promise<FlattenLayer> {
  const p = path.join(tmp, name);
  if (compression === 'gzip') await fs.writeFile(p, gzipSync(tar));
  else if (compression === 'zstd') {
    await fs.writeFile(`${p}.raw`, tar);
    await run('zstd', ['-q', '-f', '-o', p, `${p}.raw`]);
  } else await fs.writeFile(p, tar);
  return { digest: `sha256:${name}`, path: p, compression };
}

/** A base layer made by GNU tar from a real tree: what docker/buildkit layers look like. */
async function gnuTarLayer(): Promise<FlattenLayer> {
  const src = path.join(tmp, 'base-src');
  await fs.mkdir(path.join(src, 'etc'), { recursive: true });
  await fs.mkdir(path.join(src, 'bin'));
  await fs.mkdir(path.join(src, 'gone-dir/sub'), { recursive: true });
  await fs.mkdir(path.join(src, 'opaque'));
  await fs.mkdir(path.join(src, 'dev'));
  await fs.writeFile(path.join(src, 'etc/hostname'), 'base\n');
  await fs.writeFile(path.join(src, 'gone-file'), 'x');
  await fs.writeFile(path.join(src, 'gone-dir/sub/f'), 'x');
  await fs.writeFile(path.join(src, 'opaque/old'), 'old');
  await fs.writeFile(path.join(src, 'bin/su'), '#!/bin/sh\n');
  await fs.chmod(path.join(src, 'bin/su'), 0o4755);
  await fs.writeFile(path.join(src, 'owned'), 'mine');
  await fs.chown(path.join(src, 'owned'), 1234, 5678);
  await fs.mkdir(path.join(src, 'sticky'));
  await fs.chmod(path.join(src, 'sticky'), 0o1777);
  await fs.link(path.join(src, 'etc/hostname'), path.join(src, 'etc/hostname.hard'));
  await fs.symlink('../etc/hostname', path.join(src, 'bin/link'));
  await setXattr(path.join(src, 'bin/su'), 'user.kiln', Buffer.from([0, 1, 2, 0xff]));
  await run('mknod', [path.join(src, 'dev/null'), 'c', '1', '3']);
  await fs.utimes(path.join(src, 'owned'), 1_600_000_000, 1_600_000_000);
  await fs.utimes(path.join(src, 'etc'), 1_500_000_000, 1_500_000_000);
  const tar = path.join(tmp, 'base.tar');
  await run('tar', ['--xattrs', "--xattrs-include=*", '--numeric-owner', '-C', src, '-cf', tar, '.']);
  return layerFile('base', await fs.readFile(tar), 'gzip');
}

test('layers flatten with whiteouts, opaque dirs, owners, modes, xattrs, links, devices, mtimes', async () => {
  const base = await gnuTarLayer();
  const top = await layerFile('top', makeTar([
    { path: 'opaque/new', body: 'new' },
    { path: 'opaque/.wh..wh..opq' },
    { path: '.wh.gone-file' },
    { path: '.wh.gone-dir' },
    { path: 'etc/hostname', body: 'top\n', mode: 0o600 },
    { path: 'added', body: 'a', uid: 65534, gid: 65534, mtime: 1_234_567_890 },
  ]), 'zstd');
  const root = path.join(tmp, 'root1');
  await fs.mkdir(root);
  const stats = await flattenLayers([base, top], root);
  assert.ok(stats.entries > 10);

  const exists = (p: string) => fs.lstat(path.join(root, p)).then(() => true, () => false);
  assert.equal(await exists('gone-file'), false, 'whiteout deletes a file');
  assert.equal(await exists('gone-dir'), false, 'whiteout deletes a directory');
  assert.deepEqual(await fs.readdir(path.join(root, 'opaque')), ['new'], 'opaque dir hides lower entries only');
  assert.equal(await exists('opaque/.wh..wh..opq'), false);
  assert.equal(await fs.readFile(path.join(root, 'etc/hostname'), 'utf8'), 'top\n');
  // The upper file replaced the path; the old inode lives on under the hard link's name.
  assert.equal(await fs.readFile(path.join(root, 'etc/hostname.hard'), 'utf8'), 'base\n');
  const su = await fs.lstat(path.join(root, 'bin/su'));
  assert.equal(su.mode & 0o7777, 0o4755, 'setuid kept');
  assert.deepEqual((await getXattrs(path.join(root, 'bin/su'))).get('user.kiln'), Buffer.from([0, 1, 2, 0xff]), 'binary xattr kept');
  const owned = await fs.lstat(path.join(root, 'owned'));
  assert.deepEqual([owned.uid, owned.gid], [1234, 5678]);
  assert.equal(Math.floor(owned.mtimeMs / 1000), 1_600_000_000);
  assert.equal(Math.floor((await fs.lstat(path.join(root, 'etc'))).mtimeMs / 1000), 1_500_000_000, 'dir mtime survives its children');
  assert.equal((await fs.lstat(path.join(root, 'sticky'))).mode & 0o7777, 0o1777);
  assert.equal(await fs.readlink(path.join(root, 'bin/link')), '../etc/hostname');
  const dev = await fs.lstat(path.join(root, 'dev/null'));
  assert.ok(dev.isCharacterDevice());
  assert.equal(dev.rdev, (1 << 8) | 3);
  const added = await fs.lstat(path.join(root, 'added'));
  assert.deepEqual([added.uid, added.gid, Math.floor(added.mtimeMs / 1000)], [65534, 65534, 1_234_567_890]);
});

test('hard links within and across layers share an inode', async () => {
  const l1 = await layerFile('hl1', makeTar([{ path: 'a', body: 'A' }]), 'none');
  const l2 = await layerFile('hl2', makeTar([{ path: 'b', type: 'hardlink', linkpath: 'a' }, { path: 'c', body: 'C' }, { path: 'd', type: 'hardlink', linkpath: './c' }]), 'none');
  const root = path.join(tmp, 'root-hl');
  await fs.mkdir(root);
  await flattenLayers([l1, l2], root);
  assert.equal((await fs.stat(path.join(root, 'a'))).ino, (await fs.stat(path.join(root, 'b'))).ino);
  assert.equal((await fs.stat(path.join(root, 'c'))).ino, (await fs.stat(path.join(root, 'd'))).ino);
});

test('a hostile layer cannot write outside the root', async () => {
  const outside = path.join(tmp, 'outside');
  await fs.mkdir(outside);
  const root = path.join(tmp, 'root-hostile');
  await fs.mkdir(root);
  // Layer 1 plants symlinks pointing out of the root; layer 2 writes through them.
  const l1 = await layerFile('h1', makeTar([
    { path: 'abs', type: 'symlink', linkpath: outside },
    { path: 'rel', type: 'symlink', linkpath: '../../../../../../..' + outside },
    { path: 'loop', type: 'symlink', linkpath: 'loop' },
  ]), 'none');
  const l2 = await layerFile('h2', makeTar([
    { path: 'abs/pwned1', body: 'x' },
    { path: 'rel/pwned2', body: 'x' },
    { path: '/absolute-entry', body: 'x' },
  ]), 'none');
  await flattenLayers([l1, l2], root);
  assert.deepEqual(await fs.readdir(outside), [], 'nothing escaped');
  // Symlinks resolve as the guest would see them: inside the root.
  assert.equal(await fs.readFile(path.join(root, outside, 'pwned1'), 'utf8'), 'x');
  assert.equal(await fs.readFile(path.join(root, outside, 'pwned2'), 'utf8'), 'x');
  assert.equal(await fs.readFile(path.join(root, 'absolute-entry'), 'utf8'), 'x');

  for (const [name, entries] of [
    ['dotdot', [{ path: '../escape', body: 'x' }]],
    ['dotdot-link', [{ path: 'l', type: 'hardlink' as const, linkpath: '../../etc/passwd' }]],
    ['loop', [{ path: 'loop/x', body: 'x' }]],
  ] as const) {
    const bad = await layerFile(`bad-${name}`, makeTar([...entries]), 'none');
    const r = path.join(tmp, `root-${name}`);
    await fs.mkdir(r);
    await assert.rejects(flattenLayers([l1, bad], r), { code: 'KILN_ERR_IMAGE_INVALID' }, name);
  }
  assert.equal((await fs.readdir(tmp)).includes('escape'), false);
});

test('a corrupt gzip layer is a clear KILN_ERR_IMAGE_INVALID', async () => {
  const good = gzipSync(makeTar([{ path: 'f', body: 'x'.repeat(100_000) }]));
  const p = path.join(tmp, 'corrupt.gz');
  await fs.writeFile(p, Buffer.concat([good.subarray(0, 200), Buffer.alloc(200, 0x55), good.subarray(400)]));
  const root = path.join(tmp, 'root-corrupt');
  await fs.mkdir(root);
  await assert.rejects(flattenLayers([{ digest: 'sha256:bad', path: p, compression: 'gzip' }], root), { code: 'KILN_ERR_IMAGE_INVALID' });
  const notTar = path.join(tmp, 'not-a-tar');
  await fs.writeFile(notTar, Buffer.alloc(2048, 0x41));
  await assert.rejects(flattenLayers([{ digest: 'sha256:nt', path: notTar, compression: 'none' }], root), /checksum/);
});

test('a layer that ends right after its last file’s data (no padding, no end blocks) still applies', async () => {
  const full = makeTar([{ path: 'd/', type: 'dir' }, { path: 'd/new.txt', body: 'opaque\n' }]);
  const truncated = full.subarray(0, 512 * 2 + 7);
  const l = await layerFile('trunc', truncated, 'gzip');
  const root = path.join(tmp, 'root-trunc');
  await fs.mkdir(root);
  await flattenLayers([l], root);
  assert.equal(await fs.readFile(path.join(root, 'd/new.txt'), 'utf8'), 'opaque\n');
  const cut = await layerFile('cut', full.subarray(0, 512 * 2 + 3), 'gzip');
  await assert.rejects(flattenLayers([cut], root), { code: 'KILN_ERR_IMAGE_INVALID' }, 'truncated file data is an error');
});

test('a layer that unpacks past a limit is refused before the file that crosses it is written', async () => {
  const limits = { maxLayerBytes: 64 * 1024, maxImageBytes: 96 * 1024, maxEntries: 100 };
  // 1 MiB of zeros: a few KB gzipped, a decompression bomb in miniature.
  const bomb = await layerFile('bomb', makeTar([{ path: 'small', body: 'x' }, { path: 'zeros', body: Buffer.alloc(1024 * 1024) }]), 'gzip');
  const root = path.join(tmp, 'root-bomb');
  await fs.mkdir(root);
  await assert.rejects(flattenLayers([bomb], root, undefined, limits), (e: Error & { code?: string }) =>
    e.code === 'KILN_ERR_IMAGE_INVALID' && /a layer unpacks to more than 65536 bytes \(at "zeros"/.test(e.message));
  assert.deepEqual(await fs.readdir(root), ['small'], 'the crossing file was never created');

  // Per image: two layers each under the layer limit, together over the image's.
  const a = await layerFile('a', makeTar([{ path: 'a', body: Buffer.alloc(60 * 1024) }]), 'none');
  const b = await layerFile('b', makeTar([{ path: 'b', body: Buffer.alloc(60 * 1024) }]), 'none');
  const root2 = path.join(tmp, 'root-two');
  await fs.mkdir(root2);
  await assert.rejects(flattenLayers([a, b], root2, undefined, limits), /the image unpacks to more than 98304 bytes/);

  // Entries: an inode bomb of empty files.
  const many = await layerFile('many', makeTar(Array.from({ length: 150 }, (_, i) => ({ path: `f${i}`, body: '' }))), 'gzip');
  const root3 = path.join(tmp, 'root-many');
  await fs.mkdir(root3);
  await assert.rejects(flattenLayers([many], root3, undefined, limits), /more than 100 entries/);
  assert.ok((await fs.readdir(root3)).length <= 100);
});
