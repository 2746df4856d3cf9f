import assert from 'node:assert/strict';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import * as tar from 'tar';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { makeZip } from '../../test/helpers/zip.ts';
import { MAX_INLINE_BYTES, archivePackage, cleanPath, inlinePackage } from './code-package.ts';

async function makeTar(files: Record<string, string>, gzip: boolean): Promise<Buffer> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-codepkg-'));
  try {
    for (const [p, data] of Object.entries(files)) {
      await fs.mkdir(path.dirname(path.join(dir, p)), { recursive: true });
      await fs.writeFile(path.join(dir, p), data);
    }
    const chunks: Buffer[] = [];
    for await (const c of tar.c({ cwd: dir, portable: true }, Object.keys(files).map((p) => p.split('/')[0]!).filter((v, i, a) => a.indexOf(v) === i)) as unknown as AsyncIterable<Buffer>) chunks.push(c);
    const raw = Buffer.concat(chunks);
    return gzip ? gzipSync(raw) : raw;
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

test('inline code becomes the runtime entry file; empty and oversized code are refused with their codes', () => {
  const p = inlinePackage('async function handler() {}', 'index.js');
  assert.deepEqual(p.files.map((f) => f.path), ['index.js']);
  assert.equal(p.kind, 'inline');
  assert.throws(() => inlinePackage('  \n', 'index.js'), { code: 'KILN_ERR_VALIDATION' });
  assert.throws(() => inlinePackage('x'.repeat(MAX_INLINE_BYTES + 1), 'index.js'), { code: 'KILN_ERR_CODE_TOO_LARGE' });
});

test('zip, tar and tar.gz archives with dependencies are read, format sniffed, digests stable', async () => {
  const files = { 'index.js': 'module.exports.handler = () => require("dep")()', 'node_modules/dep/index.js': 'module.exports = () => 42' };
  const zip = await archivePackage(makeZip(Object.entries(files).map(([p, data]) => ({ path: p, data }))));
  const tgz = await archivePackage(await makeTar(files, true));
  const plain = await archivePackage(await makeTar(files, false));
  for (const p of [zip, tgz, plain]) assert.deepEqual(p.files.map((f) => f.path), ['index.js', 'node_modules/dep/index.js']);
  assert.equal(zip.kind, 'zip');
  assert.equal(tgz.kind, 'tar');
  assert.equal(tgz.sha256, plain.sha256);
  assert.equal(zip.sha256, tgz.sha256, 'same files, same digest, whatever the archive format');
});

test('archive entries that escape the code directory are refused', async () => {
  await assert.rejects(archivePackage(makeZip([{ path: '../evil.js', data: 'x' }])), { code: 'KILN_ERR_VALIDATION' });
  await assert.rejects(archivePackage(makeZip([{ path: '/etc/passwd', data: 'x' }])), { code: 'KILN_ERR_VALIDATION' });
  await assert.rejects(archivePackage(makeZip([{ path: 'a.js', data: 'x' }, { path: 'link', data: '../../etc', mode: 0o120777 }])), { code: 'KILN_ERR_VALIDATION' });
  assert.equal(cleanPath('./a/./b.js'), 'a/b.js');
  assert.equal(cleanPath('./'), null);
  assert.throws(() => cleanPath('a/../../b'), { code: 'KILN_ERR_VALIDATION' });
});

test('garbage, empty archives and zip bombs are refused', async () => {
  await assert.rejects(archivePackage(Buffer.from('not an archive at all')), { code: 'KILN_ERR_VALIDATION' });
  await assert.rejects(archivePackage(Buffer.alloc(0)), { code: 'KILN_ERR_VALIDATION' });
  const bomb = gzipSync(Buffer.alloc(300 * 1024 * 1024), { level: 1 });
  await assert.rejects(archivePackage(bomb, 'tar.gz'), { code: 'KILN_ERR_CODE_TOO_LARGE' });
});
