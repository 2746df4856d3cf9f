// The skip decision of the VM-level suites (no VM is booted here).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backendHost, skipReasonFor, type BackendHost } from './backend.ts';

const host = (h: Partial<BackendHost>): BackendHost => ({
  requested: 'firecracker',
  firecrackerBinary: 'firecracker',
  found: '/usr/local/bin/firecracker',
  kvmUnusable: null,
  probeFailure: null,
  ...h,
});

test('qemu and auto always run: auto falls back to QEMU by itself', () => {
  assert.equal(skipReasonFor(host({ requested: 'qemu', found: null, kvmUnusable: 'no /dev/kvm' })), undefined);
  assert.equal(skipReasonFor(host({ requested: 'auto', found: null })), undefined);
});

test('firecracker runs where the binary is and KVM boots (or is not probed yet: kilnd probes)', () => {
  assert.equal(skipReasonFor(host({})), undefined);
  assert.equal(skipReasonFor(host({ probeFailure: undefined })), undefined);
});

test('firecracker is skipped with every reason named', () => {
  const r = skipReasonFor(host({ found: null, probeFailure: 'the KVM probe guest did not reach kiln-init (timed out)' }))!;
  assert.match(r, /KILN_BACKEND=firecracker needs a host with Firecracker and KVM/);
  assert.match(r, /no firecracker binary on PATH \(set KILN_FIRECRACKER_BIN\)/);
  assert.match(r, /KVM does not boot a guest here \(the KVM probe guest did not reach kiln-init/);
  assert.match(skipReasonFor(host({ kvmUnusable: '/dev/kvm is not usable (ENOENT)' }))!, /\/dev\/kvm is not usable \(ENOENT\)/);
  assert.match(skipReasonFor(host({ firecrackerBinary: '/opt/fc/firecracker', found: null }))!, /no \/opt\/fc\/firecracker binary there/);
});

test('reads this host: a binary named by path that does not exist is not found', async () => {
  const h = await backendHost({ ...process.env, KILN_BACKEND: 'firecracker', KILN_FIRECRACKER_BIN: '/nonexistent/firecracker' });
  assert.equal(h.found, null);
  assert.match(skipReasonFor(h)!, /no \/nonexistent\/firecracker binary there/);
});
