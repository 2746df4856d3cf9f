import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, test } from 'node:test';
import { KilnError } from '../../errors.ts';
import { BlobStore, type BlobFetcher } from './blob-store.ts';

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await fs.rm(d, { recursive: true, force: true });
});

async function store(): Promise<BlobStore> {
  const d = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-blobs-'));
  dirs.push(d);
  return new BlobStore(d);
}

function blob(size: number): { data: Buffer; digest: string } {
  const data = randomBytes(size);
  return { data, digest: `sha256:${createHash('sha256').update(data).digest('hex')}` };
}

/** Serves `data` from the requested offset; `plan[i]` cuts attempt i after that many bytes. */
function source(data: Buffer, plan: (number | undefined)[] = [], opts: { ignoreRange?: boolean } = {}) {
  const calls: number[] = [];
  const fetch: BlobFetcher = async (offset) => {
    calls.push(offset);
    const start = opts.ignoreRange ? 0 : offset;
    const cut = plan[calls.length - 1];
    const body = data.subarray(start);
    // Chunks are produced as they are read, like a socket; the error comes after `cut` bytes.
    async function* chunks() {
      let sent = 0;
      for (let i = 0; i * 4096 < body.length; i++) {
        const c = body.subarray(i * 4096, (i + 1) * 4096);
        if (cut !== undefined && sent + c.length > cut) {
          if (cut > sent) yield c.subarray(0, cut - sent);
          throw Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' });
        }
        sent += c.length;
        yield c;
      }
    }
    return { stream: Readable.from(chunks(), { objectMode: false, highWaterMark: 1 }), offset: start };
  };
  return { fetch, calls };
}

async function tmpFiles(s: BlobStore): Promise<string[]> {
  return fs.readdir(s.tmpDir).catch(() => []);
}

test('resumes a dropped download from where the partial file ends', async () => {
  const s = await store();
  const { data, digest } = blob(100_000);
  const src = source(data, [30_000, 20_000]);
  const r = await s.ensure(digest, { size: data.length, fetch: src.fetch, backoffMs: 1 });
  // Bytes still buffered when the error hit are lost, so resumes start at most at the cut.
  assert.equal(src.calls.length, 3);
  assert.equal(src.calls[0], 0);
  assert.ok(src.calls[1]! > 20_000 && src.calls[1]! <= 30_000, `resumed at ${src.calls[1]}`);
  assert.ok(src.calls[2]! > src.calls[1]! + 10_000 && src.calls[2]! <= src.calls[1]! + 20_000, `resumed at ${src.calls[2]}`);
  assert.equal(r.downloaded, true);
  assert.equal(r.bytesFetched, data.length);
  assert.deepEqual(await fs.readFile(s.path(digest)), data);
  assert.deepEqual(await tmpFiles(s), []);
});

test('a server that ignores Range restarts the blob from byte 0', async () => {
  const s = await store();
  const { data, digest } = blob(50_000);
  const src = source(data, [10_000], { ignoreRange: true });
  await s.ensure(digest, { size: data.length, fetch: src.fetch, backoffMs: 1 });
  assert.equal(src.calls.length, 2);
  assert.ok(src.calls[1]! > 0, 'asked to resume');
  assert.deepEqual(await fs.readFile(s.path(digest)), data);
});

test('wrong content: KILN_ERR_DIGEST_MISMATCH, nothing visible, no temp file', async () => {
  const s = await store();
  const { data } = blob(20_000);
  const other = blob(20_000).digest;
  await assert.rejects(s.ensure(other, { size: data.length, fetch: source(data).fetch }), (e: unknown) => e instanceof KilnError && e.code === 'KILN_ERR_DIGEST_MISMATCH');
  assert.equal(await s.has(other), false);
  assert.deepEqual(await tmpFiles(s), []);
  // More bytes than the descriptor says is refused as soon as they arrive.
  const { data: d2, digest: g2 } = blob(20_000);
  await assert.rejects(s.ensure(g2, { size: 10_000, fetch: source(d2).fetch }), (e: unknown) => e instanceof KilnError && e.code === 'KILN_ERR_DIGEST_MISMATCH');
  assert.deepEqual(await tmpFiles(s), []);
});

test('a resumed download that stitched different bytes is retried once from scratch', async () => {
  const s = await store();
  const { data, digest } = blob(40_000);
  const wrong = Buffer.from(data);
  wrong[35_000] = wrong[35_000]! ^ 0xff;
  let n = 0;
  const good = source(data);
  const bad = source(wrong, [20_000]);
  const fetch: BlobFetcher = (offset) => (n++ === 0 ? bad.fetch(offset) : n === 2 ? source(wrong).fetch(offset) : good.fetch(offset));
  await s.ensure(digest, { size: data.length, fetch, backoffMs: 1 });
  assert.equal(n, 3);
  assert.deepEqual(await fs.readFile(s.path(digest)), data);
});

test('gives up after the retry budget with KILN_ERR_REGISTRY_UNREACHABLE and removes the partial file', async () => {
  const s = await store();
  const { data, digest } = blob(30_000);
  const src = source(data, [5_000, 5_000, 5_000]);
  await assert.rejects(s.ensure(digest, { size: data.length, fetch: src.fetch, retries: 3, backoffMs: 1 }), (e: unknown) => e instanceof KilnError && e.code === 'KILN_ERR_REGISTRY_UNREACHABLE');
  assert.equal(src.calls.length, 3);
  assert.equal(await s.has(digest), false);
  assert.deepEqual(await tmpFiles(s), []);
});

test('concurrent ensures of one digest share a single download; both see progress', async () => {
  const s = await store();
  const { data, digest } = blob(600_000);
  const src = source(data);
  const seen = [0, 0];
  const [a, b] = await Promise.all([
    s.ensure(digest, { size: data.length, fetch: src.fetch, onBytes: (n) => (seen[0] = n) }),
    s.ensure(digest, { size: data.length, fetch: src.fetch, onBytes: (n) => (seen[1] = n) }),
  ]);
  assert.equal(src.calls.length, 1);
  assert.equal(a.downloaded, true);
  assert.equal(b.downloaded, false);
  assert.deepEqual(seen, [data.length, data.length]);
  // Present blobs are not fetched again.
  const again = await s.ensure(digest, { size: data.length, fetch: src.fetch });
  assert.equal(again.downloaded, false);
  assert.equal(src.calls.length, 1);
  assert.deepEqual(await s.list(), [digest]);
  await s.remove(digest);
  assert.deepEqual(await s.list(), []);
});

test('putStream verifies an expected digest and size', async () => {
  const s = await store();
  const { data, digest } = blob(1000);
  const r = await s.putStream(Readable.from([data]), { digest, size: 1000 });
  assert.equal(r.digest, digest);
  await assert.rejects(s.putBuffer(data, blob(10).digest), (e: unknown) => e instanceof KilnError && e.code === 'KILN_ERR_DIGEST_MISMATCH');
  assert.deepEqual(await tmpFiles(s), []);
});

test('an aborted download stops, removes its partial file and leaves no blob', async () => {
  const s = await store();
  const { data, digest } = blob(200_000);
  const ac = new AbortController();
  const fetch: BlobFetcher = async () => {
    // Sends 50 kB, then stalls like a slow registry; the caller cancels meanwhile.
    const stream = new Readable({ read() {} });
    stream.push(data.subarray(0, 50_000));
    setImmediate(() => ac.abort(new Error('pull cancelled')));
    return { stream, offset: 0 };
  };
  await assert.rejects(s.ensure(digest, { size: data.length, fetch, signal: ac.signal }), /pull cancelled/);
  assert.equal(await s.has(digest), false);
  assert.deepEqual(await tmpFiles(s), []);
});
