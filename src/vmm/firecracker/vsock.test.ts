import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { isKilnError } from '../../errors.ts';
import { tempDir } from './testing/harness.ts';
import { connectVsock, listenVsock, vsockListenPath } from './vsock.ts';

let dir: string;
const conns = new Set<net.Socket>();
before(async () => {
  dir = await tempDir('vsock');
});
after(async () => {
  for (const c of conns) c.destroy();
  await fs.rm(dir, { recursive: true, force: true });
});

/** A Firecracker-side muxer answering the handshake with `answer(port)`. */
async function muxer(name: string, answer: (port: number, s: net.Socket) => void): Promise<{ uds: string; server: net.Server; lines: string[] }> {
  const uds = path.join(dir, name);
  const lines: string[] = [];
  const server = net.createServer((s) => {
    conns.add(s);
    let buf = '';
    const onData = (c: Buffer) => {
      buf += c.toString();
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      s.off('data', onData);
      lines.push(buf.slice(0, nl));
      answer(Number(/^CONNECT (\d+)$/.exec(buf.slice(0, nl))?.[1]), s);
    };
    s.on('data', onData);
    s.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(uds, r));
  return { uds, server, lines };
}

test('CONNECT <port>, OK <hostport>: the socket is then the channel, bytes after OK included', async () => {
  const m = await muxer('ok.sock', (_port, s) => {
    // The acknowledgement and the guest's first bytes in one packet.
    s.write('OK 1073741824\nhello from the guest\n');
    s.pipe(s);
  });
  const { socket, hostPort } = await connectVsock(m.uds, 52);
  assert.deepEqual(m.lines, ['CONNECT 52']);
  assert.equal(hostPort, 1073741824);
  socket.setEncoding('utf8');
  let got = '';
  socket.write('ping\n');
  for await (const chunk of socket) {
    got += chunk;
    if (got.includes('ping\n')) break;
  }
  assert.equal(got, 'hello from the guest\nping\n');
  socket.destroy();
  m.server.close();
});

test('Firecracker closing the connection (no guest listener) is an error naming the port', async () => {
  const m = await muxer('closed.sock', (_p, s) => s.destroy());
  await assert.rejects(connectVsock(m.uds, 1024), (e) => isKilnError(e) && e.code === 'KILN_ERR_VMM_FAILED' && /port 1024/.test(e.message));
  m.server.close();
});

test('an answer other than OK is refused', async () => {
  const m = await muxer('garbage.sock', (_p, s) => s.write('NOPE\n'));
  await assert.rejects(connectVsock(m.uds, 7), /unexpected handshake answer/);
  m.server.close();
});

test('no answer times out; an abort stops the wait', async () => {
  const m = await muxer('silent.sock', () => {});
  await assert.rejects(connectVsock(m.uds, 7, { timeoutMs: 100 }), /within 100 ms/);
  const ac = new AbortController();
  const p = connectVsock(m.uds, 7, { signal: ac.signal });
  ac.abort();
  await assert.rejects(p, /aborted/);
  m.server.close();
});

test('a missing device socket and a bad port are errors', async () => {
  await assert.rejects(connectVsock(path.join(dir, 'none.sock'), 1), (e) => isKilnError(e) && /ENOENT/.test(e.message));
  await assert.rejects(connectVsock(path.join(dir, 'none.sock'), -1), (e) => isKilnError(e) && e.code === 'KILN_ERR_VALIDATION');
});

test('guest-initiated connections arrive on <uds_path>_<port>; a stale file is replaced, close removes it', async () => {
  const uds = path.join(dir, 'v.sock');
  assert.equal(vsockListenPath(uds, 52), `${uds}_52`);
  await fs.writeFile(`${uds}_52`, 'stale');
  let resolveGot!: (s: string) => void;
  const got = new Promise<string>((r) => (resolveGot = r));
  const listening = await listenVsock(uds, 52, (s) => {
    s.setEncoding('utf8');
    s.once('data', (d: string) => resolveGot(d));
  });
  // What Firecracker does when the guest connects to (CID 2, port 52).
  await new Promise<void>((resolve, reject) => {
    const c = net.createConnection(`${uds}_52`, () => c.end('ready\n', resolve));
    c.once('error', reject);
  });
  assert.equal(await got, 'ready\n');
  await new Promise((r) => listening.close(r));
  await assert.rejects(fs.stat(`${uds}_52`), { code: 'ENOENT' });
});
