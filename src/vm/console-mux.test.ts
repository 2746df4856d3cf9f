import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { until } from '../../test/helpers/until.ts';
import { ConsoleMux } from './console-mux.ts';

/** A one-client-at-a-time Unix socket server, like QEMU's console chardev. */
async function oneClientServer() {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-mux-'));
  const sock = path.join(dir, 'console.sock');
  const received: Buffer[] = [];
  let current: net.Socket | null = null;
  let connections = 0;
  const server = net.createServer((c) => {
    if (current) return void c.destroy(); // QEMU would not even accept it
    current = c;
    connections++;
    c.on('data', (d) => received.push(d));
    c.on('close', () => (current = null));
  });
  server.maxConnections = 1;
  await new Promise<void>((r) => server.listen(sock, r));
  return {
    sock,
    received: () => Buffer.concat(received).toString(),
    connections: () => connections,
    emit: (s: string) => current?.write(s),
    hangUp: () => current?.destroy(),
    close: async () => {
      current?.destroy();
      await new Promise((r) => server.close(r));
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}


test('one connection shared by every client: output fanned out, input funnelled in', async () => {
  const srv = await oneClientServer();
  try {
    const mux = new ConsoleMux(() => new Promise((res, rej) => { const s = net.createConnection(srv.sock, () => res(s)); s.once('error', rej); }));
    const a: string[] = [];
    const b: string[] = [];
    const detachA = await mux.attach({ onData: (d) => a.push(d.toString()), onClose: () => {} });
    const detachB = await mux.attach({ onData: (d) => b.push(d.toString()), onClose: () => {} });
    assert.equal(srv.connections(), 1);
    srv.emit('login: ');
    await until('both clients see the output', () => a.join('') === 'login: ' && b.join('') === 'login: ', 2000, 10);
    assert.ok(mux.write('root\n'));
    await until('the input funnelled to the console', () => srv.received() === 'root\n', 2000, 10);
    detachA();
    assert.ok(mux.write('x'), 'still connected while one client remains');
    detachB();
    // Nobody attached: the connection is given back (kilnd's one-shot writes need it).
    assert.equal(mux.write('y'), false);
    await until('the input on the one connection', () => srv.connections() === 1 && srv.received() === 'root\nx', 2000, 10);
  } finally {
    await srv.close();
  }
});

test('clients are told when the VMM hangs up, and when the VM goes away', async () => {
  const srv = await oneClientServer();
  try {
    const mux = new ConsoleMux(() => new Promise((res, rej) => { const s = net.createConnection(srv.sock, () => res(s)); s.once('error', rej); }));
    let why = '';
    await mux.attach({ onData: () => {}, onClose: (r) => (why = r) });
    srv.hangUp();
    await until('the clients told why', () => why !== '', 2000, 10);
    assert.equal(mux.attached, 0);
    // A new client reconnects.
    let why2 = '';
    await mux.attach({ onData: () => {}, onClose: (r) => (why2 = r) });
    await until('a second connection', () => srv.connections() === 2, 2000, 10);
    mux.close('the VM stopped');
    assert.equal(why2, 'the VM stopped');
    await assert.rejects(mux.attach({ onData: () => {}, onClose: () => {} }), /closed/);
  } finally {
    await srv.close();
  }
});
