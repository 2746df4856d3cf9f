import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { mkfsExt4 } from '../tools/mkfs-ext4.ts';
import { run } from '../util/process.ts';
import { cloneWritableLayer, prepareVmRoot } from './rootfs-prepare.ts';

let tmp: string;
let template: string;
before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-prep-'));
  template = path.join(tmp, 'scratch.ext4');
  await mkfsExt4(template, { sizeMib: 1024, label: 'scratch' });
});
after(() => fs.rm(tmp, { recursive: true, force: true }));

async function sha(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(file)) h.update(c as Buffer);
  return h.digest('hex');
}

test('the writable layer is byte-identical to the template, sparse, and a valid ext4', async () => {
  const dest = path.join(tmp, 'a.ext4');
  const strategy = await cloneWritableLayer(template, dest);
  assert.ok(strategy === 'extent-copy' || strategy === 'reflink', strategy);
  const [a, b] = await Promise.all([fs.stat(template), fs.stat(dest)]);
  assert.equal(b.size, a.size);
  assert.ok(b.blocks <= a.blocks + 8, `sparse: ${b.blocks} vs template ${a.blocks} blocks`);
  assert.equal(await sha(dest), await sha(template));
  await run('e2fsck', ['-fn', dest]);
  await assert.rejects(cloneWritableLayer(template, dest), { code: 'EEXIST' });
});

test('prepareVmRoot: runtime dir, layer and config drive; a second call keeps the layer', async () => {
  const dir = path.join(tmp, 'vms', 'vm-1');
  const o = { runtimeDir: dir, scratch: path.join(dir, 'scratch.ext4'), config: path.join(dir, 'config.img'), scratchTemplate: template,
    guest: { argv: ['/bin/sh'], env: {}, drives: [] } };
  assert.ok(await prepareVmRoot(o));
  await fs.appendFile(o.scratch, '');
  assert.equal(await prepareVmRoot(o), null, 'restart: layer kept');
  assert.match((await fs.readFile(o.config)).subarray(0, 9).toString(), /^KILNCFG1/);
});
