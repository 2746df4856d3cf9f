// One image file from a cluster peer: `GET <peer>/v1/images/{id}/file` with the cluster's
// token, streamed to a temporary name beside the images, hashed on the way, and renamed to
// its final name only when its size and sha256 are the ones the peer's node recorded in the
// store. A crash, a cut connection or a mismatch leaves at most the temporary file, which
// the image GC removes (the next start's recover() runs it before anything is in flight).
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { KilnError } from '../errors.ts';
import { fsyncFile } from '../util/atomic.ts';
import { failpoint } from '../util/failpoints.ts';

/** Temporary files of fetches under way start with this (top level of the images dir). */
export const FETCH_PREFIX = '.fetch-';

export interface FetchFileRequest {
  /** The peer's base URL (its node row's `url`). */
  url: string;
  token: string | null;
  imageId: string;
  /** What the holder's node recorded for its copy: the transfer must match both. */
  sha256: string;
  sizeBytes: number;
  imagesDir: string;
  /** The final name; written only after verification. */
  dest: string;
  /** No byte for this long (connect, headers, or mid-body) aborts the transfer. */
  idleMs?: number;
}

const DEFAULT_IDLE_MS = 30_000;

/** Fetches, verifies and renames into place; throws KILN_ERR_DIGEST_MISMATCH or KILN_ERR_IMAGE_FETCH_FAILED. */
export async function fetchImageFile(r: FetchFileRequest): Promise<{ sizeBytes: number; sha256: string }> {
  await fs.mkdir(r.imagesDir, { recursive: true });
  const tmp = path.join(r.imagesDir, `${FETCH_PREFIX}${r.imageId}-${process.pid}-${Math.random().toString(16).slice(2, 10)}`);
  try {
    const { res, stalled } = await request(r);
    const hash = createHash('sha256');
    let bytes = 0;
    let announced = false;
    const out = createWriteStream(tmp, { flags: 'wx', mode: 0o644 });
    const tap = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        // The fault test kills kilnd here: part of the file is on disk under its temporary name.
        if (!announced && out.bytesWritten > 0) {
          announced = true;
          failpoint('image.fetch:partial');
        }
        hash.update(chunk);
        bytes += chunk.length;
        cb(null, chunk);
      },
    });
    try {
      await pipeline(res, tap, out);
    } catch (e) {
      throw new KilnError('KILN_ERR_IMAGE_FETCH_FAILED', `the transfer of image ${r.imageId} from ${r.url} broke off after ${bytes} bytes: ${stalled() ?? (e as Error).message}`);
    }
    const sha256 = `sha256:${hash.digest('hex')}`;
    if (bytes !== r.sizeBytes || sha256 !== r.sha256) {
      throw new KilnError('KILN_ERR_DIGEST_MISMATCH',
        `image ${r.imageId} from ${r.url} is ${bytes} bytes hashing to ${sha256}; its node recorded ${r.sizeBytes} bytes, ${r.sha256}`,
        { image: r.imageId, peer: r.url, expected: r.sha256, got: sha256 });
    }
    await fsyncFile(tmp);
    await fs.mkdir(path.dirname(r.dest), { recursive: true });
    await fs.rename(tmp, r.dest);
    return { sizeBytes: bytes, sha256 };
  } finally {
    await fs.rm(tmp, { force: true });
  }
}

function request(r: FetchFileRequest): Promise<{ res: http.IncomingMessage; stalled: () => string | undefined }> {
  const url = new URL(`/v1/images/${encodeURIComponent(r.imageId)}/file`, r.url);
  const mod = url.protocol === 'https:' ? https : http;
  const idleMs = r.idleMs ?? DEFAULT_IDLE_MS;
  let stall: string | undefined;
  const stalled = () => stall;
  return new Promise((resolve, reject) => {
    const fail = (why: string) => reject(new KilnError('KILN_ERR_IMAGE_FETCH_FAILED', `could not fetch image ${r.imageId} from ${r.url}: ${why}`));
    const req = mod.get(url, { headers: r.token ? { authorization: `Bearer ${r.token}` } : {} }, (res) => {
      if (res.statusCode !== 200) {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => { if (body.length < 2000) body += d; });
        res.on('end', () => fail(`${res.statusCode} ${body.slice(0, 300)}`));
        res.on('error', (e) => fail(e.message));
        return;
      }
      resolve({ res, stalled });
    });
    // An idle socket (no connect, no headers, a stalled body) is destroyed: the body stream errors.
    req.setTimeout(idleMs, () => {
      stall = `no data for ${idleMs} ms`;
      req.destroy(new Error(stall));
    });
    req.on('error', (e) => fail(e.message));
  });
}
