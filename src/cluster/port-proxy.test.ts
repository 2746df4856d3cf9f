// The API role's published-port proxy on a real SQLite store and real sockets: a "node" is a
// TCP and UDP echo server on 127.0.0.2 (the node's advertised host), the proxy listens on
// 127.0.0.1. A VM's published TCP and UDP ports are reachable through the proxy while its node
// is ready and the VM runs (UDP: one session per client address); a stopped VM, a lost node or a removed port stops the listener; a port held by another
// process is reported, and taken once it is free.
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import pino from 'pino';
import { capacity, image, vm } from '../store/conformance.ts';
import { SqliteStore } from '../store/sqlite-store.ts';
import { freePort } from '../../test/helpers/ports.ts';
import { nodeHost, PortProxy } from './port-proxy.ts';
import { UdpRelay } from './udp-relay.ts';

const NODE_HOST = '127.0.0.2';

/** Sends `msg` to 127.0.0.1:port and reads the answer; null when nothing listens. */
async function roundTrip(port: number, msg: string): Promise<string | null> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    let got = '';
    const timer = setTimeout(() => (s.destroy(), resolve(null)), 3000);
    s.on('connect', () => s.write(msg));
    s.on('data', (d) => {
      got += d.toString();
      if (got.length >= msg.length + 5) (clearTimeout(timer), s.end(), resolve(got));
    });
    s.on('error', () => (clearTimeout(timer), resolve(null)));
  });
}

/** A UDP client on 127.0.0.1: ask() sends one datagram to the port and waits for one answer (null: none in time). */
async function udpClient(): Promise<{ ask(port: number, msg: string, timeoutMs?: number): Promise<string | null>; close(): void }> {
  const sock = dgram.createSocket('udp4');
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
  return {
    ask: (port, msg, timeoutMs = 3000) => new Promise((resolve) => {
      const timer = setTimeout(() => (sock.off('message', on), resolve(null)), timeoutMs);
      const on = (m: Buffer) => (clearTimeout(timer), sock.off('message', on), resolve(m.toString()));
      sock.on('message', on);
      sock.send(msg, port, '127.0.0.1');
    }),
    close: () => sock.close(),
  };
}

test('published TCP and UDP ports of VMs on ready nodes are proxied to their node; stopped, lost and unpublished ones are not', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-ports-'));
  const store = new SqliteStore(path.join(dir, 'kiln.db'));
  const port = await freePort();
  // The node side: what its DNAT would reach, answering "node:" + what it got.
  const echo = net.createServer((s) => s.on('data', (d) => s.write(`node:${d}`)));
  await new Promise<void>((r) => echo.listen(port, NODE_HOST, () => r()));
  // Its UDP side answers "node:<the source port it saw>:" + what it got.
  const udpEcho = dgram.createSocket('udp4');
  udpEcho.on('message', (m, r) => udpEcho.send(`node:${r.port}:${m}`, r.port, r.address));
  await new Promise<void>((r) => udpEcho.bind(port, NODE_HOST, () => r()));
  const proxy = new PortProxy({ store, listenHost: '127.0.0.1', syncMs: 60_000, log: pino({ level: 'silent' }) });
  try {
    assert.equal(nodeHost({ url: `http://${NODE_HOST}:18080` }), NODE_HOST);
    assert.equal(nodeHost({ url: 'http://[fd00::1]:18080' }), 'fd00::1');
    await store.insertImage(image);
    await store.registerNode({ id: 'node-1', name: 'n1', url: `http://${NODE_HOST}:18080`, capacity: capacity() }, Date.now());
    await store.insertVm({ ...vm('vm-web'), nodeId: 'node-1', state: 'ready', ports: [{ proto: 'tcp', hostPort: port, guestPort: 80 }, { proto: 'udp', hostPort: port, guestPort: 53 }] });

    await proxy.start();
    assert.deepEqual(proxy.report(), [
      { proto: 'tcp', port, vm: 'vm-web', node: 'node-1', state: 'listening' },
      { proto: 'udp', port, vm: 'vm-web', node: 'node-1', state: 'listening', sessions: 0 },
    ], 'a TCP listener and a UDP relay on the same port number');
    assert.equal(await roundTrip(port, 'hello'), 'node:hello');
    // UDP: two clients, each answered on its own session (the node saw two source ports).
    const a = await udpClient();
    const b = await udpClient();
    try {
      const [ra, rb] = await Promise.all([a.ask(port, 'from-a'), b.ask(port, 'from-b')]);
      assert.match(ra ?? '', /^node:\d+:from-a$/);
      assert.match(rb ?? '', /^node:\d+:from-b$/);
      assert.notEqual(ra!.split(':')[1], rb!.split(':')[1], 'one upstream socket per client');
      assert.equal((await a.ask(port, 'again')) ?? '', `node:${ra!.split(':')[1]}:again`, 'the same client keeps its session');
      assert.equal(proxy.report().find((p) => p.proto === 'udp')?.sessions, 2);
    } finally {
      a.close();
      b.close();
    }

    await store.updateVm('vm-web', { state: 'stopped' });
    await proxy.sync();
    assert.deepEqual(proxy.report(), []);
    assert.equal(await roundTrip(port, 'x'), null, 'a stopped VM\'s port is closed');
    const c = await udpClient();
    try {
      assert.equal(await c.ask(port, 'x', 500), null, 'a stopped VM\'s UDP port is not relayed');
    } finally {
      c.close();
    }

    await store.updateVm('vm-web', { state: 'ready' });
    await proxy.sync();
    assert.equal(await roundTrip(port, 'again'), 'node:again');
    await store.markNodesLost(Date.now() + 3_600_000, 1000);
    await proxy.sync();
    assert.deepEqual(proxy.report(), [], 'a lost node\'s ports are not proxied');

    // A port held by another process on the API host: reported, retried at the next sync.
    const other = await freePort();
    const squatter = net.createServer();
    await new Promise<void>((r) => squatter.listen(other, '127.0.0.1', () => r()));
    await store.registerNode({ id: 'node-2', name: 'n2', url: `http://${NODE_HOST}:18081`, capacity: capacity() }, Date.now());
    await store.insertVm({ ...vm('vm-2'), nodeId: 'node-2', state: 'ready', ports: [{ proto: 'tcp', hostPort: other, guestPort: 80 }] });
    await proxy.sync();
    assert.deepEqual(proxy.report(), [{ proto: 'tcp', port: other, vm: 'vm-2', node: 'node-2', state: 'failed', error: 'EADDRINUSE' }]);
    await new Promise((r) => squatter.close(r));
    await proxy.sync();
    assert.equal(proxy.report()[0]?.state, 'listening');
  } finally {
    await proxy.close();
    await new Promise((r) => echo.close(r));
    await new Promise<void>((r) => udpEcho.close(() => r()));
    await store.close();
    await fs.rm(dir, { recursive: true, force: true });
  }
});

test('UDP relay sessions: closed after idle, bounded in number (the least recently active evicted), a client evicted gets a new one', async () => {
  const port = await freePort();
  const udpEcho = dgram.createSocket('udp4');
  udpEcho.on('message', (m, r) => udpEcho.send(`node:${r.port}:${m}`, r.port, r.address));
  await new Promise<void>((r) => udpEcho.bind(port, NODE_HOST, () => r()));
  const relay = new UdpRelay({ host: '127.0.0.1', port }, { host: NODE_HOST, port }, { idleMs: 300, maxSessions: 2 }, pino({ level: 'silent' }));
  const clients = await Promise.all([udpClient(), udpClient(), udpClient()]);
  try {
    await relay.start();
    await assert.rejects(new UdpRelay({ host: '127.0.0.1', port }, { host: NODE_HOST, port }, {}, pino({ level: 'silent' })).start(), { code: 'EADDRINUSE' });
    const [a, b, c] = clients as [typeof clients[0], typeof clients[0], typeof clients[0]];
    const first = await a.ask(port, 'a1');
    assert.match(first ?? '', /^node:\d+:a1$/);
    assert.match((await b.ask(port, 'b1')) ?? '', /:b1$/);
    assert.equal(relay.sessions, 2);
    assert.match((await c.ask(port, 'c1')) ?? '', /:c1$/, 'a third client is served');
    assert.equal(relay.sessions, 2, 'at most two: the least recently active (a) was evicted');
    const again = await a.ask(port, 'a2');
    assert.match(again ?? '', /:a2$/, 'an evicted client is answered on a new session');
    assert.notEqual(again!.split(':')[1], first!.split(':')[1], 'from a new upstream socket');
    // Idle: every session closed within the limit and a sweep.
    const deadline = Date.now() + 3_000;
    while (relay.sessions > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
    assert.equal(relay.sessions, 0, 'idle sessions are closed');
    relay.expire(Date.now());
    assert.match((await b.ask(port, 'b2')) ?? '', /:b2$/, 'and reopened by the next datagram');
  } finally {
    for (const c of clients) c.close();
    await relay.close();
    await new Promise<void>((r) => udpEcho.close(() => r()));
  }
});
