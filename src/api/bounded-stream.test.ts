import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { test } from 'node:test';
import { BoundedStream } from './bounded-stream.ts';

/** A server whose one response is a BoundedStream the test drives. */
async function serve(cap: number): Promise<{ port: number; stream: Promise<BoundedStream>; close: () => Promise<void> }> {
  let give!: (s: BoundedStream) => void;
  const stream = new Promise<BoundedStream>((r) => (give = r));
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    give(new BoundedStream(res, cap));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return { port, stream, close: () => new Promise((r) => server.close(() => r())) };
}

test('a client that stops reading is cut off once the cap is queued; the producer learns it', async () => {
  const cap = 256 * 1024;
  const s = await serve(cap);
  // A client that sends a request and then never reads: everything queues on the server.
  const sock = net.connect(s.port, '127.0.0.1');
  sock.pause();
  sock.write('GET / HTTP/1.1\r\nhost: x\r\n\r\n');
  const stream = await s.stream;
  let closedBy = '';
  stream.onClose(() => (closedBy = 'close'));
  const piece = Buffer.alloc(64 * 1024, 0x61);
  let written = 0;
  const deadline = Date.now() + 10_000;
  while (stream.write(piece)) {
    written += piece.length;
    assert.ok(Date.now() < deadline, 'cut off within 10 s');
    // Let the socket take what the kernel buffers accept.
    await new Promise((r) => setImmediate(r));
  }
  assert.equal(stream.closed, true);
  assert.equal(closedBy, 'close');
  assert.equal(stream.write('more'), false, 'writes after the cut-off are refused');
  // What was accepted is bounded: kernel socket buffers plus the cap, not everything produced.
  assert.ok(written < 64 * 1024 * 1024, `${written} bytes accepted before the cut-off`);
  sock.destroy();
  await s.close();
});

test('a client that reads keeps its stream: drained() waits for the queue, end() finishes', async () => {
  const s = await serve(64 * 1024);
  const got: Buffer[] = [];
  const body = new Promise<string>((resolve, reject) => {
    http.get({ port: s.port, host: '127.0.0.1' }, (res) => {
      res.on('data', (b: Buffer) => got.push(b));
      res.on('end', () => resolve(Buffer.concat(got).toString()));
    }).on('error', reject);
  });
  const stream = await s.stream;
  for (let i = 0; i < 200; i++) {
    assert.equal(stream.write(`line ${i}\n`.repeat(100)), true, `write ${i} accepted`);
    await stream.drained();
  }
  stream.end('end\n');
  const text = await body;
  assert.equal(text.split('\n').filter((l) => l.startsWith('line ')).length, 200 * 100);
  assert.ok(text.endsWith('end\n'));
  await s.close();
});
