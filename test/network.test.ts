// Networking with real VMs on a bridge this test's daemon owns: addresses leased before boot,
// host → guest reachability (direct and via a published port on 127.0.0.1), VM-to-VM
// isolation, egress NAT (against a listener in a network namespace made here), restart
// safety and cleanup of every host object kiln made.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { KilnApiError } from '../src/sdk/client.ts';
import { listLinks, linkExists } from '../src/tools/ip.ts';
import { nftListTable } from '../src/tools/nft.ts';
import { run } from '../src/util/process.ts';
import { tapName } from '../src/net/network-manager.ts';
import { NFT_FAMILY, tableName } from '../src/net/ruleset.ts';
import { BACKEND_SKIP as skip } from './helpers/backend.ts';
import { startKilnd, waitForLog, waitForState, type TestDaemon } from './helpers/kilnd.ts';
import { freePort } from './helpers/ports.ts';
import { eventually } from './helpers/until.ts';

let d: TestDaemon;

before(async () => {
  if (skip) return;
  d = await startKilnd();
});
after(() => d?.dispose());

/** busybox httpd serving one file that names the VM, so a reply proves which VM answered. */
const httpd = (label: string) => ['/bin/sh', '-c', `mkdir -p /www && echo ${label} > /www/id && echo serving && exec httpd -f -p 80 -h /www`];

async function httpGet(host: string, port: number, path = '/id', timeoutMs = 5000): Promise<string> {
  const res = await fetch(`http://${host}:${port}${path}`, { signal: AbortSignal.timeout(timeoutMs) });
  return (await res.text()).trim();
}

describe('bridge networking', { skip }, () => {
  test('the address is known at create; a server started via exec answers on it and on a published 127.0.0.1 port', async () => {
    const hostPort = await freePort();
    const created = await d.client.createVm({ name: 'web', cmd: ['/bin/sleep', '3600'], ports: [{ host: hostPort, guest: 80 }] });
    assert.match(created.ip ?? '', /^10\.\d+\.\d+\.\d+$/, 'IP leased before boot');
    assert.deepEqual(created.ports, [{ host: hostPort, guest: 80, proto: 'tcp' }]);
    await waitForState(d.client, created.id, ['ready']);
    // busybox httpd daemonizes (own session, stdio on /dev/null), so the exec returns.
    const started = await d.client.exec(created.id, { cmd: ['/bin/sh', '-c', 'mkdir -p /www && echo web > /www/id && httpd -p 80 -h /www'] });
    assert.equal(started.exit_code, 0, JSON.stringify(started));

    assert.equal(await eventually('the VM address to answer', () => httpGet(created.ip!, 80)), 'web', 'reachable at the VM address');
    assert.equal(await eventually('the published port to answer', () => httpGet('127.0.0.1', hostPort)), 'web', 'reachable via the published port on loopback');

    const tap = tapName(created.id);
    const [link] = await listLinks({ master: d.network.bridge });
    assert.equal(link?.ifname, tap, 'the VM tap is on the daemon bridge');
    const detail = (await run('ip', ['-d', 'link', 'show', 'dev', tap])).stdout;
    assert.match(detail, /isolated on/, 'bridge port isolated from other VMs');
    assert.match(await nftListTable(NFT_FAMILY, tableName(d.network.bridge)), new RegExp(`dport ${hostPort} dnat to ${created.ip!.replaceAll('.', '\\.')}:80`));

    await d.client.deleteVm(created.id);
    assert.equal(await linkExists(tap), false, 'tap removed on delete');
    assert.doesNotMatch(await nftListTable(NFT_FAMILY, tableName(d.network.bridge)), new RegExp(`dport ${hostPort} `), 'DNAT rule removed on delete');
    const next = await d.client.createVm({ name: 'reuse', network: 'none' });
    assert.equal(next.ip, null, 'network none: no address');
    const again = await d.client.createVm({ name: 'reuse2', cmd: ['/bin/true'] });
    assert.equal(again.ip, created.ip, 'the lease was released on delete and is reused');
    await Promise.all([d.client.deleteVm(next.id), d.client.deleteVm(again.id)]);
  });

  test('two VMs cannot reach each other by default', async () => {
    const server = await d.client.createVm({ name: 'iso-server', cmd: httpd('iso') }, { wait: true });
    await waitForLog(d.client, server.id, /serving/);
    assert.equal(await eventually('the VM address to answer', () => httpGet(server.ip!, 80)), 'iso', 'the host reaches it');
    const probe = await d.client.createVm({
      name: 'iso-probe',
      cmd: ['/bin/sh', '-c', `if wget -q -T 3 -O - http://${server.ip}/id; then echo PROBE=reached; else echo PROBE=blocked; fi`],
    });
    const log = await waitForLog(d.client, probe.id, /PROBE=\w+/, 120_000);
    assert.match(log, /PROBE=blocked/);
    await Promise.all([d.client.deleteVm(server.id), d.client.deleteVm(probe.id)]);
  });

  test('egress is NATed to the host address (listener in a namespace made by this test)', async (t) => {
    const ns = `ktns${randomBytes(3).toString('hex')}`;
    const veth = `ktv${randomBytes(3).toString('hex')}`;
    const third = 100 + Math.floor(Math.random() * 100);
    const hostSide = `10.199.${third}.1`;
    const nsSide = `10.199.${third}.2`;
    await run('ip', ['netns', 'add', ns]);
    let listener: ChildProcess | undefined;
    t.after(async () => {
      listener?.kill('SIGKILL');
      await run('ip', ['link', 'del', veth]).catch(() => {});
      await run('ip', ['netns', 'del', ns]).catch(() => {});
    });
    await run('ip', ['link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    await run('ip', ['addr', 'add', `${hostSide}/30`, 'dev', veth]);
    await run('ip', ['link', 'set', veth, 'up']);
    await run('ip', ['-n', ns, 'addr', 'add', `${nsSide}/30`, 'dev', 'eth0']);
    await run('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
    await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    // The listener prints the peer address of the first connection and the line it received.
    const script = `require('net').createServer((s) => s.once('data', (b) => { console.log('PEER=' + s.remoteAddress + ' DATA=' + b.toString().trim()); s.end('ack\\n'); })).listen(9000, '0.0.0.0', () => console.log('LISTENING'));`;
    listener = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    const got = new Promise<string>((resolve) => listener!.stdout!.on('data', (b) => { out += b; if (/PEER=.*\n/.test(out)) resolve(out); }));
    await new Promise<void>((resolve) => listener!.stdout!.once('data', () => resolve()));

    const vm = await d.client.createVm({ name: 'egress', cmd: ['/bin/sh', '-c', `echo hello-from-vm | nc ${nsSide} 9000; echo SENT=$?`] });
    const log = await waitForLog(d.client, vm.id, /SENT=\d/, 120_000);
    assert.match(log, /SENT=0/, log);
    const line = await got;
    assert.match(line, new RegExp(`PEER=${hostSide.replaceAll('.', '\\.')} DATA=hello-from-vm`), `the namespace saw the host address, not the VM's ${vm.ip}`);
    await d.client.deleteVm(vm.id);
  });

  test('bad port requests are refused and leave nothing behind', async () => {
    const hostPort = await freePort();
    const a = await d.client.createVm({ name: 'ports-a', cmd: ['/bin/sleep', '600'], ports: [{ host: hostPort, guest: 80 }] });
    const before = (await d.client.listVms()).length;
    await d.client.createVm({ name: 'ports-b', ports: [{ host: hostPort, guest: 81 }] }).then(
      () => assert.fail('second publication of the same port was accepted'),
      (e: KilnApiError) => {
        assert.equal(e.status, 409);
        assert.equal(e.code, 'KILN_ERR_PORT_CONFLICT');
      },
    );
    // A port some other host process listens on.
    const squatter = net.createServer().listen(0, '0.0.0.0');
    await new Promise((r) => squatter.once('listening', r));
    const squatted = (squatter.address() as net.AddressInfo).port;
    await d.client.createVm({ name: 'ports-c', ports: [{ host: squatted, guest: 80 }] }).then(
      () => assert.fail('a port in use on the host was accepted'),
      (e: KilnApiError) => assert.equal(e.code, 'KILN_ERR_PORT_CONFLICT'),
    );
    squatter.close();
    await d.client.createVm({ name: 'ports-d', network: 'none', ports: [{ host: 1, guest: 80 }] }).then(
      () => assert.fail('ports without a network were accepted'),
      (e: KilnApiError) => assert.equal(e.code, 'KILN_ERR_VALIDATION'),
    );
    assert.equal((await d.client.listVms()).length, before, 'no VM record left by a refused create');
    const owned = new Set((await d.client.listVms()).map((v) => tapName(v.id)));
    for (const l of await listLinks({ master: d.network.bridge })) assert.ok(owned.has(l.ifname), `tap ${l.ifname} belongs to a listed VM`);
    await d.client.deleteVm(a.id);
  });
});

describe('restart safety', { skip }, () => {
  test('a kilnd restart keeps addresses and publications; a leftover tap is swept', async () => {
    const hostPort = await freePort();
    const vm = await d.client.createVm({ name: 'keep', cmd: httpd('keep'), ports: [{ host: hostPort, guest: 80 }] }, { wait: true });
    await waitForLog(d.client, vm.id, /serving/);
    assert.equal(await eventually('the published port to answer after the restart', () => httpGet('127.0.0.1', hostPort)), 'keep');
    // A tap kiln made for a VM that no longer exists (as after a crash mid-create).
    const stray = tapName('vm-00deadbeef');
    await run('ip', ['tuntap', 'add', 'dev', stray, 'mode', 'tap']);
    await run('ip', ['link', 'set', 'dev', stray, 'master', d.network.bridge]);

    await d.kill();
    d = await startKilnd({ stateDir: d.stateDir, network: d.network });
    const after = await d.client.getVm(vm.id);
    assert.equal(after.state, 'ready');
    assert.equal(after.ip, vm.ip);
    assert.deepEqual(after.ports, vm.ports);
    assert.equal(await httpGet('127.0.0.1', hostPort), 'keep', 'publication still works after the restart');
    assert.equal(await linkExists(stray), false, 'stray tap swept at start-up');
    assert.equal(await linkExists(tapName(vm.id)), true, 'the running VM keeps its tap');
    await d.client.deleteVm(vm.id);
    assert.equal(await linkExists(tapName(vm.id)), false);
  });
});
