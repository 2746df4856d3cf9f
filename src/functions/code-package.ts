// A function's code as a list of files: inline source becomes the runtime's entry file; a zip
// or tar(.gz) archive (dependencies included: node_modules, Python packages) is read in
// memory with every path checked. Nothing of it is executed or written on the host: the
// files go to the shim, which writes them inside the guest.
import { createHash } from 'node:crypto';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import * as tar from 'tar';
import yauzl from 'yauzl';
import { KilnError } from '../errors.ts';

/** Inline source, as in the verbatim request. */
export const MAX_INLINE_BYTES = 6 * 1024 * 1024;
/** An archive as uploaded (before base64). */
export const MAX_ARCHIVE_BYTES = 50 * 1024 * 1024;
/** Everything an archive unpacks to: a zip bomb stops here. */
export const MAX_UNPACKED_BYTES = 250 * 1024 * 1024;
export const MAX_FILES = 20_000;

export interface CodeFile {
  /** Relative POSIX path, no "..", no leading "/". */
  path: string;
  mode: number;
  data: Buffer;
  /** A symbolic link (relative target inside the code) instead of data. */
  symlink?: string;
}

export interface CodePackage {
  files: CodeFile[];
  /** sha256 over the files (paths, modes, contents): identical code, identical digest. */
  sha256: string;
  /** Total bytes of file contents. */
  size: number;
  kind: 'inline' | 'zip' | 'tar';
}

export type ArchiveFormat = 'zip' | 'tar' | 'tar.gz';

export function inlinePackage(code: string, inlineFile: string): CodePackage {
  if (code.trim() === '') throw new KilnError('KILN_ERR_VALIDATION', 'code is empty', { field: 'code' });
  const data = Buffer.from(code, 'utf8');
  if (data.length > MAX_INLINE_BYTES) {
    throw new KilnError('KILN_ERR_CODE_TOO_LARGE', `inline code is ${data.length} bytes; the limit is ${MAX_INLINE_BYTES} (use an archive for more, up to ${MAX_ARCHIVE_BYTES})`, { limit: MAX_INLINE_BYTES, size: data.length });
  }
  return finish([{ path: inlineFile, mode: 0o644, data }], 'inline');
}

/** Detects the format by its magic when `format` is not given. */
export async function archivePackage(buf: Buffer, format?: ArchiveFormat): Promise<CodePackage> {
  if (buf.length === 0) throw new KilnError('KILN_ERR_VALIDATION', 'the code archive is empty', { field: 'archive' });
  if (buf.length > MAX_ARCHIVE_BYTES) {
    throw new KilnError('KILN_ERR_CODE_TOO_LARGE', `the code archive is ${buf.length} bytes; the limit is ${MAX_ARCHIVE_BYTES}`, { limit: MAX_ARCHIVE_BYTES, size: buf.length });
  }
  const fmt = format ?? sniff(buf);
  const files = fmt === 'zip' ? await readZip(buf) : await readTar(fmt === 'tar.gz' ? gunzip(buf) : buf);
  if (!files.some((f) => !f.symlink)) throw new KilnError('KILN_ERR_VALIDATION', 'the code archive holds no files', { field: 'archive' });
  return finish(files, fmt === 'zip' ? 'zip' : 'tar');
}

function sniff(buf: Buffer): ArchiveFormat {
  if (buf.subarray(0, 4).equals(Buffer.from([0x50, 0x4b, 0x03, 0x04])) || buf.subarray(0, 4).equals(Buffer.from([0x50, 0x4b, 0x05, 0x06]))) return 'zip';
  if (buf[0] === 0x1f && buf[1] === 0x8b) return 'tar.gz';
  if (buf.length >= 512 && buf.subarray(257, 262).toString('latin1') === 'ustar') return 'tar';
  throw new KilnError('KILN_ERR_VALIDATION', 'the code archive is neither a zip nor a tar / tar.gz file', { field: 'archive' });
}

function gunzip(buf: Buffer): Buffer {
  try {
    return gunzipSync(buf, { maxOutputLength: MAX_UNPACKED_BYTES });
  } catch (e) {
    const big = (e as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE';
    throw new KilnError(big ? 'KILN_ERR_CODE_TOO_LARGE' : 'KILN_ERR_VALIDATION', big ? `the archive unpacks to more than ${MAX_UNPACKED_BYTES} bytes` : `the gzip stream is corrupt: ${(e as Error).message}`);
  }
}

/** A safe relative path, or null for entries to skip (the archive's root "./"). */
export function cleanPath(name: string): string | null {
  const n = path.posix.normalize(name.replaceAll('\\', '/')).replace(/^(\.\/)+/, '').replace(/\/+$/, '');
  if (n === '' || n === '.') return null;
  if (n.startsWith('/') || n === '..' || n.startsWith('../') || n.includes('\0')) {
    throw new KilnError('KILN_ERR_VALIDATION', `archive entry ${JSON.stringify(name)} escapes the code directory`, { field: 'archive' });
  }
  return n;
}

function checkLink(at: string, target: string): string {
  const resolved = path.posix.normalize(path.posix.join(path.posix.dirname(at), target));
  if (target.startsWith('/') || resolved === '..' || resolved.startsWith('../')) {
    throw new KilnError('KILN_ERR_VALIDATION', `archive symlink ${at} -> ${target} points outside the code directory`, { field: 'archive' });
  }
  return target;
}

class Budget {
  bytes = 0;
  count = 0;
  add(n: number): void {
    this.bytes += n;
    this.count++;
    if (this.bytes > MAX_UNPACKED_BYTES) throw new KilnError('KILN_ERR_CODE_TOO_LARGE', `the archive unpacks to more than ${MAX_UNPACKED_BYTES} bytes`, { limit: MAX_UNPACKED_BYTES });
    if (this.count > MAX_FILES) throw new KilnError('KILN_ERR_CODE_TOO_LARGE', `the archive holds more than ${MAX_FILES} files`, { limit: MAX_FILES });
  }
}

function readZip(buf: Buffer): Promise<CodeFile[]> {
  const budget = new Budget();
  return new Promise((resolve, reject) => {
    const fail = (e: unknown) => reject(e instanceof KilnError ? e : new KilnError('KILN_ERR_VALIDATION', `the zip archive is invalid: ${(e as Error).message}`, { field: 'archive' }));
    yauzl.fromBuffer(buf, { lazyEntries: true, validateEntrySizes: true, strictFileNames: false }, (err, zip) => {
      if (err || !zip) return fail(err);
      const files: CodeFile[] = [];
      zip.on('error', fail);
      zip.on('end', () => resolve(files));
      zip.on('entry', (entry: yauzl.Entry) => {
        try {
          const name = cleanPath(entry.fileName);
          const unixMode = (entry.externalFileAttributes >>> 16) & 0o170777;
          const isDir = entry.fileName.endsWith('/') || (unixMode & 0o170000) === 0o040000;
          const isLink = (unixMode & 0o170000) === 0o120000;
          if (!name || isDir) return zip.readEntry();
          budget.add(entry.uncompressedSize);
          zip.openReadStream(entry, (e2, stream) => {
            if (e2 || !stream) return fail(e2);
            const chunks: Buffer[] = [];
            stream.on('data', (c: Buffer) => chunks.push(c));
            stream.on('error', fail);
            stream.on('end', () => {
              try {
                const data = Buffer.concat(chunks);
                if (isLink) files.push({ path: name, mode: 0o777, data: Buffer.alloc(0), symlink: checkLink(name, data.toString('utf8')) });
                else files.push({ path: name, mode: modeOf(unixMode), data });
                zip.readEntry();
              } catch (e3) {
                fail(e3);
              }
            });
          });
        } catch (e) {
          fail(e);
        }
      });
      zip.readEntry();
    });
  });
}

async function readTar(buf: Buffer): Promise<CodeFile[]> {
  const budget = new Budget();
  const files: CodeFile[] = [];
  let failure: unknown = null;
  await new Promise<void>((resolve, reject) => {
    const parser = new tar.Parser({ strict: true });
    parser.on('entry', (entry: tar.ReadEntry) => {
      try {
        const name = cleanPath(entry.path);
        if (!name || entry.type === 'Directory') return entry.resume();
        if (entry.type === 'SymbolicLink') {
          files.push({ path: name, mode: 0o777, data: Buffer.alloc(0), symlink: checkLink(name, entry.linkpath ?? '') });
          return entry.resume();
        }
        if (entry.type !== 'File' && entry.type !== 'OldFile' && entry.type !== 'ContiguousFile') {
          // Hard links, devices, FIFOs: not code.
          throw new KilnError('KILN_ERR_VALIDATION', `archive entry ${name} is a ${entry.type}; code archives hold files, directories and symlinks`, { field: 'archive' });
        }
        budget.add(entry.size ?? 0);
        const chunks: Buffer[] = [];
        entry.on('data', (c: Buffer) => chunks.push(c));
        entry.on('end', () => files.push({ path: name, mode: modeOf(entry.mode ?? 0o644), data: Buffer.concat(chunks) }));
      } catch (e) {
        failure ??= e;
        entry.resume();
      }
    });
    parser.on('error', (e: Error) => reject(new KilnError('KILN_ERR_VALIDATION', `the tar archive is invalid: ${e.message}`, { field: 'archive' })));
    parser.on('end', () => resolve());
    parser.end(buf);
  });
  if (failure) throw failure;
  return files;
}

function modeOf(m: number): number {
  // Permission bits only; executables stay executable, nothing becomes setuid.
  return (m & 0o111 ? 0o755 : 0o644);
}

function finish(files: CodeFile[], kind: CodePackage['kind']): CodePackage {
  const seen = new Set<string>();
  for (const f of files) {
    if (seen.has(f.path)) throw new KilnError('KILN_ERR_VALIDATION', `archive lists ${f.path} twice`, { field: 'archive' });
    seen.add(f.path);
  }
  files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const h = createHash('sha256');
  let size = 0;
  for (const f of files) {
    h.update(`${f.path}\0${f.mode}\0${f.symlink ?? ''}\0${f.data.length}\0`);
    h.update(f.data);
    size += f.data.length;
  }
  return { files, sha256: h.digest('hex'), size, kind };
}

/** The wire form the shims take (base64 contents). */
export function shimFiles(pkg: CodePackage): { path: string; mode: number; data: string; symlink?: string }[] {
  return pkg.files.map((f) => ({ path: f.path, mode: f.mode, data: f.data.toString('base64'), ...(f.symlink ? { symlink: f.symlink } : {}) }));
}
