// `kiln doctor` for real on this host, as a user runs it (no kilnd). It asserts what the
// host's own facts imply, so it holds on a KVM host with Firecracker as well as here.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';
import { test } from 'node:test';
import type { DoctorReport } from '../doctor/checks.ts';
import { findBinary } from '../util/find-binary.ts';

const exec = promisify(execFile);
const BIN = new URL('../../bin/kiln.js', import.meta.url).pathname;

async function doctor(...args: string[]): Promise<{ stdout: string; code: number }> {
  try {
    const r = await exec(process.execPath, [BIN, ...args], { env: { ...process.env, KILN_FIRECRACKER_BIN: '' } });
    return { stdout: r.stdout, code: 0 };
  } catch (e) {
    const err = e as { stdout: string; code: number };
    return { stdout: err.stdout, code: err.code };
  }
}

test('--json: every check has a status, failures have fixes, verdicts follow this host', async () => {
  const { stdout, code } = await doctor('--json', 'doctor');
  const r = JSON.parse(stdout) as DoctorReport;
  for (const c of r.checks) {
    assert.ok(['ok', 'warn', 'fail'].includes(c.status));
    if (c.status !== 'ok') assert.ok(c.fix, `${c.scope}/${c.name} has a fix`);
  }
  const names = new Set(r.checks.map((c) => `${c.scope}/${c.name}`));
  for (const n of ['host//dev/kvm', 'host/guest kernel', 'host/nft', 'host/ip', 'host/mksquashfs', 'host/mkfs.erofs', 'qemu/qemu-system-x86_64', 'qemu/vsock', 'firecracker/firecracker', 'firecracker/jailer', 'firecracker/cgroup v2', 'firecracker/vsock']) {
    assert.ok(names.has(n), `reports ${n}`);
  }
  const vsock = r.checks.find((c) => c.scope === 'qemu' && c.name === 'vsock')!;
  assert.equal(vsock.status === 'ok', existsSync('/dev/vhost-vsock'));
  const fc = await findBinary('firecracker');
  assert.equal(r.checks.find((c) => c.name === 'firecracker')!.status === 'fail', fc === null);
  if (!fc) assert.equal(r.backends.firecracker.usable, false);
  assert.equal(code, r.backends.qemu.usable || r.backends.firecracker.usable ? 0 : 1);
});

test('table output and --backend firecracker exit status', async () => {
  const { stdout, code } = await doctor('doctor', '--backend', 'firecracker');
  assert.match(stdout, /qemu-system-x86_64/);
  assert.match(stdout, /Backends:\n {2}qemu: (usable|NOT usable)/);
  const usable = /firecracker: usable/.test(stdout);
  assert.equal(code, usable ? 0 : 1);
  if (!usable) assert.match(stdout, /Fixes:\n/);
});
