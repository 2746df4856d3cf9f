// Readiness over the agent with real VMs: the push is the default and marks the VM healthy;
// the fallbacks (neighbour table + probe, backoff polling) reach ready on their own; a guest
// that sends garbage or oversized frames to kilnd's agent port is cut off and flagged
// unhealthy while kilnd and the other VMs carry on.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { parseSubnet } from '../src/net/ipv4.ts';
import { BACKEND_SKIP } from './helpers/backend.ts';
import { startKilnd, waitForLog, type TestDaemon } from './helpers/kilnd.ts';
import { until } from './helpers/until.ts';

const skip = BACKEND_SKIP ?? false;
let d: TestDaemon;

before(async () => {
  if (!skip) d = await startKilnd();
});
after(() => d?.dispose());

test('the default readiness is the agent push: ready, healthy, latency measured', { skip }, async () => {
  const vm = await d.client.createVm({ name: 'pushed' }, { wait: true });
  assert.equal(vm.state, 'ready');
  assert.equal(vm.agent?.readiness, 'push');
  assert.equal(vm.agent?.channel, 'tcp');
  assert.match(vm.agent?.version ?? '', /^\d+\.\d+\.\d+$/);
  assert.equal(vm.health, 'healthy');
  // Measured right after ready: a few seconds at most.
  const measured = await until('the agent latency measured', async () => {
    const v = await d.client.getVm(vm.id);
    return v.agent?.latency_ms !== null && v;
  }, 5000, 50);
  assert.equal(typeof measured.agent?.latency_ms, 'number');
  await d.client.deleteVm(vm.id);
});

test('forced fallbacks reach ready by themselves and say which one was used', { skip }, async () => {
  for (const mode of ['neighbour', 'poll'] as const) {
    const vm = await d.client.createVm({ name: `by-${mode}`, readiness: mode }, { wait: true });
    assert.equal(vm.state, 'ready', mode);
    assert.equal(vm.agent?.readiness, mode);
    await d.client.deleteVm(vm.id);
  }
  await d.client.createVm({ name: 'no-net', network: 'none', readiness: 'poll' }).then(
    () => assert.fail('a forced agent readiness without a network was accepted'),
    (e: { code: string }) => assert.equal(e.code, 'KILN_ERR_VALIDATION'),
  );
});

test('a guest that sends garbage or oversized frames is cut off and marked unhealthy; kilnd carries on', { skip }, async () => {
  const gw = parseSubnet(d.network.cidr).gateway;
  const bystander = await d.client.createVm({ name: 'bystander', cmd: ['/bin/sleep', '600'] }, { wait: true });
  for (const [name, payload, reason] of [
    ['garbage', '\\0\\0\\0\\004\\377oops', /guest agent (garbage|unexpected|oversized|deadline)/],
    ['oversized', '\\177\\377\\377\\377j', /guest agent (oversized|excess)/],
  ] as const) {
    // The workload is the hostile party: root in its own VM, talking to kilnd's agent port.
    const vm = await d.client.createVm({
      name: `hostile-${name}`,
      cmd: ['/bin/sh', '-c', `printf '${payload}' | nc -w 2 ${gw} 18081; echo SENT; exec sleep 600`],
    }, { wait: true });
    await waitForLog(d.client, vm.id, /SENT/, 120_000);
    const got = await until(`${name}: the VM marked unhealthy`, async () => {
      const v = await d.client.getVm(vm.id);
      return v.health === 'unhealthy' && v;
    }, 10_000, 100);
    assert.match(got.health_reason ?? '', reason);
    assert.equal(got.state, 'ready', 'a misbehaving agent does not kill the VM');
    await d.client.deleteVm(vm.id);
  }
  assert.equal((await d.client.getVm(bystander.id)).health, 'healthy', 'other VMs are not affected');
  const next = await d.client.createVm({ name: 'after-hostile' }, { wait: true });
  assert.equal(next.agent?.readiness, 'push', 'the push channel still works for new VMs');
  await Promise.all([d.client.deleteVm(next.id), d.client.deleteVm(bystander.id)]);
});
