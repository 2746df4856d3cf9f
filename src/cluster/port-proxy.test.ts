// The API role's published-port proxy on a real SQLite store and real sockets: a "node" is a
// TCP echo server on 127.0.0.2 (the node's advertised host), the proxy listens on 127.0.0.1.
// A VM's published TCP port is reachable through the proxy while its node is ready and the VM
// runs; a stopped VM, a lost node or a removed port stops the listener; a port held by another
// process is reported, and taken once it is free.
import assert from 'node:assert/strict';
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

test('published TCP ports of VMs on ready nodes are proxied to their node; stopped, lost and unpublished ones are not', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-ports-'));
  const store = new SqliteStore(path.join(dir, 'kiln.db'));
  const port = await freePort();
  // The node side: what its DNAT would reach, answering "node:" + what it got.
  const echo = net.createServer((s) => s.on('data', (d) => s.write(`node:${d}`)));
  await new Promise<void>((r) => echo.listen(port, NODE_HOST, () => r()));
  const proxy = new PortProxy({ store, listenHost: '127.0.0.1', syncMs: 60_000, log: pino({ level: 'silent' }) });
  try {
    assert.equal(nodeHost({ url: `http://${NODE_HOST}:18080` }), NODE_HOST);
    assert.equal(nodeHost({ url: 'http://[fd00::1]:18080' }), 'fd00::1');
    await store.insertImage(image);
    await store.registerNode({ id: 'node-1', name: 'n1', url: `http://${NODE_HOST}:18080`, capacity: capacity() }, Date.now());
    await store.insertVm({ ...vm('vm-web'), nodeId: 'node-1', state: 'ready', ports: [{ proto: 'tcp', hostPort: port, guestPort: 80 }, { proto: 'udp', hostPort: port, guestPort: 53 }] });

    await proxy.start();
    assert.deepEqual(proxy.report(), [{ port, vm: 'vm-web', node: 'node-1', state: 'listening' }], 'one TCP listener; UDP is not proxied');
    assert.equal(await roundTrip(port, 'hello'), 'node:hello');

    await store.updateVm('vm-web', { state: 'stopped' });
    await proxy.sync();
    assert.deepEqual(proxy.report(), []);
    assert.equal(await roundTrip(port, 'x'), null, 'a stopped VM\'s port is closed');

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
    assert.deepEqual(proxy.report(), [{ port: other, vm: 'vm-2', node: 'node-2', state: 'failed', error: 'EADDRINUSE' }]);
    await new Promise((r) => squatter.close(r));
    await proxy.sync();
    assert.equal(proxy.report()[0]?.state, 'listening');
  } finally {
    await proxy.close();
    await new Promise((r) => echo.close(r));
    await store.close();
    await fs.rm(dir, { recursive: true, force: true });
  }
});
