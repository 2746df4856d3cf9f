import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { run } from '../../util/process.ts';
import { availableFormats, buildRootfs, pickFormat, treeStats } from './builders.ts';

let tmp: string;
let tree: string;
before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-builders-'));
  tree = path.join(tmp, 'tree');
  await fs.mkdir(path.join(tree, 'bin'), { recursive: true });
  await fs.writeFile(path.join(tree, 'bin/tool'), 'x'.repeat(10_000));
  await fs.chown(path.join(tree, 'bin/tool'), 1000, 1001);
  await fs.chmod(path.join(tree, 'bin/tool'), 0o4755);
  await fs.link(path.join(tree, 'bin/tool'), path.join(tree, 'bin/tool2'));
  await fs.symlink('tool', path.join(tree, 'bin/sym'));
});
after(() => fs.rm(tmp, { recursive: true, force: true }));

test('pickFormat prefers squashfs and refuses a format whose tool is missing', async () => {
  const have = await availableFormats();
  assert.ok(have.includes('squashfs'), 'mksquashfs is installed on kiln hosts');
  assert.equal(await pickFormat(), have[0]);
  const saved = process.env.PATH;
  process.env.PATH = '/nonexistent';
  try {
    await assert.rejects(pickFormat('erofs'), { code: 'KILN_ERR_HOST_SETUP' });
  } finally {
    process.env.PATH = saved;
  }
});

for (const format of ['squashfs', 'erofs', 'ext4'] as const) {
  test(`${format}: the built image holds the tree with owners, modes, links`, async () => {
    assert.ok((await availableFormats()).includes(format), `${format}'s builder is installed (scripts/setup-host.sh)`);
    const out = path.join(tmp, `root.${format}`);
    const r = await buildRootfs(tree, out, format, await treeStats(tree));
    assert.equal(r.format, format);
    assert.ok(r.sizeBytes > 0);
    // Read it back by mounting (we are root; loop devices exist on kiln hosts).
    const mnt = path.join(tmp, `mnt-${format}`);
    await fs.mkdir(mnt);
    await run('mount', ['-o', 'loop,ro', '-t', format, out, mnt]);
    try {
      const st = await fs.lstat(path.join(mnt, 'bin/tool'));
      assert.deepEqual([st.mode & 0o7777, st.uid, st.gid, st.size], [0o4755, 1000, 1001, 10_000]);
      assert.equal(st.ino, (await fs.lstat(path.join(mnt, 'bin/tool2'))).ino);
      assert.equal(await fs.readlink(path.join(mnt, 'bin/sym')), 'tool');
    } finally {
      await run('umount', [mnt]);
    }
  });
}
