// Content-addressed blob store shared by every image: <root>/sha256/<hex>. A blob reaches its
// final path only by rename after its sha256 was verified, so a half or wrong blob is never
// visible. Downloads go to <root>/tmp/<hex>.partial, resume from there with a Range request
// after a dropped connection, and are coalesced when several pulls want the same digest.
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { KilnError, isKilnError } from '../../errors.ts';
import { isDigest } from './reference.ts';
import { TransportError } from './http.ts';

export interface BlobSource {
  stream: Readable;
  /** Byte offset the stream starts at: the requested one, or 0 when the server ignored Range. */
  offset: number;
}

/** Opens the blob at `offset` (a Range request when > 0). Throws TransportError for retryable failures. */
export type BlobFetcher = (offset: number) => Promise<BlobSource>;

export type BytesListener = (bytes: number, total: number, attempt: number) => void;

export interface EnsureOptions {
  /** Size from the descriptor; more bytes than this is a mismatch, fewer is a truncated download. */
  size: number;
  fetch: BlobFetcher;
  onBytes?: BytesListener;
  /** Attempts for retryable failures (default 5). */
  retries?: number;
  signal?: AbortSignal;
  /** Base backoff between attempts in ms (default 250, doubled per attempt, capped at 5 s). */
  backoffMs?: number;
}

export interface EnsureResult {
  path: string;
  /** False when the blob was already there (or another caller's download produced it). */
  downloaded: boolean;
  bytesFetched: number;
}

const PROGRESS_STEP = 256 * 1024;
const stores = new Map<string, BlobStore>();

function hexOf(digest: string): string {
  if (!isDigest(digest)) throw new KilnError('KILN_ERR_VALIDATION', `not a sha256 digest: ${JSON.stringify(digest)}`);
  return digest.slice(7);
}

async function fileSize(p: string): Promise<number> {
  try {
    return (await fs.stat(p)).size;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw e;
  }
}

async function hashFile(p: string, h: Hash): Promise<void> {
  for await (const chunk of createReadStream(p)) h.update(chunk as Buffer);
}

/** A failure writing into the store: disk full is the caller's resource problem, not the registry's. */
export function localWriteError(e: unknown, digest: string): KilnError {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new KilnError('KILN_ERR_RESOURCE_LIMIT', `no space left in the blob store while writing ${digest}`, { digest, errno: code }, { cause: e });
  }
  return new KilnError('KILN_ERR_INTERNAL', `cannot write blob ${digest} into the store: ${(e as Error).message}`, { digest, errno: code ?? null }, { cause: e });
}

export class DigestMismatchError extends KilnError {
  constructor(expected: string, actual: string, what: string, details: Record<string, unknown> = {}) {
    super('KILN_ERR_DIGEST_MISMATCH', `${what} ${expected} failed verification: content hashes to ${actual}`, { expected, actual, ...details });
  }
}

export class BlobStore {
  readonly root: string;
  readonly tmpDir: string;
  readonly #inflight = new Map<string, { promise: Promise<EnsureResult>; listeners: Set<BytesListener> }>();

  constructor(root: string) {
    this.root = path.resolve(root);
    this.tmpDir = path.join(this.root, 'tmp');
  }

  /** The process-wide store for a state dir: one instance, so downloads coalesce across pulls. */
  static forStateDir(stateDir: string): BlobStore {
    const root = path.resolve(stateDir, 'blobs');
    let s = stores.get(root);
    if (!s) stores.set(root, (s = new BlobStore(root)));
    return s;
  }

  path(digest: string): string {
    return path.join(this.root, 'sha256', hexOf(digest));
  }

  async has(digest: string): Promise<boolean> {
    return (await fs.stat(this.path(digest)).catch(() => null))?.isFile() ?? false;
  }

  async list(): Promise<string[]> {
    const names = await fs.readdir(path.join(this.root, 'sha256')).catch(() => [] as string[]);
    return names.filter((n) => /^[a-f0-9]{64}$/.test(n)).map((n) => `sha256:${n}`).sort();
  }

  /** Deletes a blob (GC). Refuses while a download of it is in flight. */
  async remove(digest: string): Promise<void> {
    if (this.#inflight.has(digest)) throw new KilnError('KILN_ERR_INVALID_STATE', `blob ${digest} is being downloaded`);
    await fs.rm(this.path(digest), { force: true });
  }

  /** Temp files left by a crashed process (none of ours can be in flight at startup). */
  async cleanTemp(): Promise<void> {
    if (this.#inflight.size === 0) await fs.rm(this.tmpDir, { recursive: true, force: true });
  }

  async readSmall(digest: string): Promise<Buffer> {
    return fs.readFile(this.path(digest));
  }

  /** Makes sure `digest` is in the store, downloading it (once, even if asked concurrently). */
  ensure(digest: string, opts: EnsureOptions): Promise<EnsureResult> {
    const running = this.#inflight.get(digest);
    if (running) {
      if (opts.onBytes) running.listeners.add(opts.onBytes);
      return running.promise.then((r) => ({ ...r, downloaded: false, bytesFetched: 0 }));
    }
    const listeners = new Set<BytesListener>(opts.onBytes ? [opts.onBytes] : []);
    const promise = this.#ensure(digest, opts, listeners).finally(() => this.#inflight.delete(digest));
    this.#inflight.set(digest, { promise, listeners });
    return promise;
  }

  async #ensure(digest: string, opts: EnsureOptions, listeners: Set<BytesListener>): Promise<EnsureResult> {
    const final = this.path(digest);
    if (await this.has(digest)) return { path: final, downloaded: false, bytesFetched: 0 };
    await fs.mkdir(path.dirname(final), { recursive: true });
    await fs.mkdir(this.tmpDir, { recursive: true });
    const partial = path.join(this.tmpDir, `${hexOf(digest)}.partial`);
    const retries = opts.retries ?? 5;
    let fetched = 0;
    let fromScratchAfterMismatch = false;
    const emit = (bytes: number, attempt: number) => {
      for (const l of listeners) l(bytes, opts.size, attempt);
    };
    try {
      for (let attempt = 1; ; attempt++) {
        opts.signal?.throwIfAborted();
        let have = await fileSize(partial);
        if (have > opts.size) {
          await fs.rm(partial, { force: true });
          have = 0;
        }
        try {
          const src = have === opts.size ? null : await opts.fetch(have);
          // Errors before the read loop below starts must not escape as 'error' events; the
          // loop still sees them (an errored stream's iterator throws).
          src?.stream.on('error', () => {});
          if (src && src.offset !== have) {
            if (src.offset !== 0) {
              src.stream.destroy();
              throw new KilnError('KILN_ERR_REGISTRY_ERROR', `registry resumed ${digest} at byte ${src.offset}, asked for ${have}`);
            }
            // The server ignored the Range request: start over.
            await fs.rm(partial, { force: true });
            have = 0;
          }
          const hash = createHash('sha256');
          const resumed = have > 0;
          if (resumed) await hashFile(partial, hash);
          let total = have;
          let lastEmit = have;
          emit(have, attempt);
          // Each chunk is hashed only once it is written, so the partial file always holds
          // exactly the bytes received: a resume after a drop loses nothing and double-counts nothing.
          const fh = await fs.open(partial, 'a');
          try {
            if (src) {
              const abort = () => src.stream.destroy(opts.signal?.reason ?? new Error('aborted'));
              opts.signal?.addEventListener('abort', abort, { once: true });
              // Aborted while the file was being opened: the event has already fired.
              if (opts.signal?.aborted) abort();
              try {
                for await (const chunk of src.stream as AsyncIterable<Buffer>) {
                  if (total + chunk.length > opts.size) {
                    src.stream.destroy();
                    throw new DigestMismatchError(digest, `more than the ${opts.size} bytes its descriptor gives`, 'blob', { size: opts.size });
                  }
                  try {
                    await fh.write(chunk);
                  } catch (e) {
                    src.stream.destroy();
                    // Our side failed (disk full, I/O error): retrying the network will not help.
                    throw localWriteError(e, digest);
                  }
                  hash.update(chunk);
                  total += chunk.length;
                  fetched += chunk.length;
                  if (total - lastEmit >= PROGRESS_STEP) {
                    lastEmit = total;
                    emit(total, attempt);
                  }
                }
              } catch (e) {
                opts.signal?.throwIfAborted();
                if (isKilnError(e)) throw e;
                throw new TransportError(`connection dropped after ${total} of ${opts.size} bytes of ${digest}: ${(e as Error).message}`, (e as NodeJS.ErrnoException).code, { cause: e });
              } finally {
                opts.signal?.removeEventListener('abort', abort);
              }
            }
            if (total === opts.size) await fh.sync();
          } finally {
            await fh.close();
          }
          if (total < opts.size) throw new TransportError(`download of ${digest} ended after ${total} of ${opts.size} bytes`);
          emit(total, attempt);
          const actual = `sha256:${hash.digest('hex')}`;
          if (actual !== digest) {
            await fs.rm(partial, { force: true });
            // A resumed download may have stitched two different byte streams; one clean try.
            if (resumed && !fromScratchAfterMismatch) {
              fromScratchAfterMismatch = true;
              continue;
            }
            throw new DigestMismatchError(digest, actual, 'blob');
          }
          await fs.rename(partial, final);
          return { path: final, downloaded: true, bytesFetched: fetched };
        } catch (e) {
          const retryable = e instanceof TransportError || (isKilnError(e) && e.details?.retryable === true);
          if (!retryable) throw e;
          if (attempt >= retries) {
            throw new KilnError('KILN_ERR_REGISTRY_UNREACHABLE', `giving up on blob ${digest} after ${attempt} attempts: ${(e as Error).message}`, {
              digest,
              attempts: attempt,
            }, { cause: e });
          }
          await sleep(Math.min(5000, (opts.backoffMs ?? 250) * 2 ** (attempt - 1)), undefined, { signal: opts.signal });
        }
      }
    } catch (e) {
      await fs.rm(partial, { force: true });
      throw e;
    }
  }

  /**
   * Stores a stream (imports). The digest is computed while writing; when `expected` is given
   * a mismatch stores nothing. Returns the digest and size.
   */
  async putStream(stream: Readable, expected?: { digest: string; size?: number }): Promise<{ digest: string; size: number; path: string }> {
    await fs.mkdir(this.tmpDir, { recursive: true });
    await fs.mkdir(path.join(this.root, 'sha256'), { recursive: true });
    const tmp = path.join(this.tmpDir, `put-${process.pid}-${randomBytes(6).toString('hex')}`);
    try {
      const hash = createHash('sha256');
      let size = 0;
      const out = createWriteStream(tmp);
      let writeError: unknown;
      out.on('error', (e) => (writeError = e));
      try {
        await pipeline(
          stream,
          new Transform({
            transform(chunk: Buffer, _enc, cb) {
              size += chunk.length;
              hash.update(chunk);
              cb(null, chunk);
            },
          }),
          out,
        );
      } catch (e) {
        if (writeError) throw localWriteError(writeError, expected?.digest ?? 'being imported');
        throw e;
      }
      const digest = `sha256:${hash.digest('hex')}`;
      if (expected && digest !== expected.digest) throw new DigestMismatchError(expected.digest, digest, 'blob');
      if (expected?.size !== undefined && size !== expected.size) {
        throw new KilnError('KILN_ERR_DIGEST_MISMATCH', `blob ${digest} is ${size} bytes, its descriptor says ${expected.size}`, { digest, size, expectedSize: expected.size });
      }
      const final = this.path(digest);
      if (!(await this.has(digest))) await fs.rename(tmp, final);
      return { digest, size, path: final };
    } finally {
      await fs.rm(tmp, { force: true });
    }
  }

  async putBuffer(buf: Buffer, expectedDigest?: string): Promise<{ digest: string; size: number; path: string }> {
    return this.putStream(Readable.from([buf]), expectedDigest ? { digest: expectedDigest, size: buf.length } : undefined);
  }
}
