// A streaming ustar/pax/GNU tar reader. kiln reads image layers itself rather than through
// node-tar because node-tar drops pax xattr records (SCHILY.xattr.*, which carry file
// capabilities and SELinux labels) and decodes every pax value as text, and because the
// flattener needs each entry's raw metadata to apply whiteouts and resolve paths safely.
import type { Readable } from 'node:stream';
import { KilnError } from '../../errors.ts';

export type TarEntryType = 'file' | 'hardlink' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';

export interface TarEntry {
  type: TarEntryType;
  path: string;
  linkpath: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Seconds since the epoch (fractional from pax). */
  mtime: number;
  devmajor: number;
  devminor: number;
  xattrs: Map<string, Buffer>;
}

const BLOCK = 512;

function invalid(message: string): KilnError {
  return new KilnError('KILN_ERR_IMAGE_INVALID', `layer tar: ${message}`);
}

/** Pulls exact byte counts out of a chunked stream. */
class ByteReader {
  private buf: Buffer = Buffer.alloc(0);
  private readonly it: AsyncIterator<Buffer>;
  private done = false;

  constructor(stream: AsyncIterable<Buffer>) {
    this.it = stream[Symbol.asyncIterator]();
  }

  private async fill(n: number): Promise<boolean> {
    while (this.buf.length < n && !this.done) {
      const r = await this.it.next();
      if (r.done) this.done = true;
      else this.buf = this.buf.length ? Buffer.concat([this.buf, r.value]) : r.value;
    }
    return this.buf.length >= n;
  }

  /** Exactly n bytes, or null at a clean end of stream (nothing buffered). */
  async read(n: number): Promise<Buffer | null> {
    if (!(await this.fill(n))) {
      if (this.buf.length === 0) return null;
      throw invalid('unexpected end of archive');
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Streams n bytes in the chunks they arrived in. */
  async *chunks(n: number): AsyncGenerator<Buffer> {
    let left = n;
    while (left > 0) {
      if (this.buf.length === 0 && !(await this.fill(1))) throw invalid('unexpected end of archive inside a file');
      const take = Math.min(left, this.buf.length);
      const out = this.buf.subarray(0, take);
      this.buf = this.buf.subarray(take);
      left -= take;
      yield out;
    }
  }

  async skip(n: number): Promise<void> {
    for await (const _ of this.chunks(n)) {
      /* discard */
    }
  }

  /**
   * Skips block padding, tolerating the stream ending inside it: some writers (umoci insert
   * seen here) end a layer right after the last file's data, without padding or end blocks.
   */
  async skipPadding(n: number): Promise<void> {
    await this.fill(n);
    this.buf = this.buf.subarray(Math.min(n, this.buf.length));
  }

  /** Drains what follows the end-of-archive marker so the producer is not left blocked. */
  async drain(): Promise<void> {
    this.buf = Buffer.alloc(0);
    while (!this.done) {
      const r = await this.it.next();
      if (r.done) this.done = true;
    }
  }
}

function cstr(b: Buffer): string {
  const nul = b.indexOf(0);
  return b.subarray(0, nul === -1 ? b.length : nul).toString('utf8');
}

function num(b: Buffer): number {
  // GNU base-256 for values that do not fit the octal field (large uids, sizes > 8 GiB).
  if (b[0]! & 0x80) {
    if (b[0]! & 0x40) throw invalid('negative base-256 number');
    let v = b[0]! & 0x3f;
    for (let i = 1; i < b.length; i++) v = v * 256 + b[i]!;
    return v;
  }
  const s = cstr(b).trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw invalid(`bad octal field ${JSON.stringify(s)}`);
  return Number.parseInt(s, 8);
}

function checksumOk(h: Buffer): boolean {
  const field = cstr(h.subarray(148, 156)).trim();
  if (!/^[0-7]+$/.test(field)) return false;
  const stored = Number.parseInt(field, 8);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i]!;
  return sum === stored;
}

/** pax records: "<len> <key>=<value>\n", where len counts the whole record (binary-safe). */
export function parsePax(data: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let off = 0;
  while (off < data.length) {
    if (data[off] === 0) break;
    const sp = data.indexOf(0x20, off);
    if (sp === -1) throw invalid('malformed pax record');
    const len = Number.parseInt(data.subarray(off, sp).toString('ascii'), 10);
    if (!Number.isInteger(len) || len <= 0 || off + len > data.length) throw invalid('malformed pax record length');
    const rec = data.subarray(sp + 1, off + len - 1); // without the trailing newline
    const eq = rec.indexOf(0x3d);
    if (eq === -1) throw invalid('pax record without "="');
    out.set(rec.subarray(0, eq).toString('utf8'), Buffer.from(rec.subarray(eq + 1)));
    off += len;
  }
  return out;
}

const TYPES: Record<string, TarEntryType> = {
  '0': 'file', '\0': 'file', '7': 'file', '1': 'hardlink', '2': 'symlink', '3': 'char', '4': 'block', '5': 'dir', '6': 'fifo',
};

/** Largest metadata block (pax header, GNU long name) accepted: bounds memory on hostile input. */
const MAX_META = 1024 * 1024;

export interface TarBody {
  chunks(): AsyncGenerator<Buffer>;
}

/**
 * Yields each entry with its body; the consumer must finish reading `body.chunks()` (or not
 * touch it: unread bodies are skipped) before asking for the next entry.
 */
export async function* readTar(stream: Readable | AsyncIterable<Buffer>): AsyncGenerator<{ entry: TarEntry; body: TarBody }> {
  const r = new ByteReader(stream as AsyncIterable<Buffer>);
  let globalPax = new Map<string, Buffer>();
  let pax: Map<string, Buffer> | null = null;
  let longName: string | null = null;
  let longLink: string | null = null;
  for (;;) {
    const h = await r.read(BLOCK);
    if (h === null) return; // some writers omit the two zero blocks
    if (h.every((b) => b === 0)) {
      await r.drain();
      return;
    }
    if (!checksumOk(h)) throw invalid('header checksum mismatch (not a tar, or corrupt)');
    const flag = String.fromCharCode(h[156]!);
    const size = num(h.subarray(124, 136));
    const padded = Math.ceil(size / BLOCK) * BLOCK;
    if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'K') {
      if (size > MAX_META) throw invalid(`metadata block of ${size} bytes`);
      const data = (await r.read(padded)) ?? Buffer.alloc(0);
      const body = data.subarray(0, size);
      if (flag === 'x') pax = parsePax(body);
      else if (flag === 'g') globalPax = new Map([...globalPax, ...parsePax(body)]);
      else if (flag === 'L') longName = cstr(body);
      else longLink = cstr(body);
      continue;
    }
    const type = TYPES[flag];
    if (!type) throw invalid(`unsupported entry type ${JSON.stringify(flag)} (GNU sparse and volume headers are not accepted)`);
    const ustar = h.subarray(257, 262).toString('latin1') === 'ustar';
    const prefix = ustar ? cstr(h.subarray(345, 500)) : '';
    const name = cstr(h.subarray(0, 100));
    const p = new Map([...globalPax, ...(pax ?? [])]);
    const str = (k: string) => p.get(k)?.toString('utf8');
    const pnum = (k: string) => (p.has(k) ? Number(str(k)) : undefined);
    const xattrs = new Map<string, Buffer>();
    for (const [k, v] of p) {
      if (k.startsWith('SCHILY.xattr.')) xattrs.set(k.slice('SCHILY.xattr.'.length), v);
      else if (k.startsWith('LIBARCHIVE.xattr.')) xattrs.set(decodeURIComponent(k.slice('LIBARCHIVE.xattr.'.length)), Buffer.from(v.toString('ascii'), 'base64'));
    }
    const entry: TarEntry = {
      type,
      path: str('path') ?? longName ?? (prefix ? `${prefix}/${name}` : name),
      linkpath: str('linkpath') ?? longLink ?? cstr(h.subarray(157, 257)),
      mode: num(h.subarray(100, 108)) & 0o7777,
      uid: pnum('uid') ?? num(h.subarray(108, 116)),
      gid: pnum('gid') ?? num(h.subarray(116, 124)),
      size: pnum('size') ?? size,
      mtime: pnum('mtime') ?? num(h.subarray(136, 148)),
      devmajor: ustar ? num(h.subarray(329, 337)) : 0,
      devminor: ustar ? num(h.subarray(337, 345)) : 0,
      xattrs,
    };
    pax = null;
    longName = null;
    longLink = null;
    for (const n of [entry.uid, entry.gid, entry.size, entry.mtime]) {
      if (!Number.isFinite(n) || n < 0) throw invalid(`bad numeric field in ${JSON.stringify(entry.path)}`);
    }
    // Only regular files carry data; a hard link's size field is informational.
    const dataSize = type === 'file' ? entry.size : flag === '1' ? 0 : size;
    const dataPadded = Math.ceil(dataSize / BLOCK) * BLOCK;
    let consumed = false;
    const body: TarBody = {
      chunks: () => {
        consumed = true;
        return r.chunks(dataSize);
      },
    };
    yield { entry, body };
    if (!consumed) await r.skip(dataSize);
    await r.skipPadding(dataPadded - dataSize);
  }
}
