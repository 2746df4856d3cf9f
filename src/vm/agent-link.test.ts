import assert from 'node:assert/strict';
import { test } from 'node:test';
import { agentChannel } from './agent-link.ts';

test('agentChannel: Firecracker VMs use hybrid vsock (no network needed), QEMU VMs TCP on their address', () => {
  assert.deepEqual(agentChannel({ backend: 'firecracker', ip: null }, '/s/vms/vm-1'), { kind: 'vsock', udsPath: '/s/vms/vm-1/vsock/vsock.sock', port: 10240 });
  assert.deepEqual(agentChannel({ backend: 'qemu', ip: '10.118.0.2' }, '/s/vms/vm-1'), { kind: 'tcp', host: '10.118.0.2', port: 10240 });
  assert.equal(agentChannel({ backend: 'qemu', ip: null }, '/s/vms/vm-1'), null, 'no network on QEMU: serial console only');
});
