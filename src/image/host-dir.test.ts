import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';
import { buildRootfs } from './builders/builders.ts';
import { checkAllowedDir, openAllowedDir } from './host-dir.ts';

let tmp: string;
let root: string;
let outside: string;
before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-hostdir-'));
  root = path.join(tmp, 'root');
  outside = path.join(tmp, 'outside');
  await fs.mkdir(path.join(outside, 'b'), { recursive: true });
  await fs.writeFile(path.join(outside, 'SECRET'), 'secret');
  await fs.writeFile(path.join(outside, 'b', 'SECRET'), 'secret');
});
after(() => fs.rm(tmp, { recursive: true, force: true }));

/** A fresh tree under the root: <root>/<name>/a/b/ours. */
async function tree(name: string): Promise<string> {
  const d = path.join(root, name);
  await fs.mkdir(path.join(d, 'a', 'b'), { recursive: true });
  await fs.writeFile(path.join(d, 'a', 'b', 'ours'), 'ours');
  await fs.writeFile(path.join(d, 'ours'), 'ours');
  return d;
}

async function squashfsList(file: string): Promise<string> {
  return (await promisify(execFile)('unsquashfs', ['-l', '-d', '', file])).stdout;
}

test('a symlink out of the root is refused; one that stays inside, and a root that is itself a symlink, are fine', async () => {
  const d = await tree('links');
  await fs.symlink(outside, path.join(d, 'out'));
  await fs.symlink(path.join(d, 'a'), path.join(d, 'in'));
  await assert.rejects(checkAllowedDir(path.join(d, 'out'), [root]), { code: 'KILN_ERR_PATH_NOT_ALLOWED' });
  await assert.rejects(openAllowedDir(path.join(d, 'out'), [root]), { code: 'KILN_ERR_PATH_NOT_ALLOWED' });
  await assert.rejects(openAllowedDir(path.join(d, 'out', 'b'), [root]), { code: 'KILN_ERR_PATH_NOT_ALLOWED' });
  await assert.rejects(openAllowedDir(path.join(root, '..', 'outside'), [root]), { code: 'KILN_ERR_PATH_NOT_ALLOWED' });
  await assert.rejects(openAllowedDir(path.join(d, 'ours'), [root]), { code: 'KILN_ERR_VALIDATION' });
  await assert.rejects(openAllowedDir(path.join(d, 'nothing'), [root]), { code: 'KILN_ERR_VALIDATION' });
  assert.equal(await checkAllowedDir(path.join(d, 'in'), [root]), path.join(d, 'a'));
  const rootLink = path.join(tmp, 'root-link');
  await fs.symlink(root, rootLink);
  const h = await openAllowedDir(path.join(rootLink, 'links', 'a'), [rootLink]);
  assert.equal(h.path, path.join(d, 'a'));
  await h.close();
  await assert.rejects(openAllowedDir(path.join(d, 'a'), [path.join(tmp, 'no-such-root')]), { code: 'KILN_ERR_PATH_NOT_ALLOWED' });
});

test('the directory swapped for a symlink between the check and the open: refused', async () => {
  const d = await tree('swap-last');
  await assert.rejects(openAllowedDir(d, [root], {
    afterCheck: async () => {
      await fs.rename(d, `${d}.old`);
      await fs.symlink(outside, d);
    },
  }), { code: 'KILN_ERR_PATH_NOT_ALLOWED' });
});

test('a parent swapped for a symlink between the check and the open: refused (the handle is checked, not the path)', async () => {
  const d = await tree('swap-parent');
  const a = path.join(d, 'a');
  await assert.rejects(openAllowedDir(path.join(a, 'b'), [root], {
    afterCheck: async () => {
      await fs.rename(a, `${a}.old`);
      await fs.symlink(outside, a); // <root>/swap-parent/a/b is now <outside>/b
    },
  }), { code: 'KILN_ERR_PATH_NOT_ALLOWED' });
});

test('a swap after the open changes nothing the build reads: it builds the directory that was checked', async () => {
  const d = await tree('swap-build');
  const h = await openAllowedDir(d, [root]);
  try {
    await fs.rename(d, `${d}.old`);
    await fs.symlink(outside, d);
    const out = path.join(tmp, 'swap-build.squashfs');
    await buildRootfs(h.readPath, out, 'squashfs');
    const listing = await squashfsList(out);
    assert.match(listing, /^\/ours$/m, listing);
    assert.match(listing, /^\/a\/b\/ours$/m, listing);
    assert.doesNotMatch(listing, /SECRET/, 'nothing from outside the root');
  } finally {
    await h.close();
  }
  // The control: building from the path now would read outside; the handle is what prevents it.
  const viaPath = path.join(tmp, 'via-path.squashfs');
  await buildRootfs(`${d}/.`, viaPath, 'squashfs');
  assert.match(await squashfsList(viaPath), /SECRET/);
});
