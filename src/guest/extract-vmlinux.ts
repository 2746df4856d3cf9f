// Firecracker (v1.13–1.16, x86_64) boots only an uncompressed ELF vmlinux, while distro
// kernels ship a bzImage. This finds the compressed kernel inside a bzImage and inflates it,
// like the kernel's scripts/extract-vmlinux: first where the boot protocol header says the
// payload is (payload_offset/payload_length, protocol ≥ 2.08), then at every compression
// magic in the file; the first output that starts with the ELF magic wins.
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import zlib from 'node:zlib';
import { KilnError } from '../errors.ts';
import { exists, writeFileAtomic } from '../util/atomic.ts';
import { run } from '../util/process.ts';

export const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

export function isElf(buf: Buffer): boolean {
  return buf.length >= 4 && buf.subarray(0, 4).equals(ELF_MAGIC);
}

export async function isElfFile(file: string): Promise<boolean> {
  const h = await fs.open(file, 'r');
  try {
    const buf = Buffer.alloc(4);
    const { bytesRead } = await h.read(buf, 0, 4, 0);
    return bytesRead === 4 && isElf(buf);
  } finally {
    await h.close();
  }
}

export type PayloadFormat = 'gzip' | 'xz' | 'bzip2' | 'lzma' | 'lzo' | 'lz4' | 'zstd';

interface Format {
  name: PayloadFormat;
  magic: Buffer;
  /** Decompressor reading stdin, writing stdout; absent for gzip (node:zlib). */
  tool?: string[];
}

// The order of scripts/extract-vmlinux.
const FORMATS: Format[] = [
  { name: 'gzip', magic: Buffer.from([0x1f, 0x8b, 0x08]) },
  // --single-stream: stop at the end of the first stream, ignoring what follows it.
  { name: 'xz', magic: Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), tool: ['xz', '-dc', '--single-stream'] },
  { name: 'bzip2', magic: Buffer.from('BZh', 'latin1'), tool: ['bzip2', '-dc'] },
  { name: 'lzma', magic: Buffer.from([0x5d, 0x00, 0x00, 0x00]), tool: ['xz', '--format=lzma', '-dc'] },
  { name: 'lzo', magic: Buffer.from([0x89, 0x4c, 0x5a, 0x4f]), tool: ['lzop', '-dc'] },
  // The kernel's lz4 payload is the legacy frame format, which lz4 -d reads.
  { name: 'lz4', magic: Buffer.from([0x02, 0x21, 0x4c, 0x18]), tool: ['lz4', '-dc'] },
  { name: 'zstd', magic: Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), tool: ['zstd', '-dc'] },
];

interface Candidate {
  format: Format;
  offset: number;
  length: number;
  from: 'header' | 'scan';
}

/** Where the x86 boot protocol header puts the compressed payload, if it says. */
function headerCandidate(img: Buffer): Candidate | null {
  if (img.length < 0x250 || img.readUInt32LE(0x202) !== 0x53726448 /* "HdrS" */) return null;
  if (img.readUInt16LE(0x206) < 0x208) return null;
  const setupSects = img[0x1f1] || 4;
  const offset = (setupSects + 1) * 512 + img.readUInt32LE(0x248);
  const length = img.readUInt32LE(0x24c);
  if (!length || offset + length > img.length) return null;
  const format = FORMATS.find((f) => img.subarray(offset, offset + f.magic.length).equals(f.magic));
  return format ? { format, offset, length, from: 'header' } : null;
}

function scanCandidates(img: Buffer): Candidate[] {
  const out: Candidate[] = [];
  for (const format of FORMATS) {
    for (let i = img.indexOf(format.magic); i >= 0; i = img.indexOf(format.magic, i + 1)) {
      out.push({ format, offset: i, length: img.length - i, from: 'scan' });
    }
  }
  return out;
}

/** The deflate stream of a gzip member (RFC 1952 header skipped), or null if the header is bad. */
function gzipMemberBody(buf: Buffer): Buffer | null {
  if (buf.length < 18 || buf[0] !== 0x1f || buf[1] !== 0x8b || buf[2] !== 8) return null;
  const flags = buf[3]!;
  if (flags & 0xe0) return null;
  let off = 10;
  if (flags & 0x04) off += 2 + buf.readUInt16LE(off); // FEXTRA
  for (const bit of [0x08, 0x10]) {
    // FNAME, FCOMMENT: zero-terminated
    if (flags & bit) {
      const end = buf.indexOf(0, off);
      if (end < 0) return null;
      off = end + 1;
    }
  }
  if (flags & 0x02) off += 2; // FHCRC
  return off < buf.length ? buf.subarray(off) : null;
}

// Exit code 127 from sh: the decompressor is not installed.
const NOT_FOUND = 127;
const ANY_EXIT = Array.from({ length: 256 }, (_, i) => i);

/**
 * Inflates one candidate. External tools get the bytes through a shell pipeline from the
 * file (`tail | head | tool`) rather than run()'s `input`: a tool that rejects garbage
 * exits at once, and the pipe's EPIPE then stays inside the shell. Their exit status is
 * not trusted either way (trailing data makes most of them complain after a good stream):
 * only the ELF magic of what they wrote counts.
 */
async function inflate(file: string, img: Buffer, c: Candidate): Promise<Buffer | 'missing-tool' | null> {
  if (!c.format.tool) {
    const deflate = gzipMemberBody(img.subarray(c.offset, c.offset + c.length));
    if (!deflate) return null;
    try {
      // Raw inflate stops at the end of the deflate stream and ignores what follows
      // (gunzip would choke on the size and image data after the member).
      return zlib.inflateRawSync(deflate, { finishFlush: zlib.constants.Z_SYNC_FLUSH });
    } catch {
      return null;
    }
  }
  const script = 'off=$1; len=$2; file=$3; shift 3; tail -c +"$off" -- "$file" | head -c "$len" | "$@"';
  const res = await run('sh', ['-c', script, 'sh', String(c.offset + 1), String(c.length), file, ...c.format.tool], {
    binary: true,
    okCodes: ANY_EXIT,
  });
  if (res.code === NOT_FOUND && !res.stdoutBuffer.length) return 'missing-tool';
  return res.stdoutBuffer;
}

export interface ExtractResult {
  format: PayloadFormat;
  offset: number;
  bytes: number;
  /** 'header': found where the boot header said; 'scan': found by magic; 'elf': input was already ELF. */
  from: 'header' | 'scan' | 'elf';
}

/** Writes the ELF vmlinux inside `bzImagePath` to `outPath` (atomically). */
export async function extractVmlinux(bzImagePath: string, outPath: string): Promise<ExtractResult | { from: 'elf'; bytes: number }> {
  let img: Buffer;
  try {
    img = await fs.readFile(bzImagePath);
  } catch (e) {
    throw new KilnError('KILN_ERR_HOST_SETUP', `cannot read kernel image ${bzImagePath}: ${(e as NodeJS.ErrnoException).code ?? e}`, undefined, {
      cause: e,
    });
  }
  if (isElf(img)) {
    await writeFileAtomic(outPath, img);
    return { from: 'elf', bytes: img.length };
  }
  const header = headerCandidate(img);
  const candidates = [...(header ? [header] : []), ...scanCandidates(img).filter((c) => c.offset !== header?.offset)];
  const missing = new Set<string>();
  for (const c of candidates) {
    if (c.format.tool && missing.has(c.format.tool[0]!)) continue;
    const out = await inflate(bzImagePath, img, c);
    if (out === 'missing-tool') {
      missing.add(c.format.tool![0]!);
      continue;
    }
    if (out && isElf(out)) {
      await writeFileAtomic(outPath, out);
      return { format: c.format.name, offset: c.offset, bytes: out.length, from: c.from };
    }
  }
  const tried = candidates.length ? `${candidates.length} candidate payload(s)` : 'no compression magic found';
  throw new KilnError(
    missing.size ? 'KILN_ERR_HOST_SETUP' : 'KILN_ERR_VALIDATION',
    `no ELF vmlinux found in ${bzImagePath} (${tried}${missing.size ? `; missing decompressors: ${[...missing].join(', ')}` : ''})`,
    { kernel: bzImagePath, missing_tools: [...missing] },
  );
}

/**
 * The ELF kernel for `kernelPath`: itself when it is ELF already, else a vmlinux extracted
 * once into `cacheDir` (keyed by the image's path, size, mtime and inode).
 */
export async function ensureVmlinux(kernelPath: string, cacheDir: string): Promise<string> {
  let st;
  try {
    st = await fs.stat(kernelPath);
  } catch (e) {
    throw new KilnError('KILN_ERR_HOST_SETUP', `kernel image ${kernelPath} not found`, { kernel: kernelPath }, { cause: e });
  }
  if (await isElfFile(kernelPath)) return kernelPath;
  const key = createHash('sha256')
    .update(`${path.resolve(kernelPath)}\0${st.size}\0${st.mtimeMs}\0${st.ino}`)
    .digest('hex')
    .slice(0, 16);
  const out = path.join(cacheDir, `vmlinux-${key}`);
  if (await exists(out)) return out;
  await fs.mkdir(cacheDir, { recursive: true });
  await extractVmlinux(kernelPath, out);
  return out;
}
