// fetchImageFile against a peer that misbehaves on the wire (a plain HTTP server standing in
// for it): a stalled transfer and one cut short are KILN_ERR_IMAGE_FETCH_FAILED, a refusal
// carries the peer's status, and none of them leaves a file, temporary or final.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { KilnError } from '../errors.ts';
import { fetchImageFile } from './image-fetch.ts';

const body = randomBytes(1 << 20);
const sha256 = `sha256:${createHash('sha256').update(body).digest('hex')}`;
let server: http.Server;
let url: string;
let tmp: string;

before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-fetch-'));
  server = http.createServer((req, res) => {
    const mode = req.url!.split('/')[3];
    if (mode === 'refused') {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"code":"KILN_ERR_IMAGE_NOT_FOUND"}');
      return;
    }
    res.writeHead(200, { 'content-length': String(body.length) });
    res.write(body.subarray(0, body.length / 2));
    if (mode === 'cut') res.destroy();
    // 'stall': half the body, then nothing.
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await fs.rm(tmp, { recursive: true, force: true });
});

const attempt = (imageId: string) => {
  const imagesDir = path.join(tmp, imageId);
  return {
    imagesDir,
    run: fetchImageFile({ url, token: 't', imageId, sha256, sizeBytes: body.length, imagesDir, dest: path.join(imagesDir, imageId, 'rootfs.squashfs'), idleMs: 300 }),
  };
};

for (const [mode, why] of [['stall', /no data for 300 ms/], ['cut', /broke off|socket hang up/], ['refused', /404/]] as const) {
  test(`a peer that ${mode === 'stall' ? 'stalls' : mode === 'cut' ? 'cuts the transfer short' : 'refuses'}: KILN_ERR_IMAGE_FETCH_FAILED, nothing left`, async () => {
    const { imagesDir, run } = attempt(mode);
    await assert.rejects(run, (e: KilnError) => e.code === 'KILN_ERR_IMAGE_FETCH_FAILED' && why.test(e.message));
    assert.deepEqual(await fs.readdir(imagesDir), [], 'no temporary file, no final directory');
  });
}
