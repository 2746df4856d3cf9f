// The 413 for a body over the limit reaches the client, whatever it is still sending; the
// server reads and discards only up to its bound. The API runs in another process (see
// api-only-server.fixture.ts): no VMs, no daemon state.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { BODY_LIMIT } from './server.ts';
import { DRAIN_FACTOR } from './oversized-body.ts';

const FIXTURE = fileURLToPath(new URL('./api-only-server.fixture.ts', import.meta.url));
let server: ChildProcess;
let url: URL;

before(async () => {
  server = spawn(process.execPath, ['--import', 'tsx', FIXTURE], { stdio: ['ignore', 'pipe', 'inherit'] });
  url = new URL(
    await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the API server did not print its URL within 30 s')), 30_000);
      let out = '';
      server.stdout!.on('data', (b) => {
        out += b;
        const line = /^(http:\/\/\S+)\n/.exec(out);
        if (!line) return;
        clearTimeout(timer);
        resolve(line[1]!);
      });
      server.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`the API server exited (${code})`));
      });
    }),
  );
});

after(async () => {
  if (server.exitCode !== null) return;
  const exited = new Promise((r) => server.once('exit', r));
  server.kill('SIGTERM');
  await exited;
});

async function postVm(body: BodyInit, init: RequestInit = {}) {
  const res = await fetch(new URL('/v1/vms', url), { method: 'POST', headers: { 'content-type': 'application/json' }, body, ...init });
  return { status: res.status, body: (await res.json()) as { statusCode: number; code: string; error: string } };
}

function assertTooLarge(r: Awaited<ReturnType<typeof postVm>>, i: number) {
  assert.equal(r.status, 413, `try ${i}`);
  assert.equal(r.body.code, 'KILN_ERR_BODY_TOO_LARGE', `try ${i}`);
  assert.equal(r.body.statusCode, 413);
  assert.equal(typeof r.body.error, 'string');
}

const oversized = (bytes: number) => JSON.stringify({ name: 'big', env: { A: 'x'.repeat(bytes) } });

test('a body over the limit gets the 413 JSON error in 100 of 100 tries (fetch)', async () => {
  const body = oversized(2 * BODY_LIMIT);
  // Sequential: each try is a fresh race between the client's upload and the server's answer.
  for (let i = 0; i < 100; i++) assertTooLarge(await postVm(body), i);
});

test('far over the drain bound too: the client has its answer and stops sending', async () => {
  const body = oversized(10 * DRAIN_FACTOR * BODY_LIMIT);
  for (let i = 0; i < 20; i++) assertTooLarge(await postVm(body), i);
});

test('a chunked body (no content-length) over the limit gets the 413 too', async () => {
  const chunk = new TextEncoder().encode('x'.repeat(64 * 1024));
  for (let i = 0; i < 20; i++) {
    let sent = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(c) {
        if (sent >= 3 * BODY_LIMIT) return c.close();
        sent += chunk.length;
        c.enqueue(chunk);
      },
    });
    assertTooLarge(await postVm(stream, { duplex: 'half' } as RequestInit), i);
  }
});

/** Writes `payload` on one connection, then collects everything the server sends until it closes. */
function exchange(payload: Buffer[], timeoutMs = 20_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(Number(url.port), url.hostname);
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no close within ${timeoutMs} ms`));
    }, timeoutMs);
    let got = '';
    s.on('data', (b) => (got += b));
    s.on('error', reject);
    s.on('close', () => {
      clearTimeout(timer);
      resolve(got);
    });
    for (const p of payload) s.write(p);
  });
}

test('after the 413 the connection carries the next request (the body was read, not left on the wire)', async () => {
  const body = Buffer.alloc(2 * BODY_LIMIT, 'x');
  const got = await exchange([
    Buffer.from(`POST /v1/vms HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`),
    body,
    Buffer.from('GET /v1/nothing HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n'),
  ]);
  const statuses = [...got.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1]);
  assert.deepEqual(statuses, ['413', '404'], got);
  assert.match(got, /"code":"KILN_ERR_BODY_TOO_LARGE"/);
  assert.match(got, /"code":"KILN_ERR_NOT_FOUND"/);
});

/** The most a TCP socket's buffer grows to here (the third field of the sysctl). */
async function tcpBufferMax(sysctl: 'tcp_wmem' | 'tcp_rmem'): Promise<number> {
  return Number((await fs.readFile(`/proc/sys/net/ipv4/${sysctl}`, 'utf8')).trim().split(/\s+/)[2]);
}

test('a client that keeps sending after the 413 is cut off past the drain bound', async (t) => {
  const announced = 1024 ** 3;
  const s = net.connect(Number(url.port), url.hostname);
  s.on('data', () => {});
  s.write(`POST /v1/vms HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\nContent-Length: ${announced}\r\n\r\n`);
  const chunk = Buffer.alloc(256 * 1024, 'x');
  let written = 0;
  const closed = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), 20_000);
    s.on('error', () => {});
    s.on('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
    const pump = () => {
      while (!s.destroyed && written < announced) {
        written += chunk.length;
        if (!s.write(chunk)) return void s.once('drain', pump);
      }
    };
    pump();
  });
  s.destroy();
  assert.ok(closed, 'the server closed the connection');
  // The limit and the bound, plus what the kernel buffers at most (the client's send buffer,
  // the server's receive buffer) and node's queue: far from the gigabyte announced.
  const buffered = (await tcpBufferMax('tcp_wmem')) + (await tcpBufferMax('tcp_rmem')) + 2 * chunk.length;
  const most = BODY_LIMIT + DRAIN_FACTOR * BODY_LIMIT + buffered;
  t.diagnostic(`${written} bytes sent before the cut (bound ${most})`);
  assert.ok(written <= most, `${written} bytes went out before the cut (at most ${most} expected)`);
});
