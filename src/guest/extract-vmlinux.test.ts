import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import zlib from 'node:zlib';
import { isKilnError } from '../errors.ts';
import { run } from '../util/process.ts';
import { debianGuestKernel } from '../../test/helpers/guest-kernel.ts';
import { ELF_MAGIC, ensureVmlinux, extractVmlinux, isElf, type PayloadFormat } from './extract-vmlinux.ts';

let dir: string;
before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmlinux-'));
});
after(() => fs.rm(dir, { recursive: true, force: true }));

/** A stand-in vmlinux: the ELF magic, then bytes that are hard to confuse. */
const fakeVmlinux = () => Buffer.concat([ELF_MAGIC, Buffer.from([2, 1, 1, 0]), randomBytes(64 * 1024)]);

const COMPRESSORS: Record<PayloadFormat, [string, string[]] | 'zlib'> = {
  gzip: 'zlib',
  xz: ['xz', ['-c', '--check=crc32']],
  bzip2: ['bzip2', ['-c']],
  // A 16 MiB dictionary: its header then starts 5d 00 00 00 like the kernel's (lzma -9, 64 MiB).
  lzma: ['xz', ['--format=lzma', '--lzma1=preset=6,dict=16MiB', '-c']],
  lzo: ['lzop', ['-c']],
  lz4: ['lz4', ['-l', '-c']], // legacy frame, as the kernel builds it
  zstd: ['zstd', ['-c']],
};

/** The compressors double as the decompressors extraction runs: scripts/setup-host.sh installs them. */
async function compress(format: PayloadFormat, data: Buffer): Promise<Buffer> {
  const c = COMPRESSORS[format];
  if (c === 'zlib') return zlib.gzipSync(data);
  return (await run(c[0], c[1], { input: data, binary: true })).stdoutBuffer;
}

/** Junk with every magic in it (each followed by garbage) before the real payload. */
function decoys(): Buffer {
  const magics = [[0x1f, 0x8b, 0x08], [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], [0x42, 0x5a, 0x68], [0x5d, 0, 0, 0], [0x02, 0x21, 0x4c, 0x18], [0x28, 0xb5, 0x2f, 0xfd]];
  return Buffer.concat(magics.flatMap((m) => [randomBytes(97), Buffer.from(m), randomBytes(300)]));
}

for (const format of Object.keys(COMPRESSORS) as PayloadFormat[]) {
  test(`finds and inflates a ${format} payload among decoy magics`, async () => {
    const vmlinux = fakeVmlinux();
    const packed = await compress(format, vmlinux);
    // The kernel appends the uncompressed size after the payload; then more image data.
    const size = Buffer.alloc(4);
    size.writeUInt32LE(vmlinux.length);
    const img = path.join(dir, `bzImage-${format}`);
    await fs.writeFile(img, Buffer.concat([Buffer.from('MZ'), randomBytes(510), decoys(), packed, size, randomBytes(4096)]));
    const out = path.join(dir, `vmlinux-${format}`);
    const r = await extractVmlinux(img, out);
    assert.equal('format' in r && r.format, format);
    assert.ok((await fs.readFile(out)).equals(vmlinux), 'the exact payload came out');
  });
}

test('prefers where the boot protocol header says the payload is', async () => {
  const real = fakeVmlinux();
  const decoy = fakeVmlinux(); // an ELF too, earlier in the file: scanning alone would pick it
  const setupSects = 3;
  const pmStart = (setupSects + 1) * 512;
  const header = Buffer.alloc(pmStart);
  header[0x1f1] = setupSects;
  header.write('HdrS', 0x202, 'latin1');
  header.writeUInt16LE(0x020f, 0x206);
  const decoyGz = zlib.gzipSync(decoy);
  const realGz = zlib.gzipSync(real);
  const payloadOffset = decoyGz.length + 64;
  header.writeUInt32LE(payloadOffset, 0x248);
  header.writeUInt32LE(realGz.length, 0x24c);
  const img = path.join(dir, 'bzImage-header');
  await fs.writeFile(img, Buffer.concat([header, decoyGz, Buffer.alloc(64), realGz, Buffer.alloc(128)]));
  const out = path.join(dir, 'vmlinux-header');
  const r = await extractVmlinux(img, out);
  assert.equal(r.from, 'header');
  assert.ok((await fs.readFile(out)).equals(real));
});

test('an ELF input is copied as it is; a file with no payload is refused', async () => {
  const elf = path.join(dir, 'already-vmlinux');
  const data = fakeVmlinux();
  await fs.writeFile(elf, data);
  assert.equal((await extractVmlinux(elf, path.join(dir, 'copy'))).from, 'elf');
  assert.ok((await fs.readFile(path.join(dir, 'copy'))).equals(data));
  const junk = path.join(dir, 'junk');
  await fs.writeFile(junk, Buffer.alloc(8192, 0x41));
  await assert.rejects(extractVmlinux(junk, path.join(dir, 'nothing')), (e) => isKilnError(e) && e.code === 'KILN_ERR_VALIDATION');
  assert.equal(existsSync(path.join(dir, 'nothing')), false, 'no partial output');
  await assert.rejects(extractVmlinux(path.join(dir, 'missing'), path.join(dir, 'x')), (e) => isKilnError(e) && e.code === 'KILN_ERR_HOST_SETUP');
});

test('ensureVmlinux extracts once into the cache and passes ELF kernels through', async () => {
  const img = path.join(dir, 'bzImage-cache');
  const vmlinux = fakeVmlinux();
  await fs.writeFile(img, Buffer.concat([randomBytes(1024), zlib.gzipSync(vmlinux)]));
  const cache = path.join(dir, 'cache');
  const first = await ensureVmlinux(img, cache);
  assert.equal(path.dirname(first), cache);
  const mtime = (await fs.stat(first)).mtimeMs;
  const second = await ensureVmlinux(img, cache);
  assert.equal(second, first);
  assert.equal((await fs.stat(second)).mtimeMs, mtime, 'not extracted again');
  assert.ok((await fs.readFile(first)).equals(vmlinux));
  const elf = path.join(dir, 'plain-vmlinux');
  await fs.writeFile(elf, vmlinux);
  assert.equal(await ensureVmlinux(elf, cache), elf);
});

test('extracts the ELF vmlinux from Debian’s cloud kernel', async () => {
  const kernel = await debianGuestKernel();
  assert.equal(kernel.format, 'bzImage');
  const out = path.join(dir, 'vmlinux-debian');
  const r = await extractVmlinux(kernel.path, out);
  const head = Buffer.alloc(20);
  const h = await fs.open(out, 'r');
  await h.read(head, 0, 20, 0);
  await h.close();
  assert.ok(isElf(head), 'ELF magic');
  assert.equal(head[4], 2, 'ELFCLASS64');
  assert.equal(head.readUInt16LE(18), 0x3e, 'EM_X86_64');
  assert.ok((await fs.stat(out)).size > 10 * 1024 * 1024, `a whole kernel (${r.bytes} bytes)`);
  assert.equal(r.from, 'header');
});

test('a payload whose decompressor is missing is a host-setup error naming the tool', async () => {
  // A host without lzop: a PATH that has only what the extraction pipeline itself runs.
  const bin = path.join(dir, 'bin-without-lzop');
  await fs.mkdir(bin);
  for (const tool of ['sh', 'tail', 'head']) {
    const found = (await run('sh', ['-c', `command -v ${tool}`])).stdout.trim();
    await fs.symlink(found, path.join(bin, tool));
  }
  const img = path.join(dir, 'bzImage-lzo-only');
  await fs.writeFile(img, Buffer.concat([Buffer.alloc(600, 0x41), Buffer.from([0x89, 0x4c, 0x5a, 0x4f]), randomBytes(256)]));
  const saved = process.env.PATH;
  process.env.PATH = bin;
  try {
    await assert.rejects(
      extractVmlinux(img, path.join(dir, 'never')),
      (e) => isKilnError(e) && e.code === 'KILN_ERR_HOST_SETUP' && /missing decompressors: lzop/.test(e.message),
    );
  } finally {
    process.env.PATH = saved;
  }
  assert.equal(existsSync(path.join(dir, 'never')), false, 'no partial output');
});
